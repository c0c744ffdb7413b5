"""The recipes a mapping can be learned with: their names and :class:`MappingConfig`, whose
presets hold every recipe's settings in one place (saved with every run)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from clusterguide.errors import UserError

RECIPES = ("fast", "residual", "paper")


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise UserError(f"unknown mapping recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return recipe


# Settings with an option of their own (--mapping, --seed), not set by name.
NOT_SETTINGS = ("recipe", "seed")
KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
BIG = 65_536  # sizes and counts past this are a typo, not a setting
# The values a setting by name may take (inclusive); a NaN is in no range.
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "epochs": (1, 100_000),
    "gamma": (1e-6, 1_000),
    "width": (1, 16_384),
    "batch_size": (2, BIG),  # batch norm needs two rows
    "lr": (1e-12, 10),
    "staleness": (1, BIG),
    "consistency": (0, 1e6),
    "guide_batch": (2, BIG),
    "inflation": (0, 1e6),
    "moment_dims": (0, BIG),
    "active_dims": (0, BIG),
    "max_active_dims": (0, BIG),
    "keep_target": (0, 1),
    "candidates": (1, BIG),
    "candidate_growth": (1, 16),
    "candidates_max": (1, BIG),
    "fidelity_target": (0, 1),
    "max_epoch_factor": (1, 1_000),
    "hinge_dims": (0, BIG),
    "spread": (0, 1e6),
    "hinge_boost": (1, 1e6),
    "hinge_step": (1, 1e3),
    "hinge_boost_max": (1, 1e6),
    "fidelity_check": (0, BIG),
    "shrink_floor": (0.05, 1),
    "min_steps": (0, BIG),
}
SETTING_CHOICES = {"nn_backend": ("auto", "faiss", "torch")}


def check_settings(settings: dict) -> dict:
    """``settings`` (field name -> value) as overrides of a recipe, or a one-line error naming
    an unknown field, a value of the wrong type or one out of its range."""
    known = {f.name: f for f in fields(MappingConfig) if f.name not in NOT_SETTINGS}
    defaults = MappingConfig()
    out = {}
    for name, value in settings.items():
        if name not in known:
            raise UserError(f"unknown mapping setting {name!r}; known: {', '.join(sorted(known))}")
        kind = type(getattr(defaults, name))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise UserError(f"mapping setting {name} takes {KIND_NAMES[kind]}, not {value!r}")
        if name in SETTING_RANGES:
            low, high = SETTING_RANGES[name]
            if not low <= value <= high:
                raise UserError(
                    f"mapping setting {name} must be between {low:g} and {high:g} (got {value!r})"
                )
        if name in SETTING_CHOICES and value not in SETTING_CHOICES[name]:
            raise UserError(
                f"mapping setting {name} is one of {', '.join(SETTING_CHOICES[name])} (got {value!r})"
            )
        out[name] = value
    return out


def parse_settings(items: Iterable[str]) -> dict:
    """``name=value`` strings (the CLI's ``--set``) as checked overrides of a recipe, each value
    read as its field's type."""
    defaults = MappingConfig()
    parsed: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise UserError(f"a mapping setting is name=value, e.g. hinge_dims=32 (got {item!r})")
        # an unknown name is kept as text: check_settings names it in its error
        kind = type(getattr(defaults, name)) if hasattr(defaults, name) else str
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                parsed[name] = text.lower() in ("true", "1", "yes")
            elif kind is int:
                parsed[name] = int(text)
            elif kind is float:
                parsed[name] = float(text)
            else:
                parsed[name] = text
        except ValueError:
            raise UserError(f"mapping setting {name} takes {KIND_NAMES[kind]}, not {text!r}") from None
    return check_settings(parsed)


# Fields older run folders may hold that no recipe used, with the only value any run gave them;
# a saved config with another value asked for something this version no longer does.
DROPPED_FIELDS = {"aux_dim": None, "margin": 0.0, "imle_weight": 1.0, "match_quantile": 1.0}
# Fields added later, with the value that reproduces what older run folders were trained with
# (a refinement of an old run trains its children the way the run was trained).
ADDED_FIELDS = {
    "fidelity_target": 0.0,
    "max_epoch_factor": 1.0,
    "hinge_dims": 0,
    "spread": 0.0,
    "hinge_boost": 1.0,
    "hinge_step": 1.0,
    "hinge_boost_max": 30.0,
    "fidelity_check": 0,
    "cluster_stop": False,
    "steer_on_stall": False,
    "candidate_growth": 1.0,
    "shrink_floor": 1.0,
    "shrink_stopped": False,
    "fold": False,
}


# The paper and residual recipes predate the fast recipe's adaptive parts: every one of them off.
FAST_ONLY_OFF: dict[str, Any] = dict(
    max_active_dims=1,
    keep_target=0.9,
    min_steps=0,
    fidelity_target=0.0,
    max_epoch_factor=1.0,
    hinge_dims=0,
    spread=0.0,
    hinge_boost=1.0,
    hinge_step=1.0,
    fidelity_check=0,
    cluster_stop=False,
    steer_on_stall=False,
    candidate_growth=1.0,
    shrink_floor=1.0,
    fold=False,
    shrink_stopped=False,
)


@dataclass(frozen=True)
class MappingConfig:
    """How the mappings are learned; saved with every run. The defaults are the ``fast`` recipe;
    :meth:`preset` gives every recipe with its own settings (the way to ask for another one)."""

    recipe: str = "fast"  # "fast" (default), "residual" (the previous default) or "paper" (Algorithm 1)
    epochs: int = 15  # passes over each cluster's latents
    gamma: float = 10.0  # paper/residual: auxiliary samples drawn per latent (Gamma = gamma x size)
    width: int = 256  # hidden width of the 3-layer network
    batch_size: int = 512  # latents per Adam step (per cluster)
    lr: float = 1e-3  # Adam learning rate
    residual: bool = True  # T(e) = e + f(e), f zero at init (fast and residual; the paper's is not)
    staleness: int = 5  # epochs between nearest-neighbour refreshes (1 = every epoch, as the paper)
    consistency: float = 1.0  # weight of the cluster-consistency hinge (0 = pure IMLE)
    guide_batch: int = 64  # free samples per cluster per step for the consistency term
    inflation: float = 0.0  # residual: weight of a penalty on mapped norms growing past the cluster's
    moment_dims: int = 2  # fast: directions where the cluster's second moment departs most from the prior's
    active_dims: int = 1  # fast: directions along which the cluster's assignment margin changes most (least)
    max_active_dims: int = 8  # fast: ... and at most, added one at a time until keep_target is met
    keep_target: float = (
        0.8  # fast: share of the cluster's latents that stay in it when the complement is redrawn
    )
    candidates: int = 32  # fast: conditional-IMLE candidates drawn per latent at each refresh
    # fast: a cluster that draws in more than 4 directions gets this many times more candidates
    # for each one past 4, up to `candidates_max` (1 = `candidates` for every cluster): the nearest
    # of a fixed count lands farther from its latent in more dimensions, and a far match regresses
    # toward the cluster's mean, which costs recall
    candidate_growth: float = 2.0
    candidates_max: int = 512
    # fast: train past `epochs` while some cluster's fresh samples land inside it less often than
    # this (the hinge's own samples over the last epoch), up to `max_epoch_factor` x `epochs`;
    # 0 = exactly `epochs`
    fidelity_target: float = 0.95
    max_epoch_factor: float = 2.0
    # fast: at most this many further boundary directions the mapping writes to but does not draw
    # in, added until redrawing the rest keeps `fidelity_target` (0 = none)
    hinge_dims: int = 64
    # fast: weight of matching the mapped samples' mean and covariance on U_c and the correction
    # directions to the cluster's own
    spread: float = 1.0
    # fast: a cluster's hinge weight, from 1 (its share inside halfway from `fidelity_target` to
    # 100% or more) up to this factor (at the target or below); 1 = the same weight for all
    hinge_boost: float = 3.0
    # fast: each epoch, a cluster's top hinge weight goes up by this factor while its share inside
    # is below `fidelity_target` and down once it is a point above, within `hinge_boost` ..
    # `hinge_boost_max` (1 = a fixed weight)
    hinge_step: float = 1.25
    hinge_boost_max: float = 30.0
    # fast: ... but goes up only in epochs the share did not rise: a cluster still climbing on its
    # own (every cluster early in training) keeps its weight (False: up every epoch it is short)
    steer_on_stall: bool = True
    # fast: fresh samples per cluster mapped in evaluation mode each epoch, whose share inside
    # steers the weights and the stop (0 = the hinge's own training-mode samples)
    fidelity_check: int = 256
    # fast: each cluster stops on its own: from `epochs` on, the first epoch its check share is a
    # standard error past `fidelity_target` (confirmed on 4x as many fresh samples) is the state it
    # keeps, and training ends once every cluster has stopped; one that never gets there keeps its
    # best epoch (False: the last epoch, and training ends when all are past the target at once)
    cluster_stop: bool = True
    # fast, opt-in: from `epochs` on, at each nearest-neighbour refresh, a cluster that has not
    # stopped and whose check share, at the rate it rose over the last `staleness` epochs, would
    # still be short of `fidelity_target` at the epoch cap draws twice as many of its directions
    # (the written ones next, up to all of them). Off by default: at `block4` it lifted the
    # hardest cluster's fidelity by 0.03-0.11, but it cost recall elsewhere and met no more
    # clusters in sample (docs/benchmarks.md, round six)
    draw_on_stall: bool = False
    # fast: a cluster that never stopped (it keeps its best epoch, short of `fidelity_target`)
    # has its drawn coordinates scaled toward its samples' mean by the largest factor, in steps of
    # 0.05 down to this floor, with which its fresh samples get a standard error past the target
    # (if none does, the factor with the highest share); 1 = never. At later layers such clusters
    # cover the cluster and more (recall at its ceiling, fidelity 0.82-0.94), and the hinge does
    # not pull them in (docs/benchmarks.md, round eight)
    shrink_floor: float = 0.5
    # fast: ... and so is a cluster that stopped and falls short on the same number of fresh
    # samples after training (False: only the ones that never stopped). The checks a cluster stops
    # on also chose its epoch, so they run above fresh samples: six stopped clusters of round
    # eight's grid measured 0.936-0.948 (docs/benchmarks.md, round nine)
    shrink_stopped: bool = True
    # fast: after training (and any shrink), each mapping's output is moved to its cluster's own
    # mean and covariance and reflected back across the cluster's boundary faces, pulled inward
    # by the least shift that gets fresh samples past `fidelity_target` (mapping/fold.py); kept
    # only where it brings the samples nearer the cluster's latents (energy distance) and gets
    # past the target or lands inside at least as often as without it. The trained mappings
    # sit deep inside large, many-sided clusters and miss their rim (docs/benchmarks.md, round
    # nineteen); False: no fold, as before
    fold: bool = True
    min_steps: int = 10  # fast/residual: optimiser steps per epoch at least (small clusters, refinements)
    nn_backend: str = "auto"  # "faiss", "torch", or "auto" (torch on GPU, faiss on CPU)
    seed: int = 0

    @staticmethod
    def preset(recipe: str, **overrides) -> MappingConfig:
        """The named recipes; unspecified (None) overrides keep the recipe's values."""
        presets = {
            "paper": MappingConfig(
                recipe="paper",
                epochs=400,
                gamma=10.0,
                width=512,
                batch_size=128,
                residual=False,
                staleness=1,
                consistency=0.0,
                guide_batch=128,
                **FAST_ONLY_OFF,
            ),
            "fast": MappingConfig(),
            "residual": MappingConfig(
                recipe="residual",
                gamma=4.0,
                consistency=1.0,
                inflation=10.0,
                **FAST_ONLY_OFF,
            ),
        }
        return replace(presets[check_recipe(recipe)], **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MappingConfig:
        """A saved config, also one written before fields were dropped (see ``DROPPED_FIELDS``)."""
        data = dict(data)
        for name, value in DROPPED_FIELDS.items():
            saved = data.pop(name, value)
            if saved != value:
                raise UserError(f"mapping setting {name}={saved!r} is no longer supported")
        for name, value in ADDED_FIELDS.items():
            data.setdefault(name, value)
        return cls(**data)
