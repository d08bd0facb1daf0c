"""Leaderboard rows: an algorithm with its options, such as ``em-pg[baseline=mean]``, or a control.

Two controls, each a copy of the reference row, tested against it and never ranked: the A/A control draws its
rollouts from an independent random stream (its gap is chance alone: the type-I side), and the positive control
trains at a fraction of the reference's learning rate (a handicap known from validation runs to cost accuracy: it
must be found, which shows the comparison has the power it claims).

``--algos 'em-pg,em-pg[baseline=mean],grpo[loss_agg=token-mean,clip_low=0.2]'`` gives three rows. Each row has a
readable label (what the leaderboard prints), the registered algorithm it runs, its options, and a folder-safe slug
(``em-pg.baseline-mean``) that names its run folders ``<slug>-s<seed>``. A plain name keeps its name as label and
slug, so comparisons without variants keep the folder names they always had.

An option with a dot in its name is a run setting rather than an algorithm option: ``grpo[optim.lr=2e-4]`` trains
GRPO at another learning rate (``rlbench tune`` makes its trials this way). The audit then expects that setting on
that row's runs only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from rlbench.core.config import ConfigError

CONTROL_SUFFIX = " (A/A control)"
POSITIVE_SUFFIX = " (positive control)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Row:
    label: str
    algo: str
    options: dict[str, Any] = field(default_factory=dict)
    slug: str = ""
    control: bool = False  # a control row: tested against the row it copies, never ranked
    # a positive control's learning rate as a fraction of its source row's; None for every other row (the A/A control
    # then draws its rollouts from an independent sampling stream)
    lr_scale: float | None = None

    @property
    def algo_options(self) -> dict[str, Any]:
        """The algorithm's own options (``algo.<key>``)."""
        return {k: v for k, v in self.options.items() if "." not in k}

    @property
    def settings(self) -> dict[str, Any]:
        """Run settings by dotted key (``optim.lr``), set on this row's runs only."""
        return {k: v for k, v in self.options.items() if "." in k}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "label": self.label,
            "algo": self.algo,
            "options": dict(self.options),
            "slug": self.slug,
            "control": self.control,
        }
        return {**out, "lr_scale": self.lr_scale} if self.lr_scale is not None else out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        scale = data.get("lr_scale")
        return cls(
            str(data["label"]),
            str(data["algo"]),
            dict(data.get("options") or {}),
            str(data["slug"]),
            bool(data.get("control", False)),
            None if scale is None else float(scale),
        )


def parse_rows(text: str) -> list[Row]:
    """``a,b[k=v,k2=v2]`` -> rows; exits through ConfigError naming the bad entry."""
    rows = [_parse_one(entry) for entry in _split_top_level(text)]
    if not rows:
        raise ConfigError("--algos: name at least one algorithm")
    for what in ("label", "slug"):
        values = [getattr(r, what) for r in rows]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"--algos: {twice[0]!r} names two rows; each row must differ (algorithm or options)")
    return rows


def control_of(reference: Row) -> Row:
    """A second copy of ``reference`` whose rollouts come from an independent random stream."""
    return Row(
        reference.label + CONTROL_SUFFIX,
        reference.algo,
        dict(reference.options),
        f"{reference.slug}.control",
        control=True,
    )


def positive_control_of(reference: Row, lr_scale: float) -> Row:
    """A copy of ``reference`` at ``lr_scale`` times its learning rate, on the reference's own sampling stream."""
    if not 0 < lr_scale < 1:
        raise ConfigError(f"--positive-control {lr_scale}: the learning-rate fraction must be in (0, 1)")
    return Row(
        reference.label + POSITIVE_SUFFIX,
        reference.algo,
        dict(reference.options),
        f"{reference.slug}.positive",
        control=True,
        lr_scale=lr_scale,
    )


def control_source(label: str) -> str:
    """The label of the row a control copies."""
    for suffix in (CONTROL_SUFFIX, POSITIVE_SUFFIX):
        if label.endswith(suffix):
            return label[: -len(suffix)]
    return label


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"--algos {text!r}: ']' without '['")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if depth:
        raise ConfigError(f"--algos {text!r}: '[' without ']'")
    parts.append(current.strip())
    return [p for p in parts if p]


def _parse_one(entry: str) -> Row:
    match = re.fullmatch(r"([^\[\]]+?)\s*(?:\[(.*)\])?", entry)
    if not match or not _NAME.match(match.group(1)):
        raise ConfigError(f"--algos: {entry!r} is not an algorithm name or NAME[key=value,...]")
    algo, inner = match.group(1), match.group(2)
    if inner is None:
        return Row(algo, algo, {}, algo)
    options: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in inner.split(","))):
        if "=" not in item:
            raise ConfigError(f"--algos {entry}: {item!r} is not key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key or key == "name":
            raise ConfigError(f"--algos {entry}: {item!r} does not name an option")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        options[key] = raw if isinstance(value, (dict, list)) else value
    if not options:
        return Row(algo, algo, {}, algo)
    label = f"{algo}[{','.join(f'{k}={option_text(v)}' for k, v in options.items())}]"
    slug = (
        algo + "." + ".".join(f"{_UNSAFE.sub('_', k)}-{_UNSAFE.sub('_', option_text(v))}" for k, v in options.items())
    )
    return Row(label, algo, options, slug)


def option_text(value: Any) -> str:
    """An option's value as a row label writes it (``true``, ``null``, ``2e-4``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
