"""The ``vllm`` rollout backend.

Here (no GPU, no vLLM): asking for it fails with one clear line naming ``rollout.backend=vllm``, and its glue (the
layout it assembles, the sampling settings and seeds it passes, the sleep / wake / weight-push sequence) is checked
against a stand-in for ``vllm.LLM``. On a CUDA machine with vLLM installed: its greedy completions equal the ``hf``
backend's up to bf16 near-ties, and its sampling log-probs match the trainer's recomputation after ``sync_weights``.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from rlbench.tasks.arith import Arith

from rlbench.core.config import ConfigError
from rlbench.engine import vllm_backend
from rlbench.engine.generation import encode_prompt, make_generator, stop_ids, token_logprobs
from rlbench.engine.policy import Policy, load_model, position_ids_from_mask
from rlbench.engine.seeding import derive_seed

CPU = torch.device("cpu")


def _prompts(tok, n: int) -> list[list[int]]:
    task = Arith()
    return [encode_prompt(tok, task.prompt(e)) for e in task.load("test")[:n]]


# ---------------------------------------------------------------------------------------------- here: the errors


def test_a_cpu_policy_gets_one_clear_error(tiny_qwen_dir):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    with pytest.raises(ConfigError) as caught:
        make_generator("vllm", Policy(model, tok, CPU))
    message = str(caught.value)
    assert "rollout.backend=vllm" in message and "pip install 'rlbench[vllm]'" in message and "cpu" in message
    assert isinstance(caught.value, RuntimeError)


def test_missing_vllm_on_a_cuda_policy_gets_one_clear_error(tiny_qwen_dir, monkeypatch):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError, as where it is missing
    with pytest.raises(ConfigError) as caught:
        make_generator("vllm", Policy(model, tok, torch.device("cuda")))
    assert "rollout.backend=vllm" in str(caught.value) and "import vllm failed" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback from vllm
    for outside in ("0.8.5", "0.27.1", "0.34.0"):
        monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(__version__=outside))
        with pytest.raises(ConfigError, match=rf"found vllm {outside}, need >= 0\.28, < 0\.34"):
            make_generator("vllm", Policy(model, tok, torch.device("cuda")))


def test_the_version_window_is_the_extra_of_pyproject():
    import re
    from pathlib import Path

    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (spec,) = [d for d in extras["vllm"] if d.startswith("vllm")]
    low, high = re.fullmatch(r"vllm>=([\d.]+),<([\d.]+)", spec).groups()
    assert (low, high) == tuple(".".join(map(str, v)) for v in vllm_backend.VLLM_RANGE)


def test_vllm_beyond_one_process_is_refused_before_launch(tmp_path, monkeypatch):
    from rlbench.cli import main, train

    launched = []
    monkeypatch.setattr(train, "launch", lambda *a, **k: launched.append(a) or 0)
    for flags in (["--processes", "2"], ["--processes", "2", "--fsdp"]):
        result = CliRunner().invoke(
            main,
            [
                "train",
                "--task",
                "arith",
                *flags,
                "--out",
                str(tmp_path / "r"),
                "--set",
                "rollout.seed_rows=true",
                "--set",
                "rollout.backend=vllm",
            ],
        )
        assert result.exit_code == 2 and not launched, result.output
        assert (
            result.output.strip()
            .splitlines()[-1]
            .startswith("rlbench: error: rollout.backend=vllm: the vLLM engine runs on one GPU")
        )


def test_the_command_line_reports_it_in_one_line(tiny_qwen_dir, tmp_path):
    from rlbench.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(tiny_qwen_dir),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            "device=cpu",
            "--set",
            "rollout.backend=vllm",
            "--set",
            "budget.steps=1",
        ],
    )
    assert result.exit_code == 2, result.output
    # (the output also holds transformers' "Loading weights" progress bar)
    errors = [line.split("rlbench: error: ")[-1] for line in result.output.splitlines() if "rlbench: error: " in line]
    assert len(errors) == 1 and errors[0].startswith("rollout.backend=vllm needs vLLM"), result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------- here: the glue


class FakeLLM:
    """Stands in for ``vllm.LLM``: records what the backend asks, answers like vLLM's ``RequestOutput``s."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded, self.params = kwargs, [], [], []
        self.model = SimpleNamespace(load_weights=self._load_weights)

    def _load_weights(self, weights):
        batch = list(weights)
        self.loaded.append(batch)
        return {name for name, _ in batch}

    def apply_model(self, fn):
        self.calls.append("apply_model")
        return [fn(self.model)]

    def sleep(self, level):
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.calls.append(f"wake{tags}")

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append("generate")
        self.params = params
        out = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            # row i: i + 1 tokens, ending at a stop token on even rows; odd rows run to max_tokens
            n = min(i + 1, p.max_tokens) if i % 2 == 0 else p.max_tokens
            ids = [10 + (prompt["prompt_token_ids"][-1] + k) % 50 for k in range(n)]
            if i % 2 == 0:
                ids[-1] = p.stop_token_ids[0]
            logprobs = None
            if p.logprobs is not None:  # one dict per step holding the sampled token, as with logprobs=0
                logprobs = [{t: SimpleNamespace(logprob=-0.5 - k)} for k, t in enumerate(ids)]
            out.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason="?")]))
        return out


