"""Options and checks shared by the CLI's commands.

Every number a command takes is checked here, where it enters, with the types below: a value out
of range is one line naming the option (exit 2), before any work starts.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from clusterguide.artifacts import check_writable
from clusterguide.checks import whole
from clusterguide.errors import UserError
from clusterguide.progress import set_progress
from clusterguide.seeding import MAX_SEED

# Upper bounds are far above any sensible use; they stop absurd values (which would exhaust memory
# or run for days) before any work, instead of failing deep inside.
MAX_SAMPLES = 10_000_000  # prior latents drawn for a fit, refine or choose-k
MAX_IMAGES = 100_000  # images of one sample, evaluation row or report grid (FID uses 50,000)
MAX_CLUSTERS = 10_000
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_CLASS = 1_000_000
MAX_POOL = 4096
MAX_DRAWS = 10_000_000_000
MAX_WORKERS = 1024  # local processes or Ray actors
MAX_REDUCE = 65_536  # PCA axes of a large fit's features


class Whole(click.ParamType):
    """A whole-number option from ``lo`` to ``hi`` (inclusive), checked by :func:`checks.whole`."""

    name = "integer"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if not isinstance(value, int):
            try:
                value = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not a valid integer.", param, ctx)
        # a UserError, not click's "Invalid value for ...": the same line the library gives
        return whole(value, _option_name(param), self.lo, self.hi)

    def get_metavar(self, param, ctx=None) -> str:
        return f"{self.lo}..{self.hi}" if self.hi < 10**6 else "INTEGER"


SEED = Whole(0, MAX_SEED)
CLASS = Whole(0, MAX_CLASS)
POOL = Whole(1, MAX_POOL)
BATCH = Whole(1, MAX_BATCH)
EPOCHS = Whole(1, MAX_EPOCHS)
CLUSTERS = Whole(2, MAX_CLUSTERS)
SAMPLES = Whole(2, MAX_SAMPLES)
IMAGES = Whole(1, MAX_IMAGES)
WORKERS = Whole(1, MAX_WORKERS)
REDUCE = Whole(0, MAX_REDUCE)


class FiniteFloat(click.ParamType):
    """A float that is not nan or infinite (click's FLOAT takes both)."""

    name = "number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            raise UserError(f"{_option_name(param)} must be a finite number (got {value!r})")
        return number


def _option_name(param: click.Parameter | None) -> str:
    opts = getattr(param, "opts", None)
    return max(opts, key=len) if opts else (param.name if param and param.name else "value")


FINITE = FiniteFloat()


class Device(click.ParamType):
    """cpu, cuda, cuda:N or mps, checked against this machine before any work."""

    name = "device"

    def convert(self, value, param, ctx):
        from clusterguide.checks import device

        return device(str(value), _option_name(param))


DEVICE = Device()


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
            type=FINITE,
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


# Any field of the mapping's settings by name, beside the few with options of their own.
mapping_settings_option = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="Mapping setting by name, e.g. --set hinge_dims=32 (repeatable; docs/mapping.md lists them).",
)


# sample, grid and export: how a cluster's latents are drawn (sampler.METHODS)
method_option = click.option(
    "--method",
    type=click.Choice(["imle", "corrected", "exact"]),
    default="imle",
    show_default=True,
    help="imle: G(T_c(e)); corrected: moved to the cluster's moments and projected inside; exact: rejection.",
)


def quiet_option(f):
    @click.option(
        "--quiet", "-q", is_flag=True, help="No progress bars (or, without a terminal, stage lines)."
    )
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
    check_writable(parent, path)
    if p.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    return p
