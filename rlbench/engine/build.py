"""Everything a run trains with, built from its config: model (and its LoRA adapters), tokenizer, policy, reference,
generator, optimiser."""

from __future__ import annotations

import copy
import importlib
import re
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any

import torch

from rlbench.core.config import ConfigError, LoraConfig, OptimConfig, RunConfig
from rlbench.engine.contracts import Algorithm
from rlbench.engine.distributed import Ranks
from rlbench.engine.generation import Generator, make_generator
from rlbench.engine.policy import Policy, ValueHead, ValueModel, load_model, pick_device
from rlbench.engine.precision import bf16_step_check, stuck_message
from rlbench.engine.run_state import weights_hash
from rlbench.engine.sharding import RolloutCopy, Sharding, fsdp_requested, shard_policy

LORA_INIT_SEED = 0  # every LoRA run starts from the same adapters (see add_lora)


@dataclass
class Parts:
    policy: Policy
    reference: Policy | None  # the initial policy, frozen, when the algorithm's KL needs one (LoRA: adapters off)
    generator: Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    init_weights: str  # sha256 of the initial weights: part of the run's fingerprint
    trainable_parameters: int = 0  # what the optimiser updates (LoRA: the adapters, and the value head)
    total_parameters: int = 0
    sharding: Sharding | None = None  # FSDP (rlbench.engine.sharding): the mesh and the generator's rollout copy


def build_parts(
    config: RunConfig, model_path: str, algorithm: Algorithm, device: str | None = None, ranks: Ranks = Ranks()
) -> Parts:
    """``device`` overrides ``config.device`` (each data-parallel rank trains on its own GPU). Under FSDP
    (:func:`rlbench.engine.sharding.fsdp_requested`) the model loads on the CPU and is sharded across ``ranks``."""
    device = pick_device(device or config.device)
    check_optimizer(config.optim.name, device)  # before the model loads: a missing library fails in a second
    sharded = fsdp_requested() and ranks.world > 1
    check_launch(config, ranks.world, sharded)
    a = config.model_args
    try:
        model, tokenizer = load_model(
            model_path,
            config.precision,
            torch.device("cpu") if sharded else device,
            revision=a.revision,
            attn_implementation=a.attn_implementation,
            trust_remote_code=a.trust_remote_code,
        )
    except FileNotFoundError as exc:  # load_model's own message already names --model
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # a truncated or corrupt checkpoint, an unknown hub id: one line, not a traceback
        first = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise ConfigError(f"--model {model_path}: cannot load ({first})") from None
    checkpointing = config.gradient_checkpointing
    if checkpointing:
        enable_checkpointing(model)
    # a critic model of its own starts as a copy of the initial transformer, without the LM head or LoRA adapters
    critic_backbone = copy.deepcopy(model.base_model) if algorithm.needs_values and algorithm.critic_model else None
    if config.lora.rank:
        model = add_lora(model, config.lora, device)
    # HF models load in eval mode; checkpointing only acts in training mode, and LoRA dropout only there too
    model.train(checkpointing or (config.lora.rank > 0 and config.lora.dropout > 0))
    value_head = None
    if critic_backbone is not None:
        critic_backbone.train(checkpointing)
        value_head = ValueModel(critic_backbone, model.config.hidden_size).to(model.device if sharded else device)
    elif algorithm.needs_values:
        value_head = ValueHead(model.config.hidden_size).to(model.device if sharded else device)
    init_weights = weights_hash(model)  # before any update or resume: the run's starting point (adapters included)
    if config.precision == "bf16-pure" and not config.allow_stuck_bf16:
        check = bf16_step_check(model.parameters(), config.optim.lr)
        if check is not None and check.stuck:
            raise ConfigError(stuck_message(check))
    # With checkpointing the training forward is the model's own, over whole rows: the packed fast path bypasses the
    # model's layers (so nothing would be recomputed), and a shared prompt's KV cache is dropped by a checkpointed
    # layer. Checkpointing is for memory, the fast path for speed; decoding (no gradient) keeps its fast path.
    # FSDP: every rank must run the same forward calls through the model's own modules (see rlbench.engine.sharding)
    plain = checkpointing or sharded
    policy = Policy(
        model,
        tokenizer,
        device,
        config.precision,
        value_head,
        value_model=critic_backbone is not None,
        share_prompts=not plain,
        fast=not plain,
    )
    reference = None
    if algorithm.needs_reference:
        if config.lora.rank:  # the base model is the peft model with its adapters off: no second copy
            reference = Policy(model, tokenizer, device, config.precision, adapters_off=True)
        else:
            reference = Policy(
                copy.deepcopy(model).eval().requires_grad_(False),
                tokenizer,
                device,
                config.precision,
                share_prompts=not sharded,
                fast=not sharded,
            )
    sharding = shard_policy(policy, reference, ranks) if sharded else None
    generator = build_generator(config, sharding.rollout if sharding else policy, model_path)
    if sharding:
        generator = RolloutCopy(generator, sharding)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optim, param_groups(policy, algorithm), device)
    scheduler = make_scheduler(config.optim, optimizer, algorithm)
    return Parts(
        policy,
        reference,
        generator,
        optimizer,
        scheduler,
        init_weights,
        trainable_parameters=sum(p.numel() for p in trainable),
        total_parameters=sum(p.numel() for p in policy.parameters()),
        sharding=sharding,
    )


