"""The report's header sentences (method, protocol, audit), shared by the markdown and the HTML page."""
from __future__ import annotations

from typing import Any

from rlbench import stats

Fact = tuple[str, str]


def method_facts(data: dict[str, Any]) -> list[Fact]:
    """How the intervals and the paired test are computed, with the numbers this report used."""
    iv, test = data["intervals"], data["paired_test"]
    level = iv["level"]
    seeds = max((len(t["seeds"]) for t in data["tasks"]), default=0)
    if iv["method"] == "t":
        ci = (f"{level:.0%} Student-t interval over seeds: mean ± t(n−1) · s/√n, s the sample standard deviation "
              f"of the per-seed final accuracies, cut to the possible range 0–100%.")
        if seeds >= 2:
            mult = stats.t_quantile(0.5 + level / 2, seeds - 1)
            ci += (f" With n = {seeds} seeds the multiplier is {mult:.2f}, so the interval is wide; it is approximate, "
                   f"since it assumes a roughly normal seed-to-seed spread that {seeds} points cannot check.")
    else:
        ci = (f"{level:.0%} percentile bootstrap over seeds, {iv['resamples']:,} resamples, RNG seed {iv['rng_seed']}.")
        if seeds >= 2:
            ci += (f" With n = {seeds} seeds it is approximate and tends to be too narrow (few distinct resamples); "
                   "the Student-t interval (--ci t) is the safer choice for so few seeds.")
    paired = (f"Δ = algorithm − reference on the same held-out problem under the same seed. Paired bootstrap, "
              f"{test['resamples']:,} resamples, RNG seed {test['rng_seed']}: each resample draws seeds and, "
              f"independently, problem ids with replacement; Δ's interval is the {level:.0%} percentile interval, and "
              f"the two-sided p = (1 + #{{|Δ* − Δ| ≥ |Δ|}}) / (resamples + 1). No correction for multiple comparisons.")
    return [
        ("Report command", f"`{data['report_command']}`"),
        ("Primary metric", f"final {data['metric']} accuracy (ranking, Δ and plots)"),
        ("Confidence intervals", ci),
        ("Paired test", paired),
    ]


def task_facts(task: dict[str, Any]) -> list[Fact]:
    budget = ", ".join(f"{k}={v}" for k, v in (task["budget"] or {}).items() if v is not None) or "–"
    facts = [
        ("Comparison command", f"`{task['command']}`" if task["command"] else "– (not in manifest.json)"),
        ("Folder", f"`{task['dir']}`"),
        ("Task / model", f"{task['task']} / {task['model']}"),
        ("Budget per run", budget),
        ("Seeds", ", ".join(str(s) for s in task["seeds"])),
        ("Evaluation", eval_protocol(task["eval"])),
        ("Reference", task["reference"]),
        ("Code version", str(task["code_version"] or "unknown") + (f", created {task['created']}" if task["created"] else "")),
        ("Audit", audit_line(task["audit"])),
    ]
    if task["extra_run_folders"]:
        facts.append(("Not in the manifest (ignored)", ", ".join(task["extra_run_folders"])))
    return facts


def eval_protocol(ev: dict[str, Any]) -> str:
    parts = [f"{ev.get('problems') or 'all'} problems of the '{ev.get('split', '?')}' split"]
    if ev.get("greedy", True):
        parts.append("greedy decoding (pass@1)")
    samples = ev.get("samples")
    if samples:
        parts.append(f"{samples} sampled completion(s) per problem at temperature {ev.get('temperature')}, "
                     f"top-p {ev.get('top_p')} (mean accuracy over samples)")
    if ev.get("max_new_tokens"):
        parts.append(f"at most {ev['max_new_tokens']} new tokens")
    if ev.get("points"):
        parts.append(f"{ev['points']} evaluation points spread over the budget plus one before training")
    return "; ".join(parts)


def audit_line(audit: dict[str, Any]) -> str:
    if not audit["present"]:
        return "no audit.json (the comparison has not finished, or was not run by `rlbench compare`)"
    if audit["matched"]:
        return "matched: every run consumed the same budget (to within one batch) and saw the same prompts for its seed"
    return f"NOT matched: {len(audit['problems'])} problem(s), listed below; flagged runs carry ⚠"
