"""The generator protocol every adapter implements.

An adapter wraps a pretrained generator G and exposes the split the method needs:
``head(z, layer)`` is G_[n](z), the representation after a named layer, and ``tail(h, layer, z=z)``
runs the rest of the network, so ``tail(head(z, L), L, z=z) == synthesize(z)``. Style-based and
class-conditional generators feed the latent into every later layer too, so their ``tail`` needs
``z``; purely sequential ones (DCGAN, PGAN) ignore it.

Adapters are ``nn.Module`` subclasses: they load on CPU in fp32 and the caller moves them with
``.to(device)``. Images come out as float tensors in [-1, 1], shape (N, 3, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.seeding import randn_streams

if TYPE_CHECKING:
    from clusterguide.generators.registry import GeneratorSpec


@dataclass(frozen=True)
class LayerInfo:
    """One layer a user can cluster at."""

    name: str  # the name used on the command line and in run folders
    shape: tuple[int, ...]  # output shape of head(z, name) for one latent, without batch dim


class GeneratorAdapter(nn.Module):
    """Base class of all generator adapters; subclasses fill in the abstract parts.

    Subclasses must set ``name`` (registry id), ``latent_dim`` and ``image_size`` and implement
    ``layer_names``, ``head``, ``tail`` and ``synthesize``. They may override
    ``sample_latents`` when their prior is not N(0, I) in the latent they expose (StyleGAN's W).
    """

    name: str = "generator"
    latent_dim: int = 0
    image_size: int = 0
    # Identifies the weights (sha256 of the checkpoint file, or "random" for random init).
    weights_id: str = "random"
    # How the registry built it (set by load_generator; None for adapters built by hand).
    spec: GeneratorSpec | None = None

    # ---- layers -----------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        raise NotImplementedError

    def layers(self) -> list[LayerInfo]:
        """Every clusterable layer with its output shape (found by one forward pass)."""
        z = self.sample_latents(1, seed=0).to(self.device)
        out = []
        with torch.no_grad():
            for name in self.layer_names():
                out.append(LayerInfo(name, tuple(self.head(z, name).shape[1:])))
        return out

    def check_layer(self, layer: str) -> str:
        names = self.layer_names()
        if layer not in names:
            raise UserError(
                f"unknown layer {layer!r} for generator {self.name!r}; choose one of: {', '.join(names)}"
            )
        return layer

    # ---- the split --------------------------------------------------------------------
    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        """G_[n](z): the representation after ``layer``."""
        raise NotImplementedError

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        """The rest of G after ``layer`` (``z``: the latent, for generators that need it again);
        returns images in [-1, 1]."""
        raise NotImplementedError

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): images in [-1, 1], shape (N, 3, H, W)."""
        raise NotImplementedError

    # ---- the prior --------------------------------------------------------------------
    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """Latents number ``start .. start+n-1`` of the stream named by ``seed`` (on CPU).

        Latent i is the same whatever n and start are, so results never depend on batch size.
        """
        return randn_streams(seed, start, n, self.latent_dim)

    @property
    def prior_is_standard_normal(self) -> bool:
        """Whether ``sample_latents`` draws N(0, I) (the base class's prior); adapters that
        override it say so themselves."""
        return type(self).sample_latents is GeneratorAdapter.sample_latents

    def prior(self) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``sample_latents`` as a sampler driven by a torch.Generator (for training loops)."""
        return lambda n, g: self.sample_latents(n, int(torch.randint(0, 2**62, (1,), generator=g)))

    # ---- conditioning -----------------------------------------------------------------
    class_label: int | None = None
    num_classes: int = 0

    def conditioned(self, class_label: int | None) -> GeneratorAdapter:
        """This generator fixed to one class (class-conditional families override this)."""
        if class_label is not None:
            raise UserError(f"generator {self.name!r} is unconditional; --class is not accepted")
        return self

    # ---- misc -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def describe(self) -> dict:
        """What a run folder records about the generator (enough to reload it)."""
        return {"name": self.name, "weights_id": self.weights_id, "latent_dim": self.latent_dim}


def number_option(name: str, value) -> float:
    """A family option given as text on the command line, as a float (one-line error otherwise)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"--{name} must be a number (got {value!r})") from None


def published_random(family: str, checkpoint: str, table: dict):
    """``table[name]`` for a ``random:<name>`` checkpoint of a family's published architectures."""
    entry = table.get(checkpoint[len("random:") :])
    if entry is None:
        raise UserError(f"unknown {family} {checkpoint!r}; choose random:<one of {', '.join(table)}>")
    return entry
