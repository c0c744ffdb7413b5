"""The recipes a mapping can be learned with: their names and :class:`MappingConfig`, whose
presets hold every recipe's settings in one place (saved with every run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from clusterguide.errors import UserError

RECIPES = ("fast", "residual", "paper")


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise UserError(f"unknown mapping recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return recipe


@dataclass(frozen=True)
class MappingConfig:
    """How the mappings are learned; saved with every run."""

    recipe: str = "fast"  # "fast" (default), "residual" (the previous default) or "paper" (Algorithm 1)
    epochs: int = 400  # passes over each cluster's latents
    gamma: float = 10.0  # auxiliary samples drawn per latent of the cluster (Gamma = gamma x size)
    width: int = 512  # hidden width of the 3-layer network
    batch_size: int = 128  # latents per Adam step (per cluster)
    lr: float = 1e-3  # Adam learning rate
    aux_dim: int | None = None  # dimension of e; None = the generator's latent dimension
    residual: bool = False  # T(e) = e + f(e), f zero at init (needs aux_dim == latent_dim)
    staleness: int = 1  # epochs between nearest-neighbour refreshes (1 = every epoch, as the paper)
    consistency: float = 0.0  # weight of the cluster-consistency hinge (0 = pure IMLE)
    margin: float = 0.0  # the hinge is zero once a sample is this far inside its cluster (logit units)
    guide_batch: int = 128  # free samples per cluster per step for the consistency term
    imle_weight: float = 1.0  # weight of the IMLE regression term
    inflation: float = 0.0  # weight of a penalty on mapped norms growing past the cluster's own
    match_quantile: float = 1.0  # regress only the closest share of matches (1.0 = all, as the paper)
    moment_dims: int = 2  # fast: directions where the cluster's second moment departs most from the prior's
    active_dims: int = (
        1  # fast: directions along which the cluster's assignment margin changes most (at least)
    )
    max_active_dims: int = 1  # fast: ... and at most, added one at a time until keep_target is met
    keep_target: float = (
        0.9  # fast: share of the cluster's latents that must stay in it when the complement is redrawn
    )
    candidates: int = 32  # fast: conditional-IMLE candidates drawn per latent at each refresh
    min_steps: int = 0  # batched recipes: optimiser steps per epoch at least (small clusters and refinements)
    nn_backend: str = "auto"  # "faiss", "torch", or "auto" (torch on GPU, faiss on CPU)
    seed: int = 0

    @staticmethod
    def preset(recipe: str, **overrides) -> MappingConfig:
        """The named recipes; unspecified (None) overrides keep the recipe's values."""
        presets = {
            "paper": MappingConfig(recipe="paper"),
            "fast": MappingConfig(
                recipe="fast",
                epochs=15,
                width=256,
                batch_size=512,
                lr=1e-3,
                residual=True,
                staleness=5,
                consistency=1.0,
                margin=0.0,
                guide_batch=64,
                moment_dims=2,
                active_dims=1,
                max_active_dims=8,
                keep_target=0.8,
                candidates=32,
                min_steps=10,
            ),
            "residual": MappingConfig(
                recipe="residual",
                epochs=15,
                gamma=4.0,
                width=256,
                batch_size=512,
                lr=1e-3,
                residual=True,
                staleness=5,
                consistency=1.0,
                margin=0.0,
                guide_batch=64,
                inflation=10.0,
            ),
        }
        return replace(presets[check_recipe(recipe)], **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return asdict(self)
