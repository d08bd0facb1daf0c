"""MATH (Hendrycks et al., 2021), hard subsets; reward = math-verify equivalence of the last ``\\boxed{}``.

Presets (``preset``):
- ``paper`` (EM-PG's "MATH (HARD)"): train = levels 3-5 of MATH train+test minus the MATH-500 problems (8,888 with
  the full MATH); test = MATH-500 (all levels).
- ``lvl5`` (the Open LLM Leaderboard's "MATH Lvl 5"): train = level-5 train problems (2,304); test = level-5 test
  problems (1,324).

Validation: 500 (``validation_size``) problems of the preset's training split, chosen by text hash (``tasks/data.py``),
which train then drops (paper 8,388 left, lvl5 1,804); a ``validation`` file in ``data`` overrides the slice.

Data (``data``): a directory with ``train.jsonl``, ``test.jsonl`` and, for ``paper``, ``math500_test.jsonl`` (the
layout of the shared MATH copy; .json / .parquet also read); or a single file, which is the test split (filtered to
level 5 under ``lvl5``); or None for the hub (lighteval / HuggingFaceH4 copies, see ``HUB``).

Prompt ``chat`` (the paper's, Qwen2.5-Math style): system "You are a helpful assistant.", user = problem + newline +
``INSTRUCTION``. ``base``: the same words as plain text ending in "Solution:" for base models without a template.
Reference: the ``answer`` field where the data has one, else the last ``\\boxed{}`` of ``solution`` (tasks/boxed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlbench.core.config import ConfigError
from rlbench.core.registry import register_task

from .base import Example, Grade, Prompt, Task, TaskConfig
from .boxed import equivalence_checker, grade_boxed, level_of, reference_answer
from .data import (
    VALIDATION_SIZE,
    DataError,
    Record,
    find_split_file,
    load_hub,
    read_records,
    same_problem,
    split_file,
    text_key,
    train_and_validation,
)

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
    # problems carved out of the preset's training split as validation, unless the data has a validation file
    validation_size: int = VALIDATION_SIZE


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
        test_levels = PRESET_LEVELS[self.config.preset][1]
        data = self.config.data
        if data is not None and not Path(data).expanduser().exists():
            raise DataError(
                f"task.data={data!r}: no such file or directory (math-hard reads local data, or the hub when unset)"
            )
        if data is not None and not Path(data).expanduser().is_dir():
            if split != "test":
                raise ConfigError(
                    f"task.data={data!r} is a single file, which serves the test split only; give a directory for {split!r}"
                )
            records = enumerate(read_records(data))
            return [("test", i, r) for i, r in records if test_levels is None or level_of(r) in test_levels]
        if split == "test":
            if self.config.preset == "paper":
                return [("math500_test", i, r) for i, r in enumerate(self._source("math500_test"))]
            return [("test", i, r) for i, r in enumerate(self._source("test")) if level_of(r) in test_levels]
        # train and validation: the preset's training levels (for paper, minus MATH-500 by id and by text), then a
        # validation file of the data's own (train drops its problems) or a slice carved out of them
        sources = ("train", "test") if self.config.preset == "paper" else ("train",)
        own = find_split_file(Path(data).expanduser(), "validation") if data is not None else None
        rows = [
            (s, i, r)
            for s in sources + (("validation",) if own else ())
            for i, r in enumerate(read_records(own) if s == "validation" else self._source(s))
        ]
        rows = [row for row in rows if level_of(row[2]) in PRESET_LEVELS[self.config.preset][0]]
        if self.config.preset == "paper":
            math500 = same_problem(self._source("math500_test"), "problem")
            rows = [row for row in rows if not math500(row[2])]
        preset = self.config.preset
        where = "the preset's training data" if data is None else f"task.data={data!r} (preset {preset!r} train)"
        train, validation = train_and_validation(
            [row for row in rows if row[0] != "validation"],
            lambda row: text_key(row[2].text("problem")),
            self.config.validation_size,
            where,
            [row for row in rows if row[0] == "validation"] if own else None,
        )
        held = same_problem([r for _, _, r in validation], "problem")
        return validation if split == "validation" else [row for row in train if not held(row[2])]

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
