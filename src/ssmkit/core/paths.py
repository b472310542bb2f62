"""The one rule for file names read from files ssmkit did not get from the user.

A name that a JSON file names (a checkpoint's tensor file, a shard of an exported model) must be
a plain file name inside the folder it is read from: no directory part, no ``..``, not
absolute. Readers check it before they open, hash or delete anything.
"""

from __future__ import annotations

import os


def is_plain_name(value: object) -> bool:
    """Whether ``value`` is a plain file name: a ``str``, no directory part, not ``.``/``..``."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\x00")
        and os.path.basename(value) == value
    )
