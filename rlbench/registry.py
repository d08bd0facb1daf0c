"""Name -> class registries for algorithms and tasks.

Built-ins register themselves with the decorators when ``rlbench.algorithms`` / ``rlbench.tasks`` are imported.
Third-party packages plug in through the entry-point groups ``rlbench.algorithms`` and ``rlbench.tasks``; each entry
point names a module (or class) whose import registers it.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, TypeVar

T = TypeVar("T")

_ALGORITHMS: dict[str, type] = {}
_TASKS: dict[str, type] = {}
_loaded: set[str] = set()


class UnknownNameError(KeyError):
    """Raised for an algorithm or task name that nothing registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def _register(table: dict[str, type], kind: str) -> Callable[[type[T]], type[T]]:
    def decorator(cls: type[T]) -> type[T]:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered as {kind}")
        existing = table.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} name {name!r} is already taken by {existing.__module__}.{existing.__qualname__}")
        table[name] = cls
        return cls

    return decorator


register_algorithm = _register(_ALGORITHMS, "an algorithm")
register_task = _register(_TASKS, "a task")


def _load(group: str) -> None:
    """Import the built-ins and every installed plugin of one group, once."""
    if group in _loaded:
        return
    _loaded.add(group)
    importlib.import_module(group)
    for ep in entry_points(group=group):
        ep.load()


def algorithms() -> dict[str, type]:
    _load("rlbench.algorithms")
    return dict(sorted(_ALGORITHMS.items()))


def tasks() -> dict[str, type]:
    _load("rlbench.tasks")
    return dict(sorted(_TASKS.items()))


def get_algorithm(name: str) -> type:
    table = algorithms()
    if name not in table:
        raise UnknownNameError(f"unknown algorithm {name!r}; registered: {', '.join(table) or 'none'}")
    return table[name]


def get_task(name: str) -> type:
    table = tasks()
    if name not in table:
        raise UnknownNameError(f"unknown task {name!r}; registered: {', '.join(table) or 'none'}")
    return table[name]
