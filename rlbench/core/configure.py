"""The configure step: a YAML file, CLI shorthands and ``--set key=value`` overrides become one validated
:class:`~rlbench.core.config.RunConfig`, with the algorithm's and the task's typed options built and checked here too.

Plugins never call back into this module: an option's way from the command line to where it is used goes through
it once (the option dataclasses it fills live in :mod:`rlbench.core.config` and in each plugin's module).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rlbench.core.config import EXECUTION_KEYS, MAX_CONFIG_BYTES, RENAMED_PRECISIONS, ConfigError, RunConfig

# ----------------------------------------------------------------------------------------------- building


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the annotated type, or raise naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: invalid value")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, args))}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(number):  # lr=inf passes "> 0" and then silently trains a NaN model
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        item = args[0] if args else Any
        return (tuple if origin is tuple else list)(_coerce(v, item, key) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return build_dataclass(hint, value, prefix=key)
    return value


def build_dataclass(cls: type, options: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate ``cls`` from a mapping, coercing types; unknown keys raise a ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in options.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"{full}: unknown key; valid keys: {', '.join(sorted(known))}")
        values[key] = _coerce(value, hints[key], full)
    return cls(**values)


def build_algorithm(cls: type, options: dict[str, Any]) -> Any:
    """The configure step of an algorithm: its options (YAML values, ``--set`` strings) become its typed ``Config``,
    every bound in its ``checks()`` is tested, and a ConfigError names the first ``algo.<key>`` that breaks one.

    All of it happens here, so an option's way from the command line to the loss visits each file once: this one,
    then the algorithm's module, then the helper in ``algorithms/base.py`` that uses it.
    """
    for key in options:
        if key in cls.renamed:
            raise ConfigError(
                f"algo.{key}: renamed to algo.{cls.renamed[key]} (one name per knob across "
                f"algorithms; docs/algorithms.md lists {cls.name}'s options)"
            )
    algo = cls(build_dataclass(cls.Config, options, prefix="algo"))
    for key, holds, why in algo.checks():
        if not holds:
            raise ConfigError(f"algo.{key}={getattr(algo.config, key)!r}: {why}")
    return algo


def build_task(tree: dict[str, Any]) -> Any:
    """The configure step of a task: the config's ``task`` section (``name`` and options) becomes the registered
    task's typed ``Config`` (a ConfigError names the bad ``task.<key>``) and the task built from it; with ``task.reward``
    set, the task whose training rewards come from that registered reward function."""
    from rlbench.core import registry

    cls = registry.get_task(tree["name"])
    task = cls(build_dataclass(cls.Config, {k: v for k, v in tree.items() if k != "name"}, prefix="task"))
    return task.with_reward_function()


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:  # an alias bomb too: kept as the (harmless) string it is
        value = raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw
    return key.split("."), value


def merge_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (values parsed as YAML, then coerced by type later)."""
    for item in overrides:
        path, value = _parse_override(item)
        set_at(tree, path, value, what=f"--set {item!r}")
    return tree