@pytest.fixture()
def fake_vllm(monkeypatch):
    fake = SimpleNamespace(
        __version__="0.11.0",
        LLM=FakeLLM,
        SamplingParams=lambda **kw: SimpleNamespace(**{"logprobs": None, "seed": None, "top_p": 1.0, **kw}),
    )
    monkeypatch.setattr(vllm_backend, "import_vllm", lambda device: fake)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return fake


def test_engine_settings_come_from_the_rollout_config(tiny_qwen_dir, fake_vllm):
    from rlbench.core.configure import build_run_config
    from rlbench.engine.build import build_generator

    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    config = build_run_config(
        {
            "rollout": {
                "backend": "vllm",
                "gpu_memory_utilization": 0.5,
                "max_model_len": 2048,
                "enforce_eager": True,
                "generation_batch_size": 16,
            }
        }
    )
    gen = build_generator(config, Policy(model, tok, CPU, "bf16"), str(tiny_qwen_dir))
    gen.generate(_prompts(tok, 2), temperature=1.0, top_p=1.0, max_new_tokens=3, seed=0)
    kwargs = gen._llm.kwargs
    assert (kwargs["gpu_memory_utilization"], kwargs["max_model_len"], kwargs["enforce_eager"]) == (0.5, 2048, True)
    assert (
        "max_model_len"
        not in build_generator(
            build_run_config({"rollout": {"backend": "vllm"}}), Policy(model, tok, CPU, "bf16"), str(tiny_qwen_dir)
        )
        ._engine()
        .kwargs
    )
    with pytest.raises(ConfigError, match="rollout.max_model_len=0"):
        build_run_config({"rollout": {"max_model_len": 0}})


