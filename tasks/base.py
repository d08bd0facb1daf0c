"""The task protocol: a prompt, a data loader and a grader, nothing more."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence, Union

ChatMessages = list[dict[str, str]]
Prompt = Union[str, ChatMessages]

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
    def right(extracted: str) -> "Grade":
        return Grade(1.0, True, "correct", extracted)

    @staticmethod
    def fail(reason: GradeReason, extracted: str | None = None) -> "Grade":
        return Grade(0.0, False, reason, extracted)


@dataclass
class TaskConfig:
    """Options every task accepts; a task subclasses this to add its own."""

    data: str | None = None  # hub id or local file; None means the task's default source


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

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Task":
        from rlbench.config import build_dataclass

        return cls(build_dataclass(cls.Config, options, prefix="task"))

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