def set_at(tree: dict[str, Any], keys: typing.Sequence[str], value: Any, what: str) -> None:
    """tree[k1][k2]... = value, making sections on the way; ``what`` names the setting in the error when a level on
    the path is a value rather than a section."""
    node = tree
    for part in keys[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {part} is not a section")
        node = child
    node[keys[-1]] = value


class AliasRefused(yaml.composer.ComposerError):
    """A YAML alias (``*name``) in user YAML."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: no config needs them, and a few hundred bytes of nested aliases expand to
    billions of nodes once the tree is copied or dumped (the "billion laughs" bomb). Anchors alone are harmless."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str | bytes) -> Any:
    """``yaml.safe_load`` for YAML from the user: refuses aliases (:class:`AliasRefused`, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_NoAliasLoader)


def value_at(tree: Any, keys: typing.Sequence[str]) -> Any:
    """tree[k1][k2]...; None where a level is missing or not a mapping."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first key path where two config trees differ, e.g. ``optim.lr``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the config"


def saved_config_mismatch(saved: Path, config: RunConfig, here: str = "now") -> str | None:
    """``key.path = X there, Y <here>`` where the run config saved in ``saved`` differs from ``config``; else None."""
    try:
        before = parse_yaml(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{saved}: unreadable ({exc}); remove the folder or use another --out") from None
    now = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if isinstance(before, dict):  # trackers may be added or dropped on a resume: they do not change the run
        before, now = ({k: v for k, v in tree.items() if k not in EXECUTION_KEYS} for tree in (before, now))
    if before == now:
        return None
    where = first_difference(before, now)
    keys = where.split(".")
    return f"{where} = {value_at(before, keys)!r} there, {value_at(now, keys)!r} {here}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping; too large, aliased or invalid YAML raises a ConfigError naming the file.

    A name that is not a file but names a shipped config (``tiny-arith``, ``math-hard-qwen2.5-math-7b.yaml``) reads
    that one, so an installed rlbench runs its reference configs from any folder."""
    path = Path(path)
    if not path.exists():
        path = shipped_config(path.name) or path
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)  # never more: a 50 MB file took minutes and GBs to reject
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from exc
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than 1 MiB, the most a config file may be")
    try:
        data = parse_yaml(text)
    except AliasRefused as exc:
        raise ConfigError(f"--config {path} line {exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"--config {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of config keys")
    return data


def shipped_config(name: str) -> Path | None:
    """The config of that name that rlbench ships (``configs/`` in the source, ``rlbench.configs`` installed)."""
    import importlib.resources

    try:
        folder = importlib.resources.files("rlbench.configs")
    except ModuleNotFoundError:
        return None
    for candidate in (name, f"{name}.yaml"):
        found = folder / candidate
        if found.is_file():
            return Path(str(found))
    return None


def _nested(tree: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _nested(value, out[key])
        else:
            out[key] = value
    return out


def build_run_config(tree: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig, including the algorithm's and task's own option dataclasses."""
    from rlbench.core import registry

    tree = dict(tree)
    for key in ("algo", "task"):
        if isinstance(tree.get(key), str):
            tree[key] = {"name": tree[key]}
    renamed = RENAMED_PRECISIONS.get(tree.get("precision")) if isinstance(tree.get("precision"), str) else None
    if renamed:
        raise ConfigError(f"precision={tree['precision']}: renamed to {renamed[0]} ({renamed[1]})")
    config = build_dataclass(RunConfig, tree)
    defaults = RunConfig()
    config.algo = {**({} if "name" in config.algo else defaults.algo), **config.algo}
    config.task = {**({} if "name" in config.task else defaults.task), **config.task}
    config.validate()
    try:
        algo_cls = registry.get_algorithm(config.algo_name)
        registry.get_task(config.task_name)  # an unknown task is named here; build_task below checks its options
    except registry.UnknownNameError as exc:
        raise ConfigError(("algo.name: " if "algorithm" in str(exc) else "task.name: ") + str(exc)) from exc
    # Instantiating the option dataclasses checks every key and type now, before any work starts. The run keeps
    # every algorithm option, defaults included, so that its config.yaml says what ran even if a default changes.
    algo = build_algorithm(algo_cls, {k: v for k, v in config.algo.items() if k != "name"})
    build_task(config.task)
    config.algo = {"name": config.algo_name, **dataclasses.asdict(algo.config)}
    config._algorithm = algo  # not a field: config.yaml holds config.algo, this is its validated, typed form
    return config


def resolve(config_file: str | None, overrides: list[str], shorthands: dict[str, Any] | None = None) -> RunConfig:
    """File, then CLI shorthands (``--algo``...), then ``--set`` overrides; later wins."""
    tree: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for key in ("algo", "task"):
        if isinstance(tree.get(key), str):
            tree[key] = {"name": tree[key]}
    for key, value in (shorthands or {}).items():
        if value is None:
            continue
        tree = _nested({key: {"name": value}} if key in ("algo", "task") else _path_dict(key, value), tree)
    tree = merge_overrides(tree, overrides)
    return build_run_config(tree)


def _path_dict(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    node: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        node = {part: node}
    return node
