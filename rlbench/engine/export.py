"""The model as a Hugging Face folder that ``from_pretrained`` loads like any hub model: the final ``checkpoint/`` and
the periodic ``checkpoint-N/``. A LoRA model is saved merged (``W + scale * B A``), not as a peft adapter."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model") and bool(getattr(model, "peft_config", None))


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with each LoRA layer's update added to its weight, under the base model's own
    names (``...q_proj.weight``, no ``base_layer``, no ``lora_*``), on the CPU.

    Computed beside the live model, never merged into it: merging in place and unmerging would round the base
    weights, and a run that wrote a checkpoint-N would then train differently from one that did not. Each merged
    weight is built on the CPU, so the GPU holds no second copy.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            active = [a for a in module.active_adapters if a in module.lora_A]
            if active:
                with torch.no_grad():
                    deltas[name] = sum(module.get_delta_weight(a).float().cpu() for a in active)
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if any(part.startswith("lora_") for part in key.split(".")):
            continue
        owner, _, leaf = key.rpartition(".")
        if owner.endswith(".base_layer"):
            owner = owner[: -len(".base_layer")]
            key = f"{owner}.{leaf}"
            if leaf == "weight" and owner in deltas:
                value = (value.detach().float().cpu() + deltas[owner]).to(value.dtype)
        out[key] = value.detach().cpu()
    return out


def save_hf(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write ``model`` and ``tokenizer`` into ``folder`` with ``save_pretrained`` (a LoRA model merged)."""
    if is_peft(model):
        model.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
