"""``rlbench config [--algo A] [--task T]``: every config key with its type, default and one line of help.

The help is the comment written beside (or just above) each field in ``rlbench/core/config.py`` and in the algorithm's and
task's option dataclasses, so the listing cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Iterator
from typing import Any

import click

from rlbench.core import config as config_module


def field_help(cls: type) -> dict[str, str]:
    """``field -> comment`` from the source of dataclass ``cls`` (its own fields and its bases')."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            match = re.match(r"\s+(\w+)\s*:[^=]*(?:=.*?)?(?:#\s*(.*))?$", line)
            if match and not stripped.startswith(("def ", "@", "return", "class ")):
                name, inline = match.group(1), match.group(2)
                text = " ".join(part for part in (" ".join(above), inline) if part)
                if text:
                    out[name] = text
            above = []
    return out


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def rows(cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field of ``cls``, sections expanded into dotted keys."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            yield from rows(type(value), f"{prefix}{f.name}.")
            continue
        yield f"{prefix}{f.name}", _type_name(hints[f.name]), repr(value), helps.get(f.name, "")


@click.command(
    "config",
    epilog="""\b
Examples:
  rlbench config
  rlbench config --algo grpo --task gsm8k""",
)
@click.option("--algo", help="Also list this algorithm's options (algo.*).")
@click.option("--task", help="Also list this task's options (task.*).")
def config_keys(algo: str | None, task: str | None) -> None:
    """Every config key: type, default and what it does. Set one with --set KEY=VALUE or in a YAML file.

    \b
    Examples:
      rlbench config
      rlbench config --algo grpo --task gsm8k
      rlbench train --config configs/tiny-arith.yaml --set rollout.backend=hf --set optim.lr=2e-4
    """
    from rlbench.core import registry

    table = list(rows(config_module.RunConfig, skip=("algo", "task")))
    table.insert(1, ("algo.name", "str", repr("reinforce"), "the algorithm (rlbench list)"))
    table.insert(2, ("task.name", "str", repr("arith"), "the task (rlbench list)"))
    if algo:
        table += rows(registry.get_algorithm(algo).Config, "algo.")
    if task:
        table += rows(registry.get_task(task).Config, "task.")
    width = max(len(key) for key, *_ in table)
    for key, kind, default, text in table:
        click.echo(f"{key:<{width}}  {kind}  = {default}")
        if text:
            click.echo(f"{'':<{width}}    {text}")