def test_layout_settings_and_seeds(tiny_qwen_dir, fake_vllm):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    policy = Policy(model, tok, CPU, "bf16")
    gen = make_generator(
        "vllm", policy, batch_size=32, model_path=str(tiny_qwen_dir), options={"gpu_memory_utilization": 0.3}
    )
    prompts = _prompts(tok, 5)
    out = gen.generate(prompts, temperature=0.7, top_p=0.9, max_new_tokens=4, seed=3)
    llm = gen._llm
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["gpu_memory_utilization"] == 0.3
    assert llm.kwargs["max_num_seqs"] == 32 and llm.kwargs["skip_tokenizer_init"]
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # built, then given the policy's weights at once (in the engine's dtype), before generating
    assert llm.calls[:3] == ["apply_model", "reset", "generate"]
    names = [n for n, _ in model.named_parameters()]
    assert [n for n, _ in llm.loaded[0]] == names and {w.dtype for _, w in llm.loaded[0]} == {torch.bfloat16}
    stops = list(stop_ids(tok, model))
    for i, p in enumerate(llm.params):
        assert (p.temperature, p.top_p, p.max_tokens, p.logprobs, p.detokenize) == (0.7, 0.9, 4, 0, False)
        assert p.stop_token_ids == stops and p.seed == derive_seed(3, "vllm", i)
    # the layout: rows 0, 2, 4 end at a stop token after 1, 3, 4 tokens; rows 1 and 3 run to max_new_tokens
    assert out.response_mask.sum(1).tolist() == [1, 4, 3, 4, 4]
    assert out.truncated.tolist() == [False, True, False, True, False]
    assert out.finish_reasons == ["stop", "length", "stop", "length", "stop"]
    assert out.input_ids.shape == (5, out.prompt_len + 4) and out.prompt_len == max(len(p) for p in prompts)
    assert out.logprobs[0].tolist() == [-0.5, 0, 0, 0] and out.logprobs[1].tolist() == [-0.5, -1.5, -2.5, -3.5]
    assert bool((out.input_ids[:, out.prompt_len :][out.response_mask == 0] == tok.pad_token_id).all())
    greedy = gen.generate(prompts, temperature=0.7, top_p=0.9, max_new_tokens=4, greedy=True)
    assert greedy.logprobs is None and all(p.temperature == 0.0 and p.logprobs is None for p in llm.params)


def test_sleep_wake_and_weight_push_follow_the_trainer(tiny_qwen_dir, fake_vllm):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    policy = Policy(model, tok, CPU, "fp32")
    gen = make_generator("vllm", policy, model_path=str(tiny_qwen_dir))
    gen.sync_weights(policy)  # before the engine exists: nothing to push yet
    gen.sleep()
    assert gen._llm is None
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=3, seed=0)
    gen.generate(_prompts(tok, 2), **kw)
    llm = gen._llm
    assert llm.kwargs["dtype"] == "float32"
    llm.calls.clear()
    # a trainer step: sleep before the update, push after it (weights woken alone), generate (the KV cache woken)
    gen.sleep()
    gen.sleep()  # twice is once
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    gen.sync_weights(policy)
    gen.generate(_prompts(tok, 2), **kw)
    assert llm.calls == ["sleep1", "wake['weights']", "apply_model", "reset", "wake['kv_cache']", "reset", "generate"]
    pushed = dict(llm.loaded[-1])
    assert torch.equal(pushed["model.embed_tokens.weight"], model.model.embed_tokens.weight)
    assert "lm_head.weight" not in pushed  # tied to the embedding: named_parameters gives it once


def test_a_short_row_without_a_stop_token_is_an_error(tiny_qwen_dir, fake_vllm, monkeypatch):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    gen = make_generator("vllm", Policy(model, tok, CPU), model_path=str(tiny_qwen_dir))
    monkeypatch.setattr(
        FakeLLM,
        "generate",
        lambda self, prompts, params, use_tqdm=True: [
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=[11, 12], logprobs=None, finish_reason="length")])
            for _ in prompts
        ],
    )
    with pytest.raises(RuntimeError, match="max_model_len"):
        gen.generate(_prompts(tok, 2), temperature=1.0, top_p=1.0, max_new_tokens=5, greedy=True)


# ---------------------------------------------------------------------------------------------- on a GPU with vLLM

GPU_REASON = "needs vLLM and a CUDA GPU: run on a GPU machine after pip install 'rlbench[vllm]'"


