"""Reading task data: local JSONL / JSON / Parquet files or a hub dataset, with errors that name file, line and field.

Tasks get plain dicts from here and turn them into Examples themselves; this module knows nothing about any task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rlbench.core.config import ConfigError

T = TypeVar("T")

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
    found = find_split_file(directory, stem)
    if found is not None:
        return found
    tried = ", ".join(f"{stem}{s}" for s in SUFFIXES)
    raise DataError(f"{directory}: no {stem} data file (looked for {tried})")


def find_split_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` with the first suffix that exists, or None."""
    for suffix in SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


#: problems a task carves out of its training data as the ``validation`` split when the data has no validation file
VALIDATION_SIZE = 500


def text_key(text: str) -> str:
    """A problem's text with its whitespace normalised: how problems are matched across splits and data copies."""
    return " ".join(text.split())


def carve_validation(keys: Sequence[str], size: int, where: str) -> tuple[list[int], list[int]]:
    """(train rows, validation rows) of one training source, both in source order.

    ``keys`` are the rows' problem texts (``text_key``). Validation: of the distinct texts, the ``size`` whose
    sha256 is lowest, one row each (the first); train: every row whose text is not among them, so a duplicated
    problem never sits on both sides. The choice depends on the texts alone, not on row order or ids, so every copy
    of the data (hub or local, any order) gives the same validation problems.
    """
    distinct = list(dict.fromkeys(keys))
    if size < 1:
        raise ConfigError(f"task.validation_size={size}: must be >= 1")
    if size >= len(distinct):
        raise ConfigError(
            f"task.validation_size={size}: {where} has only {len(distinct)} distinct problems, and "
            "training needs at least one of them; lower task.validation_size"
        )
    digest = {k: hashlib.sha256(f"rlbench-validation\n{k}".encode()).hexdigest() for k in distinct}
    chosen = set(sorted(distinct, key=digest.__getitem__)[:size])
    validation, seen, train = [], set(), []
    for row, key in enumerate(keys):
        if key not in chosen:
            train.append(row)
        elif key not in seen:
            seen.add(key)
            validation.append(row)
    return train, validation


def train_and_validation(
    items: Sequence[T], key: Callable[[T], str], size: int, where: str, own: Sequence[T] | None = None
) -> tuple[list[T], list[T]]:
    """(train, validation) of a task's training items: the data's ``own`` validation items when it has them (train
    then drops every item whose key is among theirs), else a slice of ``size`` carved out by ``carve_validation``."""
    if own is not None:
        held = {key(item) for item in own}
        return [item for item in items if key(item) not in held], list(own)
    rows, validation = carve_validation([key(item) for item in items], size, where)
    return [items[i] for i in rows], [items[i] for i in validation]


def same_problem(held_out: Sequence[Record], text_field: str) -> Callable[[Record], bool]:
    """Whether a record repeats one of ``held_out``: the same ``unique_id``, or the same text (``text_key``)."""
    ids = {r.fields["unique_id"] for r in held_out if r.fields.get("unique_id")}
    texts = {text_key(r.text(text_field)) for r in held_out}
    return lambda r: r.fields.get("unique_id") in ids or text_key(r.text(text_field)) in texts


def local_split_file(spec: str, split: str) -> Path | None:
    """The local file ``spec`` names for ``split``: ``spec`` with ``{split}`` filled in, ``<split>.*`` in a directory,
    or ``spec`` itself (one file serves every split). ``validation`` only from a file of that name, else None."""
    if "{split}" in spec:
        path = Path(spec.format(split=split)).expanduser()
        return None if split == "validation" and not path.is_file() else path
    path = Path(spec).expanduser()
    if path.is_dir():
        return find_split_file(path, split) if split == "validation" else split_file(path, split)
    return None if split == "validation" else path


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
        raise DataError(
            f"task.data={dataset!r} (config {config!r}, split {split!r}): cannot load from the hub: {exc}"
        ) from None
    label = f"{dataset}[{split}]"
    records = [Record(dict(row), f"{label} record {number}") for number, row in enumerate(rows)]
    if not records:
        raise DataError(f"{label}: the split is empty")
    return records
