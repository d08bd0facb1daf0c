"""Regrading: the numbers that rank, recomputed from the rawest data a run folder stores.

* Every stored grade of every evaluation with per-problem records (greedy and sampled) is compared with the task's
  grader run again on the stored completion, against the reference the task's data gives for the record's problem
  id (for arith the id is the expression itself).
* Each evaluation's accuracies in ``eval.jsonl`` (greedy; sampled mean@k, pass@k, maj@k) are compared with the metrics
  of its regraded records, computed by :func:`rlbench.run.eval.metrics.summarize`, the function that made them.
* Each training rollout logged in ``samples.jsonl`` has the reward and reason regrading gives.

A grade that timed out, when stored or when regraded, proves nothing either way: it keeps its stored value and is
counted as unchecked. So is everything when the task's data cannot be loaded here; the stored grades are then still
checked against the accuracies. Nothing from a completion is ever evaluated: the tasks' graders only parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from rlbench.core import registry
from rlbench.core.config import ConfigError
from rlbench.core.configure import build_task
from rlbench.core.results import RECORDS_DIR, read_records
from rlbench.run.eval.metrics import summarize
from rlbench.study.report.audit_run import Findings
from rlbench.study.report.crosscheck import agrees
from rlbench.study.report.inputs import RunFiles
from rlbench.study.report.runs import METRICS, correct, dig, number
from rlbench.tasks.base import Example, Grade, Task

Split = tuple[Task, dict[str, Example]]
_RATES = ("pass@", "maj@")


class Regrader:
    """The tasks of one comparison, built once per distinct ``task`` setting in the runs' config.yaml, and their
    splits by problem id (or why they could not be loaded)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task | str] = {}
        self._splits: dict[tuple[str, str], Split | str] = {}

    def split(self, tree: Any, split: str) -> Split | str:
        key = json.dumps(tree, sort_keys=True, default=str)
        if (key, split) not in self._splits:
            self._splits[(key, split)] = self._load(key, tree, split)
        return self._splits[(key, split)]

    def _load(self, key: str, tree: Any, split: str) -> Split | str:
        if not isinstance(tree, dict) or not isinstance(tree.get("name"), str):
            return "config.yaml names no task, so nothing can be regraded"
        if key not in self._tasks:
            try:
                self._tasks[key] = build_task(tree)
            except (ConfigError, registry.UnknownNameError) as exc:
                self._tasks[key] = f"task {tree['name']!r} cannot be built here ({_line(exc)})"
        task = self._tasks[key]
        if isinstance(task, str):
            return task + ", so nothing is regraded"
        try:
            examples = task.load(split)
        except (ConfigError, OSError) as exc:
            return f"task {tree['name']!r}'s {split} split cannot be loaded here ({_line(exc)}), so it is not regraded"
        return task, {str(e.id): e for e in examples}


def regrade_run(run: RunFiles, config: dict[str, Any], score_of: int, regrader: Regrader, found: Findings) -> None:
    """Regrade one completed run's evaluations and logged rollouts into ``found``."""
    loaded = regrader.split(config.get("task"), dig(config, "eval", "split") or "test")
    if isinstance(loaded, str):
        found.unchecked.append(f"{loaded}; stored evaluation grades are checked against the accuracies only")
    sources = _record_sources(run)
    scored = [row.get("point") for row in run.evals[1:][-score_of:]]
    missing = [p for p in scored if p not in sources]
    if missing and run.record_files:
        found.problems.append(
            f"{run.name}: eval point(s) {_join(missing)} of the score have no records in {RECORDS_DIR}/"
        )
    elif missing:
        found.unchecked.append(
            f"eval point(s) {_join(missing)} of the score kept no per-problem records (an older "
            "run folder keeps the final evaluation's only), so they are not regraded"
        )
    timeouts = 0
    for row in run.evals:
        source = sources.get(row.get("point"))
        if source is not None:
            try:
                records = source()
            except ValueError as exc:  # names the file and line
                found.problems.append(f"{run.name}: {exc}")
                continue
            timeouts += _check_point(run, row, records, loaded, found.problems)
    timeouts += _check_samples(run, lambda: regrader.split(config.get("task"), "train"), found)
    if timeouts:
        found.unchecked.append(
            f"{timeouts} completion(s) timed out when graded or regraded, so their stored grades stand unchecked"
        )


