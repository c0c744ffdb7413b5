"""Options and checks shared by the CLI's commands."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from clusterguide.errors import UserError
from clusterguide.progress import set_progress


def generator_options(f):
    """--generator/--checkpoint and the family options, passed on as keyword arguments."""
    options = [
        click.option(
            "--generator",
            "generator",
            default="digiface-dcgan",
            show_default=True,
            help="Registered generator name, or package.module:factory.",
        ),
        click.option("--checkpoint", default=None, help="Checkpoint file or published checkpoint name."),
        click.option(
            "--latent-space",
            type=click.Choice(["z", "w"]),
            default=None,
            help="Space the mappings model (StyleGAN2 only; default z, as the paper).",
        ),
        click.option(
            "--truncation",
            type=float,
            default=None,
            help="Truncation of the prior (BigGAN truncation, StyleGAN psi).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def family_options(latent_space: str | None, truncation: float | None) -> dict:
    return {
        k: v for k, v in {"latent_space": latent_space, "truncation": truncation}.items() if v is not None
    }


def quiet_option(f):
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
    @functools.wraps(f)
    def wrapper(*args, quiet: bool = False, **kwargs):
        if quiet:
            set_progress(False)
        return f(*args, **kwargs)

    return wrapper


def output_file(path: str, suffixes: tuple[str, ...]) -> Path:
    """Check before any work that ``path`` has an allowed suffix and can be written."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UserError(f"output {path!r} must end in {' or '.join(s or '(no extension)' for s in suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {path}: folder {parent} is not writable")
    if p.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    return p