@pytest.fixture(scope="module")
def gpu_pair(tmp_path_factory):
    """A tiny Qwen2 vLLM can serve (head_dim 64: every vLLM attention backend has it), its bf16 policy and engine."""
    pytest.importorskip("vllm", reason=GPU_REASON)
    if not torch.cuda.is_available():
        pytest.skip(GPU_REASON)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlbench.run.tiny.tokenizer import build_char_tokenizer

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    # initializer_range 0.05: in bf16 on a CPU, 61 of 64 greedy completions of rlbench and hf agreed (0.2: 26)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.05,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("vllm-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    cuda = torch.device("cuda")
    model, tok = load_model(str(path), "bf16", cuda)
    policy = Policy(model, tok, cuda, "bf16")
    return policy, make_generator("vllm", policy, model_path=str(path), options={"gpu_memory_utilization": 0.2})


@torch.no_grad()
def _trainer_logprobs(policy: Policy, gen, temperature: float) -> torch.Tensor:
    """What the trainer recomputes: the policy's forward over prompt + completion, at the sampling temperature."""
    logits = policy.model(
        input_ids=gen.input_ids,
        attention_mask=gen.attention_mask,
        position_ids=position_ids_from_mask(gen.attention_mask),
    ).logits
    P, T = gen.prompt_len, gen.response_mask.shape[1]
    steps = logits[:, P - 1 : P + T - 1]
    tokens = gen.input_ids[:, P:]
    lp = token_logprobs(steps.reshape(-1, steps.shape[-1]), tokens.reshape(-1), temperature).view(tokens.shape)
    return lp * gen.response_mask


def _gap(policy, gen, temperature) -> float:
    delta = (_trainer_logprobs(policy, gen, temperature) - gen.logprobs).abs() * gen.response_mask
    return float(delta.sum() / gen.response_mask.sum())


def test_gpu_greedy_completions_equal_model_generate_up_to_near_ties(gpu_pair):
    policy, vllm_gen = gpu_pair
    prompts = _prompts(policy.tokenizer, 32)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=24, greedy=True)
    ours = vllm_gen.generate(prompts, **kw)
    vllm_gen.sleep()
    theirs = make_generator("hf", policy).generate(prompts, **kw)
    assert ours.logprobs is None and ours.prompt_len == theirs.prompt_len
    P, same = ours.prompt_len, 0
    for i in range(len(prompts)):
        a = ours.input_ids[i, P:][ours.response_mask[i].bool()].tolist()
        b = theirs.input_ids[i, P:][theirs.response_mask[i].bool()].tolist()
        if a == b:
            same += 1
            continue
        # they may part only where the two choices were a near-tie under the policy (bf16 numerics differ)
        d = next(k for k in range(min(len(a), len(b)) + 1) if k == min(len(a), len(b)) or a[k] != b[k])
        assert d < min(len(a), len(b)), f"row {i}: one completion is a prefix of the other"
        ids = torch.tensor([prompts[i] + a[:d]], device=policy.device)
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, -1].float()
        assert abs(float(logits[a[d]] - logits[b[d]])) < 0.1, f"row {i} parts at token {d} without a near-tie"
    assert same >= len(prompts) // 2, f"only {same}/{len(prompts)} identical greedy completions"


def test_gpu_sampler_gap_is_small_after_sync_weights(gpu_pair):
    policy, gen = gpu_pair
    prompts = _prompts(policy.tokenizer, 32)
    kw = dict(temperature=0.7, top_p=1.0, max_new_tokens=24, seed=1)
    first = gen.generate(prompts, **kw)
    again = gen.generate(prompts, **kw)
    assert torch.equal(first.input_ids, again.input_ids)  # seeded per row
    assert _gap(policy, first, 0.7) < 0.05
    gen.sleep()
    with torch.no_grad():  # an update big enough to move every distribution
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    stale = gen.generate(prompts, **kw)  # woken from sleep with the old weights: far from the new policy
    gen.sleep()
    assert _gap(policy, stale, 0.7) > 0.2
    gen.sync_weights(policy)
    fresh = gen.generate(prompts, **kw)
    gen.sleep()
    assert _gap(policy, fresh, 0.7) < 0.05
