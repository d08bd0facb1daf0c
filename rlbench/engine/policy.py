"""Load a causal LM (tiny lab, hub id or local directory) and compute per-token log-probs of completions.

One code path serves every model: the tiny lab is saved as an ordinary Hugging Face checkpoint and loaded like a 7B
model would be.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlbench.engine.batch import PolicyOutput, RolloutBatch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(
    name_or_path: str, precision: str, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A hub id or a local directory; weights in bf16 only for ``precision='bf16'`` (mixed keeps fp32 masters)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    local = Path(name_or_path)
    if local.exists() and not (local / "config.json").exists():
        raise FileNotFoundError(f"--model {name_or_path}: directory has no config.json (not a saved model)")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    if tokenizer.pad_token_id is None:
        # Base models often lack a pad token; padding is always masked, so any id works.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    return model, tokenizer


class ValueHead(nn.Module):
    """A scalar value per position, on the policy backbone's last hidden state (PPO's critic)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.float()).squeeze(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    precision: str = "fp32"
    value_head: ValueHead | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16-mixed":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.parameters()
        if self.value_head is not None:
            yield from self.value_head.parameters()

    def forward(
        self,
        batch: RolloutBatch,
        temperature: float = 1.0,
        with_entropy: bool = False,
        with_values: bool = False,
    ) -> PolicyOutput:
        """Log-probs ``[B, T]`` of the completion tokens (and optionally entropy and values).

        Logits are computed for completion positions only (``logits_to_keep``), never over the prompt.
        """
        T = batch.response_len
        with self.autocast():
            out = self.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids_from_mask(batch.attention_mask),
                logits_to_keep=T + 1,
                output_hidden_states=with_values,
                use_cache=False,
            )
        logits = out.logits[:, :-1].float()  # position i predicts token i+1: these predict the T completion tokens
        if temperature != 1.0:
            logits = logits / temperature
        log_norm = torch.logsumexp(logits, dim=-1)
        targets = batch.response_ids
        logprobs = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm) * batch.response_mask
        entropy = None
        if with_entropy:
            probs = torch.softmax(logits, dim=-1)
            entropy = (log_norm - (probs * logits).sum(-1)) * batch.response_mask
        values = None
        if with_values:
            if self.value_head is None:
                raise RuntimeError("values requested but the policy has no value head")
            hidden = out.hidden_states[-1][:, -(T + 1) : -1]
            values = self.value_head(hidden) * batch.response_mask
        return PolicyOutput(logprobs=logprobs, entropy=entropy, values=values)
