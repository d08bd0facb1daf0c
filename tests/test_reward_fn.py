"""Callable rewards: a function registered with @register_reward gives a task's training reward (task.reward)."""

from __future__ import annotations

import json

import pytest

from rlbench.core import registry
from rlbench.core.config import ConfigError
from rlbench.core.configure import build_run_config, build_task
from rlbench.core.registry import register_reward
from rlbench.run.training import build_trainer

SEEN: list[tuple] = []


@register_reward("test-length")
def length_reward(prompt, completion, example) -> float:
    SEEN.append((prompt, completion, example.id))
    return len(completion) / 100


@register_reward("test-problem-length")
def problem_length_reward(prompt, completion, example) -> float:
    SEEN.append((prompt, completion, example.id))
    return len(example.id) / 100  # > 0 for every problem: a random model's task reward is 0


@register_reward("test-nan")
def nan_reward(prompt, completion, example) -> float:
    return float("nan")


def test_the_function_gives_the_reward_and_the_task_still_grades():
    task = build_task(build_run_config({"task": {"name": "arith", "reward": "test-length"}}).task)
    example = task.load("test")[0]
    right, wrong = example.solution, " 1+1=3 #### 3"
    SEEN.clear()
    grades = task.grade_many([right, wrong], [example, example])
    assert [g.reward for g in grades] == [len(right) / 100, len(wrong) / 100]
    assert [g.correct for g in grades] == [True, False] and grades[1].reason == "wrong"  # the task's own grade
    assert SEEN[0] == (task.prompt(example), right, example.id)  # called with (prompt, completion, example)
    assert task.grade(right, example).reward == len(right) / 100


def test_an_unknown_reward_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^task.reward='nope': unknown reward 'nope'; registered: .*test-length"):
        build_run_config({"task": {"name": "arith", "reward": "nope"}})
    assert "test-length" in registry.rewards()


def test_a_reward_that_is_not_a_number_stops_with_its_name():
    task = build_task(build_run_config({"task": {"name": "arith", "reward": "test-nan"}}).task)
    example = task.load("test")[0]
    with pytest.raises(RuntimeError, match="task.reward='test-nan': returned nan"):
        task.grade_many(["x"], [example])


def test_training_rewards_come_from_the_function(tiny_qwen_dir, tmp_path):
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": "grpo",
            "out": str(tmp_path / "run"),
            "task": {"name": "arith", "train_size": 40, "test_size": 4, "reward": "test-problem-length"},
            "rollout": {"batch_size": 8, "samples_per_prompt": 4},
            "sampling": {"max_new_tokens": 12},
            "budget": {"steps": 1},
            "eval": {"limit": 2, "samples": 0, "every": 0},
        }
    )
    SEEN.clear()
    build_trainer(config, progress=False).run()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    train_ids = {e.id for e in build_task(config.task).load("train")}  # evaluations grade test problems
    rollouts = [problem for _, _, problem in SEEN if problem in train_ids]
    assert len(rollouts) == 8
    assert row["reward_mean"] == pytest.approx(sum(len(p) / 100 for p in rollouts) / 8)
