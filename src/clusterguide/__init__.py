"""clusterguide: label-free control for pretrained unconditional generators.

Cluster a generator's intermediate representations, learn a mapping per cluster from an auxiliary
Gaussian into that cluster's latents (IMLE), and sample images of a chosen cluster::

    import clusterguide as cg

    sampler = cg.fit("digiface-dcgan", layer="block1", clusters=4)
    sampler.save("runs/faces")
    sampler = cg.load("runs/faces")
    out = sampler.sample("0", n=16, seed=0)  # out.images: uint8 (16, 64, 64, 3)

The public names below load lazily, so ``import clusterguide`` (and the CLI's start-up) does not
pull in torch or FAISS before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that owns it
_EXPORTS = {
    "fit": "clusterguide.api",
    "load": "clusterguide.api",
    "ClusterSampler": "clusterguide.sampler",
    "SampleOutput": "clusterguide.sampler",
    "Run": "clusterguide.run",
    "FitConfig": "clusterguide.run",
    "MappingConfig": "clusterguide.mapping",
    "GeneratorSpec": "clusterguide.generators.registry",
    "load_generator": "clusterguide.generators.registry",
    "UserError": "clusterguide.errors",
}

__all__ = [
    "ClusterSampler",
    "FitConfig",
    "GeneratorSpec",
    "MappingConfig",
    "Run",
    "SampleOutput",
    "UserError",
    "__version__",
    "fit",
    "load",
    "load_generator",
]

if TYPE_CHECKING:
    from clusterguide.api import fit, load
    from clusterguide.errors import UserError
    from clusterguide.generators.registry import GeneratorSpec, load_generator
    from clusterguide.mapping import MappingConfig
    from clusterguide.run import FitConfig, Run
    from clusterguide.sampler import ClusterSampler, SampleOutput


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clusterguide' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
