"""Synthetic chain-of-thought arithmetic: the tiny lab's task, generated offline and deterministically.

    prompt:      "Q: 94+2-39=? A:"
    completion:  " 94+2=96 96-39=57 #### 57"

Train, validation and test problems come from three random streams (seeds ``train-``, ``validation-`` and
``test-<data_seed>``); validation drops every test problem and train (and the SFT stream) every validation and test
problem, so no two overlap. Test is generated first and alone, so it does not depend on the validation settings.
Reward: 1 if the text after the last ``####`` is exactly the right integer, else 0.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlbench.core.config import ConfigError
from rlbench.core.registry import register_task

from .base import Example, Grade, Task, TaskConfig

_ANSWER = re.compile(r"####\s*(-?\d+)\s*$")


@dataclass
class ArithConfig(TaskConfig):
    # Single-digit operands with 2-3 operations: SFT of the tiny model reaches 20-30% sampled accuracy in a few
    # hundred steps on every seed tried, while 2-digit operands took 1,000-3,000 steps with a seed-dependent jump.
    min_operand: int = 1
    max_operand: int = 9
    min_ops: int = 2  # number of + / - operations in a problem
    max_ops: int = 3
    train_size: int = 20000
    validation_size: int = 500  # what selects (the SFT stop rule, tuning) reads; disjoint from test and train
    test_size: int = 500
    data_seed: int = 1234


def solve(operands: list[int], ops: list[str]) -> tuple[str, int]:
    """The worked solution, one step per operation, and the result."""
    steps, value = [], operands[0]
    for op, b in zip(ops, operands[1:]):
        nxt = value + b if op == "+" else value - b
        steps.append(f"{value}{op}{b}={nxt}")
        value = nxt
    return " ".join(steps), value


@register_task
class Arith(Task):
    name = "arith"
    description = "synthetic chain-of-thought +/- arithmetic, offline; the tiny lab's task"
    Config = ArithConfig

    def __init__(self, config: ArithConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c.data is not None:
            raise ConfigError("task.data: the arith task is generated, it reads no data file")
        if not 0 <= c.min_operand <= c.max_operand:
            raise ConfigError(f"task.max_operand={c.max_operand}: need 0 <= min_operand <= max_operand")
        if not 1 <= c.min_ops <= c.max_ops:
            raise ConfigError(f"task.max_ops={c.max_ops}: need 1 <= min_ops <= max_ops")
        if c.train_size < 1 or c.validation_size < 1 or c.test_size < 1:
            raise ConfigError("task.train_size / task.validation_size / task.test_size: must be >= 1")
        self._cache: dict[str, list[Example]] = {}

    def sample(self, rng: random.Random) -> Example:
        c = self.config
        n_ops = rng.randint(c.min_ops, c.max_ops)
        operands = [rng.randint(c.min_operand, c.max_operand) for _ in range(n_ops + 1)]
        ops = [rng.choice("+-") for _ in range(n_ops)]
        expr = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
        work, result = solve(operands, ops)
        return Example(id=expr, question=expr, answer=str(result), solution=f" {work} #### {result}")

    def _unique(self, rng: random.Random, count: int, exclude: set[str], what: str) -> list[Example]:
        out: list[Example] = []
        seen = set(exclude)
        attempts = 0
        while len(out) < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise ConfigError(
                    f"task.{what}_size={count}: only {len(out)} distinct problems fit the difficulty settings; "
                    "lower the size or widen task.max_operand / task.max_ops"
                )
            ex = self.sample(rng)
            if ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
        return out

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ConfigError(f"split {split!r}: the arith task has {', '.join(self.splits)}")
        if split not in self._cache:
            c = self.config
            if split == "test":
                self._cache["test"] = self._unique(random.Random(f"test-{c.data_seed}"), c.test_size, set(), "test")
            elif split == "validation":
                exclude = {e.id for e in self.load("test")}
                self._cache["validation"] = self._unique(
                    random.Random(f"validation-{c.data_seed}"), c.validation_size, exclude, "validation"
                )
            else:
                exclude = self._held_out_ids()
                self._cache["train"] = self._unique(
                    random.Random(f"train-{c.data_seed}"), c.train_size, exclude, "train"
                )
        return self._cache[split]

    def _held_out_ids(self) -> set[str]:
        return {e.id for split in ("validation", "test") for e in self.load(split)}

    def fresh_train_examples(self, seed: int):
        """An endless stream of training problems (never a validation or test problem), for SFT warm-starts."""
        rng = random.Random(f"sft-{seed}")
        held_out = self._held_out_ids()
        while True:
            ex = self.sample(rng)
            if ex.id not in held_out:
                yield ex

    def prompt(self, example: Example) -> str:
        return f"Q: {example.question}=? A:"

    def grade(self, completion: str, example: Example) -> Grade:
        match = _ANSWER.search(completion.strip()[-64:])
        if match is None:
            return Grade.fail("no_answer")
        got = match.group(1)
        return Grade.right(got) if int(got) == int(example.answer) else Grade.fail("wrong", got)
