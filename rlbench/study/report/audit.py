"""The audit of a comparison, recomputed from the run folders themselves: were the runs matched, are their numbers
what their files say, and which run is not?

Each run folder holds ``config.yaml``, ``fingerprint.json`` (settings, initial-weights hash, evaluation set; written
by the trainer), ``metrics.jsonl`` (per step: cumulative usage and the hash of the step's prompt token ids),
``eval.jsonl``, every evaluation's per-problem records, ``samples.jsonl`` and ``summary.json`` (with the sha256 of
every other file at the run's finish). The audit checks, and blames the run that breaks it:

* each run against itself (:mod:`rlbench.study.report.audit_run`): its files agree with each other, its steps are 1..N with
  every usage increment what one batch produces, and it stopped exactly where the budget rule says;
* its files against each other (:mod:`rlbench.study.report.crosscheck`): each evaluation's usage is metrics.jsonl's at its
  step, summary.json's numbers are eval.jsonl's, and no file changed after the run finished;
* its numbers against its raw data (:mod:`rlbench.study.report.regrade`): every stored grade against regrading its
  completion, every evaluation's accuracies against its records, every logged rollout's reward;
* each run against the manifest: its algorithm and options are its row's, its seed its folder's, the shared
  settings those the manifest names;
* runs against each other: the same settings, initial weights and evaluation set, and per seed the same prompt
  stream (for ``tokens``/``seconds`` budgets, where runs legitimately stop at different steps: prefixes of one).

Where runs disagree, the value most runs share (or the manifest's) is taken as right and the others are blamed. A
manifest statement that every run it governs (two or more) contradicts is the manifest's error: the audit raises a
:class:`ReportInputError` naming manifest.json, rather than flagging every run. What the files do not allow to be
checked (older run folders) is listed as ``unchecked``; it flags nothing, and it is never passed over in silence.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rlbench.core.configure import first_difference, value_at
from rlbench.core.results import MANIFEST
from rlbench.engine.budget import UNITS
from rlbench.study.report.audit_run import Findings, check_own, check_settings, facts, row_settings
from rlbench.study.report.crosscheck import check_evals, check_files, check_summary
from rlbench.study.report.inputs import ComparisonFiles, ReportInputError, RunFiles
from rlbench.study.report.regrade import Regrader, regrade_run
from rlbench.study.report.runs import usage


def audit_comparison(comp: ComparisonFiles) -> dict[str, Any]:
    rows = {r.get("label"): r for r in comp.manifest.get("rows") or [] if isinstance(r, dict)}
    budget = comp.manifest.get("budget") if isinstance(comp.manifest.get("budget"), dict) else {}
    found = {run.name: Findings() for run in comp.runs}
    settings = {label: row_settings(row) for label, row in rows.items()}
    varied = sorted({path for own in settings.values() for path in own})  # settings some row sets for itself
    known = {run.name: facts(run, found[run.name], varied) for run in comp.runs}
    regrader = Regrader()
    for run in comp.runs:
        f, mine = known[run.name], found[run.name]
        if f is None:
            continue
        check_own(run, f, rows.get(run.algo), budget, comp.manifest, mine)
        check_settings(run, f["config"], settings.get(run.algo, {}), mine)
        check_evals(run, mine.problems)
        check_summary(run, mine.problems)
        check_files(run, mine.problems, mine.unchecked)
        regrade_run(run, f["config"], comp.final_mean_of, regrader, mine)
    present = [run for run in comp.runs if known[run.name] is not None]
    _blame_manifest(comp, present, found)
    blame = {name: f.problems for name, f in found.items()}
    for field in ("shared config", "init_weights", "eval_set"):
        _majority(field, {run.name: known[run.name][field] for run in present}, blame)
    for path in varied:  # the rows that leave a setting alone share its value
        _majority(
            ".".join(path),
            {
                run.name: value_at(known[run.name]["config"], path)
                for run in present
                if path not in settings.get(run.algo, {})
            },
            blame,
        )
    for seed in sorted({run.seed for run in present}):
        chains = {run.name: known[run.name]["prompts"] for run in present if run.seed == seed}
        _prompt_streams(seed, chains, budget, blame)
    problems = [p for run in comp.runs for p in blame[run.name]]
    runs = {
        run.name: {
            "algo": run.algo,
            "seed": run.seed,
            "status": run.status,
            **{k: usage(run).get(k) for k in UNITS},
            "matched": not blame[run.name],
            "problems": blame[run.name],
            "unchecked": found[run.name].unchecked,
        }
        for run in comp.runs
    }
    return {"matched": not problems, "runs": runs, "problems": problems, "unchecked": _unchecked(comp.runs, found)}


def _blame_manifest(comp: ComparisonFiles, present: list[RunFiles], found: dict[str, Findings]) -> None:
    """A manifest statement every run it governs contradicts is the manifest's error (one line, raised); any other
    contradiction is its run's problem."""
    against: dict[tuple[str, str | None], list[str]] = {}
    for run in present:
        for key in found[run.name].claims:
            against.setdefault(key, []).append(run.name)
    wrong = []
    for (statement, row), names in against.items():
        governed = [run.name for run in present if row is None or run.algo == row]
        if len(governed) >= 2 and set(names) >= set(governed):
            example = found[names[0]].claims[(statement, row)]
            wrong.append(f"{statement} is contradicted by all {len(governed)} runs it governs (e.g. {example})")
    if wrong:
        raise ReportInputError(f"{comp.path / MANIFEST}: " + "; ".join(wrong) + "; the manifest is wrong, not the runs")
    for run in present:
        found[run.name].problems.extend(found[run.name].claims.values())


