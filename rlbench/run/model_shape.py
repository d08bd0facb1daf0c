"""The shape of the model a run's config names, read before anything loads (for ``rlbench plan``): its config.json
from a local folder, the Hugging Face cache or hub, or a built-in table of the paper's models; counts from the model
built on the meta device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlbench.core.config import ConfigError, LoraConfig, RunConfig

# config.json values (main branch) of the paper's models, for machines that cannot reach the hub
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-1.5B": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-Math-7B": dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    parameters: int  # every weight, tied ones once
    lora_parameters: int  # the adapters at the config's lora.rank and target_modules (0 without LoRA)
    source: str  # where the shape came from, said in the output
    head_parameters: int = 0  # the LM head's weights when not tied to the embeddings (a critic's copy leaves them out)


def lora_parameter_count(model: nn.Module, lora: LoraConfig) -> int:
    """``rank x (in + out)`` for every ``nn.Linear`` whose name ends with a target (peft's matching for plain names)."""
    if not lora.rank:
        return 0
    targets = set(lora.target_modules)
    return sum(
        lora.rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets
    )


def shape_of(name: str, model: nn.Module, lora: LoraConfig, source: str) -> ModelShape:
    c = model.config
    heads = c.num_attention_heads
    return ModelShape(
        name=name,
        layers=c.num_hidden_layers,
        hidden=c.hidden_size,
        intermediate=c.intermediate_size,
        heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        vocab=c.vocab_size,
        parameters=sum(p.numel() for p in model.parameters()),
        lora_parameters=lora_parameter_count(model, lora),
        source=source,
        head_parameters=_untied_head(model),
    )


def _untied_head(model: nn.Module) -> int:
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embeddings is not None and head.weight is embeddings.weight:
        return 0
    return sum(p.numel() for p in head.parameters())


def _on_meta(hf_config: Any) -> nn.Module:
    """The model built on the meta device: exact parameter counts for any architecture, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def model_shape(config: RunConfig) -> ModelShape:
    """The shape of ``config.model``: the tiny lab's config, a local folder's config.json, the hub's (from the local
    cache first), or, for the models of :data:`KNOWN_SHAPES` at their main branch, the built-in table."""
    from transformers import AutoConfig

    from rlbench.engine.policy import looks_like_a_path

    name, a = config.model, config.model_args
    if name == "tiny":
        from rlbench.run.tiny.model import build_tiny_model
        from rlbench.run.tiny.tokenizer import build_char_tokenizer

        with torch.device("meta"):
            model = build_tiny_model(config.tiny, build_char_tokenizer())
        return shape_of(name, model, config.lora, "the tiny lab's config (tiny.*)")
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"--model {name}: directory has no config.json (not a saved model)")
        hf = AutoConfig.from_pretrained(local, trust_remote_code=a.trust_remote_code)
        return shape_of(name, _on_meta(hf), config.lora, f"{local / 'config.json'}")
    if looks_like_a_path(name):
        raise ConfigError(f"--model {name}: no such directory")
    kw = {"revision": a.revision, "trust_remote_code": a.trust_remote_code}
    if name in KNOWN_SHAPES and a.revision is None:
        try:
            hf = AutoConfig.from_pretrained(name, local_files_only=True, **kw)
            return shape_of(name, _on_meta(hf), config.lora, "its config.json in the local Hugging Face cache")
        except OSError:  # not cached: the table holds the same numbers, and the hub is not asked
            known = dict(KNOWN_SHAPES[name])
            hf = AutoConfig.for_model(known.pop("model_type"), **known)
            return shape_of(
                name,
                _on_meta(hf),
                config.lora,
                "rlbench's built-in table of its config.json (not cached here; the hub was not asked)",
            )
    try:
        hf = AutoConfig.from_pretrained(name, **kw)
    except OSError:
        known = ", ".join(KNOWN_SHAPES)
        raise ConfigError(
            f"--model {name}: cannot read its config.json (hub unreachable, or no such model); pass "
            f"a local folder, or one of the built-in shapes: {known}"
        ) from None
    return shape_of(name, _on_meta(hf), config.lora, "its config.json on the Hugging Face hub")
