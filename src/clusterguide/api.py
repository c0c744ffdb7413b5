"""The short public API: ``cg.fit`` a run, ``cg.load`` it back, ``.sample`` a cluster.

Both functions return a :class:`~clusterguide.sampler.ClusterSampler`: a fitted run together with
the generator it was fitted on. What ``fit`` returns and what ``load`` returns are the same kind of
object, so a notebook can fit, save, name and sample without caring where the run came from. The
stage-by-stage API (``fit.fit_run``, ``run.Run``, ``mapping.MappingConfig``) stays available for
callers that need more control.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from clusterguide.errors import UserError
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.sampler import ClusterSampler
from clusterguide.seeding import check_seed


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def fit(
    generator: str | GeneratorSpec,
    layer: str,
    clusters: int,
    *,
    samples: int = 20000,
    seed: int = 0,
    mapping: str = "fast",
    epochs: int | None = None,
    checkpoint: str | None = None,
    options: dict[str, Any] | None = None,
    class_label: int | None = None,
    pool: int | None = None,
    device: str = "cpu",
    verbose: bool = True,
    reduce: int | None = None,
    workers: int = 1,
    ray: str | None = None,
    mapping_settings: dict[str, Any] | None = None,
) -> ClusterSampler:
    """Cluster ``generator``'s representations at ``layer`` into ``clusters`` groups and learn a
    mapping per cluster (Algorithm 1; ``mapping="paper"`` for the published recipe).

    ``generator`` is a registry name (``"digiface-dcgan"``, ``"stylegan2"``, ...), a
    ``package.module:factory`` string, or a :class:`GeneratorSpec`; ``checkpoint`` and ``options``
    (family options such as ``latent_space`` or ``truncation``) complete a name. Progress bars and
    stage messages go to stderr unless ``verbose=False``. Nothing is written: call ``.save(dir)``.

    Large fits: ``reduce`` clusters a PCA of the features with that many axes (``None``: only when
    the full features would pass 2 GiB; ``0``: never), ``workers`` local processes or a Ray cluster
    (``ray="auto"`` or an address) compute the features (docs/scale.md).

    ``mapping_settings`` overrides fields of the recipe's :class:`~clusterguide.mapping.MappingConfig`
    by name (e.g. ``{"hinge_dims": 32}``; docs/mapping.md lists them).
    """
    from clusterguide.executor import Backend, check_backend
    from clusterguide.fitting import fit_run
    from clusterguide.large_fit import ScaleOptions
    from clusterguide.mapping import MappingConfig, check_settings
    from clusterguide.progress import set_progress
    from clusterguide.run import FitConfig

    check_seed(seed)
    if isinstance(generator, GeneratorSpec):
        if checkpoint is not None or options:
            raise UserError("pass checkpoint and options inside the GeneratorSpec, not beside it")
        spec = generator
    else:
        spec = GeneratorSpec(str(generator), checkpoint, dict(options or {}))
    fit_cfg = FitConfig(
        layer=layer, clusters=clusters, samples=samples, seed=seed, class_label=class_label, pool=pool
    )
    settings = check_settings(dict(mapping_settings or {}))
    map_cfg = MappingConfig.preset(mapping, **{"epochs": epochs, **settings, "seed": seed})
    check_backend(workers, ray)
    scale = ScaleOptions(reduce, Backend(workers=workers, ray=ray, device=device), spec)
    if not verbose:
        set_progress(False)
    try:
        run, G = fit_run(
            spec, fit_cfg, map_cfg, device=device, log=_stderr if verbose else _quiet, scale=scale
        )
    finally:
        if not verbose:
            set_progress(None)
    return ClusterSampler(G, run)


def _quiet(message: str) -> None:
    """A log that drops everything (``verbose=False``)."""


def load(run_dir: str | Path, device: str = "cpu", class_label: int | None = None) -> ClusterSampler:
    """Load a run folder and rebuild its generator; ``class_label`` samples another class of a
    class-conditional generator (cross-class transfer)."""
    return ClusterSampler.load(run_dir, device=device, class_label=class_label)
