"""The task protocol: a prompt, a data loader and a grader, nothing more."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

ChatMessages = list[dict[str, str]]
Prompt = str | ChatMessages

GradeReason = Literal["correct", "wrong", "no_answer", "unparsable", "timeout"]


@dataclass(frozen=True)
class Example:
    """One problem. ``answer`` is the reference final answer; ``solution`` a worked solution when the data has one."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    """Why a completion got its reward: ``reason`` is one of correct, wrong, no_answer, unparsable, timeout."""

    reward: float
    correct: bool
    reason: GradeReason
    extracted: str | None = None

    @staticmethod
    def right(extracted: str) -> Grade:
        return Grade(1.0, True, "correct", extracted)

    @staticmethod
    def fail(reason: GradeReason, extracted: str | None = None) -> Grade:
        return Grade(0.0, False, reason, extracted)


@dataclass
class TaskConfig:
    """Options every task accepts; a task subclasses this to add its own."""

    data: str | None = None  # hub id or local file; None means the task's default source
    # a registered reward function's name (rlbench.core.registry.register_reward): training rewards come from it; the
    # task's own grade still says what is correct (accuracy); None = the task's reward
    reward: str | None = None


class Task(ABC):
    """Subclasses set ``name``, ``description`` and ``Config`` and implement load / prompt / grade."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    #: splits the task can load: ``train`` feeds RL; ``validation`` (disjoint from test, and never trained on) is
    #: what anything that selects reads (SFT stop rules, tuning); ``test`` is what the leaderboard reports
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def with_reward_function(self) -> Task:
        """This task, or, when ``task.reward`` names a registered reward function, this task rewarded by it."""
        return self if self.config.reward is None else RewardFrom(self)

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}

    @abstractmethod
    def load(self, split: str) -> list[Example]:
        """All examples of ``split`` in a fixed order."""

    @abstractmethod
    def prompt(self, example: Example) -> Prompt:
        """Plain text for base models, or chat messages (the engine applies the tokenizer's chat template)."""

    @abstractmethod
    def grade(self, completion: str, example: Example) -> Grade:
        """Grade one completion; must never evaluate model text and must finish within a bounded time."""

    def grade_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[Grade]:
        """Grade a batch; tasks with expensive graders override this to run them in a pool with time limits."""
        return [self.grade(c, e) for c, e in zip(completions, examples)]


class RewardFrom(Task):
    """A task whose reward comes from a registered Python function (``task.reward: name``)::

        from rlbench.core.registry import register_reward

        @register_reward("short-and-right")
        def short_and_right(prompt, completion, example) -> float:
            return float(example.answer in completion) - 0.001 * len(completion)

    It is the task itself (its data, prompts and grades) with each grade's reward replaced by the function's value;
    ``correct`` and ``reason`` stay the task's, so evaluation accuracy means what it did.
    """

    def __init__(self, task: Task) -> None:
        from rlbench.core import registry
        from rlbench.core.config import ConfigError

        self.task, self.config = task, task.config
        try:
            self.reward_fn = registry.get_reward(task.config.reward)
        except registry.UnknownNameError as exc:
            raise ConfigError(f"task.reward={task.config.reward!r}: {exc}") from None
        self.name, self.description, self.splits = task.name, task.description, task.splits

    def __getattr__(self, name: str) -> Any:  # anything else a task offers (its own helpers) is the task's
        return getattr(self.task, name)

    def load(self, split: str) -> list[Example]:
        return self.task.load(split)

    def prompt(self, example: Example) -> Prompt:
        return self.task.prompt(example)

    def _rewarded(self, grade: Grade, completion: str, example: Example) -> Grade:
        name = self.config.reward
        try:
            value = float(self.reward_fn(self.task.prompt(example), completion, example))
        except Exception as exc:
            raise RuntimeError(
                f"task.reward={name!r}: the reward function failed on example {example.id!r} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not math.isfinite(value):
            raise RuntimeError(
                f"task.reward={name!r}: returned {value} for example {example.id!r}; a reward must be a finite number"
            )
        return dataclasses.replace(grade, reward=value)

    def grade(self, completion: str, example: Example) -> Grade:
        return self._rewarded(self.task.grade(completion, example), completion, example)

    def grade_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[Grade]:
        grades = self.task.grade_many(completions, examples)
        return [self._rewarded(g, c, e) for g, c, e in zip(grades, completions, examples)]
