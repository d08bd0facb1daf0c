"""GSM8K (Cobbe et al., 2021): grade-school word problems with an integer answer after ``####``.

Prompt ("paper", as in EM-PG and verl's GSM8K preprocessing, base model, no chat template):
    <question> Let's think step by step and output the final answer after "####".
Grading ("strict", the paper's reward): the last ``#### <number>`` of the completion (an optional ``$`` after the
marker is allowed), normalised (thousands commas, trailing ``.0``, ``%``), must equal the reference exactly.
"flexible": the last number anywhere in the completion. Numbers are compared as exact decimals, never evaluated.

Splits: ``test`` is the data's test split (1,319 problems). GSM8K has no validation split, so ``validation`` is a fixed
slice of the training data (``validation_size`` = 500 problems, chosen by the sha256 of their text, see
``tasks/data.py: carve_validation``) and ``train`` is the rest (6,973 of 7,473). A local directory (or ``{split}``
path) that holds its own ``validation`` file overrides the slice; ``train`` then drops any problem whose text is in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlbench.core.config import ConfigError
from rlbench.core.registry import register_task

from .base import Example, Grade, Prompt, Task, TaskConfig
from .data import (
    VALIDATION_SIZE,
    DataError,
    Record,
    load_hub,
    local_split_file,
    looks_local,
    read_records,
    text_key,
    train_and_validation,
)
from .grading import NUMBER, find_numbers, normalize_number

HUB_ID = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'

# verl's strict pattern is "#### (\-?[0-9\.\,]+)"; this one reads the same answers but stops before a
# sentence-final period ("#### 12." is 12, not "12.", which verl's string compare would mark wrong).
# The optional "$" sits in its own group so runs of spaces cannot be split two ways (no quadratic backtracking).
_STRICT = re.compile(r"####[ \t]*(?:\$[ \t]*)?(" + NUMBER + ")")


@dataclass
class GSM8KConfig(TaskConfig):
    # None = the hub's openai/gsm8k; or a hub id; or a local .jsonl/.json/.parquet file (used for whichever split is
    # asked for), a directory holding <split>.jsonl, or a path with "{split}" in it.
    data: str | None = None
    hub_config: str | None = "main"  # the hub dataset's configuration name
    prompt_style: Literal["paper", "chat"] = "paper"
    grading: Literal["strict", "flexible"] = "strict"
    # problems carved out of train as the validation split (by text hash; see tasks/data.py), unless the data
    # directory has its own validation file
    validation_size: int = VALIDATION_SIZE


def reference_answer(solution: str) -> str | None:
    """The normalised number after the last ``####`` of a GSM8K ``answer`` field, or None."""
    if "####" not in solution:
        return None
    return normalize_number(solution.rsplit("####", 1)[1])


def extract_answer(completion: str, grading: str) -> str | None:
    """The raw answer text the grading mode reads from a completion, or None when there is none."""
    if grading == "strict":
        last = None
        for last in _STRICT.finditer(completion):  # noqa: B007 -- keeps the last match
            pass
        return last.group(1) if last is not None else None
    numbers = find_numbers(completion)
    return numbers[-1] if numbers else None


@register_task
class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K grade-school math word problems; reward = exact match of the final '#### <number>'"
    Config = GSM8KConfig

    def __init__(self, config: GSM8KConfig | None = None) -> None:
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}

    def local_file(self, split: str) -> Path | None:
        """The local file whose rows are exactly ``split`` (in order), or None: hub data, ``train`` (the training
        file minus the validation problems), or ``validation`` carved out of train (no validation file of its own)."""
        data = self.config.data
        return None if data is None or not looks_local(data) or split == "train" else local_split_file(data, split)

    def _records(self, split: str) -> list[Record]:
        data = self.config.data
        if data is None or not looks_local(data):
            return load_hub(data or HUB_ID, self.config.hub_config, split)
        return read_records(local_split_file(data, split))  # type: ignore[arg-type]  # never None but for validation

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ConfigError(f"split {split!r}: the gsm8k task has {', '.join(self.splits)}")
        if split not in self._cache:
            if split == "test":
                self._cache["test"] = self._examples("test", list(enumerate(self._records("test"))))
                return self._cache["test"]
            # validation: the data's own file, else a slice carved out of train (rows keep their train-<row> ids)
            own = self.local_file("validation")
            own_rows = None if own is None else list(enumerate(read_records(own)))
            where = "the training data" if self.config.data is None else f"task.data={self.config.data!r} (train)"
            train, validation = train_and_validation(
                list(enumerate(self._records("train"))),
                lambda row: text_key(row[1].text("question")),
                self.config.validation_size,
                where,
                own_rows,
            )
            self._cache["train"] = self._examples("train", train)
            self._cache["validation"] = self._examples("train" if own is None else "validation", validation)
        return self._cache[split]

    @staticmethod
    def _examples(source: str, rows: list[tuple[int, Record]]) -> list[Example]:
        examples = []
        for index, record in rows:
            question = record.text("question")
            solution = record.text("answer")
            answer = reference_answer(solution)
            if answer is None:
                raise DataError(f"{record.where}: field 'answer' has no '#### <number>' final answer")
            examples.append(Example(f"{source}-{index}", question, answer, solution, {"index": index}))
        return examples

    def prompt(self, example: Example) -> Prompt:
        text = f"{example.question} {INSTRUCTION}"
        if self.config.prompt_style == "chat":
            return [{"role": "user", "content": text}]
        return text

    def grade(self, completion: str, example: Example) -> Grade:
        raw = extract_answer(completion, self.config.grading)
        if raw is None:
            return Grade.fail("no_answer")
        got = normalize_number(raw)
        if got is None:
            return Grade.fail("unparsable", raw[:64])
        return Grade.right(got) if got == example.answer else Grade.fail("wrong", got)
