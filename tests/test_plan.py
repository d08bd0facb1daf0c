"""`rlbench plan`: every memory term checked by hand on a made-up shape, the shapes it reads, and the command."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.configure import build_run_config
from rlbench.run.plan import CUDA_OVERHEAD, GIB, ModelShape, estimate, fsdp_gpus_needed, model_shape

# 2 layers, hidden 8, MLP 16, 2 heads / 1 KV head of 4, vocabulary 10, 1,000 weights, 64 of them LoRA adapters
SHAPE = ModelShape(
    name="made-up",
    layers=2,
    hidden=8,
    intermediate=16,
    heads=2,
    kv_heads=1,
    head_dim=4,
    vocab=10,
    parameters=1000,
    lora_parameters=64,
    source="test",
)
PROMPT = 5  # + max_new_tokens 3 = 8 tokens a row


def _config(**extra):
    tree = {
        "algo": {"name": "grpo", "kl_loss_coef": 0.1},
        "precision": "bf16",  # grpo with a KL: a reference copy
        "rollout": {"batch_size": 8, "samples_per_prompt": 2, "micro_batch_size": 2, "generation_batch_size": 4},
        "sampling": {"max_new_tokens": 3},
    }
    for key, value in extra.items():
        section, _, leaf = key.partition("__")
        if leaf:
            tree.setdefault(section, {})[leaf] = value
        else:
            tree[key] = value
    return build_run_config(tree)


def _terms(config, shape=SHAPE, needs_reference=True):
    plan = estimate(config, shape, PROMPT, needs_reference)
    return plan, {t.name: t.bytes for t in plan.terms}


def test_bf16_full_fine_tuning_term_by_term():
    plan, t = _terms(_config())
    assert t["weights"] == 1000 * 4  # fp32 masters
    assert t["reference copy"] == 1000 * 4
    assert t["optimiser (adamw)"] == 2 * 1000 * 4  # two fp32 states per weight
    assert t["KV cache"] == 2 * 2 * 1 * 4 * 2 * 4 * 8  # K and V x layers x kv heads x head_dim x bf16 x rows x tokens
    assert t["gradients"] == 1000 * 4
    assert t["autocast weight copies"] == 1000 * 2
    # under autocast a layer saves 7 x hidden + 2 x kv_dim + 4 x MLP bf16 casts and 4 x hidden fp32 norm values
    per_layer = (7 * 8 + 2 * 1 * 4 + 4 * 16) * 2 + 4 * 8 * 4  # 384 bytes a token in one layer
    assert t["activations"] == 2 * 8 * 2 * per_layer  # micro-batch rows x tokens x layers x bytes
    assert t["logits"] == 2 * 3 * 10 * (2 + 12)  # rows x completion tokens x vocabulary x (bf16 + 3 fp32 copies)
    assert t["decoding logits"] == 4 * 10 * 4 * 4  # generation rows x vocabulary x 4 fp32 copies
    resident = 4000 + 4000 + 8000
    assert plan.total("generate") == CUDA_OVERHEAD + resident + 1024 + 640
    assert plan.total("update") == CUDA_OVERHEAD + resident + 4000 + 2000 + 12288 + 840
    assert plan.peak == plan.total("update")
    sharded = plan.sharded(2)  # FSDP halves the weights, reference, optimiser, gradients and autocast copies only
    assert sharded.total("update") == CUDA_OVERHEAD + (resident + 4000 + 2000) / 2 + 12288 + 840


def test_lora_trains_and_stores_only_the_adapters():
    _, t = _terms(_config(lora__rank=4))
    assert t["weights"] == 1000 * 4 and t["LoRA adapters"] == 64 * 4
    assert "reference copy" not in t  # the reference is the base with the adapters off
    assert t["optimiser (adamw)"] == 2 * 64 * 4 and t["gradients"] == 64 * 4


def test_bf16_pure_halves_weights_states_and_gradients():
    _, t = _terms(_config(precision="bf16-pure"))
    assert t["weights"] == t["reference copy"] == t["gradients"] == 1000 * 2
    assert t["optimiser (adamw)"] == 2 * 1000 * 2  # torch keeps AdamW's states in the weight's dtype
    assert "autocast weight copies" not in t


def test_fp32_activations_take_4_bytes_and_8bit_states_1():
    _, t = _terms(_config(precision="fp32", optim__name="adamw-8bit"))
    assert t["activations"] == 2 * 8 * 2 * 136 * 4 and t["KV cache"] == 2 * 2 * 1 * 4 * 4 * 4 * 8
    assert t["optimiser (adamw-8bit)"] == 2 * 1000 * 1


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    _, t = _terms(_config(gradient_checkpointing=True))
    # tokens x (layers x hidden fp32 inputs + one layer's 384 bytes)
    assert t["activations"] == 2 * 8 * (2 * 8 * 4 + 384)
    assert t["autocast weight copies"] == 1000 * 2 / 2  # one layer's casts at a time


def test_fsdp_needs_the_fewest_gpus_that_fit():
    big = ModelShape(
        name="big",
        layers=1,
        hidden=8,
        intermediate=16,
        heads=2,
        kv_heads=1,
        head_dim=4,
        vocab=10,
        parameters=2**30,
        lora_parameters=0,
        source="test",
    )
    plan, _ = _terms(_config(algo="reinforce"), big, needs_reference=False)
    # sharded: 4 (weights) + 8 (AdamW) + 4 (gradients) + 2 (autocast) = 18 GiB; + 1.5 GiB overhead and a few bytes:
    # 2 GPUs need 10.5 GiB each, 3 need 7.5
    assert fsdp_gpus_needed(plan, 10) == 3
    assert fsdp_gpus_needed(plan, 20) == 1
    assert plan.sharded(3).peak < 7.6 * GIB


@pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing.*:FutureWarning"
)  # peft asks transformers 5 by an old name
def test_the_shape_of_a_local_folder_counts_what_loads(tiny_qwen_dir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    config = build_run_config({"model": str(tiny_qwen_dir), "lora": {"rank": 4}})
    shape = model_shape(config)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert (shape.layers, shape.hidden, shape.kv_heads, shape.head_dim) == (2, 32, 2, 8)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=config.lora.target_modules))
    assert shape.lora_parameters == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def test_the_paper_models_are_known_without_the_hub():
    sizes = {
        "Qwen/Qwen2.5-0.5B": 494_032_768,
        "Qwen/Qwen2.5-1.5B": 1_543_714_304,
        "Qwen/Qwen2.5-Math-7B": 7_615_616_512,
    }  # the published 0.49B, 1.54B, 7.62B
    for name, size in sizes.items():
        assert model_shape(build_run_config({"model": name})).parameters == size


def _plan_cli(*args):
    return CliRunner().invoke(main, ["plan", *args])


def test_plan_prints_the_config_the_size_and_a_verdict():
    result = _plan_cli("--config", "configs/gsm8k-qwen2.5-1.5b.yaml")
    assert result.exit_code == 0, result.output
    assert "resolved config:" in result.output and "precision: bf16" in result.output
    # the config sets gradient checkpointing: without it, fp32 norms and residual stream under autocast need more
    # than one 80 GiB GPU holds
    assert "1,543,714,304 parameters" in result.output and "fits on one 80 GiB GPU" in result.output
    bare = _plan_cli("--config", "configs/gsm8k-qwen2.5-1.5b.yaml", "--set", "gradient_checkpointing=false")
    assert "does NOT fit on one 80 GiB GPU" in bare.output
    assert re.search(r"gradient_checkpointing: true alone: peak [\d.]+ GiB, fits", bare.output)
    small = _plan_cli("--config", "configs/gsm8k-qwen2.5-1.5b.yaml", "--gpu-memory", "24")
    assert "does NOT fit on one 24 GiB GPU" in small.output and "FSDP across" in small.output


def test_plan_says_how_the_7b_config_could_fit():
    result = _plan_cli("--config", "configs/math-hard-qwen2.5-math-7b.yaml", "--prompt-len", "1024")
    assert result.exit_code == 0, result.output
    assert "does NOT fit" in result.output
    assert re.search(r"FSDP across \d+ GPUs", result.output) and "LoRA (lora.rank=16" in result.output


def test_plan_of_a_missing_folder_is_one_line(tmp_path):
    result = _plan_cli("--model", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "no such directory" in result.output


def test_fsdp_adds_the_full_rollout_copy_and_shards_the_rest():
    plain = estimate(_config(), SHAPE, PROMPT, True)
    fsdp = estimate(_config(), SHAPE, PROMPT, True, fsdp=True)
    t = {x.name: x for x in fsdp.terms}
    copy = t["rollout copy (FSDP)"]
    assert copy.bytes == 1000 * 4 and not copy.sharded and copy.phase == "generate"  # fp32, whole, on the CPU after
    resident = 4000 + 4000 + 8000  # weights, reference, AdamW: halved over 2 GPUs; the rollout copy is not
    assert fsdp.sharded(2).total("generate") == CUDA_OVERHEAD + resident / 2 + 1024 + 640 + 4000
    host = {x.name: x.bytes for x in fsdp.terms if x.phase == "host"}  # CPU memory, outside the GPU totals
    assert host == {"models loaded whole, then sharded": 3 * 1000 * 4, "rollout copy, asleep": 1000 * 4}
    assert fsdp.sharded(2).total("update") == plain.sharded(2).total("update")
    pure = {x.name: x.bytes for x in estimate(_config(precision="bf16-pure"), SHAPE, PROMPT, True, fsdp=True).terms}
    assert pure["rollout copy (FSDP)"] == 1000 * 2  # the weights' own dtype


def test_plan_shows_the_7b_config_on_8_gpus_with_fsdp():
    args = ("--config", "configs/math-hard-qwen2.5-math-7b.yaml", "--prompt-len", "1024")
    result = _plan_cli(*args, "--processes", "8", "--fsdp")
    assert result.exit_code == 0, result.output
    assert "FSDP across 8 GPUs" in result.output and "rollout copy (FSDP)" in result.output
    assert "verdict: fits on 8 x 80 GiB GPUs with FSDP" in result.output
    # the suggestion for one GPU counts the rollout copy too, and names the command that shows it
    assert re.search(r"FSDP across (\d+) GPUs: .*rlbench plan --processes \1 --fsdp", _plan_cli(*args).output)
    # data parallelism alone: every GPU holds the whole model, the plan of one
    assert "does NOT fit on one 80 GiB GPU" in _plan_cli(*args, "--processes", "8").output


def test_ppo_counts_its_critic():
    config = _config(algo="ppo")
    model = {x.name: x for x in estimate(config, SHAPE, PROMPT, False, critic="model").terms}
    assert model["critic (model)"].bytes == 1000 * 4 + 9 * 4  # the transformer's copy (fp32) and its scalar head
    assert model["critic optimiser (adamw)"].bytes == 2 * (1000 * 4 + 9 * 4)
    assert model["critic gradients"].bytes == 1000 * 4 + 9 * 4 and model["critic autocast copies"].bytes == 1000 * 2
    assert model["critic activations"].bytes == model["activations"].bytes  # the same layers, run again
    head = {x.name: x.bytes for x in estimate(config, SHAPE, PROMPT, False, critic="head").terms}
    assert head["critic (head)"] == 9 * 4 and "critic activations" not in head
    untied = ModelShape(**{**SHAPE.__dict__, "head_parameters": 80})  # an LM head of its own: not in the critic
    assert {x.name: x.bytes for x in estimate(config, untied, PROMPT, False, critic="model").terms}[
        "critic (model)"
    ] == 920 * 4 + 9 * 4


@pytest.mark.parametrize(
    "config, prompt", [("configs/gsm8k-qwen2.5-1.5b.yaml", "512"), ("configs/math-hard-qwen2.5-math-7b.yaml", "1024")]
)
def test_plan_for_ppo_lists_the_critic_on_the_paper_configs(config, prompt):
    ppo, em_pg = (_plan_cli("--config", config, "--algo", algo, "--prompt-len", prompt) for algo in ("ppo", "em-pg"))
    assert ppo.exit_code == 0, ppo.output
    for name in ("critic (model)", "critic optimiser (adamw)", "critic activations", "critic gradients"):
        assert name in ppo.output and name not in em_pg.output
    peak = lambda out: float(re.search(r"^  peak\s+([\d.]+)", out, re.M).group(1))  # noqa: E731
    assert peak(ppo.output) > peak(em_pg.output)
