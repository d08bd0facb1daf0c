"""The report's header sentences (method, protocol, audit), shared by the markdown and the HTML page."""

from __future__ import annotations

from typing import Any

from rlbench.core.provenance import is_dirty
from rlbench.study.report import stats
from rlbench.study.variants import CONTROL_SUFFIX, POSITIVE_SUFFIX

Fact = tuple[str, str]


def method_facts(data: dict[str, Any]) -> list[Fact]:
    """How the intervals and the paired test are computed, with the numbers this report used."""
    iv, test = data["intervals"], data["paired_test"]
    level = iv["level"]
    seeds = max((len(t["seeds"]) for t in data["tasks"]), default=0)
    if iv["method"] == "t":
        ci = (
            f"{level:.0%} Student-t interval over seeds: mean ± t(n−1) · s/√n, s the sample standard deviation "
            f"of the per-seed run scores, cut to the possible range 0–100%."
        )
        if seeds >= 2:
            mult = stats.t_quantile(0.5 + level / 2, seeds - 1)
            wide = ", so the interval is wide" if seeds <= 5 else ""
            ci += (
                f" With n = {seeds} seeds the multiplier is {mult:.2f}{wide}; it is approximate, "
                f"since it assumes a roughly normal seed-to-seed spread that {seeds} points cannot check."
            )
    else:
        ci = f"{level:.0%} percentile bootstrap over seeds, {iv['resamples']:,} resamples, RNG seed {iv['rng_seed']}."
        if seeds >= 2:
            ci += (
                f" With n = {seeds} seeds it is approximate and tends to be too narrow (few distinct resamples); "
                "the Student-t interval (--ci t) is the safer choice for so few seeds."
            )
    paired = (
        f"the seed is the unit of replication. Δ = row − reference, the mean over shared seeds of the "
        f"difference of the two runs' scores; two-sided paired t-test over seeds (n − 1 degrees of freedom), "
        f"p-values Holm-adjusted across the rows tested against the reference, α = {test['alpha']}. Ranks come "
        f"from the same test between every pair of rows, Holm-adjusted over all pairs, so the top group holds "
        f"its error rate although the data choose the leader. With 6 or "
        f"more seeds the exact sign-flip permutation test over seeds is shown alongside (with fewer it cannot "
        f"reach p below 0.05). Problems are not resampled: they are shared by every run, and a test that treats "
        f"them as replicates of an algorithm rejects true nulls far too often (docs/report.md)."
    )
    return [
        ("Report command", f"`{data['report_command']}`"),
        ("Primary metric", primary_metric(data["metric"])),
        ("Confidence intervals", ci),
        ("Test", paired),
    ]


def primary_metric(metric: str) -> str:
    """What ranks, and why that one."""
    what = {
        "greedy": "greedy accuracy (pass@1 of the argmax completion)",
        "sampled": "sampled accuracy (mean@k: the mean over k completions per problem at the training temperature)",
    }[metric]
    why = {
        "greedy": "the estimand of the EM-PG paper",
        "sampled": "the tiny lab ranks by it because its seed-to-seed noise is the smallest of the candidate "
        "scores measured on validation runs (docs/tiny-lab.md); the paper's greedy estimand is beside "
        "it with its own detectable difference",
    }[metric]
    return (
        f"{what}: each run's score is the mean of its last K evaluations (K per task below); {why}. It ranks, "
        "is tested and is plotted"
    )


def task_facts(task: dict[str, Any]) -> list[Fact]:
    budget = ", ".join(f"{k}={v}" for k, v in (task["budget"] or {}).items() if v is not None) or "–"
    facts = [
        ("Comparison command", f"`{task['command']}`" if task["command"] else "– (not in manifest.json)"),
        ("Folder", f"`{task['dir']}`"),
        ("Task / model", f"{task['task']} / {task['model']}"),
        ("Budget per run", budget),
        ("Seeds", ", ".join(str(s) for s in task["seeds"])),
        ("Evaluation", eval_protocol(task["eval"])),
        ("Tuning", tuning_line(task.get("tuning"))),
        ("Options that differ between rows", differing_options(task["row_options"])),
        ("Reference", task["reference"]),
        ("Verdict", task["verdicts"]["statement"]),
        ("Power", power_line(task["verdicts"]["power"], task["metric"], task["verdicts"].get("power_by_metric"))),
        ("Noise floor", noise_floor(task)),
        ("Positive control", positive_control(task)),
        ("Learning", learning_line(task)),
        ("Code version", code_line(task)),
        ("Package versions", packages_line(task)),
        ("Audit", audit_line(task["audit"])),
    ]
    if task["extra_run_folders"]:
        facts.append(("Not in the manifest (ignored)", ", ".join(task["extra_run_folders"])))
    return facts