def _unchecked(runs: list[RunFiles], found: dict[str, Findings]) -> list[str]:
    """Each check that some runs' files did not allow, once, with the runs it concerns."""
    by_note: dict[str, list[str]] = {}
    for run in runs:
        for note in found[run.name].unchecked:
            by_note.setdefault(note, []).append(run.name)
    return [
        f"{note} ({'all ' + str(len(names)) + ' runs' if len(names) == len(runs) > 1 else ', '.join(names)})"
        for note, names in by_note.items()
    ]


def _majority(field: str, values: dict[str, Any], blame: dict[str, list[str]]) -> None:
    """Blame the runs whose ``field`` differs from the value most runs share (all of them on a tie)."""
    if len(values) < 2:
        return
    keys = {name: json.dumps(v, sort_keys=True) for name, v in values.items()}
    counts = Counter(keys.values()).most_common()
    top = counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None
    for name, key in keys.items():
        if key != top and len(counts) > 1:
            other = next(n for n, k in keys.items() if k != key)
            where = first_difference(values[name], values[other]) if field == "shared config" else field
            blame[name].append(
                f"{name}: {where} differs from the other runs'"
                if top
                else f"{name}: {where} differs ({len(counts)} different values, no majority)"
            )


def _prompt_streams(
    seed: int, chains: dict[str, list[Any]], budget: dict[str, Any], blame: dict[str, list[str]]
) -> None:
    """Per seed, one prompt stream: equal for samples/steps budgets, prefixes of one for tokens/seconds."""
    exact = budget.get("tokens") is None and budget.get("seconds") is None

    def fits(a: list[Any], b: list[Any]) -> bool:
        return a == b if exact else a[: len(b)] == b[: len(a)]

    support = {n: sum(fits(c, other) for other in chains.values()) for n, c in chains.items()}
    if not support or min(support.values()) == len(chains):
        return
    best = max(support.values())
    leaders = [n for n in chains if support[n] == best]
    agreed = all(fits(chains[a], chains[b]) for a in leaders for b in leaders)  # else no stream has a majority
    for name, chain in chains.items():
        if agreed and fits(chain, chains[leaders[0]]):
            continue
        other = chains[leaders[0]] if name != leaders[0] else chains[next(n for n in chains if n != name)]
        step = next((i + 1 for i, (a, b) in enumerate(zip(chain, other)) if a != b), None)
        blame[name].append(
            f"{name}: its prompts differ from the other seed-{seed} runs'"
            + (f" from step {step} on" if step else f" ({len(chain)} steps, not {len(other)})")
            + ("" if agreed else " (no stream has a majority)")
        )
