"""The ``vllm`` rollout backend: a vLLM engine colocated with the trainer on one GPU (``rollout.backend: vllm``).

UNTESTED until a GPU run: written against vLLM's documented API (V1 engine; ``LLM(logprobs_mode=...)``,
``LLM.sleep/wake_up(tags=...)`` and ``LLM.apply_model`` exist from 0.10.2 on), and bounded to the releases of
:data:`VLLM_RANGE`, the ``vllm`` extra of pyproject.toml (tests/test_vllm_backend.py and benchmarks/gpu_check.sh are
the checks to run there).

- One GPU: the engine runs on ``cuda:0`` in the trainer's process. ``--processes N`` / ``--fsdp`` with this backend
  are refused before launch (:func:`rlbench.engine.build.check_launch`).
- Engine settings from ``rollout.*``: ``gpu_memory_utilization``, ``max_model_len`` (null: the model's own) and
  ``enforce_eager`` (true: no CUDA graphs, less memory and start-up time, slower decoding).

- The engine is built on the first ``generate`` from the checkpoint on disk (``model_path``), then immediately given
  the policy's current weights: after a resume those differ from the checkpoint's.
- It runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's and verl's colocated modes do), so that
  ``LLM.apply_model`` can hand the live model to a function: ``sync_weights`` calls the vLLM model's own
  ``load_weights`` with the policy's ``named_parameters()`` (Hugging Face names; vLLM fuses q/k/v and gate/up itself),
  cast to the engine's dtype. Only the policy model's weights go: a PPO value head stays with the trainer.
- Sleep mode, level 1: ``sleep()`` offloads the weights to CPU memory and drops the KV cache before each update;
  ``sync_weights`` wakes the weights only (``tags=["weights"]``) to write into them, ``generate`` wakes the rest.
  Level 2 would discard the weights and need a reload from disk first (vllm-project/vllm#29341).
- Log-probs: ``logprobs_mode="processed_logprobs"``, the log-softmax of the logits the sampler drew from, after
  temperature (and after top-k/top-p masking). The default ``raw_logprobs`` is taken before temperature, so it would
  differ from the trainer's ``log softmax(logits / T)`` at any T != 1. With ``top_p = 1`` (every shipped config) this
  is exactly what :func:`rlbench.engine.generation.token_logprobs` computes; with ``top_p < 1`` vLLM renormalises over
  the nucleus, so each token's value exceeds the trainer's by ``-log(nucleus mass)`` and the sampler gap shows it.
- Prompts go in as token ids and completions come back as token ids (``skip_tokenizer_init``, ``detokenize=False``):
  vLLM never tokenizes, so it needs no tokenizer it can load, and texts are decoded by the policy's tokenizer, as in
  the other backends. It stops at :func:`stop_ids` only (no EOS of its own, no ``generation_config`` defaults).
- The engine is bf16 for ``precision: bf16`` and ``bf16-pure``; ``fp32`` asks vLLM for float32, which not every
  vLLM attention backend supports (FlashAttention does not).
- Each row gets its own sampler seed, ``derive_seed(seed, "vllm", i)``: the same call gives the same samples whatever
  the batch vLLM schedules around it (up to the kernels' numerics).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from rlbench.core.config import ConfigError
from rlbench.engine.generation import Generation, assemble, left_pad, stop_ids
from rlbench.engine.policy import Policy
from rlbench.engine.seeding import derive_seed

# [first, last) releases: pyproject.toml's `vllm` extra says the same (tests/test_vllm_backend.py checks it)
VLLM_RANGE = ((0, 28), (0, 34))
INSTALL = "rollout.backend=vllm needs vLLM on a CUDA machine: pip install 'rlbench[vllm]'"


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


class VLLMUnavailable(ConfigError, RuntimeError):
    """vLLM cannot run here; a ConfigError so that the command line reports it in one line."""


def import_vllm(device: torch.device) -> Any:
    """The ``vllm`` module, or :class:`VLLMUnavailable` saying why not (never a traceback from inside vLLM)."""
    if device.type != "cuda":
        raise VLLMUnavailable(f"{INSTALL} (the policy is on {device})")
    try:
        import vllm
    except Exception as exc:  # missing, or built for another torch/CUDA: any import failure means the same here
        first = (str(exc).strip().split("\n")[0] or type(exc).__name__)[:200]
        raise VLLMUnavailable(f"{INSTALL} (import vllm failed: {first})") from None
    found = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", vllm.__version__).groups())
    low, high = VLLM_RANGE
    if not low <= found < high and "dev" not in vllm.__version__:  # a source build reports 0.1.devN: let it try
        raise VLLMUnavailable(f"{INSTALL}; found vllm {vllm.__version__}, need >= {_dotted(low)}, < {_dotted(high)}")
    return vllm


class VLLMGenerator:
    seeds_rows = True  # one SamplingParams seed per request

    def __init__(
        self,
        policy: Policy,
        batch_size: int | None = None,
        model_path: str | None = None,
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        sleep_mode: bool = True,
        enforce_eager: bool = False,
    ) -> None:
        self._vllm = import_vllm(policy.device)
        if policy.device.index not in (None, 0):  # the in-process engine takes the first visible GPU
            raise VLLMUnavailable(
                f"rollout.backend=vllm: the policy must be on cuda:0 (set CUDA_VISIBLE_DEVICES), not {policy.device}"
            )
        self.policy = policy
        self.model_path = model_path or getattr(policy.model, "name_or_path", None)
        if not self.model_path:
            raise VLLMUnavailable("rollout.backend=vllm: the engine loads the model from disk; no model path given")
        self.options = dict(
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=batch_size,
            enforce_eager=enforce_eager,
        )
        self.sleep_mode = sleep_mode
        self._llm: Any = None
        self._asleep: set[str] = set()  # the sleep-mode tags now released ("weights", "kv_cache")

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.policy.tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.policy.precision == "fp32" else torch.bfloat16

    # ------------------------------------------------------------------------------------------ engine state

    def _engine(self) -> Any:
        if self._llm is None:
            # the engine core in this process: apply_model then runs our function on the live model, no pickling
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            extra = {k: v for k, v in self.options.items() if v is not None}
            # vLLM seeds the global RNGs when its worker starts, here the trainer's own: restore them afterwards
            states = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=[self.policy.device] if self.policy.device.type == "cuda" else []):
                self._llm = self._vllm.LLM(
                    model=self.model_path,
                    tokenizer=self.model_path,
                    skip_tokenizer_init=True,
                    dtype="float32" if self.dtype == torch.float32 else "bfloat16",
                    seed=0,
                    enable_sleep_mode=self.sleep_mode,
                    logprobs_mode="processed_logprobs",
                    generation_config="vllm",
                    **extra,
                )
            random.setstate(states[0])
            np.random.set_state(states[1])
            self._load_weights()  # the checkpoint on disk is the run's start, not necessarily the policy now
        return self._llm

    def _wake(self, *tags: str) -> None:
        tags_now = [t for t in tags if t in self._asleep]
        if tags_now:
            torch.cuda.empty_cache()  # blocks cached by the trainer's allocator are memory vLLM cannot map
            self._llm.wake_up(tags=tags_now)
            self._asleep -= set(tags_now)
        if "kv_cache" in tags_now:
            self._llm.reset_prefix_cache()  # cached prefixes point into a KV cache that sleep discarded

    def sleep(self) -> None:
        if self._llm is not None and self.sleep_mode and not self._asleep:
            self._llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def sync_weights(self, policy: Policy) -> None:
        self.policy = policy
        if self._llm is not None:  # else the engine takes the policy's weights when it is built
            self._wake("weights")  # write into mapped memory; the KV cache stays released until generate
            self._load_weights()

    def _load_weights(self) -> None:
        dtype = self.dtype
        weights = ((name, p.detach().to(dtype)) for name, p in self.policy.model.named_parameters())
        apply = getattr(self._llm, "apply_model", None)
        if apply is None:
            raise RuntimeError(
                f"vllm {self._vllm.__version__}: LLM.apply_model not found, cannot push weights "
                f"(this backend targets vllm >= {_dotted(VLLM_RANGE[0])}, < {_dotted(VLLM_RANGE[1])})"
            )
        try:
            loaded = apply(lambda model: model.load_weights(weights))
        except (TypeError, AttributeError, RuntimeError) as exc:
            raise RuntimeError(
                f"vllm {self._vllm.__version__}: pushing the policy's weights into the engine failed "
                f"({type(exc).__name__}: {exc}); the engine must run in this process "
                f"(VLLM_ENABLE_V1_MULTIPROCESSING=0)"
            ) from exc
        if loaded and isinstance(loaded[0], set) and not loaded[0]:
            raise RuntimeError("vllm: load_weights accepted none of the policy's parameter names")
        self._llm.reset_prefix_cache()  # KV computed by the old weights must not be reused

    # ------------------------------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_ids: Sequence[list[int]],
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        greedy: bool = False,
        seed: int | Sequence[int] | None = None,
    ) -> Generation:
        llm = self._engine()
        self._wake("weights", "kv_cache")
        tok, policy = self.policy.tokenizer, self.policy
        stops, pad = stop_ids(tok, policy.model), tok.pad_token_id

        def row_seed(i: int) -> int | None:
            if isinstance(seed, Sequence):
                return int(seed[i])
            return None if seed is None else derive_seed(seed, "vllm", i)

        def params(i: int) -> Any:
            common = dict(max_tokens=max_new_tokens, stop_token_ids=list(stops), detokenize=False)
            if greedy:  # temperature 0 is vLLM's argmax; no log-probs needed (nothing to correct)
                return self._vllm.SamplingParams(temperature=0.0, **common)
            # top_k, penalties and min_p keep their defaults (off), as the other backends sample
            return self._vllm.SamplingParams(
                temperature=temperature, top_p=top_p, logprobs=0, seed=row_seed(i), **common
            )

        outputs = llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompt_ids],
            [params(i) for i in range(len(prompt_ids))],
            use_tqdm=False,
        )
        rows = [out.outputs[0] for out in outputs]
        T = max([len(r.token_ids) for r in rows] + [1])
        tokens = torch.full((len(rows), T), pad, dtype=torch.long)
        logprobs = None if greedy else torch.zeros((len(rows), T), dtype=torch.float)
        for i, row in enumerate(rows):
            ids = list(row.token_ids)
            if len(ids) < max_new_tokens and not (ids and ids[-1] in stops):
                # assemble() reads a row without a stop token as max_new_tokens long: say so rather than pad it
                raise RuntimeError(
                    f"vllm ended a completion after {len(ids)} of {max_new_tokens} tokens without a "
                    f"stop token ({row.finish_reason}): raise max_model_len"
                )
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if logprobs is not None:  # logprobs=0: each step's dict holds the sampled token only
                logprobs[i, : len(ids)] = torch.tensor([step[t].logprob for step, t in zip(row.logprobs, ids)])
        ids, mask = left_pad(prompt_ids, pad, policy.device)
        return assemble(
            ids,
            mask,
            tokens.to(policy.device),
            stops,
            pad,
            tok,
            None if logprobs is None else logprobs.to(policy.device),
        )
