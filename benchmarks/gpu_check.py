"""The steps of benchmarks/gpu_check.sh, one process each, so that one backend's failure cannot take the others down.

    python benchmarks/gpu_check.py model DIR [--smoke]        # a Qwen2.5-0.5B (local copy, else its shape, random)
    python benchmarks/gpu_check.py generate --model DIR --backend rlbench|hf|vllm [--prompts 64] [--new-tokens 256]
                                  [--device cuda] [--precision bf16] [--dump FILE]
    python benchmarks/gpu_check.py compare A.json B.json      # share of identical greedy completions
    python benchmarks/gpu_check.py metrics RUN_DIR            # a run's sampler gap, per step
    python benchmarks/gpu_check.py collectives                # 1 GPU: the NCCL group refuses CPU tensors, and
                                                              # rlbench's collectives take the GPU (Ranks.device)
    python benchmarks/gpu_check.py memory [--smoke]           # a 1.5B-shaped update's measured peak vs rlbench plan

Each step prints ``RESULT {json}`` lines; the shell script collects them into summary.txt.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Qwen2.5-0.5B's shape (its config.json); a random model of this shape times like the real one
QWEN_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
# Qwen2.5-1.5B's shape: the memory check's update (random init on the GPU, no download)
QWEN_15B = dict(
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
# the smoke test's: small enough for a CPU, head_dim 32
SMOKE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=128,
    vocab_size=256,
    tie_word_embeddings=True,
)


def result(**row) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def local_qwen() -> str | None:
    """A Qwen2.5-0.5B already on disk (``$GPU_CHECK_MODEL`` or the Hugging Face cache); nothing is downloaded."""
    if os.environ.get("GPU_CHECK_MODEL"):
        return os.environ["GPU_CHECK_MODEL"]
    roots = [os.environ.get("HF_HOME", ""), os.path.expanduser("~/.cache/huggingface")]
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/hub/models--Qwen--Qwen2.5-0.5B*/snapshots/*/config.json"))
        found = [f for f in found if glob.glob(str(Path(f).parent / "*.safetensors"))]
        if found:
            return str(Path(found[0]).parent)
    return None


def padded_char_tokenizer(vocab_size: int):
    """The tiny lab's character tokenizer, filled up to ``vocab_size`` ids so that every id a random model samples
    decodes (as ``<xN>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from rlbench.run.tiny.tokenizer import CHARS, SPECIAL

    words = SPECIAL + list(dict.fromkeys(CHARS))
    words += [f"<x{i}>" for i in range(len(words), vocab_size)]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def cmd_model(args) -> None:
    found = None if args.smoke else local_qwen()
    if found:
        result(step="model", path=found, description=f"Qwen2.5-0.5B from {found}")
        return
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = SMOKE if args.smoke else QWEN_05B
    tok = padded_char_tokenizer(shape["vocab_size"])
    config = Qwen2Config(
        **shape,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"):
        model = Qwen2ForCausalLM(config)  # random init on the GPU: seconds, not the CPU's minute
    model.to(torch.float32 if args.smoke else torch.bfloat16).save_pretrained(args.dir)
    tok.save_pretrained(args.dir)
    n = sum(p.numel() for p in model.parameters())
    what = "smoke-test Qwen2" if args.smoke else "Qwen2.5-0.5B's shape"
    result(
        step="model",
        path=args.dir,
        description=f"{what}, random init, {n / 1e6:.2f}M parameters, char tokenizer "
        f"padded to {shape['vocab_size']} ids",
        seconds=round(time.perf_counter() - start, 1),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def sampler_gap(policy, gen, temperature: float, chunk: int = 8) -> float:
    """mean |log pi_trainer(y_t) - log pi_sampler(y_t)| over the completion tokens (the trainer's sampler_gap_abs)."""
    from rlbench.engine.generation import token_logprobs
    from rlbench.engine.policy import position_ids_from_mask

    total, count = 0.0, 0.0
    P = gen.prompt_len
    for i in range(0, gen.input_ids.shape[0], chunk):
        ids, mask = gen.input_ids[i : i + chunk], gen.attention_mask[i : i + chunk]
        with policy.autocast():
            logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        steps = logits[:, P - 1 : -1].float()
        tokens = ids[:, P:]
        lp = token_logprobs(steps.reshape(-1, steps.shape[-1]), tokens.reshape(-1), temperature).view(tokens.shape)
        m = gen.response_mask[i : i + chunk]
        total += float(((lp - gen.logprobs[i : i + chunk]).abs() * m).sum())
        count += float(m.sum())
    return total / max(count, 1.0)


def cmd_generate(args) -> None:
    from rlbench.tasks.arith import Arith

    from rlbench.engine.generation import encode_prompt, make_generator
    from rlbench.engine.policy import Policy, load_model

    device = torch.device(args.device)
    start = time.perf_counter()
    model, tok = load_model(args.model, args.precision, device)
    policy = Policy(model, tok, device, args.precision)
    options = {"gpu_memory_utilization": args.gpu_memory_utilization} if args.backend == "vllm" else None
    gen = make_generator(args.backend, policy, batch_size=args.prompts, model_path=args.model, options=options)
    task = Arith()
    examples = task.load("test")
    prompts = [encode_prompt(tok, task.prompt(examples[i % len(examples)])) for i in range(args.prompts)]
    gen.generate(prompts[:4], temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)  # warm-up (vLLM: the engine)
    _sync(device)
    startup = time.perf_counter() - start
    row = dict(
        step="generate",
        backend=args.backend,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
        precision=args.precision,
        startup_s=round(startup, 1),
    )
    for mode in ("greedy", "sampled"):
        _sync(device)
        t0 = time.perf_counter()
        out = gen.generate(
            prompts,
            temperature=args.temperature,
            top_p=1.0,
            max_new_tokens=args.new_tokens,
            greedy=mode == "greedy",
            seed=1,
        )
        _sync(device)
        seconds = time.perf_counter() - t0
        row[f"{mode}_s"] = round(seconds, 2)
        row[f"{mode}_tokens"] = out.num_tokens
        row[f"{mode}_tokens_per_s"] = round(out.num_tokens / seconds, 1)
        if mode == "greedy" and args.dump:
            P = out.prompt_len
            Path(args.dump).write_text(
                json.dumps([r[P:][m.bool()].tolist() for r, m in zip(out.input_ids.cpu(), out.response_mask.cpu())])
            )
        if mode == "sampled":
            gen.sleep()
            row["truncated_frac"] = round(float(out.truncated.float().mean()), 3)
            row["sampler_gap_abs"] = round(sampler_gap(policy, out, args.temperature), 5)
    result(**row)


def cmd_compare(args) -> None:
    a, b = json.loads(Path(args.a).read_text()), json.loads(Path(args.b).read_text())
    same = sum(x == y for x, y in zip(a, b))
    prefix = [next((k for k, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y))) for x, y in zip(a, b)]
    result(
        step="compare",
        a=Path(args.a).stem,
        b=Path(args.b).stem,
        rows=len(a),
        identical=same,
        identical_share=round(same / max(len(a), 1), 3),
        mean_common_prefix_tokens=round(sum(prefix) / max(len(prefix), 1), 1),
        mean_length=round(sum(map(len, a)) / max(len(a), 1), 1),
    )


def cmd_metrics(args) -> None:
    rows = [json.loads(line) for line in (Path(args.run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ("sampler_gap_abs", "sampler_gap_kl", "gen_tokens_per_s", "reward_mean", "loss")
    for r in rows:
        result(
            step="train",
            run=Path(args.run).name,
            **{"step_n": r.get("step")},
            **{k: r.get(k) for k in keys},
            time={k: round(v, 2) for k, v in (r.get("time") or {}).items()},
        )
    if not rows:
        sys.exit(f"{args.run}: no metrics.jsonl rows")


def cmd_collectives(args) -> None:
    """A one-process NCCL group (one GPU cannot hold two NCCL ranks): it must refuse a CPU tensor, and the device
    rlbench's collectives use must be the GPU, where an all-reduce of each kind Ranks makes succeeds."""
    import torch.distributed as dist

    from rlbench.engine.process_group import group_device

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29591")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    device = group_device(torch.device("cuda", 0))
    try:
        dist.all_reduce(torch.ones(1))
        refused = "accepted (unexpected: this group has a CPU backend)"
    except RuntimeError as exc:
        refused = str(exc).splitlines()[0][:120]
    for dtype in (torch.float64, torch.int32, torch.float32):  # sum_floats, sum_grads' flags, gradients
        t = torch.ones(3, dtype=dtype, device=device)
        dist.all_reduce(t)
    box = [None]
    dist.all_gather_object(box, {"rank": 0})
    dist.barrier()
    dist.destroy_process_group()
    result(step="collectives", group_device=str(device), cpu_tensor=refused, ok=device.type == "cuda")


def cmd_memory(args) -> None:
    """One PPO update (a critic of its own, fp32 masters under bf16 autocast) of a random model of Qwen2.5-1.5B's
    shape (``--smoke``: the smoke shape on the CPU, where there is no allocator peak to read): torch's peak
    allocation against ``rlbench plan``'s update total for the same batch shape."""
    import copy
    import tempfile

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlbench.core.configure import build_run_config
    from rlbench.run.plan import CUDA_OVERHEAD, GIB, plan_run
    from rlbench.run.training import build_trainer

    shape = SMOKE if args.smoke else QWEN_15B
    device = "cpu" if args.smoke else "cuda"
    folder = tempfile.mkdtemp(prefix="gpu-check-memory-")
    tok = padded_char_tokenizer(shape["vocab_size"])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(
            Qwen2Config(
                **shape,
                max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    config = build_run_config(
        {
            "model": folder,
            "algo": {"name": "ppo", "minibatches": 1},
            "precision": "fp32" if args.smoke else "bf16",
            "device": device,
            "out": os.path.join(folder, "run"),
            "rollout": {"batch_size": args.rows, "samples_per_prompt": 2, "micro_batch_size": args.rows},
            "sampling": {"max_new_tokens": args.new_tokens},
            "task": {"name": "arith", "train_size": 64, "test_size": 4},
            "budget": {"steps": 1},
            "eval": {"limit": 2, "samples": 0, "every": 0},
        }
    )
    trainer = build_trainer(config, progress=False)
    trainer.policy.fast = trainer.policy.share_prompts = False  # the plan's layout: every row, the model's forward
    batch, _, _ = trainer.rollout(0, {})
    trainer._fill_logprobs(batch, {})
    trainer.algo.compute_advantages(batch)
    trainer.update(batch, {})  # AdamW's states exist from here on: the second update is the steady one
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.update(batch, {})
    drawn = copy.deepcopy(config)
    drawn.sampling.max_new_tokens = batch.response_mask.shape[1]
    drawn._algorithm = config.algorithm
    planned = plan_run(drawn, batch.prompt_len, 80.0).total("update") - CUDA_OVERHEAD
    row = dict(
        step="memory",
        shape="smoke" if args.smoke else "Qwen2.5-1.5B",
        rows=args.rows,
        prompt=batch.prompt_len,
        completion=batch.response_mask.shape[1],
        plan_gib=round(planned / GIB, 2),
    )
    if device == "cuda":
        measured = torch.cuda.max_memory_allocated()
        row.update(measured_gib=round(measured / GIB, 2), plan_over_measured=round(planned / measured, 3))
    result(**row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("model")
    p.add_argument("dir")
    p.add_argument("--smoke", action="store_true")
    p = sub.add_parser("generate")
    p.add_argument("--model", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    p.add_argument("--dump")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("metrics")
    p.add_argument("run")
    sub.add_parser("collectives")
    p = sub.add_parser("memory")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=512)
    args = parser.parse_args()
    {
        "model": cmd_model,
        "generate": cmd_generate,
        "compare": cmd_compare,
        "metrics": cmd_metrics,
        "collectives": cmd_collectives,
        "memory": cmd_memory,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
