"""Name -> class registries for algorithms and tasks.

Built-ins register themselves with the decorators when ``rlbench.algorithms`` / ``rlbench.tasks`` are imported.
Third-party packages plug in through the entry-point groups ``rlbench.algorithms``, ``rlbench.tasks`` and
``rlbench.rewards``; each entry point names a module (or object) whose import registers it.

Reward functions (``@register_reward("name")`` on ``reward(prompt, completion, example) -> float``) replace a task's
reward when its config names them (``task.reward: name``; tasks/base.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

T = TypeVar("T")
RewardFn = Callable[[Any, str, Any], float]  # (prompt, completion, example) -> reward

_ALGORITHMS: dict[str, type] = {}
_TASKS: dict[str, type] = {}
_REWARDS: dict[str, RewardFn] = {}
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


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``reward(prompt, completion, example) -> float`` under ``name`` (``task.reward: name`` uses it)."""
    if not isinstance(name, str) or not name:
        raise TypeError('register_reward needs a name: @register_reward("my-reward")')

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise TypeError(f"reward {name!r}: {fn!r} is not callable")
        existing = _REWARDS.get(name)
        if existing is not None and existing is not fn and existing.__qualname__ != fn.__qualname__:
            raise ValueError(
                f"a reward named {name!r} is already registered: {existing.__module__}.{existing.__qualname__}"
            )
        _REWARDS[name] = fn
        return fn

    return decorator


def _load(group: str) -> None:
    """Import the built-ins (when the group has a module of that name) and every installed plugin of one group, once."""
    if group in _loaded:
        return
    _loaded.add(group)
    if importlib.util.find_spec(group) is not None:
        importlib.import_module(group)
    for ep in entry_points(group=group):
        ep.load()


def algorithms() -> dict[str, type]:
    _load("rlbench.algorithms")
    return dict(sorted(_ALGORITHMS.items()))


def tasks() -> dict[str, type]:
    _load("rlbench.tasks")
    return dict(sorted(_TASKS.items()))


def rewards() -> dict[str, RewardFn]:
    _load("rlbench.rewards")
    return dict(sorted(_REWARDS.items()))


def get_reward(name: str) -> RewardFn:
    table = rewards()
    if name not in table:
        raise UnknownNameError(
            f"unknown reward {name!r}; registered: {', '.join(table) or 'none'} (register one with "
            f"@register_reward, in a module the rlbench.rewards entry-point group names)"
        )
    return table[name]


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
