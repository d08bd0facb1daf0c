"""The rollout backend seam: what every generator takes and returns, and the one factory that builds them.

A generator turns prompts (token ids) into completions in the :class:`~rlbench.engine.batch.RolloutBatch` layout:
prompts left-padded to ``P``, completions right-padded to ``T``, each completion ending at its first stop token or at
``max_new_tokens``, with the log-probability the sampler gave each token. Backends (``rollout.backend``):

- ``rlbench``: :class:`rlbench.engine.decoder.Decoder`, a static-KV-cache decoder on the training model (the default);
- ``hf``: :class:`rlbench.engine.hf_generate.HFGenerate`, ``model.generate`` on the training model (the reference);
- ``vllm``: :class:`rlbench.engine.vllm_backend.VLLMGenerator`, a colocated vLLM engine (GPU only).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlbench.engine.policy import Policy

BACKENDS = {  # name -> (module, class); imported on first use, so vLLM is only needed by who asks for it
    "rlbench": ("rlbench.engine.decoder", "Decoder"),
    "hf": ("rlbench.engine.hf_generate", "HFGenerate"),
    "vllm": ("rlbench.engine.vllm_backend", "VLLMGenerator"),
}


@dataclass
class Generation:
    input_ids: torch.Tensor  # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T]
    response_mask: torch.Tensor  # [B, T] float
    prompt_len: int
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without a stop token
    texts: list[str]
    # [B, T]: log pi(y_t) under the sampler's own numerics at the sampling temperature (0 on padding); None for greedy
    logprobs: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def finish_reasons(self) -> list[str]:
        """``stop`` (ended at a stop token) or ``length`` (ran to ``max_new_tokens``), per row, as vLLM names them."""
        return ["length" if t else "stop" for t in self.truncated.tolist()]


class Generator(Protocol):
    """A rollout backend. ``prompt_ids`` are token ids (a task's prompt encoded by :func:`encode_prompt`)."""

    tokenizer: PreTrainedTokenizerBase  # the one that encodes prompts and decodes completions
    seeds_rows: bool  # generate() accepts one seed per row (False: it raises on a list of seeds)

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
        """One completion per prompt (argmax with ``greedy``); the same ``seed`` and inputs give the same samples.

        ``seed`` is one seed for the call, or one per row: then each row's samples depend on its own seed alone,
        whatever rows share its batch (data-parallel ranks rely on it; a backend that cannot do it raises).
        """

    def sync_weights(self, policy: Policy) -> None:
        """Called after every optimiser step: the next ``generate`` must sample from ``policy``'s current weights."""

    def sleep(self) -> None:
        """Called before an update: release generation memory (a no-op for backends that decode on the policy)."""


class PolicyBackend:
    """What the backends that decode on the training model itself share (``rlbench``, ``hf``): the tokenizer is the
    policy's, a weight sync only points at the policy given, and there is no generation memory to release."""

    seeds_rows: bool  # each backend's own (see Generator)

    def __init__(self, policy: Policy, batch_size: int | None = None, model_path: str | None = None) -> None:
        self.policy = policy
        self.batch_size = batch_size  # prompts per forward batch; None: all of a call's prompts at once

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.policy.tokenizer

    def sync_weights(self, policy: Policy) -> None:
        self.policy = policy

    def sleep(self) -> None:
        pass


def make_generator(
    backend: str,
    policy: Policy,
    *,
    batch_size: int | None = None,
    model_path: str | None = None,
    options: dict[str, Any] | None = None,
) -> Generator:
    """The one place a generator is built: the trainer, evaluation, the tiny lab's warm-start and ``rlbench eval``."""
    if backend not in BACKENDS:
        raise ValueError(f"rollout.backend={backend!r}: must be one of {', '.join(BACKENDS)}")
    module, name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module), name)
    return cls(policy, batch_size=batch_size, model_path=model_path, **(options or {}))


def stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> tuple[int, ...]:
    """Every id a completion ends at: the tokenizer's EOS and each EOS of the model's ``generation_config``.

    Chat models end a turn with their own token (Qwen2.5-Instruct: ``<|im_end|>``) that only ``generation_config``
    lists; stopping at the tokenizer's EOS alone runs such a model to ``max_new_tokens``.
    """
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError(
            "the tokenizer and the model's generation_config name no EOS token: a completion could not end"
        )
    return tuple(ids)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> list[int]:
    """Plain text as the tokenizer encodes it; chat messages through the tokenizer's chat template."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    if tokenizer.chat_template is None:
        raise ValueError(
            "this task builds chat prompts but the tokenizer has no chat template; pick a plain-text prompt style"
        )
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def left_pad(prompt_ids: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(logits / temperature)[token]`` per row, in fp32: what the trainer's forward recomputes."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def assemble(
    ids: torch.Tensor,
    mask: torch.Tensor,
    tokens: torch.Tensor,
    stops: Sequence[int],
    pad: int,
    tokenizer: PreTrainedTokenizerBase,
    logprobs: torch.Tensor | None = None,
) -> Generation:
    """The layout from left-padded prompts ``ids``/``mask`` ``[B, P]`` and decoded ``tokens`` ``[B, S]``.

    A row's completion ends at its first stop token (kept) or runs all ``S`` columns (truncated); anything after is
    padding, whatever the backend wrote there.
    """
    B, P = ids.shape
    steps = tokens.shape[1]
    is_stop = torch.isin(tokens, torch.tensor(list(stops), dtype=tokens.dtype, device=tokens.device))
    has_stop = is_stop.any(1)
    lengths = torch.where(has_stop, is_stop.int().argmax(1) + 1, torch.full_like(has_stop, steps, dtype=torch.long))
    T = max(int(lengths.max()) if B else 0, 1)
    tokens = tokens[:, :T]
    response_mask = (torch.arange(T, device=ids.device)[None, :] < lengths[:, None]).float()
    tokens = torch.where(response_mask.bool(), tokens, torch.full_like(tokens, pad))
    if logprobs is not None:
        logprobs = torch.where(response_mask.bool(), logprobs[:, :T].float(), torch.zeros_like(response_mask))
    texts = tokenizer.batch_decode(
        [row[: int(n)].tolist() for row, n in zip(tokens, lengths)], skip_special_tokens=True
    )
    return Generation(
        input_ids=torch.cat([ids, tokens], dim=1),
        attention_mask=torch.cat([mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        prompt_len=P,
        truncated=~has_stop,
        texts=texts,
        logprobs=logprobs,
    )


def concat(parts: list[Generation], pad: int) -> Generation:
    """Join chunks with different P and T into one layout (re-padding prompts left and completions right)."""
    if len(parts) == 1:
        return parts[0]
    P = max(g.prompt_len for g in parts)
    T = max(g.response_mask.shape[1] for g in parts)
    ids, masks, rmasks, lps = [], [], [], []
    for g in parts:
        dp, dt = P - g.prompt_len, T - g.response_mask.shape[1]
        B = g.input_ids.shape[0]
        dev = g.input_ids.device
        pre = torch.full((B, dp), pad, dtype=torch.long, device=dev)
        post = torch.full((B, dt), pad, dtype=torch.long, device=dev)
        zeros_p = torch.zeros((B, dp), dtype=torch.long, device=dev)
        zeros_t = torch.zeros((B, dt), dtype=torch.long, device=dev)
        ids.append(torch.cat([pre, g.input_ids, post], dim=1))
        masks.append(torch.cat([zeros_p, g.attention_mask, zeros_t], dim=1))
        rmasks.append(torch.cat([g.response_mask, zeros_t.float()], dim=1))
        if g.logprobs is not None:
            lps.append(torch.cat([g.logprobs, zeros_t.float()], dim=1))
    return Generation(
        input_ids=torch.cat(ids),
        attention_mask=torch.cat(masks),
        response_mask=torch.cat(rmasks),
        prompt_len=P,
        truncated=torch.cat([g.truncated for g in parts]),
        texts=[t for g in parts for t in g.texts],
        logprobs=torch.cat(lps) if len(lps) == len(parts) else None,
    )
