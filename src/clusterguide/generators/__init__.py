"""Generator adapters: the protocol (:mod:`base`), the registry, and one module per family."""

from clusterguide.generators.base import GeneratorAdapter, LayerInfo
from clusterguide.generators.registry import GeneratorSpec, families, load_generator, register

__all__ = ["GeneratorAdapter", "GeneratorSpec", "LayerInfo", "families", "load_generator", "register"]