def check_launch(config: RunConfig, processes: int, sharded: bool) -> None:
    """What ``processes`` (``--processes N``, ``sharded``: ``--fsdp``) cannot do with this config, refused before
    any model loads or any process starts: LoRA's combinations, vLLM beyond one GPU, 8-bit AdamW over FSDP, FSDP on
    a transformers too old for it."""
    check_lora(config, sharded)
    if processes > 1 and config.rollout.backend == "vllm":
        raise ConfigError(
            f"rollout.backend=vllm: the vLLM engine runs on one GPU, in one process; with "
            f"{processes} processes use rollout.backend=rlbench (each rank decodes its share)"
        )
    if sharded and config.optim.name == "adamw-8bit":
        raise ConfigError(
            "optim.name=adamw-8bit: bitsandbytes' 8-bit AdamW cannot update FSDP's sharded "
            "(DTensor) parameters; use optim.name=adamw (FSDP already splits its states N ways)"
        )
    if sharded:
        check_fsdp_transformers(installed_version("transformers"))


# FSDP runs reproduce the one-process run from this transformers release on (scripts/test_floor.sh with
# tests/test_sharding.py, bisected: 5.22.2 and older give a different forward under fully_shard from the first step,
# e.g. entropy 4.603 against 4.596 at 5.19.0, so the runs train another model); the package floor is lower.
FSDP_MIN_TRANSFORMERS = (5, 23)


def check_fsdp_transformers(version: str) -> None:
    """Refuse ``--fsdp`` below :data:`FSDP_MIN_TRANSFORMERS`, naming the installed version and the fix."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < FSDP_MIN_TRANSFORMERS:
        floor = ".".join(map(str, FSDP_MIN_TRANSFORMERS))
        raise ConfigError(
            f"--fsdp: needs transformers >= {floor} (sharded runs with {version} do not reproduce the one-process "
            f"run); pip install 'transformers>={floor}', or train data-parallel without --fsdp"
        )


def check_lora(config: RunConfig, sharded: bool) -> None:
    """LoRA's combinations rlbench does not support, refused before any model loads (or any process starts)."""
    if sharded and config.lora.rank:
        raise ConfigError(
            f"lora.rank={config.lora.rank}: LoRA with FSDP is not supported yet; LoRA's trainable "
            f"weights are small, so train data-parallel without FSDP (drop --fsdp), or set lora.rank=0"
        )
    if config.lora.rank and config.rollout.backend == "vllm":
        raise ConfigError(
            "lora.rank: LoRA with rollout.backend=vllm is not supported yet (the engine would need the "
            "adapters merged after every step); use rollout.backend=rlbench or hf"
        )


def check_optimizer(name: str, device: torch.device) -> None:
    """Refuse ``adamw-8bit`` where bitsandbytes cannot run it: one line, before any model loads."""
    if name != "adamw-8bit":
        return
    if device.type != "cuda":
        raise ConfigError(
            f"optim.name=adamw-8bit: bitsandbytes' 8-bit AdamW runs on CUDA GPUs only, and this run's "
            f"device is {device.type}; use optim.name=adamw"
        )
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise ConfigError(
            "optim.name=adamw-8bit: needs bitsandbytes, which is not installed (pip install "
            "bitsandbytes); or use optim.name=adamw"
        ) from None


