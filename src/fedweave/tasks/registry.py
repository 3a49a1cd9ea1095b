"""The task registry: ``task.kind`` names → :class:`~fedweave.core.task.Task` classes."""

from __future__ import annotations

from ..core.errors import unknown_name
from ..core.registration import claim
from ..core.task import Task

#: kind -> (task class, description)
TASKS: dict[str, tuple[type[Task], str]] = {}


def register_task(kind: str, cls: type[Task], description: str, replace: bool = False) -> None:
    """Make a task available as ``task.kind: <kind>``. Registering a kind twice is an
    error unless ``replace`` is true."""
    claim("task", kind, TASKS, replace)
    TASKS[kind] = (cls, description)


def make_task(kind: str) -> Task:
    if kind not in TASKS:
        raise unknown_name("task", kind, TASKS)
    return TASKS[kind][0]()