def _record_sources(run: RunFiles) -> dict[Any, Callable[[], list[dict[str, Any]]]]:
    """Evaluation point -> a loader of its records: the final point's are already read (``run.records``)."""
    final = run.evals[-1].get("point") if run.evals else None
    sources: dict[Any, Callable[[], list[dict[str, Any]]]] = {
        point: (lambda path=path: read_records(path)) for point, path in run.record_files.items()
    }
    if run.records:
        sources[final] = lambda: run.records
    return sources


def _check_point(
    run: RunFiles, row: dict[str, Any], records: list[dict[str, Any]], loaded: Split | str, problems: list[str]
) -> int:
    """One evaluation: its records' grades against regrading, its eval.jsonl row against their metrics. Returns
    how many grades timed out."""
    point, step = row.get("point"), row.get("step")
    where = f"{run.name}: eval point {point} (step {step})"
    stray = next((r for r in records if r.get("point", point) != point or r.get("step", step) != step), None)
    if stray is not None:
        problems.append(
            f"{where}: its records file holds records of point {stray.get('point')!r} (step {stray.get('step')!r})"
        )
        return 0
    items = [(rec, slot, item) for rec in records for slot, item in _items(rec)]
    blank = next(
        (
            (rec, slot)
            for rec, slot, item in items
            if not isinstance(item, dict) or not isinstance(item.get("completion"), str)
        ),
        None,
    )
    if blank is not None:
        problems.append(f"{where}: the record of problem {blank[0].get('id')!r} has no {blank[1]} completion")
        return 0
    timeouts = 0
    if isinstance(loaded, str):
        regraded = [_stored(item) for _, _, item in items]
    else:
        task, by_id = loaded
        unknown = [rec.get("id") for rec in records if str(rec.get("id")) not in by_id]
        if unknown:
            problems.append(
                f"{where}: {len(unknown)} record(s) name problems that are not in the task's split "
                f"(first: {unknown[0]!r})"
            )
            return 0
        grades = grade(task, [(by_id[str(rec["id"])], item["completion"]) for rec, _, item in items])
        regraded, wrong = [], []
        for (rec, slot, item), g in zip(items, grades):
            if "timeout" in (g.reason, item.get("reason")):  # proves nothing either way: the stored grade stands
                timeouts += 1
                regraded.append(_stored(item))
                continue
            regraded.append(_fields(g))
            if _differs(item, g):
                wrong.append((rec, slot, item, g))
        if wrong:
            rec, slot, item, g = wrong[0]
            problems.append(
                f"{where}: {len(wrong)} of {len(items)} stored grades differ from regrading their "
                f"completions (first: problem {rec.get('id')!r}, {slot}: stored {_grade_text(item)}, "
                f"regraded {g.reason})"
            )
    _check_metrics(where, row, records, items, regraded, problems)
    return timeouts


def _check_metrics(
    where: str,
    row: dict[str, Any],
    records: list[dict[str, Any]],
    items: list[tuple],
    grades: list[dict[str, Any]],
    problems: list[str],
) -> None:
    """The eval.jsonl row's accuracies, mean@k, pass@k and maj@k against those of the (regraded) records."""
    rebuilt: list[dict[str, Any]] = [{"id": rec.get("id")} for rec in records]
    position = {id(rec): i for i, rec in enumerate(records)}
    for (rec, slot, item), g in zip(items, grades):
        scored = {
            "completion": item["completion"],
            "tokens": item.get("tokens", 0),
            "truncated": item.get("truncated", False),
            **g,
        }
        target = rebuilt[position[id(rec)]]
        if slot == "greedy":
            target["greedy"] = scored
        else:
            target.setdefault("samples", []).append(scored)
    if row.get("problems") is not None and row["problems"] != len(records):
        problems.append(f"{where}: eval.jsonl says {row['problems']} problems, its records hold {len(records)}")
    shapes = {("greedy" in r, len(r.get("samples", []))) for r in rebuilt}
    if len(shapes) > 1:
        problems.append(
            f"{where}: its records are not alike (greedy completion and samples per problem: {sorted(shapes)})"
        )
        return
    sampled = row.get("sampled") if isinstance(row.get("sampled"), dict) else {}
    ks = sorted(int(k[5:]) for k in sampled if k.startswith("pass@") and k[5:].isdigit())
    computed = (
        summarize(rebuilt, ks=ks, temperature=sampled.get("temperature", 1.0), top_p=sampled.get("top_p", 1.0))
        if rebuilt
        else {}
    )
    for metric in METRICS:
        claimed = row.get(metric)
        if not isinstance(claimed, dict):
            continue
        got = computed.get(metric)
        if got is None:
            problems.append(
                f"{where}: eval.jsonl has {metric} accuracies, but its records hold no {metric} completions"
            )
            continue
        for key in ("accuracy", *(k for k in claimed if k.startswith(_RATES))):
            if not agrees(claimed.get(key), got.get(key)):
                problems.append(
                    f"{where}: eval.jsonl says {metric} {key} {_number(claimed.get(key))}, its records "
                    f"regrade to {_number(got.get(key))}"
                )
                break