def differing_options(rows: list[dict[str, Any]]) -> str:
    """Options that several rows' algorithms share by name but run at different values (a loss aggregation, a
    number of minibatches): a difference between the rows that is not the algorithm's idea itself."""
    if not rows:
        return "– (manifest.json lists no row options)"
    ranked = [r for r in rows if not r["control"]]
    keys = dict.fromkeys(k for r in ranked for k in r["options"])
    parts = []
    for key in keys:
        holders = [r for r in ranked if key in r["options"]]
        values: dict[str, list[str]] = {}
        for r in holders:
            values.setdefault(str(r["options"][key]), []).append(r["label"])
        if len(holders) >= 2 and len(values) >= 2:
            parts.append(f"{key} (" + "; ".join(f"{v}: {', '.join(labels)}" for v, labels in values.items()) + ")")
    if not parts:
        return "none: every option the rows share has one value"
    return (
        "; ".join(parts) + ". Each is its algorithm's default or its row's setting; a gap between rows may "
        "come from these as well as from the algorithms (set one value for every row with --set algo.KEY=VALUE)"
    )


def tuning_line(tuning: dict[str, Any] | None) -> str:
    """How each algorithm's settings were chosen (``rlbench tune``), or that the rows share the config's."""
    if not tuning:
        return "none: every row runs the shared config with its algorithm's defaults"
    grid = "; ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in (tuning.get("grid") or {}).items())
    budget = ", ".join(f"{k}={v}" for k, v in (tuning.get("budget_per_run") or {}).items()) or "–"
    seeds = tuning.get("seeds") or []
    chosen = "; ".join(
        f"{algo} " + ", ".join(f"{k}={v}" for k, v in (s or {}).items())
        for algo, s in (tuning.get("tuned") or {}).items()
    )
    return (
        f"each algorithm tuned with equal effort on the {tuning.get('split', '?')} split (never test): grid {grid}, "
        f"{tuning.get('trials_per_algorithm', '?')} trials per algorithm x {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}), {budget} per run, scored by the {tuning.get('metric', '?')} run score; "
        f"chosen: {chosen}"
    )


def eval_protocol(ev: dict[str, Any]) -> str:
    parts = [f"{ev.get('problems') or 'all'} problems of the '{ev.get('split', '?')}' split"]
    if ev.get("greedy", True):
        parts.append("greedy decoding (pass@1)")
    samples = ev.get("samples")
    if samples:
        parts.append(
            f"{samples} sampled completion(s) per problem at temperature {ev.get('temperature')}, "
            f"top-p {ev.get('top_p')} (mean accuracy over samples)"
        )
    if ev.get("max_new_tokens"):
        parts.append(f"at most {ev['max_new_tokens']} new tokens")
    if ev.get("every"):
        parts.append(f"every {ev['every']} optimiser steps, before training and at the end of the budget")
    elif ev.get("points"):
        parts.append(f"{ev['points']} evaluation points spread over the budget plus one before training")
    k = ev.get("final_mean_of") or 1
    parts.append("a run scores the mean of its last " + (f"{k} evaluations" if k > 1 else "evaluation (the final one)"))
    return "; ".join(parts)


def power_line(power: dict[str, Any], metric: str = "", by_metric: dict[str, dict[str, Any]] | None = None) -> str:
    """What the seeds run can resolve, from the observed seed-to-seed spread of the paired differences: the
    minimum detectable difference with its 95% interval, and the same for every other metric shown."""
    if power["sd"] is None or power["mdd"] is None:
        return "not enough seeds to estimate the seed-to-seed spread (2 or more shared seeds needed)"
    if power["sd"] == 0:
        return (
            "every row's per-seed differences vs the reference are the same in every seed (SD 0), so the "
            "seed-to-seed noise cannot be estimated from them; run more seeds, or add --control"
        )
    needed = power["seeds_for_effect"]
    text = (
        f"the per-seed differences vs the reference have a pooled SD of {100 * power['sd']:.2f} pp, so with "
        f"{power['seeds']} seeds the minimum detectable difference (two-sided paired t, α = {power['alpha']}, "
        f"{power['power']:.0%} power, exact noncentral t) is {_mdd(power)}; detecting "
        f"{100 * power['effect']:.0f} pp would take {needed if needed is not None else 'more than 10,000'} seeds"
    )
    others = [
        f"{m} {_mdd(p)} (SD {100 * p['sd']:.2f} pp)"
        for m, p in (by_metric or {}).items()
        if m != metric and p.get("mdd") is not None
    ]
    if others:
        text += "; on the other metrics: " + ", ".join(others)
    return text


