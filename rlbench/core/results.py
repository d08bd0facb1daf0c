"""Run-directory files: append-only JSONL metrics and atomic whole-file writes, so a crash never leaves a broken file.

Every writer here turns an ``OSError`` (a full disk, a read-only folder) into a :class:`RunFileError` naming the file,
which the CLI prints as one line (exit 2), and leaves nothing half written behind. JSON is strict: a non-finite
float is written as ``null``, never as the bare ``NaN`` / ``Infinity`` tokens most parsers reject.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
EVALS = "eval.jsonl"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
EVAL_RECORDS = "eval_records.jsonl"  # older runs: the final evaluation's per-problem records only
# every evaluation's per-problem records: one gzip JSONL file per evaluation point, each row tagged with its point
RECORDS_DIR = "eval_records"
CHECKPOINT = "checkpoint"
STATE = "state"
FINGERPRINT = "fingerprint.json"
# the experiment trackers' folders in a run folder (rlbench.run.tracking): views of the run's files, not its record
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"

# A comparison folder (``rlbench compare``): its record, its audit, its runs and their log, and the report.
MANIFEST = "manifest.json"
AUDIT = "audit.json"
RUNS = "runs"
RUNS_LOG = "runs.log"
REPORT_JSON = "report.json"
LEADERBOARD = "leaderboard.md"
INDEX_HTML = "index.html"


def run_name(slug: str, seed: int) -> str:
    """The folder under ``RUNS`` that holds one row's run for one seed."""
    return f"{slug}-s{seed}"


def records_path(run: Path, point: int) -> Path:
    """The file that holds evaluation point ``point``'s per-problem records."""
    return Path(run) / RECORDS_DIR / f"point-{point:04d}.jsonl.gz"


_RECORDS_NAME = re.compile(r"point-(\d+)\.jsonl\.gz")


def record_points(run: Path) -> dict[int, Path]:
    """Evaluation point -> its records file, in point order, for the records files ``run`` holds."""
    folder = Path(run) / RECORDS_DIR
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _RECORDS_NAME.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def write_records(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Per-problem records as gzip JSONL, written atomically. ``mtime=0``: equal records give equal bytes."""
    data = "".join(dumps_strict(row) + "\n" for row in rows).encode("utf-8")
    write_bytes_atomic(path, gzip.compress(data, compresslevel=6, mtime=0))


def read_records(path: Path) -> list[dict[str, Any]]:
    """The rows of a :func:`write_records` file; a ValueError names the file (and line) that is not one."""
    try:
        text = gzip.decompress(Path(path).read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def token_hash(items: Any, digits: int = 16) -> str:
    """A short sha256 of a JSON-able value (token-id lists, ids), the same on every machine."""
    return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:digits]


class RunFileError(Exception):
    """A file rlbench cannot write, or a run file it cannot read back; the message names the file."""


def cannot_write(path: Path, exc: BaseException) -> RunFileError:
    """``PATH: cannot write (No space left on device)``: the file the user knows, not a temp name, and the reason."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().split("\n")[0]
    return RunFileError(f"{path}: cannot write ({reason or type(exc).__name__})")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old or the new file, never half.

    The temp file is opened with mode 0666 like any new file, so the umask applies (``mkstemp`` would make it 0600);
    a failed write removes it and leaves the old file as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise cannot_write(path, exc) from exc
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, dumps_strict(data, indent=2) + "\n")


def dumps_strict(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` that every parser accepts: NaN and infinities become null (tensors, Paths are converted)."""
    return json.dumps(_finite(data), allow_nan=False, **kwargs)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    append_jsonl_many(path, [row])


def append_jsonl_many(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines and fsync them; a failed write is cut back to the old end, so no torn line is left."""
    data = "".join(dumps_strict(row) + "\n" for row in rows).encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    try:
        end = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, end)  # shrinking frees blocks: this works on a full disk
            raise
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line; a torn last line (a process killed mid-write) is dropped, nothing else is forgiven."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no trailing newline: the write was cut off
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    return rows


def truncate_jsonl(path: Path, keep: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with only ``keep`` (used when resuming drops rows past the checkpoint)."""
    write_text_atomic(path, "".join(dumps_strict(row) + "\n" for row in keep))


def write_dir_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Fill ``path.tmp`` with ``write``, fsync it, swap it in for ``path``: a kill leaves one complete folder on disk
    (``path``, or ``path.old`` during the swap).

    A failed write removes ``path.tmp`` and raises :class:`RunFileError` naming the file it could not write.
    """
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                _fsync_file(file)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, RuntimeError)):  # safetensors reports a failed write as a RuntimeError
            name = getattr(exc, "filename", None)
            target = path / Path(name).relative_to(tmp) if name and Path(name).is_relative_to(tmp) else path
            raise cannot_write(target, exc) from exc
        raise
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a filesystem that cannot fsync a folder only costs that durability."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        exc.filename = str(file)
        raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked; loop until every byte is out
        view = view[os.write(fd, view) :]


def _finite(value: Any) -> Any:
    """A JSON-able copy of ``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return _finite(_jsonable(value))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
