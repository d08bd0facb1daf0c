"""MATH (Hendrycks et al., 2021), hard subsets; reward = math-verify equivalence of the last ``\\boxed{}``.

Presets (``preset``):
- ``paper`` (EM-PG's "MATH (HARD)"): train = levels 3-5 of MATH train+test minus the MATH-500 problems (8,888 with
  the full MATH); test = MATH-500 (all levels).
- ``lvl5`` (the Open LLM Leaderboard's "MATH Lvl 5"): train = level-5 train problems (2,304); test = level-5 test
  problems (1,324).

Data (``data``): a directory with ``train.jsonl``, ``test.jsonl`` and, for ``paper``, ``math500_test.jsonl`` (the
layout of the shared MATH copy; .json / .parquet also read); or a single file, which is the test split (filtered to
level 5 under ``lvl5``); or None for the hub (lighteval / HuggingFaceH4 copies, see ``HUB``).

Prompt ``chat`` (the paper's, Qwen2.5-Math style): system "You are a helpful assistant.", user = problem + newline +
``INSTRUCTION``. ``base``: the same words as plain text ending in "Solution:" for base models without a template.
Reference: the ``answer`` field where the data has one, else the last ``\\boxed{}`` of ``solution`` (tasks/boxed.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from rlbench.config import ConfigError
from rlbench.registry import register_task

from .base import Example, Grade, Prompt, Task, TaskConfig
from .boxed import equivalence_checker, grade_boxed, reference_answer
from .data import DataError, Record, load_hub, read_records, split_file

SYSTEM = "You are a helpful assistant."
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# preset -> (levels of the training split, levels of the test split; None = all levels)
PRESET_LEVELS: dict[str, tuple[frozenset[int], frozenset[int] | None]] = {
    "paper": (frozenset({3, 4, 5}), None),
    "lvl5": (frozenset({5}), frozenset({5})),
}
# Hub copies used when ``data`` is None (dataset id, config). lighteval's MATH has no unique_id, so MATH-500 is
# removed from the paper's training set by problem text as well as by id.
HUB: dict[str, tuple[str, str | None]] = {
    "math": ("DigitalLearningGmbH/MATH-lighteval", "default"),
    "math500": ("HuggingFaceH4/MATH-500", None),
    "lvl5": ("lighteval/MATH-Hard", None),
}


@dataclass
class MathHardConfig(TaskConfig):
    # None = hub; a directory like shared/data/math (train.jsonl, test.jsonl, math500_test.jsonl); or one file = test
    data: str | None = None
    preset: Literal["paper", "lvl5"] = "paper"
    prompt_style: Literal["chat", "base"] = "chat"
    grade_timeout: float = 2.0  # wall seconds per grade; the checking process is killed when it passes
    grade_workers: int = 0  # grading processes; 0 = min(4, CPUs)


def level_of(record: Record) -> int | None:
    """MATH's "Level 3" strings and MATH-500's integer 3 alike; None for "Level ?"."""
    if "level" not in record.fields:
        raise DataError(f"{record.where}: field 'level' is missing (needed to select the preset's levels)")
    value = record.fields["level"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.removeprefix("Level").strip()
        return int(digits) if digits.isascii() and digits.isdigit() else None
    raise DataError(f"{record.where}: field 'level' must be like 'Level 5' or 5, got {value!r}")


def _problem_key(problem: str) -> str:
    return " ".join(problem.split())


@register_task
class MathHard(Task):
    name = "math-hard"
    description = "MATH hard subsets (paper: levels 3-5 -> MATH-500; lvl5: level 5); reward = math-verify on \\boxed{}"
    Config = MathHardConfig

    def __init__(self, config: MathHardConfig | None = None) -> None:
        super().__init__(config)
        self.checker = equivalence_checker(self.config.grade_timeout, self.config.grade_workers)
        self._cache: dict[str, list[Example]] = {}

    # -------------------------------------------------------------------------------------------------- data

    def _source(self, which: str) -> list[Record]:
        """Records of one source file: ``train``, ``test`` or ``math500_test`` (local) / hub equivalents."""
        data = self.config.data
        if data is None:
            if which == "math500_test":
                return load_hub(*HUB["math500"], split="test")
            return load_hub(*(HUB["lvl5"] if self.config.preset == "lvl5" else HUB["math"]), split=which)
        return read_records(split_file(Path(data).expanduser(), which))

    def _select(self, split: str) -> list[tuple[str, int, Record]]:
        """(source name, index in source, record) of one split under the preset."""
        train_levels, test_levels = PRESET_LEVELS[self.config.preset]
        data = self.config.data
        if data is not None and not Path(data).expanduser().exists():
            raise DataError(f"task.data={data!r}: no such file or directory (math-hard reads local data, or the hub when unset)")
        if data is not None and not Path(data).expanduser().is_dir():
            if split != "test":
                raise ConfigError(f"task.data={data!r} is a single file, which serves the test split only; give a directory for {split!r}")
            return [("test", i, r) for i, r in enumerate(read_records(data)) if test_levels is None or level_of(r) in test_levels]
        if split == "test":
            if self.config.preset == "paper":
                return [("math500_test", i, r) for i, r in enumerate(self._source("math500_test"))]
            return [("test", i, r) for i, r in enumerate(self._source("test")) if level_of(r) in test_levels]
        sources = ("train", "test") if self.config.preset == "paper" else ("train",)
        chosen = [(s, i, r) for s in sources for i, r in enumerate(self._source(s)) if level_of(r) in train_levels]
        if self.config.preset == "paper":
            held_out = self._source("math500_test")
            ids = {r.fields["unique_id"] for r in held_out if r.fields.get("unique_id")}
            problems = {_problem_key(r.text("problem")) for r in held_out}
            chosen = [(s, i, r) for s, i, r in chosen
                      if r.fields.get("unique_id") not in ids and _problem_key(r.text("problem")) not in problems]
        return chosen

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ConfigError(f"split {split!r}: the math-hard task has {', '.join(self.splits)}")
        if split not in self._cache:
            self._cache[split] = [self._example(source, index, record) for source, index, record in self._select(split)]
        return self._cache[split]

    @staticmethod
    def _example(source: str, index: int, record: Record) -> Example:
        problem, solution = record.text("problem"), record.text("solution", required=False)
        answer = reference_answer(record)  # the answer field, else the last \boxed{} of the solution
        meta: dict[str, Any] = {"source": source, "index": index}
        meta.update((key, record.fields[key]) for key in ("level", "type", "subject") if key in record.fields)
        uid = record.fields.get("unique_id")
        return Example(uid if isinstance(uid, str) and uid else f"{source}-{index}", problem, answer, solution, meta)

    # ------------------------------------------------------------------------------------------- prompt, grade

    def prompt(self, example: Example) -> Prompt:
        if self.config.prompt_style == "chat":
            return [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{example.question}\n{INSTRUCTION}"},
            ]
        return f"Problem:\n{example.question}\n\n{INSTRUCTION}\n\nSolution:"

    def grade(self, completion: str, example: Example) -> Grade:
        return self.grade_many([completion], [example])[0]

    def grade_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[Grade]:
        return grade_boxed(self.checker, completions, [e.answer for e in examples])
