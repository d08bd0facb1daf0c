"""The lm-eval bridge: lm-evaluation-harness runs our GSM8K data and saved model offline, and its exact_match is lined
up with rlbench's grader on the very same completions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'rlbench[eval]')")
if not GSM8K_TEST.is_file():
    pytest.skip(f"GSM8K test data not found at {GSM8K_TEST}", allow_module_level=True)

from lm_eval.api.model import LM  # noqa: E402

from rlbench.cli.eval import eval_  # noqa: E402
from rlbench.core.configure import build_task  # noqa: E402
from rlbench.run.eval import lm_eval_bridge as bridge  # noqa: E402


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def varied_qwen_dir(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 with large random weights: its greedy text differs from prompt to prompt (the default init
    writes the same character every time), so comparing lm-eval's completions with ours means something."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(tiny_qwen_dir)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("varied-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_qwen_dir).save_pretrained(path)
    return path


def test_bridge_runs_lm_eval_on_our_data_and_model(varied_qwen_dir: Path, tmp_path: Path) -> None:
    out, recs = tmp_path / "lm.json", tmp_path / "lm.jsonl"
    result = CliRunner().invoke(
        eval_,
        [
            "--harness",
            "lm-eval",
            "--model",
            str(varied_qwen_dir),
            "--task",
            "gsm8k",
            "--data",
            str(GSM8K_TEST),
            "--limit",
            "5",
            "--max-new-tokens",
            "8",
            "--set",
            "threads=1",
            "--out",
            str(out),
            "--records",
            str(recs),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["harness"] == "lm-eval" and res["problems"] == 5
    assert res["lm_eval_results"]["sample_len"] == 5
    # lm-eval built exactly our prompt and, decoding greedily from the same weights, wrote exactly our completions
    assert res["same_prompt"] == 1.0 and res["same_completion"] == 1.0
    assert (
        res["settings"]["lm_eval_model_args"]["add_bos_token"] is True
    )  # the char tokenizer adds BOS; so must lm-eval
    for mode in ("strict", "flexible"):
        assert res["lm_eval_exact_match"][mode] == res["lm_eval_results"][f"exact_match,{bridge.FILTERS[mode]}"]
    records = [json.loads(line) for line in recs.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"test-{i}" for i in range(5)]
    assert all(len(r["lm_eval"]["completion"]) <= 8 for r in records)
    assert len({r["lm_eval"]["completion"] for r in records}) > 1
    assert "lm-eval exact_match" in result.stdout


class ScriptedLM(LM):
    """Answers each prompt with a fixed completion, so lm-eval's filters and metric meet known text."""

    def __init__(self, by_prompt: dict[str, str]) -> None:
        super().__init__()
        self.by_prompt = by_prompt

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self.by_prompt[r.args[0]] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_lm_eval_metric_and_rlbench_grader_on_the_same_completions() -> None:
    task = build_task({"name": "gsm8k", "data": str(GSM8K_TEST)})
    examples = task.load("test")[:6]
    ans = [e.answer for e in examples]
    completions = [
        examples[0].solution,  # the reference itself: right for both
        f"so #### {ans[1]}.",  # a sentence-final period: both strip it
        f"first #### 1 then #### {ans[2]}",  # lm-eval takes the first '####', rlbench the last
        f"The answer is {ans[3]}",  # no '####': strict misses, flexible finds it
        f"#### {ans[4]}.00",  # trailing zeros: rlbench compares numbers, lm-eval strings
        "#### 123456789",  # wrong for both
    ]
    by_prompt = {task.prompt(e): c for e, c in zip(examples, completions)}
    output = bridge.run_lm_eval(
        ScriptedLM(by_prompt),
        None,
        path=GSM8K_TEST,
        split="test",
        limit=6,
        max_new_tokens=16,
        batch_size=1,
        device="cpu",
    )
    rows = bridge.lm_eval_rows(output)
    assert [r["completion"] for r in rows] == completions
    assert [r["strict"]["exact_match"] for r in rows] == [1, 1, 0, 0, 0, 0]
    assert [r["flexible"]["exact_match"] for r in rows] == [1, 1, 1, 1, 0, 0]
    summary, records = bridge.compare(rows, examples, task, None)
    assert [r["rlbench_grade"]["strict"]["correct"] for r in records] == [True, True, True, False, True, False]
    assert [r["rlbench_grade"]["flexible"]["correct"] for r in records] == [True, True, True, True, True, False]
    assert summary["disagreements"] == {"strict": ["test-2", "test-4"], "flexible": ["test-4"]}
    assert summary["agreement"] == {"strict": 4 / 6, "flexible": 5 / 6}
    assert summary["same_prompt"] == 1.0 and "same_completion" not in summary
