"""Comparing run files across two runs that should agree: everything but wall-clock measurements."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# timing fields of metrics.jsonl / eval.jsonl rows: the one thing two equal runs cannot share
RUN_TIMING = frozenset({"time", "gen_tokens_per_s", "train_tokens_per_s", "tokens_per_second", "seconds"})


def stable(value: Any, volatile: frozenset[str] = RUN_TIMING) -> Any:
    """``value`` with every key in ``volatile`` dropped, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [stable(v, volatile) for v in value]
    return value


def stable_rows(path: Path) -> list:
    """A JSONL file's rows without their timing fields."""
    return [stable(json.loads(line)) for line in path.read_text().splitlines()]