def _mdd(power: dict[str, Any]) -> str:
    """The MDE in pp with its 95% interval (from the SD's chi-square interval on its degrees of freedom)."""
    text = f"{100 * power['mdd']:.1f} pp"
    if power.get("mdd_ci"):
        lo, hi = power["mdd_ci"]
        text += f" [95% CI {100 * lo:.1f}–{100 * hi:.1f}, SD on {power['sd_dof']} degrees of freedom]"
    return text


def noise_floor(task: dict[str, Any]) -> str:
    """The A/A control's gap to the row it copies, with its interval, or where the noise estimate comes from."""
    found = [(label, t) for label, t in task["verdicts"]["control"].items() if t and label.endswith(CONTROL_SUFFIX)]
    if not found:
        return (
            "no A/A control in this comparison (`rlbench compare --control` adds one); the detectable difference "
            "above is estimated from the seed-to-seed spread of the rows themselves"
        )
    parts = []
    for label, t in found:
        text = f"{label} − {t['copy_of']} = {100 * t['delta']:+.1f} pp over {t['n']} seeds"
        if t["lo"] is not None:
            text += f", 95% CI [{100 * t['lo']:+.1f}, {100 * t['hi']:+.1f}] pp"
        if t.get("p_holm") is not None:
            text += f" (Holm p = {t['p_holm']:.3g}: {'FOUND, a false alarm' if t['found'] else 'not found'})"
        parts.append(text)
    return (
        "; ".join(parts) + ": two copies of one algorithm, one chance draw apart. A gap between rows inside this "
        "interval is what chance alone can produce"
    )


def positive_control(task: dict[str, Any]) -> str:
    """The positive control's gap to the row it copies, and whether the comparison found it."""
    found = [(label, t) for label, t in task["verdicts"]["control"].items() if t and label.endswith(POSITIVE_SUFFIX)]
    if not found:
        return (
            "no positive control in this comparison (`rlbench compare --positive-control 0.25` adds one: the "
            "reference at a quarter of its learning rate, a handicap it must detect)"
        )
    scales = {r["label"]: r.get("lr_scale") for r in task["row_options"]}
    parts = []
    for label, t in found:
        scale = scales.get(label)
        handicap = f" (learning rate x {scale:g})" if scale else ""
        text = f"{label}{handicap} − {t['copy_of']} = {100 * t['delta']:+.1f} pp over {t['n']} seeds"
        if t["lo"] is not None:
            text += f", 95% CI [{100 * t['lo']:+.1f}, {100 * t['hi']:+.1f}] pp"
        if t.get("p_holm") is not None:
            text += f", Holm p = {t['p_holm']:.3g}: " + (
                "found" if t["found"] else "NOT found: this comparison lacks the power it claims"
            )
        parts.append(text)
    return "; ".join(parts)


def code_line(task: dict[str, Any]) -> str:
    """The commit the comparison ran from, flagged when the tree had uncommitted changes (named by their diff's hash)."""
    version = str(task["code_version"] or "unknown")
    text = version + (f", created {task['created']}" if task["created"] else "")
    if is_dirty(version):
        text += (
            " — UNCOMMITTED CHANGES: the runs ran from the commit plus a diff (its sha256 prefix after 'dirty.'), "
            "so the commit alone does not reproduce them"
        )
    return text


def packages_line(task: dict[str, Any]) -> str:
    """The versions the runs ran with, and whether they differ between runs (pooled folders, other machines)."""
    if task.get("package_differences"):
        return "DIFFER between runs: " + "; ".join(task["package_differences"])
    packages = task.get("packages") or {}
    listed = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    return f"the same in every run that recorded them{': ' + listed if listed else ''}"


def learning_line(task: dict[str, Any]) -> str:
    """Did every counted run end above where it started (its evaluation before training) on the primary metric?"""
    below = task["not_above_start"]
    if not below:
        return f"every completed run's {task['metric']} score is above its evaluation before training"
    return (
        f"{len(below)} completed run(s) did not end above their evaluation before training on "
        f"{task['metric']}: {', '.join(below)}"
    )


def audit_line(audit: dict[str, Any]) -> str:
    if not audit["present"]:
        return "no audit.json (the comparison has not finished, or was not run by `rlbench compare`)"
    if audit["matched"]:
        return (
            "matched (recomputed from the run files): every run has its row's algorithm and options and the same "
            "other settings, initial weights and evaluation set; per seed the same prompt token stream; each "
            "spent its budget exactly as the budget rule says; and every stored grade and accuracy is what "
            "regrading its completions gives"
            + (
                f" ({len(audit['unchecked'])} check(s) the files did not allow, listed below)"
                if audit.get("unchecked")
                else ""
            )
        )
    return (
        f"NOT matched: {len(audit['problems'])} problem(s), listed below; flagged runs carry ⚠ and are left out "
        "of every number unless the report is built with --include-flagged"
    )
