"""Offline datasets and generated tasks.

``build_task(name, config)`` returns a :class:`TaskData` (a :class:`TaskSpec` and three
materialised splits); ``task_names()`` lists the registered tasks and ``task_config(name)``
gives the default config of one. Nothing here downloads anything: the real data sets are
small files shipped in ``ssmkit/data/files`` and user data is read from a local path.
"""

from ssmkit.data import images, listops, synthetic, text, user  # noqa: F401  (register tasks)
from ssmkit.data.base import (
    IGNORE,
    TASKS,
    Split,
    TaskConfig,
    TaskData,
    TaskEntry,
    TaskSpec,
    build_task,
    check_task_data,
    config_to_dict,
    override_config,
    task_config,
    task_names,
)
from ssmkit.data.user import denormalize

__all__ = [
    "IGNORE",
    "TASKS",
    "Split",
    "TaskConfig",
    "TaskData",
    "TaskEntry",
    "TaskSpec",
    "build_task",
    "check_task_data",
    "config_to_dict",
    "denormalize",
    "override_config",
    "task_config",
    "task_names",
]
