"""Task files register themselves on import; importing this package makes all of them available."""

import importlib
import pkgutil

from bertkit.tasks.base import TASKS, DataError, Task, TaskOptions, get_task_class, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "DataError", "Task", "TaskOptions", "get_task_class", "register"]
