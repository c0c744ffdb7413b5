"""``train-baseline``: train ClusterGAN or SCGAN on images drawn from a pretrained generator."""

from __future__ import annotations

from pathlib import Path

import click

from clusterguide.cli.common import quiet_option
from clusterguide.errors import UserError


@click.command("train-baseline")
@click.argument("method", type=click.Choice(["clustergan", "selfcond"]))
@click.option("--out", required=True, help="Folder for checkpoints and the trained generator.")
@click.option("--steps", type=int, default=100000, show_default=True, help="Generator steps in total.")
@click.option("--minutes", type=float, default=None, help="Stop this session after this many minutes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--clusters", "k", type=int, default=4, show_default=True)
@click.option("--size", type=click.Choice(["16", "32", "64"]), default="32", show_default=True)
@click.option("--width", type=int, default=32, show_default=True, help="Channels of the narrowest layer.")
@click.option("--images", "data_n", type=int, default=50000, show_default=True, help="Training images.")
@click.option("--generator", default="digiface-dcgan", show_default=True, help="Source of the images.")
@click.option("--data-cache", default=None, help="Folder of the cached training set [default: OUT/..].")
@click.option("--checkpoint-minutes", type=float, default=5.0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@quiet_option
def train_baseline(
    method, out, steps, minutes, seed, resume, k, size, width, data_n, generator, data_cache,
    checkpoint_minutes, threads,
):  # fmt: skip
    """Train a baseline; a re-run with --resume continues from the last checkpoint."""
    import torch

    from clusterguide.baselines import make_method
    from clusterguide.baselines.data import training_images
    from clusterguide.baselines.training import Budget, train
    from clusterguide.generators import load_generator

    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes must be positive (got {minutes})")
    if not checkpoint_minutes > 0:
        raise UserError(f"--checkpoint-minutes must be positive (got {checkpoint_minutes})")
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)
    trainer = make_method(
        method, k=k, size=int(size), width=width, seed=seed, generator=generator, data_n=data_n
    )
    G = load_generator(generator)
    cache = Path(data_cache) if data_cache else Path(out).resolve().parent
    images = training_images(G, data_n, int(size), trainer.config.data_seed, cache)
    del G
    budget = Budget(steps, None if minutes is None else 60 * minutes, 60 * checkpoint_minutes)
    state = train(trainer, images, out, budget, resume=resume, log=lambda m: click.echo(m, err=True))
    last = state.history[-1] if state.history else {}
    losses = " ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "step")
    click.echo(f"{method}: step {state.step}, {state.seconds / 60:.1f} min trained; {losses}")
    click.echo(f"wrote {Path(out) / 'generator.safetensors'}")
