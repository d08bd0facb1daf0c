"""Reading task data: local JSONL / JSON / Parquet files or a hub dataset, with errors that name file, line and field.

Tasks get plain dicts from here and turn them into Examples themselves; this module knows nothing about any task.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rlbench.config import ConfigError

SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ConfigError):
    """Bad or missing task data; the message names the file (or hub id), the line or record, and the field."""


@dataclass(frozen=True)
class Record:
    """One row and where it came from, so a task can point at the exact line when a field is wrong."""

    fields: dict[str, Any]
    where: str  # "path:LINE" for JSONL, "path record N" for JSON / Parquet / hub rows

    def text(self, name: str, *, required: bool = True) -> str | None:
        """Field ``name`` as a non-empty string (a number is taken as its text), or None when optional and absent."""
        value = self.fields.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # some copies store numeric answers as JSON numbers
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise DataError(f"{self.where}: field {name!r} is missing or empty")
            return None
        if not isinstance(value, str):
            raise DataError(f"{self.where}: field {name!r} must be a string, got {type(value).__name__}")
        return value


def looks_local(spec: str) -> bool:
    """A path (existing, absolute, relative, or with a data suffix) rather than a hub id like ``openai/gsm8k``."""
    return (
        Path(spec).expanduser().exists()
        or spec.startswith(("/", ".", "~"))
        or spec.lower().endswith(SUFFIXES)
        or "{split}" in spec
    )


def split_file(directory: Path, stem: str) -> Path:
    """``directory/stem`` with the first suffix that exists, or a DataError listing what was looked for."""
    for suffix in SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    tried = ", ".join(f"{stem}{s}" for s in SUFFIXES)
    raise DataError(f"{directory}: no {stem} data file (looked for {tried})")


def read_records(path: str | Path) -> list[Record]:
    """All records of a local file; every problem raises a DataError naming the file and line or record."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        records = list(_parquet(path))
    elif suffix == ".json":
        records = list(_json(path))
    else:  # .jsonl and anything unnamed are read as JSON lines, the format the data ships in
        records = list(_jsonl(path))
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records


def _jsonl(path: Path) -> Iterator[Record]:
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: line is not JSON ({exc.msg})") from None
                if not isinstance(value, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
                yield Record(value, f"{path}:{number}")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _json(path: Path) -> Iterator[Record]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    for number, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path} record {number}: expected a JSON object, got {type(item).__name__}")
        yield Record(item, f"{path} record {number}")


def _parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq  # comes with `datasets`
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{path}: reading Parquet needs pyarrow ({exc})") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for number, row in enumerate(rows):
        yield Record(row, f"{path} record {number}")


def load_hub(dataset: str, config: str | None, split: str) -> list[Record]:
    """One split of a hub dataset through ``datasets.load_dataset`` (honours HF_HUB_OFFLINE and the local cache)."""
    import datasets  # heavy; only hub loads need it

    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # network, auth, unknown id or split: all surface as a data error naming the id
        raise DataError(f"task.data={dataset!r} (config {config!r}, split {split!r}): cannot load from the hub: {exc}") from None
    label = f"{dataset}[{split}]"
    records = [Record(dict(row), f"{label} record {number}") for number, row in enumerate(rows)]
    if not records:
        raise DataError(f"{label}: the split is empty")
    return records