def _check_samples(run: RunFiles, load: Callable[[], Split | str], found: Findings) -> int:
    """Each logged training rollout's reward and reason against regrading it; returns the timeouts."""
    rows = [row for row in run.samples if isinstance(row.get("completion"), str)]
    if not rows:
        return 0
    if any(number(row.get("reward")) is None or not isinstance(row.get("reason"), str) for row in rows):
        found.unchecked.append("samples.jsonl logs rollouts without their reward and reason, so they are not regraded")
        return 0
    loaded = load()  # the training split: loaded only for runs that logged rollouts
    if isinstance(loaded, str):
        found.unchecked.append(f"samples.jsonl: {loaded}")
        return 0
    task, by_id = loaded
    unknown = [row for row in rows if str(row.get("id")) not in by_id]
    if unknown:
        found.problems.append(
            f"{run.name}: samples.jsonl logs {len(unknown)} rollout(s) of problems that are not in "
            f"the training split (first: {unknown[0].get('id')!r})"
        )
        return 0
    grades = grade(task, [(by_id[str(row["id"])], row["completion"]) for row in rows])
    timeouts = sum("timeout" in (g.reason, row["reason"]) for row, g in zip(rows, grades))
    wrong = [
        (row, g)
        for row, g in zip(rows, grades)
        if "timeout" not in (g.reason, row["reason"]) and (row["reward"] != g.reward or row["reason"] != g.reason)
    ]
    if wrong:
        row, g = wrong[0]
        found.problems.append(
            f"{run.name}: samples.jsonl: {len(wrong)} of {len(rows)} logged rollouts' rewards differ "
            f"from regrading (first: step {row.get('step')!r}, problem {row.get('id')!r}: stored "
            f"{row['reward']} ({row['reason']}), regraded {g.reward} ({g.reason}))"
        )
    return timeouts


def grade(task: Task, pairs: Sequence[tuple[Example, str]]) -> list[Grade]:
    """``task.grade_many`` over the distinct (problem, completion) pairs: samples repeat, grading them once is enough."""
    unique = list(dict.fromkeys((example.id, completion) for example, completion in pairs))
    examples = {example.id: example for example, _ in pairs}
    grades = dict(zip(unique, task.grade_many([c for _, c in unique], [examples[i] for i, _ in unique])))
    return [grades[(example.id, completion)] for example, completion in pairs]


def _items(record: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("greedy", record["greedy"])] if "greedy" in record else []
    samples = record.get("samples")
    return out + [(f"sample {i}", s) for i, s in enumerate(samples)] if isinstance(samples, list) else out


def _stored(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "reward": number(item.get("reward")) or 0.0,
        "correct": correct(item),
        "reason": item.get("reason"),
        "extracted": item.get("extracted"),
    }


def _fields(g: Grade) -> dict[str, Any]:
    return {"reward": g.reward, "correct": g.correct, "reason": g.reason, "extracted": g.extracted}


def _differs(item: dict[str, Any], g: Grade) -> bool:
    """The stored grade says something regrading does not (fields an older record lacks are not compared)."""
    reward, reason = item.get("reward"), item.get("reason")
    return (
        correct(item) != g.correct
        or (reward is not None and number(reward) != g.reward)
        or (isinstance(reason, str) and reason != g.reason)
    )


def _grade_text(item: dict[str, Any]) -> str:
    return str(item.get("reason") or ("correct" if correct(item) else "wrong"))


def _number(value: Any) -> str:
    return f"{value:.4f}" if number(value) is not None else repr(value)


def _join(points: list[Any]) -> str:
    return ", ".join(str(p) for p in points)


def _line(exc: BaseException) -> str:
    return str(exc).strip().split("\n")[0] or type(exc).__name__
