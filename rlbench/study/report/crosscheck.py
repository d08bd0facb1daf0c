"""Cross-file checks of one run: do its files tell one story?

* each evaluation in ``eval.jsonl`` is at a step ``metrics.jsonl`` logged, with that step's usage (an evaluation
  moved from another run differs there: two runs never spend the same tokens at every step), and the last one is
  at the run's last step;
* ``summary.json``'s final accuracies and score are those of ``eval.jsonl``;
* every file ``summary.json`` hashed when the run finished still has that hash (:mod:`rlbench.engine.file_hashes`).
  The model's own files are not re-hashed: the report never reads them and published results leave them out.
"""

from __future__ import annotations

import math
from typing import Any

from rlbench.core.results import CONFIG, EVAL_RECORDS, EVALS, FINGERPRINT, RECORDS_DIR, SAMPLES
from rlbench.core.results import METRICS as METRICS_FILE
from rlbench.engine.budget import UNITS
from rlbench.engine.file_hashes import file_hashes, is_weights
from rlbench.study.report.inputs import RunFiles
from rlbench.study.report.runs import METRICS, dig, number, run_score

COUNTERS = ("prompts", *(u for u in UNITS if u != "seconds"))  # the loop clock runs on between two rows
READ_BY_REPORT = (CONFIG, FINGERPRINT, METRICS_FILE, EVALS, SAMPLES, EVAL_RECORDS)


def check_evals(run: RunFiles, problems: list[str]) -> None:
    """Each evaluation's usage is metrics.jsonl's at its step; points run 0, 1, ...; the last is at the last step."""
    logged = {row.get("step"): row.get("usage") or {} for row in run.metrics}
    logged[0] = dict.fromkeys(COUNTERS, 0)
    for index, row in enumerate(run.evals):
        point, step, used = row.get("point"), row.get("step"), row.get("usage") or {}
        if point != index:
            problems.append(f"{run.name}: eval.jsonl line {index + 1} is point {point!r}, not {index}")
            return
        if step not in logged:
            problems.append(
                f"{run.name}: eval.jsonl point {point} is at step {step!r}, which metrics.jsonl does not have"
            )
            return
        for key in COUNTERS:
            if used.get(key) != logged[step].get(key, 0):
                problems.append(
                    f"{run.name}: eval.jsonl point {point} (step {step}) says {key} = {used.get(key)!r}, "
                    f"but metrics.jsonl says {logged[step].get(key, 0)!r} at that step"
                )
                return
    last = run.metrics[-1].get("step") if run.metrics else 0
    if run.evals and run.evals[-1].get("step") != last:
        problems.append(
            f"{run.name}: the final evaluation is at step {run.evals[-1].get('step')!r}, but the run's "
            f"last step is {last}"
        )


def check_summary(run: RunFiles, problems: list[str]) -> None:
    """summary.json's final accuracies and score (where it has them) are those eval.jsonl gives."""
    summary, last = run.summary or {}, run.evals[-1] if run.evals else {}
    steps = summary.get("score_steps")
    if isinstance(steps, list) and steps != [row.get("step") for row in run.evals[1:][-len(steps) :]]:
        problems.append(
            f"{run.name}: summary.json scores the evaluations at steps {steps}, which are not eval.jsonl's "
            f"last {len(steps)}"
        )
        return
    for metric in METRICS:
        said = [("final", dig(summary, "final", metric), number(dig(last, metric, "accuracy")))]
        if isinstance(steps, list) and steps:
            said.append(("score", dig(summary, "score", metric), run_score(run, metric, len(steps))))
        for what, claimed, computed in said:
            if claimed is not None and not agrees(claimed, computed):
                problems.append(
                    f"{run.name}: summary.json says {what} {metric} accuracy {claimed!r}, eval.jsonl gives {computed!r}"
                )


def check_files(run: RunFiles, problems: list[str], unchecked: list[str]) -> None:
    """Every file hashed at the run's finish is unchanged; none the report reads was added since."""
    recorded = dig(run.summary, "files")
    if not isinstance(recorded, dict):
        unchecked.append(
            "summary.json holds no file hashes (written before runs recorded them), so later edits to "
            "the run's files are found only by the other checks"
        )
        return
    present = file_hashes(run.path, weights=False)
    for name in sorted(recorded):
        if is_weights(name):
            continue
        if name not in present:
            problems.append(f"{run.name}: {name} is missing (summary.json hashed it when the run finished)")
        elif present[name] != recorded[name]:
            problems.append(
                f"{run.name}: {name} changed after the run finished (its sha256 is not the one summary.json recorded)"
            )
    for name in sorted(set(present) - set(recorded)):
        if name.split("/", 1)[0] in (*READ_BY_REPORT, RECORDS_DIR):
            problems.append(f"{run.name}: {name} was added after the run finished (summary.json did not hash it)")


def agrees(claimed: Any, computed: Any) -> bool:
    """Two numbers equal up to the last bits that summing the same floats in another order can move."""
    x, y = number(claimed), number(computed)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15)
