"""``rlbench grade``: score a JSONL file of completions against a task's references, without any model.

Each input line is a JSON object with ``completion`` and either ``index`` (row number in the task's split) or ``id``
(the Example id); with both, they must name the same row. Lines that name one problem are its k samples (as any
sampler writes them, for mean@k or pass@k): each is graded on its own, and the summary adds mean@k, unbiased pass@k
and maj@k. An optional ``sample`` (0, 1, ...) numbers them; the same (problem, sample) twice is refused. Bad input
exits with code 2 and one line naming the file, line and field, before anything is graded. ``--out`` (a grade per
line, in input order) and ``--summary`` (per problem and overall) are written atomically, never over the completions.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rlbench.cli.errors import fail
from rlbench.core import configure, registry
from rlbench.core.config import ConfigError
from rlbench.core.configure import merge_overrides
from rlbench.core.results import RunFileError, dumps_strict, write_bytes_atomic
from rlbench.run.eval.metrics import samples_summary
from rlbench.tasks.base import Example, Grade, Task

#: Completions graded per grade_many call: big enough for the task's pool to run in parallel, small for the bar.
CHUNK = 64
REASONS = ("correct", "wrong", "no_answer", "unparsable", "timeout")
#: Inputs shorter than this finish too fast for a progress bar to help.
PROGRESS_MIN_ROWS = 200


class InputError(Exception):
    """A bad completions file; the message is the one line the user sees."""


@dataclass(frozen=True)
class Row:
    line: int
    example: Example
    index: int
    completion: str
    sample: int | None = None  # the input's own number for this sample of its problem, where it gives one


def build_task(name: str, data: str | None, overrides: tuple[str, ...]) -> Task:
    tree = merge_overrides({}, list(overrides))
    unknown = sorted(key for key in tree if key != "task")
    if unknown:
        raise ConfigError(f"--set {unknown[0]}...: grade accepts only task.<key>=<value> overrides")
    options = dict(tree.get("task", {}))
    if "name" in options and options.pop("name") != name:
        raise ConfigError("--set task.name: use --task to choose the task")
    if data is not None:
        options["data"] = data
    try:
        return configure.build_task({"name": name, **options})
    except registry.UnknownNameError as exc:
        raise ConfigError(f"--task: {exc}") from None


def read_rows(path: Path, examples: list[Example]) -> list[Row]:
    by_id = {e.id: i for i, e in enumerate(examples)}
    rows: list[Row] = []
    first_line: dict[tuple[int, int], int] = {}  # (split row, sample) -> input line naming it
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                row = _row(path, number, line, examples, by_id)
                if row.sample is not None:  # one sample graded twice would count twice in mean@k and pass@k
                    key = (row.index, row.sample)
                    if key in first_line:
                        raise InputError(
                            f"{path}:{number}: duplicate sample {row.sample} of id {row.example.id!r} "
                            f"(row {row.index}), first on line {first_line[key]}"
                        )
                    first_line[key] = number
                rows.append(row)
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not rows:
        raise InputError(f"{path}: empty file (no completions)")
    return rows


def _row(path: Path, number: int, line: str, examples: list[Example], by_id: dict[str, int]) -> Row:
    where = f"{path}:{number}"
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: line is not JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with 'completion' and 'index' or 'id'")
    completion = record.get("completion")
    if not isinstance(completion, str):
        what = "missing" if completion is None else f"must be a string, got {type(completion).__name__}"
        raise InputError(f"{where}: field 'completion' {what}")
    index = record.get("index")
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise InputError(f"{where}: field 'index' must be an integer, got {index!r}")
        if not 0 <= index < len(examples):
            raise InputError(f"{where}: field 'index' = {index} is out of range (the split has {len(examples)} rows)")
    if "id" in record:
        example_id = record["id"]
        if not isinstance(example_id, str) or example_id not in by_id:
            raise InputError(f"{where}: field 'id' = {example_id!r} names no example of the split")
        if index is not None and by_id[example_id] != index:
            raise InputError(
                f"{where}: field 'id' = {example_id!r} is row {by_id[example_id]}, but field 'index' says {index}"
            )
        index = by_id[example_id]
    if index is None:
        raise InputError(f"{where}: field 'index' or 'id' missing")
    sample = record.get("sample")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 0):
        raise InputError(f"{where}: field 'sample' must be a non-negative integer, got {sample!r}")
    return Row(number, examples[index], index, completion, sample)


def grade_rows(task: Task, rows: list[Row]) -> list[Grade]:
    from rlbench.core.bars import tqdm

    grades: list[Grade] = []
    with tqdm(
        total=len(rows), unit="row", file=sys.stderr, disable=len(rows) < PROGRESS_MIN_ROWS, desc="grading"
    ) as bar:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            try:
                grades.extend(task.grade_many([r.completion for r in chunk], [r.example for r in chunk]))
            except UnicodeError:
                # Valid JSON can hold text no codec accepts (a lone surrogate); a grader that chokes on it costs only
                # the rows it chokes on, so grade the chunk again one row at a time.
                grades.extend(_grade_one(task, r) for r in chunk)
            bar.update(len(chunk))
    return grades


def _grade_one(task: Task, row: Row) -> Grade:
    try:
        return task.grade_many([row.completion], [row.example])[0]
    except UnicodeError:
        return Grade.fail("unparsable")  # the grader could not read the text, so it cannot be right


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, however spelled (``./x`` and ``x``, a symlink, a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either one missing: a file that does not exist yet cannot be the input
        return False


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Atomically replace ``path`` (through a symlink: the link stays a link); an existing file is untouched on
    failure, and the new one gets the umask's mode."""
    write_bytes_atomic(Path(os.path.realpath(path)), b"".join(lines))


