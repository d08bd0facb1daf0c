"""Cross-check with EleutherAI's lm-evaluation-harness: its own GSM8K-style task on our data file and saved model.

A task YAML is written to a temporary folder (local JSON / Parquet data, ``generate_until``, our ``paper`` prompt,
greedy decoding to EOS, lm-eval's own GSM8K ``strict-match`` and ``flexible-extract`` filters and ``exact_match``
metric) and run through ``lm_eval.simple_evaluate`` with its ``hf`` model, offline. rlbench's grader is then run on
lm-eval's completions, so the two graders can be compared on identical text, and lm-eval's prompts and completions
are compared with rlbench's own greedy ones on the same problems.

lm-eval is an optional extra (``pip install 'rlbench[eval]'``) and is imported only here, only when used.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rlbench.core.config import ConfigError
from rlbench.tasks.base import Example
from rlbench.tasks.data import looks_local
from rlbench.tasks.gsm8k import GSM8K, INSTRUCTION

TASK_NAME = "rlbench_gsm8k"
# lm-eval's gsm8k.yaml (v3.0) filters and metric options, copied so the numbers mean what lm-eval's GSM8K means.
STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORE_PATTERNS = [",", "\\$", "(?s).*#### ", "\\.$"]
FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}
MISSING = "--harness lm-eval needs lm-eval: pip install 'rlbench[eval]'"
#: disagreeing problem ids listed in the summary (all of them are in the records file)
LIST_AT_MOST = 20


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or a ConfigError with the one line that says how to install it."""
    try:
        import lm_eval
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "lm_eval":
            raise
        raise ConfigError(MISSING) from None
    return lm_eval


def data_file(task: GSM8K, split: str) -> Path:
    """The local file rlbench's gsm8k task reads for ``split``; lm-eval must read the very same rows."""
    spec = task.config.data
    if spec is None or not looks_local(spec):
        raise ConfigError(
            "--data: the lm-eval harness reads a local file; give --data FILE (a .jsonl like GSM8K's test.jsonl)"
        )
    path = task.local_file(split)
    if path is None:
        raise ConfigError(
            f"--split {split}: not a whole file in rlbench (validation is carved out of the training file, "
            "docs/tasks.md), and the lm-eval harness reads whole files; use --split test, or a "
            "--data DIR holding its own validation.jsonl"
        )
    if not path.is_file():
        raise ConfigError(f"--data {path}: no such file")
    return path.resolve()


def task_config(path: Path, split: str, max_new_tokens: int) -> dict[str, Any]:
    """An lm-eval task: zero-shot, greedy, stopping only at EOS (as rlbench's generator does)."""
    return {
        "task": TASK_NAME,
        "dataset_path": "parquet" if path.suffix.lower() == ".parquet" else "json",
        "dataset_kwargs": {"data_files": {split: str(path)}},
        "test_split": split,
        "output_type": "generate_until",
        # rlbench's gsm8k prompt, style "paper"; Jinja inserts the question verbatim
        "doc_to_text": "{{question}} " + INSTRUCTION,
        "doc_to_target": "{{answer}}",
        "num_fewshot": 0,
        # an empty list is kept as is; lm-eval then adds only the EOS text (a missing key would default to "\n\n")
        "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": max_new_tokens},
        "filter_list": [
            {
                "name": FILTERS["strict"],
                "filter": [{"function": "regex", "regex_pattern": STRICT_PATTERN}, {"function": "take_first"}],
            },
            {
                "name": FILTERS["flexible"],
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": FLEXIBLE_PATTERN},
                    {"function": "take_first"},
                ],
            },
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": IGNORE_PATTERNS,
            }
        ],
        "metadata": {"version": 1.0},
    }


def model_args(model_path: str, precision: str, add_bos_token: bool, max_length: int) -> dict[str, Any]:
    """``hf`` model arguments that make lm-eval see the tokens rlbench's generator sees."""
    return {
        "pretrained": model_path,
        "dtype": "bfloat16" if precision == "bf16-pure" else "float32",
        # rlbench's bf16 keeps fp32 weights and runs the forward pass under bf16 autocast; lm-eval can too
        **({"mixed_precision_dtype": "bfloat16"} if precision == "bf16" else {}),
        # lm-eval encodes without special tokens unless told; rlbench keeps whatever the tokenizer adds
        "add_bos_token": add_bos_token,
        # lm-eval left-truncates prompts to max_length - max_gen_toks; rlbench never truncates
        "max_length": max_length,
    }


