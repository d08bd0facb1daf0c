"""Generated tokens/s: rlbench's decoder vs ``transformers``' ``model.generate`` vs a bare DynamicCache loop.

    python benchmarks/generation.py [--threads 1] [--batch-sizes 16,64,256] [--new-tokens 64] [--repeats 7]
                                    [--model auto|random|tiny|DIR]

Same model, same prompts (the arith task's test prompts, left-padded), same sampling (T=1, top_p=1, no top-k), same
``max_new_tokens``; every method stops a row at its first EOS and stops when every row has stopped. The methods run
alternately (one of each per repeat, the order rotating) and the table reports medians over repeats.

tokens/s counts completion tokens (up to and including EOS) per second of wall time, prompt processing included.
GFLOP/s is the useful work per second: 2 FLOPs per weight of every linear layer (lm_head included) per token, prompt
and completion, plus 4 * layers * hidden * context for attention (QK^T and PV) per token, against the fp32 peak of a
1024 x 1024 matmul measured at the same thread count.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from tinylab import MODEL_HELP, arith_prompts, contention, matmul_peak_gflops, resolve_model  # noqa: E402
from transformers import DynamicCache, GenerationConfig  # noqa: E402

from rlbench.engine.decoder import Decoder
from rlbench.engine.generation import encode_prompt, left_pad  # noqa: E402
from rlbench.engine.policy import Policy, load_model, position_ids_from_mask  # noqa: E402


def completion_lengths(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens up to and including the first EOS of each row (all of them when there is none)."""
    is_eos = tokens == eos
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, tokens.shape[1])
    return first


_GENERATORS: dict[tuple[int, bool], Decoder] = {}


def run_rlbench(policy, prompt_ids, new_tokens, seed, fast=True) -> tuple[int, int]:
    """One Decoder per policy, as the trainer keeps one (its first call checks the fast path once)."""
    generator = _GENERATORS.setdefault((id(policy), fast), Decoder(policy, fast=fast))
    gen = generator.generate(prompt_ids, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=seed)
    lengths = gen.response_mask.sum(1)
    return int(lengths.sum()), _context_sum(prompt_ids, lengths)


def run_transformers(policy, prompt_ids, new_tokens, seed) -> tuple[int, int]:
    tok, model = policy.tokenizer, policy.model
    ids, mask = left_pad(prompt_ids, tok.pad_token_id, policy.device)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        disable_compile=True,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    lengths = completion_lengths(out[:, ids.shape[1] :], tok.eos_token_id)
    return int(lengths.sum()), _context_sum(prompt_ids, lengths)


@torch.no_grad()
def run_bare_loop(policy, prompt_ids, new_tokens, seed) -> tuple[int, int]:
    """The textbook loop: model(...) with a DynamicCache, the mask grown by torch.cat, torch.multinomial sampling."""
    tok, model = policy.tokenizer, policy.model
    ids, mask = left_pad(prompt_ids, tok.pad_token_id, policy.device)
    B = ids.shape[0]
    rng = torch.Generator().manual_seed(seed)
    cache, pos, step_ids = DynamicCache(), position_ids_from_mask(mask), ids
    params = inspect.signature(model.forward).parameters  # transformers 5.x renamed past_key_values to cache
    cache_kw = "cache" if "cache" in params else "past_key_values"
    alive = torch.ones(B, dtype=torch.bool)
    lengths = torch.zeros(B, dtype=torch.long)
    for _ in range(new_tokens):
        logits = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        ).logits[:, -1]
        nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=rng).squeeze(-1)
        lengths += alive.long()
        alive &= nxt != tok.eos_token_id
        if not bool(alive.any()):
            break
        step_ids, pos = nxt[:, None], pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype)], dim=1)
    return int(lengths.sum()), _context_sum(prompt_ids, lengths)


def _context_sum(prompt_ids, lengths: torch.Tensor) -> int:
    """Sum over every processed token of the number of keys it attends to (its position + 1)."""
    total = 0
    for p, n in zip(prompt_ids, lengths.tolist()):
        length = len(p) + int(n)
        total += length * (length + 1) // 2
    return total


def useful_flops(model, prompt_ids, generated: int, context_sum: int) -> float:
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    tokens = sum(len(p) for p in prompt_ids) + generated
    return 2.0 * linear * tokens + 4.0 * cfg.num_hidden_layers * cfg.hidden_size * context_sum


METHODS = {
    "rlbench": lambda pol, ids, n, s: run_rlbench(pol, ids, n, s, fast=True),
    "rlbench DynamicCache path": lambda pol, ids, n, s: run_rlbench(pol, ids, n, s, fast=False),
    "transformers generate": run_transformers,
    "bare DynamicCache loop": run_bare_loop,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--batch-sizes", default="16,64,256")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model", default="tiny", help=MODEL_HELP)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir, model_desc = resolve_model(args.model)
    model, tokenizer = load_model(model_dir, "fp32", torch.device("cpu"))
    model.eval()
    policy = Policy(model, tokenizer, torch.device("cpu"))
    methods = [m.strip() for m in args.methods.split(",")]
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak_gflops()
    print(
        f"model: {model_desc}, {params / 1e6:.2f} M parameters; torch {torch.__version__}, {args.threads} thread(s); "
        f"{contention()} at start"
    )
    print(f"fp32 1024x1024 matmul peak at {args.threads} thread(s): {peak:.1f} GFLOP/s")
    print(
        f"sampling: T=1, top_p=1, no top-k; max_new_tokens={args.new_tokens}; medians of {args.repeats} alternating repeats"
    )
    print()
    print("| batch | method | tokens/s | s/call | mean completion | GFLOP/s | % of peak | vs transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompt_ids = [encode_prompt(tokenizer, p) for p in arith_prompts(batch)]
        for name in methods:  # warm-up (allocator, lazy init)
            METHODS[name](policy, prompt_ids[: min(batch, 8)], 4, 0)
        rows: dict[str, list[tuple[float, int, float]]] = {m: [] for m in methods}
        for rep in range(args.repeats):
            order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
            for name in order:
                start = time.perf_counter()
                generated, ctx = METHODS[name](policy, prompt_ids, args.new_tokens, 1000 + rep)
                seconds = time.perf_counter() - start
                rows[name].append((seconds, generated, useful_flops(model, prompt_ids, generated, ctx)))
        base = None
        if "transformers generate" in rows:
            base = statistics.median(g / s for s, g, _ in rows["transformers generate"])
        for name in methods:
            tps = statistics.median(g / s for s, g, _ in rows[name])
            secs = statistics.median(s for s, _, _ in rows[name])
            gflops = statistics.median(f / s / 1e9 for s, _, f in rows[name])
            mean_len = statistics.fmean(g for _, g, _ in rows[name]) / batch
            ratio = f"{tps / base:.2f}x" if base else "-"
            print(
                f"| {batch} | {name} | {tps:,.0f} | {secs:.3f} | {mean_len:.1f} | {gflops:.1f} | "
                f"{100 * gflops / peak:.0f}% | {ratio} |",
                flush=True,
            )
    print(f"\n{contention()} at end")


if __name__ == "__main__":
    main()
