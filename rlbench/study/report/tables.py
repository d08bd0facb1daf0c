"""The report's tables as plain rows of text, built once from the report dict and rendered as markdown or HTML.

Over 400 lines on purpose: one function per table (leaderboard, controls, options, cost, behaviour, examples, critic
fit, runs, summary) that share the cell formatters at the top; split, each reader would look in two files for why a
cell reads as it does, and the markdown and HTML writers would import from both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlbench.engine.budget import UNITS
from rlbench.study.report.behaviours import BEHAVIOURS
from rlbench.study.report.runs import STAGES

FLAG = "⚠"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    pre: tuple[int, ...] = ()  # columns of verbatim text (prompts, completions): shown as written, wrapped


# ------------------------------------------------------------------------------------------------ formatting


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def interval(cell: dict[str, Any] | None) -> str:
    """Accuracy as percent: ``41.2 [38.0, 44.4]``; a single seed has no interval and says so."""
    if not cell:
        return "–"
    if cell["lo"] is None:
        return f"{pct(cell['mean'])} (n={cell['n']}, no CI)"
    return f"{pct(cell['mean'])} [{pct(cell['lo'])}, {pct(cell['hi'])}]"


def delta(cell: dict[str, Any] | None) -> str:
    """Δ in percentage points, with its interval when there is one."""
    if not cell:
        return "–"
    text = f"{100 * cell['delta']:+.1f}"
    if cell["lo"] is not None:
        text += f" [{100 * cell['lo']:+.1f}, {100 * cell['hi']:+.1f}]"
    return text


def p_value(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def algo_name(row: dict[str, Any], reference: str) -> str:
    name = row["algo"] + (" (ref)" if row["algo"] == reference else "")
    return name + (f" {FLAG}" if row["flagged"] else "")


def score_header(task: dict[str, Any]) -> str:
    k = task["final_mean_of"]
    return "final" if k == 1 else f"mean of last {k} evals"


# ------------------------------------------------------------------------------------------------ tables


def leaderboard(task: dict[str, Any], metric: str, level: float) -> Table:
    ref = task["reference"]
    score = score_header(task)
    columns = [
        "#",
        "algorithm",
        "seeds done",
        f"greedy % ({score})",
        f"sampled % ({score})",
        f"Δ {metric} vs {ref} (pp)",
        "p (Holm)",
        "p (sign-flip)",
        "length",
        "length correct",
        "length wrong",
        "truncated %",
    ]
    rows = []
    for r in (r for r in task["algorithms"] if not r["control"]):
        t = r["test"]
        length = r["length"][metric]
        rows.append(
            [
                r["rank"] or "–",
                algo_name(r, ref),
                f"{r['complete']}/{r['runs']}",
                interval(r["accuracy"]["greedy"]),
                interval(r["accuracy"]["sampled"]),
                "reference" if r["algo"] == ref else delta(t),
                p_value(t.get("p_holm")) if t else "–",
                p_value(t.get("p_perm")) if t else "–",
                num(length["length_mean"]),
                num(length["length_correct"]),
                num(length["length_wrong"]),
                pct(length["truncated_frac"]),
            ]
        )
    notes = [
        f"Scores: each run's {metric} accuracy averaged over its last {task['final_mean_of']} evaluation(s), "
        f"then mean over completed seeds [{level:.0%} Student-t CI over seeds], in %.",
        f"#: ranks in score order; a row's rank is one more than the number of rows found better than it by "
        f"paired t-tests over seeds between every pair of rows, Holm-corrected over all pairs at α = "
        f"{task['verdicts']['alpha']} (rows that share a rank, such as 1=, cannot be told apart).",
        f"Δ = row − {ref}, paired on seeds [{level:.0%} paired-t CI]; p (Holm): paired t over seeds, "
        "Holm-adjusted across the rows tested; p (sign-flip): exact permutation over seeds, shown where it can "
        "reach p below 0.05 (6 or more seeds).",
        f"Lengths: mean tokens per {metric} response in the final evaluation, averaged over seeds.",
    ]
    if any(r["flagged"] for r in task["algorithms"]):
        notes.append(f"{FLAG} at least one run of this algorithm is flagged by the audit (see Runs and Audit).")
    incomplete = [i["name"] + f" ({i['status']})" for r in task["algorithms"] for i in r["incomplete"]]
    if incomplete:
        notes.append("Incomplete runs, left out of every number above: " + ", ".join(incomplete) + ".")
    return Table("Leaderboard", columns, rows, notes)


def control(task: dict[str, Any], level: float) -> Table | None:
    """The control rows, each against the row it copies: the A/A control (the noise floor: it must not be found)
    and the positive control (a known handicap: it must be found)."""
    rows = []
    for r in (r for r in task["algorithms"] if r["control"]):
        t = r["test"]
        found = "–" if not t or t.get("found") is None else ("yes" if t["found"] else "no")
        rows.append(
            [
                algo_name(r, task["reference"]),
                t["copy_of"] if t else "–",
                f"{r['complete']}/{r['runs']}",
                interval(r["accuracy"][task["metric"]]),
                delta(t),
                p_value(t["p"]) if t else "–",
                p_value(t.get("p_holm")) if t else "–",
                found,
            ]
        )
    if not rows:
        return None
    notes = [
        "A/A control: a second copy of a row whose rollouts draw from an independent random stream (same "
        "prompts, same budget): its gap to that row is what chance alone produces here, and the test must not "
        "find it. Positive control: a copy of the row at a fraction of its learning rate, on the row's own "
        "stream: a handicap validation runs show costs accuracy, and the test must find it. Neither is ranked.",
        f"Δ = control − the row it copies, paired on seeds [{level:.0%} paired-t CI]; p: paired t over seeds; "
        "p (Holm): Holm-adjusted over the controls (a family of their own, apart from the rows'); found: "
        f"p (Holm) < {task['verdicts']['alpha']}.",
    ]
    return Table(
        "Controls",
        [
            "row",
            "copy of",
            "seeds done",
            f"{task['metric']} % ({score_header(task)})",
            "Δ (pp)",
            "p",
            "p (Holm)",
            "found",
        ],
        rows,
        notes,
    )


def row_options(task: dict[str, Any]) -> Table | None:
    """What each row ran: its algorithm and every option, so a default that changes later cannot hide."""
    rows = [
        [
            r["label"],
            r["algo"],
            ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "–",
            ", ".join(f"{k}={v}" for k, v in r["given"].items()) or ("copy of the reference" if r["control"] else "–"),
            ", ".join(f"{k}={v}" for k, v in (r.get("settings") or {}).items()) or "–",
        ]
        for r in task["row_options"]
    ]
    if not rows:
        return None
    return Table(
        "Rows and their options",
        ["row", "algorithm", "options (all, defaults included)", "set on the row", "run settings of its own"],
        rows,
        [
            "From manifest.json; `rlbench list` gives each option's meaning and default. Run settings of "
            "its own: what tuning chose for the row's algorithm (`compare --tuned`) or a dotted option on "
            "the row; every other setting is shared."
        ],
    )


def cost(task: dict[str, Any]) -> Table:
    columns = [
        "algorithm",
        "gen tokens/s",
        "s/step",
        *(f"{s} %" for s in STAGES),
        "other %",
        "train loop / run",
        "wall / run",
    ]
    rows = []
    for r in task["algorithms"]:
        c = r["cost"]
        rows.append(
            [
                algo_name(r, task["reference"]),
                num(c["gen_tokens_per_s"]),
                num(c["seconds_per_step"], 2),
                *(num(c[f"{s}_pct"]) for s in (*STAGES, "other")),
                seconds(c["train_seconds"]),
                seconds(c["wall_seconds"]),
            ]
        )
    notes = [
        "Means over completed seeds. gen tokens/s = completion tokens generated / seconds spent generating "
        "them; stage shares are of the training-loop time (evaluation excluded); wall = the whole run, "
        "evaluations included."
    ]
    return Table("Cost and throughput", columns, rows, notes)


def behaviour(task: dict[str, Any]) -> Table | None:
    """Behaviour rates of the final evaluation; None (no section) when no response showed any, or none was logged."""
    columns = ["algorithm", "kind", "responses", *(b.replace("_", "-") for b in BEHAVIOURS)]
    rows = []
    for r in task["algorithms"]:
        for kind in ("greedy", "sampled"):
            rates = r["behaviours"][kind]
            n = rates[BEHAVIOURS[0]]["responses"]
            if n:
                rows.append(
                    [algo_name(r, task["reference"]), kind, str(n), *(num(rates[b]["per_100"]) for b in BEHAVIOURS)]
                )
    if not any(
        r["behaviours"][kind][b]["per_100"]
        for r in task["algorithms"]
        for kind in ("greedy", "sampled")
        for b in BEHAVIOURS
    ):
        return None  # all 0 (the tiny lab's true answer) or no records: report.json keeps the counts
    notes = [
        "Responses (of 100) in the final evaluation with at least one match of the behaviour's patterns "
        "(rlbench/study/report/behaviours.py; lexical cues, not a classifier). All completed seeds pooled."
    ]
    return Table("Reasoning behaviours per 100 responses", columns, rows, notes)


def examples(task: dict[str, Any]) -> Table | None:
    """A few correct and wrong completions of each row; None when no run logged any. Columns no example fills
    (a prompt, a reward: older run files lack them) are left out."""
    found = [(r, e) for r in task["algorithms"] for e in r.get("examples") or []]
    if not found:
        return None
    fields = [
        ("seed", "seed"),
        ("step", "step"),
        ("id", "problem"),
        ("prompt", "prompt"),
        ("completion", "completion"),
        ("reward", "reward"),
        ("reason", "verdict"),
    ]
    fields = [
        (k, title)
        for k, title in fields
        if k in ("seed", "step", "completion", "reason") or any(e[k] is not None for _, e in found)
    ]
    rows = [[algo_name(r, task["reference"]), *(_example_cell(e, k) for k, _ in fields)] for r, e in found]
    columns = ["row", *(title for _, title in fields)]
    notes = [
        "Training rollouts logged by the trainer (samples.jsonl), at the latest step with a correct and with a "
        'wrong one; "final eval": a greedy completion of the final evaluation (eval_records.jsonl), for runs '
        "whose files hold no logged rollouts. Texts over 600 characters are cut in the middle (…)."
    ]
    return Table(
        "Example completions",
        columns,
        rows,
        notes,
        pre=tuple(i + 1 for i, (k, _) in enumerate(fields) if k in ("prompt", "completion")),
    )


def _example_cell(example: dict[str, Any], key: str) -> str:
    value = example[key]
    if key == "step":
        return "final eval" if example["source"] != "training" else _int(value)
    if key == "reason":
        return value or {True: "correct", False: "wrong"}.get(example["correct"], "–")
    if key == "reward":
        return num(value, 2)
    if key == "seed":
        return str(value)
    return "–" if value is None else str(value)


def critic(task: dict[str, Any]) -> Table | None:
    """Each run's critic: explained variance at the last step and over the last steps, and the prompt-only
    ceiling; None (no section) when no row has a critic."""
    fitted = [r for r in task["runs"] if r.get("critic")]
    if not fitted:
        return None
    last = max(r["critic"]["last_steps"] for r in fitted)
    rows = [
        [
            r["name"],
            _signed(r["critic"]["first_mean"]),
            _signed(r["critic"]["last_mean"]),
            _signed(r["critic"]["final"]),
            _signed(r["critic"]["ceiling"]),
        ]
        for r in fitted
    ]
    notes = [
        "Explained variance of each batch's returns by the critic's values at sampling time, before it trains "
        "on that batch (1 = perfect, 0 = no better than the batch mean, < 0 worse), averaged over the first and "
        f"the last {last} steps, and the last step's alone (one batch is noisy). Prompt-only ceiling: the share of the final evaluation's "
        "sampled-reward variance that lies between problems, what a critic knowing each problem's success rate "
        "(and nothing of the completion) would explain (rlbench/study/report/critic.py)."
    ]
    return Table(
        "Critic fit",
        ["run", f"explained variance, first {last} steps", f"last {last} steps", "last step", "prompt-only ceiling"],
        rows,
        notes,
    )


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def runs(task: dict[str, Any]) -> Table:
    columns = [
        "run",
        "status",
        *("train loop" if u == "seconds" else u for u in UNITS),
        "wall",
        "greedy % (start → score)",
        "sampled % (start → score)",
        "greedy % (final)",
        "audit",
    ]
    rows = []
    for r in task["runs"]:
        u = r["usage"]
        rows.append(
            [
                r["name"],
                r["status"] + ("" if r["complete"] or r["status"] != "completed" else " (no final eval)"),
                *(seconds(u[k]) if k == "seconds" else _int(u[k]) for k in UNITS),
                seconds(r["wall_seconds"]),
                f"{pct(r['start']['greedy'])} → {pct(r['score']['greedy'])}",
                f"{pct(r['start']['sampled'])} → {pct(r['score']['sampled'])}",
                pct(r["final"]["greedy"]),
                f"{FLAG} " + "; ".join(r["audit_flags"]) if r["audit_flags"] else "ok",
            ]
        )
    return Table("Runs", columns, rows)


def summary(data: dict[str, Any]) -> Table:
    s = data["summary"]
    rows = [[a, *(interval(s["cells"][a][t]) for t in s["tasks"])] for a in s["algos"]]
    level = data["intervals"]["level"]
    return Table(
        f"Summary: final {s['metric']} accuracy % by task",
        ["algorithm", *s["tasks"]],
        rows,
        [f"Mean [{level:.0%} CI] over completed seeds; – = not compared on that task."],
    )


def _int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def task_tables(task: dict[str, Any], data: dict[str, Any]) -> list[Table]:
    level = data["intervals"]["level"]
    aa = control(task, level)
    options = row_options(task)
    sections = [aa, options, cost(task), critic(task), behaviour(task), examples(task), runs(task)]
    return [leaderboard(task, data["metric"], level), *(t for t in sections if t is not None and not _empty(t))]


def _empty(table: Table) -> bool:
    """No rows, or every cell but the row names "–": a section with nothing to say is left out."""
    return all(cell == "–" for row in table.rows for cell in row[1:])