def param_groups(policy: Policy, algorithm: Algorithm) -> list[dict[str, Any]]:
    """The trainable parameters as the optimiser's groups: the policy's, then the critic's (``policy.value_head``,
    at ``algorithm.critic_lr_scale`` x ``optim.lr``) when there is one. A group's ``lr_scale`` multiplies
    ``optim.lr`` (:func:`make_optimizer`); the scheduler keeps the groups in this order (:func:`make_scheduler`)."""
    critic = {id(p) for p in policy.value_head.parameters()} if policy.value_head is not None else set()
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad and id(p) not in critic], "lr_scale": 1.0}]
    if critic:
        groups.append(
            {
                "params": [p for p in policy.value_head.parameters() if p.requires_grad],
                "lr_scale": float(algorithm.critic_lr_scale),
            }
        )
    return groups


def make_scheduler(
    o: OptimConfig, optimizer: torch.optim.Optimizer, algorithm: Algorithm
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``optim.warmup_steps``, then constant, for every group. During the algorithm's
    ``critic_warmup`` steps the policy's group (the first) stays at lr 0, so only the critic trains, and its own
    warm-up starts after them (verl's ``critic_warmup``); the trainer drops the gradients of a group at lr 0."""

    def ramp(s: int) -> float:
        return min(1.0, (s + 1) / o.warmup_steps) if o.warmup_steps else 1.0

    frozen = algorithm.critic_warmup if algorithm.needs_values else 0
    lambdas = [lambda s: 0.0 if s < frozen else ramp(s - frozen)] + [ramp] * (len(optimizer.param_groups) - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def make_optimizer(
    o: OptimConfig, params: list[torch.nn.Parameter] | list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over ``params`` (the trainable ones, or :func:`param_groups`, each at its ``lr_scale`` x ``optim.lr``),
    torch's or bitsandbytes' 8-bit one (``optim.name``)."""
    check_optimizer(o.name, device)
    if params and isinstance(params[0], dict):
        params = [{**g, "lr": o.lr * g.get("lr_scale", 1.0)} for g in params]
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    if o.name == "adamw-8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing with ``use_reentrant=False`` (the non-reentrant form works with frozen
    inputs and keyword arguments, and is what torch recommends)."""
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as exc:  # "X does not support gradient checkpointing"
        raise ConfigError(f"gradient_checkpointing: {str(exc).strip().splitlines()[0]}") from None


def add_lora(model: torch.nn.Module, lora: LoraConfig, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped by peft with LoRA adapters; only the adapters train (peft keeps them in fp32).

    The adapters start from a fixed seed, not the run's: every run of a comparison starts from the same weights
    (``init_weights`` in the fingerprint), whatever its seed; and the run's random stream is left untouched.
    """
    try:
        import peft
    except ImportError:
        raise ConfigError(
            f"lora.rank={lora.rank}: LoRA needs peft, which is not installed (pip install 'rlbench[lora]')"
        ) from None
    spec = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.scale_alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[] if device.type != "cuda" else None), warnings.catch_warnings():
        # peft asks transformers 5 a question under its old name; the answer is right, the warning is noise
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(LORA_INIT_SEED)
        try:
            return peft.get_peft_model(model, spec)
        except ValueError as exc:  # no module matched target_modules
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"lora.target_modules={','.join(lora.target_modules)}: {first}") from None


def build_generator(config: RunConfig, policy: Policy, model_path: str, batch_size: int | None = None) -> Generator:
    """The run's rollout backend (``rollout.backend``) on ``policy``; ``batch_size`` overrides the config's."""
    r = config.rollout
    options = (
        {
            "gpu_memory_utilization": r.gpu_memory_utilization,
            "max_model_len": r.max_model_len,
            "enforce_eager": r.enforce_eager,
        }
        if r.backend == "vllm"
        else None
    )
    return make_generator(
        r.backend, policy, batch_size=batch_size or r.generation_batch_size, model_path=model_path, options=options
    )