def encode_record(record: dict[str, Any]) -> bytes:
    """One JSON line in UTF-8. Text UTF-8 cannot hold (a lone surrogate from the input) is written as a \\u
    escape, which reads back as the same string."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")


@click.command(
    "grade",
    epilog="""\b
Examples:
  rlbench grade --task gsm8k --completions completions.jsonl
  rlbench grade --task gsm8k --completions samples.jsonl --out grades.jsonl --summary summary.json   # k per problem""",
)
@click.option("--task", "task_name", required=True, help="registered task name, e.g. gsm8k or math-hard")
@click.option("--data", default=None, help="task data (sets task.data): a local file or directory, or a hub id")
@click.option("--split", default="test", show_default=True, help="split whose rows 'index' / 'id' refer to")
@click.option("--set", "overrides", multiple=True, metavar="task.KEY=VALUE", help="task option; repeatable")
@click.option(
    "--completions",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL: {'completion': ..., 'index': N} or {'completion': ..., 'id': ...} per line, optionally 'sample': "
    "J; a problem named on k lines has k samples",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write per-row grades (JSONL)"
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write mean@k, pass@k and maj@k per problem and overall (JSON)",
)
def grade(
    task_name: str,
    data: str | None,
    split: str,
    overrides: tuple[str, ...],
    completions: Path,
    out: Path | None,
    summary: Path | None,
) -> None:
    """Grade completions against a task's references; print accuracy, the failure reasons and, for several samples
    per problem, mean@k, pass@k and maj@k."""
    outputs = [(flag, path) for flag, path in (("--out", out), ("--summary", summary)) if path is not None]
    for flag, path in outputs:
        if same_file(completions, path):
            fail(f"{flag} {path}: same file as --completions {completions}; writing it would destroy the input")
    if out is not None and summary is not None and out.resolve() == summary.resolve():
        fail(f"--summary {summary}: same file as --out {out}")
    try:
        task = build_task(task_name, data, overrides)
        examples = task.load(split)
        rows = read_rows(completions, examples)
    except (ConfigError, InputError) as exc:
        fail(str(exc))
    grades = grade_rows(task, rows)
    report = problem_summary(task_name, split, rows, grades)
    if out is not None:
        _write(out, [encode_record(_grade_record(row, g)) for row, g in zip(rows, grades)])
    if summary is not None:
        _write(summary, [(dumps_strict(report, indent=2) + "\n").encode("utf-8")])
    correct = sum(g.correct for g in grades)
    click.echo(f"task {task_name} split {split}: accuracy {correct / len(grades):.4f} ({correct}/{len(grades)})")
    reasons = collections.Counter(g.reason for g in grades)
    order = [*REASONS, *sorted(set(reasons) - set(REASONS))]
    click.echo("reasons: " + ", ".join(f"{r} {reasons[r]}" for r in order))
    if report["k"]["max"] > 1:
        click.echo(samples_line(report))


def problem_summary(task_name: str, split: str, rows: list[Row], grades: list[Grade]) -> dict[str, Any]:
    """The rows' grades per problem (problems in order of first appearance): mean@k, pass@k, maj@k, and overall."""
    groups: dict[int, list[Grade]] = {}
    for row, g in zip(rows, grades):
        groups.setdefault(row.index, []).append(g)
    summary = samples_summary(list(groups.values()))
    examples = {row.index: row.example for row in rows}
    summary["per_problem"] = [
        {"index": index, "id": examples[index].id, **entry} for index, entry in zip(groups, summary["per_problem"])
    ]
    return {"task": task_name, "split": split, "rows": len(rows), **summary}


def samples_line(report: dict[str, Any]) -> str:
    """``1,319 problems, 4 samples each: mean@4 0.7491, pass@1 ..., maj@4 ...`` (k named where it varies)."""
    k, overall = report["k"], report["overall"]
    label = str(k["min"]) if k["uniform"] else "k"
    if k["uniform"]:
        head = f"{report['problems']:,} problems, {k['min']} samples each"
    else:
        counts = ", ".join(f"{n:,} with {size}" for size, n in sorted(k["problems_with"].items(), reverse=True))
        head = (
            f"{report['problems']:,} problems, {k['min']} to {k['max']} samples each (k varies: {counts}; mean@k "
            f"and maj@k use each problem's own k, pass@j goes up to the smallest)"
        )
    # pass@1, 2, 4, 8, ... and at the smallest k: a line a reader can take in (--summary has every j)
    shown = sorted({2**i for i in range(k["min"].bit_length()) if 2**i <= k["min"]} | {k["min"]})
    rates = [f"mean@{label} {overall['mean@k']:.4f}"] + [f"pass@{j} {overall[f'pass@{j}']:.4f}" for j in shown]
    rates.append(f"maj@{label} {overall['maj@k']:.4f}")
    return f"{head}: " + ", ".join(rates)


def _write(path: Path, lines: list[bytes]) -> None:
    try:
        write_lines(path, lines)
    except RunFileError as exc:
        fail(f"{path}: {str(exc).rsplit(': ', 1)[-1]}")


def _grade_record(row: Row, g: Grade) -> dict[str, Any]:
    return {
        "line": row.line,
        "index": row.index,
        "id": row.example.id,
        "sample": row.sample,
        "reward": g.reward,
        "correct": g.correct,
        "reason": g.reason,
        "extracted": g.extracted,
    }
