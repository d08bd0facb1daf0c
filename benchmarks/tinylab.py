"""Shared by the benchmarks: which tiny-lab model to time, arith prompts, peak matmul throughput, peak RSS."""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODEL_HELP = (
    "tiny (default; also auto): the tiny lab's pinned reference warm-start, the main job's starting model; random: a "
    "randomly initialised tiny-lab model (same architecture; its completions run to the length cap and its rewards "
    "are ~0); or a saved Hugging Face model directory"
)


def resolve_model(spec: str) -> tuple[str, str]:
    """(directory, description) of the model to benchmark; a random one is saved to a temporary directory."""
    if spec in ("auto", "tiny"):
        from rlbench.tasks.arith import Arith

        from rlbench.core.config import RunConfig
        from rlbench.run.tiny.warmstart import reference_warmstart

        path = reference_warmstart(RunConfig().tiny, Arith())
        return str(path), f"tiny-lab reference warm-start ({path})"
    if spec == "random":
        from rlbench.core.config import TinyConfig
        from rlbench.run.tiny.model import build_tiny_model
        from rlbench.run.tiny.tokenizer import build_char_tokenizer

        torch.manual_seed(0)
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(TinyConfig(), tokenizer)
        out = Path(tempfile.mkdtemp(prefix="rlbench-bench-model-"))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return str(out), "tiny-lab architecture, random init (seed 0)"
    if not (Path(spec) / "config.json").exists():
        raise SystemExit(f"--model {spec}: not auto/random/tiny and not a saved model directory")
    return spec, spec


def arith_prompts(n: int, split: str = "test") -> list[str]:
    from rlbench.tasks.arith import Arith

    task = Arith()
    examples = task.load(split)
    return [task.prompt(examples[i % len(examples)]) for i in range(n)]


def matmul_peak_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """Best observed fp32 throughput of one ``size`` x ``size`` matmul at the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def contention() -> str:
    """The 1-minute load average against the number of CPUs, to record how busy the machine was."""
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"
