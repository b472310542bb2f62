"""Config dataclasses from strings: the one parser behind ``--FIELD VALUE`` overrides.

It lives in ``data``, the lowest layer that reads configs from strings (task configs:
``--task.FIELD``, :func:`ssmkit.data.base.override_config`); ``train`` imports it from
here for the train and model configs (``--FIELD``).

Configs are frozen dataclasses whose fields are plain ``int``, ``float``, ``str``, ``bool``,
``Path`` or one of those ``| None``. :func:`parse_field` turns a command-line string into the
field's type; ``none``/``null`` (and an empty string) give ``None`` for optional fields.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def field_types(cls: type) -> dict[str, typing.Any]:
    """Field name -> resolved annotation of a dataclass."""
    return typing.get_type_hints(cls)


def base_type(tp: typing.Any) -> tuple[type, bool]:
    """(scalar type, optional) of a field annotation such as ``int`` or ``str | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported config field type {tp}")
        return inner[0], type(None) in typing.get_args(tp)
    return tp, False


def parse_field(cls: type, field: str, text: str, where: str) -> typing.Any:
    """The value of ``cls.field`` written as ``text``; ``where`` names it in errors."""
    base, optional = base_type(field_types(cls)[field])
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if base is str:
        return text
    if base is bool:
        low = text.strip().lower()
        if low not in TRUE + FALSE:
            raise ValueError(f"{where} must be bool (true/false), got {text!r}")
        return low in TRUE
    if base in (int, float, Path):
        try:
            return base(text)
        except ValueError:
            raise ValueError(f"{where} must be {base.__name__}, got {text!r}") from None
    raise ValueError(f"{where}: fields of type {base} cannot be set from a string")
