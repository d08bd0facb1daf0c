"""``rlbench plan``: the resolved config, the model's size and the GPU memory the run needs, before any GPU is used.

rlbench plan --config configs/gsm8k-qwen2.5-1.5b.yaml [--set lora.rank=16] [--gpu-memory 80] [--prompt-len 512]
"""

from __future__ import annotations

import click

from rlbench.cli.train import CONFIG_HELP, SET_HELP
from rlbench.core.configure import resolve


@click.command(
    epilog="""\b
Examples:
  rlbench plan --config configs/gsm8k-qwen2.5-1.5b.yaml --gpu-memory 80
  rlbench plan --config math-hard-qwen2.5-math-7b --set lora.rank=64"""
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--algo", help="Algorithm name (see `rlbench list`).")
@click.option("--model", help="'tiny', a hub id, or a local model directory (only its config.json is read).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--gpu-memory", type=click.FloatRange(min=1), default=80.0, show_default=True, help="Memory of one GPU, in GiB."
)
@click.option(
    "--prompt-len",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Prompt tokens to budget for (the paper: 512 for GSM8K, 1024 for MATH).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="GPUs the run trains on (rlbench train --processes N); alone, each holds the whole model.",
)
@click.option("--fsdp", is_flag=True, help="With --processes N: the model sharded N ways (rlbench train --fsdp).")
def plan(
    config_file: str | None,
    algo: str | None,
    model: str | None,
    overrides: tuple[str, ...],
    gpu_memory: float,
    prompt_len: int,
    processes: int,
    fsdp: bool,
) -> None:
    """Estimate the GPU memory per rank a run needs (weights, gradients, optimiser, activations, KV cache,
    reference) and say whether it fits one GPU, or what would: FSDP across N GPUs, LoRA, checkpointing.

    Reads only the model's config.json (a local folder, the Hugging Face cache or hub, or a built-in table of the
    paper's models): no weights are loaded and no GPU is needed. The rules of thumb are in docs/real-models.md.
    """
    import yaml

    from rlbench.run.plan import plan_run, report

    config = resolve(config_file, list(overrides), {"algo": algo, "model": model})
    click.echo("resolved config:")
    click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    click.echo("")
    click.echo(
        report(
            config,
            plan_run(config, prompt_len, gpu_memory, processes=processes, fsdp=fsdp and processes > 1),
            prompt_len,
            gpu_memory,
        )
    )