def run_lm_eval(
    model: Any,
    args: dict[str, Any] | None,
    *,
    path: Path,
    split: str,
    limit: int,
    max_new_tokens: int,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """``simple_evaluate`` on the generated task; ``model`` is ``"hf"`` or an ``lm_eval`` LM object."""
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="rlbench-lm-eval-") as folder:
        (Path(folder) / f"{TASK_NAME}.yaml").write_text(
            yaml.safe_dump(task_config(path, split, max_new_tokens), sort_keys=False)
        )
        # include_defaults=False: indexing lm-eval's thousands of built-in tasks costs ~20 s and none is needed
        manager = TaskManager(include_path=folder, include_defaults=False)
        output = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=[TASK_NAME],
            task_manager=manager,
            limit=limit,
            batch_size=batch_size,
            device=device,
            log_samples=True,
        )
    if output is None:  # simple_evaluate returns None on non-zero ranks only
        raise RuntimeError("lm-eval returned no results")
    return output


def lm_eval_rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per document: the prompt lm-eval built, its raw completion, and each filter's answer and score."""
    rows: dict[int, dict[str, Any]] = {}
    for sample in output["samples"][TASK_NAME]:
        row = rows.setdefault(
            sample["doc_id"],
            {"doc_id": sample["doc_id"], "prompt": sample["arguments"][0][0], "completion": sample["resps"][0][0]},
        )
        name = next(k for k, v in FILTERS.items() if v == sample["filter"])
        row[name] = {"extracted": sample["filtered_resps"][0], "exact_match": float(sample["exact_match"])}
    return [rows[i] for i in sorted(rows)]


def compare(
    rows: Sequence[dict[str, Any]],
    examples: Sequence[Example],
    task: GSM8K,
    greedy_records: Sequence[dict[str, Any]] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grade lm-eval's completions with rlbench (strict and flexible) and line them up with rlbench's greedy run."""
    if len(rows) != len(examples):
        raise RuntimeError(f"lm-eval scored {len(rows)} problems, rlbench loaded {len(examples)}")
    graders = {mode: GSM8K(dataclasses.replace(task.config, grading=mode)) for mode in FILTERS}
    records: list[dict[str, Any]] = []
    for i, (row, example) in enumerate(zip(rows, examples)):
        rec: dict[str, Any] = {
            "id": example.id,
            "doc_id": row["doc_id"],
            "same_prompt": row["prompt"] == task.prompt(example),
            "lm_eval": row,
            "rlbench_grade": {},
        }
        for mode, grader in graders.items():
            g = grader.grade(row["completion"], example)
            rec["rlbench_grade"][mode] = {"correct": g.correct, "reason": g.reason, "extracted": g.extracted}
            rec[f"agree_{mode}"] = g.correct == (row[mode]["exact_match"] == 1.0)
        if greedy_records is not None:
            rec["rlbench_greedy"] = greedy_records[i]["greedy"]
            rec["same_completion"] = greedy_records[i]["greedy"]["completion"] == row["completion"]
        records.append(rec)
    n = len(records)
    summary: dict[str, Any] = {
        "lm_eval_exact_match": {mode: sum(r["lm_eval"][mode]["exact_match"] for r in records) / n for mode in FILTERS},
        "rlbench_on_lm_eval_completions": {
            mode: sum(r["rlbench_grade"][mode]["correct"] for r in records) / n for mode in FILTERS
        },
        "agreement": {mode: sum(r[f"agree_{mode}"] for r in records) / n for mode in FILTERS},
        "disagreements": {
            mode: [r["id"] for r in records if not r[f"agree_{mode}"]][:LIST_AT_MOST] for mode in FILTERS
        },
        "same_prompt": sum(r["same_prompt"] for r in records) / n,
    }
    if greedy_records is not None:
        summary["same_completion"] = sum(r["same_completion"] for r in records) / n
    return summary, records
