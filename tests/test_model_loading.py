"""Loading a model as users expect: revision / attention / remote-code options reach transformers, and a missing
folder or an unreachable hub is one line (exit 2), not a traceback."""

from __future__ import annotations

import doctest
import re

import huggingface_hub.constants
import pytest
import torch
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.engine import policy as policy_module
from rlbench.engine.policy import load_model

PROGRESS_BAR = re.compile(r"\d+%\|")
SMALL = [
    "--quiet",
    "--set",
    "device=cpu",
    "--set",
    "task.train_size=20",
    "--set",
    "task.test_size=4",
    "--set",
    "eval.limit=2",
    "--set",
    "eval.samples=0",
    "--set",
    "rollout.batch_size=4",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=4",
    "--set",
    "budget.steps=1",
]


def _one_line(result) -> str:
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output, result.exception)
    return lines[0]


def _train(model: str, out, *extra: str):
    return CliRunner().invoke(main, ["train", "--model", model, "--out", str(out), *SMALL, *extra])


def test_path_detection_doctest():
    assert doctest.testmod(policy_module).failed == 0


@pytest.mark.parametrize("model", ["./no-such-model", "../no-such-model", "models/qwen/no-such"])
def test_a_missing_local_folder_is_named_not_sent_to_the_hub(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line(_train(model, tmp_path / "run"))
    assert line == f"rlbench: error: --model {model}: no such directory"


def test_a_file_is_not_a_model_folder(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    assert "not a directory" in _one_line(_train(str(file), tmp_path / "run"))


def test_an_unreachable_hub_says_so_and_asks_for_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the same answer as no network, at once
    line = _one_line(_train("no-such-org/no-such-model", tmp_path / "run"))
    assert line.startswith("rlbench: error: --model no-such-org/no-such-model: ")
    assert "hub cannot be reached" in line and "pass a local path" in line


def test_model_args_reach_the_tokenizer_and_the_model(tiny_qwen_dir, tmp_path, monkeypatch):
    seen: dict[str, dict] = {}
    for name in ("AutoTokenizer", "AutoModelForCausalLM"):
        cls = getattr(policy_module, name)
        real = cls.from_pretrained

        def record(path, _real=real, _name=name, **kwargs):
            seen[_name] = kwargs
            return _real(path, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    result = _train(
        str(tiny_qwen_dir),
        tmp_path / "run",
        "--set",
        "model_args.revision=main",
        "--set",
        "model_args.attn_implementation=eager",
        "--set",
        "model_args.trust_remote_code=false",
    )
    assert result.exit_code == 0, result.output
    assert seen["AutoTokenizer"] == {"revision": "main", "trust_remote_code": False}
    model_kwargs = seen["AutoModelForCausalLM"]
    assert model_kwargs["revision"] == "main" and model_kwargs["trust_remote_code"] is False
    assert model_kwargs["attn_implementation"] == "eager" and model_kwargs["dtype"] == torch.float32


def test_attn_implementation_is_the_one_the_model_runs(tiny_qwen_dir):
    model, _ = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"), attn_implementation="eager")
    assert model.config._attn_implementation == "eager"


def test_an_unknown_attention_is_one_line(tiny_qwen_dir, tmp_path):
    line = _one_line(_train(str(tiny_qwen_dir), tmp_path / "run", "--set", "model_args.attn_implementation=warp9"))
    assert line.startswith(f"rlbench: error: --model {tiny_qwen_dir}: cannot load (") and "warp9" in line
