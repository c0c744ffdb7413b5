"""Adapter for any user generator given by import path, ``package.module:factory``.

The factory is called with no arguments (or with ``checkpoint`` when one is given) and returns
``(module, latent_dim)``. The module maps a (N, latent_dim) tensor to (N, 3, H, W) images in
[-1, 1]. Its layers are its named submodules; ``head`` runs the whole module with a forward hook
on the named submodule and stops there, so any architecture works without knowing its graph.
``tail`` is only possible for modules whose top level is an ``nn.Sequential``.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter


class _StopForward(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


def resolve_factory(spec: str):
    if ":" not in spec:
        raise UserError(f"custom generator {spec!r} must look like package.module:factory")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for generator {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{module_name!r} has no callable {attr!r}")
    return factory


class CustomAdapter(GeneratorAdapter):
    def __init__(self, spec: str, net: nn.Module, latent_dim: int) -> None:
        super().__init__()
        if not isinstance(net, nn.Module) or int(latent_dim) <= 0:
            raise UserError(f"factory {spec!r} must return (nn.Module, latent_dim > 0)")
        self.name = spec
        self.net = net.eval()
        self.latent_dim = int(latent_dim)
        with torch.no_grad():
            self.image_size = int(self.synthesize(self.sample_latents(1, 0)).shape[-1])

    @classmethod
    def from_spec(cls, spec: str, checkpoint: str | None = None) -> CustomAdapter:
        factory = resolve_factory(spec)
        params = inspect.signature(factory).parameters
        result = factory(checkpoint=checkpoint) if "checkpoint" in params else factory()
        if checkpoint and "checkpoint" not in params:
            raise UserError(f"factory {spec!r} takes no checkpoint argument")
        try:
            net, latent_dim = result
        except (TypeError, ValueError):
            raise UserError(f"factory {spec!r} must return (nn.Module, latent_dim)") from None
        return cls(spec, net, latent_dim)

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.net.named_modules() if name]

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        target = dict(self.net.named_modules())[self.check_layer(layer)]

        def hook(_module, _inputs, output):
            raise _StopForward(output)

        handle = target.register_forward_hook(hook)
        try:
            self.net(z)
        except _StopForward as stop:
            return stop.value
        finally:
            handle.remove()
        raise UserError(f"layer {layer!r} is not used in the forward pass of {self.name!r}")

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(self.net, nn.Sequential) or layer not in dict(self.net.named_children()):
            raise UserError(f"tail() needs a top-level layer of an nn.Sequential; {layer!r} is not one")
        names = [n for n, _ in self.net.named_children()]
        return self.net[names.index(layer) + 1 :](h)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def describe(self) -> dict:
        return {**super().describe(), "factory": self.name}
