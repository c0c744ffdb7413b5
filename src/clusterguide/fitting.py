"""Fitting a run: sample latents, cluster their representations, learn the mappings, measure.

(The module is ``fitting``, not ``fit``: importing a submodule named ``fit`` would replace the
top-level function ``clusterguide.fit``.)

:func:`fit_run` is Algorithm 1 end to end for a fresh run; :func:`split_cluster` is the step it
shares with refinement (cluster some latents at a layer, learn a mapping per child). The guides
the mappings are steered by live in :mod:`clusterguide.guides`, the metrics written to
``metrics.json`` after every fit in :mod:`clusterguide.fit_metrics`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from clusterguide import __version__
from clusterguide.correction import fit_correction
from clusterguide.errors import UserError
from clusterguide.features import check_pool
from clusterguide.fit_metrics import measure_clusters, summarize
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import GeneratorSpec, load_generator
from clusterguide.guides import make_path_guide
from clusterguide.large_fit import ScaleOptions, cluster_latents, mapping_latents
from clusterguide.mapping import MappingConfig, fit_mappings
from clusterguide.run import FitConfig, Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT, ClusterTree, Split, child_path

Log = Callable[[str], None]


def sample_prior(G: GeneratorAdapter, n: int, seed: int, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([G.sample_latents(min(chunk, n - s), seed, start=s) for s in range(0, n, chunk)])


def split_cluster(
    G: GeneratorAdapter,
    run: Run,
    parent: str,
    latents: torch.Tensor,
    layer: str,
    k: int,
    seed: int,
    log: Log = print,
    scale: ScaleOptions | None = None,
) -> dict:
    """Cluster ``latents`` (all inside ``parent``) at ``layer`` into k children of ``parent``, learn a
    mapping for every child large enough, and record everything in ``run``. Returns timings."""
    cfg = run.fit
    G.check_layer(layer)
    if k < 2:
        raise UserError(f"--clusters must be at least 2 (got {k})")
    if k > latents.shape[0]:
        raise UserError(f"--clusters {k} is larger than the number of samples {latents.shape[0]}")
    # Full features while they fit in memory, else streamed and PCA-reduced (large_fit.py).
    clustered = cluster_latents(
        G,
        latents,
        layer,
        k,
        seed,
        pool=cfg.pool,
        batch_size=cfg.batch_size,
        kmeans_iters=cfg.kmeans_iters,
        kmeans_restarts=cfg.kmeans_restarts,
        kmeans_init=cfg.kmeans_init,
        options=scale,
    )
    km, reduction = clustered.kmeans, clustered.reduction
    features_s, kmeans_s = clustered.features_s, clustered.kmeans_s
    del clustered  # its features (N rows) are not needed below: free them before the mappings
    split = Split(layer, km.centroids, cfg.pool, latents.shape[0], seed, reduction=reduction)
    run.tree.splits[parent] = split
    parent_share = run.tree.stats.get(parent, {}).get("share", 1.0) if parent else 1.0
    children, train = [], []
    for i, size in enumerate(km.sizes.tolist()):
        path = child_path(parent, i)
        run.tree.stats[path] = {"size": int(size), "share": float(parent_share * size / latents.shape[0])}
        children.append(path)
        if size < max(cfg.min_cluster_size, 2):
            run.skipped[path] = (
                f"only {size} of {latents.shape[0]} latents, fewer than min_cluster_size={cfg.min_cluster_size}"
            )
            log(
                f"warning: cluster {path} has only {size} latents; no mapping trained (exact sampling still works)"
            )
        else:
            train.append(i)
    if train:
        # Sibling clusters are learned together; the guide's targets are indices into `train`.
        sub = Split(layer, km.centroids[train], cfg.pool, reduction=reduction)
        # very large clusters learn from a seeded subsample (large_fit.MAPPING_SAMPLES)
        own_latents = [mapping_latents(latents, km.labels, i, seed) for i in train]
        result = fit_mappings(
            own_latents,
            run.mapping,
            guide=make_path_guide(G, run.tree, parent, sub),
            device=G.device,
            desc=f"mappings @ {layer}",
            # children start from their parent's mapping, which already lands inside the parent
            init=run.mappings.get(parent) if parent else None,
            prior=None if G.prior_is_standard_normal else G.prior(),
        )
        for i, net, own in zip(train, result.networks, own_latents):
            path = child_path(parent, i)
            run.mappings[path] = net
            # the corrected sampler's map to the cluster's own moments (correction.py)
            run.corrections[path] = fit_correction(G, net, own, derive_seed(seed, "correction", path))
        mapping_seconds, epochs, fold_seconds = result.seconds, result.epochs, result.fold_seconds
        # the epoch whose state each mapping keeps (earlier than `epochs` where it stopped on its own)
        stopped_at = {child_path(parent, i): e for i, e in zip(train, result.stopped_at)}
        # ... and those that never got past the fidelity target, whose kept epoch is their best
        best_epoch = [child_path(parent, train[c]) for c in result.best_epoch]
        # fast: the directions each mapping drew at the end (more where draw_on_stall promoted it;
        # one that kept an earlier epoch may have trained that state with fewer)
        drawn = {child_path(parent, i): d for i, d in zip(train, result.drawn or [])}
        # fast: the factor each shrunk cluster's drawn coordinates were scaled by (training.choose_shrink)
        shrink = {child_path(parent, i): s for i, s in zip(train, result.shrink or []) if s < 1}
        # fast: each mapping's fold (mapping/fold.py): its faces and inward shift, None where the
        # fold was not kept (farther from the cluster's latents than the mapping alone, or short
        # of the target with fewer fresh samples inside than without it)
        fold = {
            child_path(parent, i): {"faces": f.faces, "shift": f.shift} if f.kept else None
            for i, f in zip(train, result.fold or [])
        }
    else:
        mapping_seconds, epochs, stopped_at, best_epoch, drawn, shrink, fold = 0.0, 0, {}, [], {}, {}, {}
        fold_seconds = 0.0
    timings = {
        "features_s": features_s,
        "kmeans_s": kmeans_s,
        "mappings_s": mapping_seconds,
        "epochs": epochs,
        "stopped_at": stopped_at,
        "best_epoch": best_epoch,
        "drawn": drawn,
        "shrink": shrink,
        "fold": fold,
        "fold_s": fold_seconds,  # of mappings_s
    }
    rows = measure_clusters(G, run, children, latents, km.labels)
    by_id = {r["id"]: r for r in run.metrics.get("clusters", [])}
    by_id.update({r["id"]: r for r in rows})
    run.metrics["clusters"] = [by_id[p] for p in run.tree.clusters() if p in by_id]
    run.metrics.setdefault("timings", {})[parent or "root"] = {**timings, "inertia": km.inertia}
    run.metrics["summary"] = summarize(run.metrics["clusters"])
    return timings


def fit_run(
    spec: GeneratorSpec,
    fit_cfg: FitConfig,
    map_cfg: MappingConfig,
    device: str = "cpu",
    log: Log = print,
    generator: GeneratorAdapter | None = None,
    scale: ScaleOptions | None = None,
) -> tuple[Run, GeneratorAdapter]:
    """Algorithm 1 for a fresh run; nothing is written (call ``run.save``).

    ``scale`` says how the feature step runs at large N (PCA axes, workers or Ray); by default
    features are full while they fit in memory and reduced beyond (:mod:`large_fit`)."""
    G = generator or load_generator(spec, device=device)
    G = G.conditioned(fit_cfg.class_label)
    G.check_layer(fit_cfg.layer)
    check_pool(G, fit_cfg.layer, fit_cfg.pool)
    if fit_cfg.samples < 2:
        raise UserError(f"--samples must be at least 2 (got {fit_cfg.samples})")
    if fit_cfg.clusters < 2:
        raise UserError(f"--clusters must be at least 2 (got {fit_cfg.clusters})")
    if fit_cfg.clusters > fit_cfg.samples:
        raise UserError(f"--clusters {fit_cfg.clusters} is larger than --samples {fit_cfg.samples}")
    start = time.perf_counter()
    run = Run(
        generator=spec,
        generator_info=G.describe(),
        fit=fit_cfg,
        mapping=map_cfg,
        tree=ClusterTree(),
    )
    latents = sample_prior(G, fit_cfg.samples, fit_cfg.seed)
    if scale is not None and scale.spec is None:
        scale = dataclasses.replace(scale, spec=spec)  # workers load the generator from it
    split_cluster(G, run, ROOT, latents, fit_cfg.layer, fit_cfg.clusters, fit_cfg.seed, log, scale)
    seconds = time.perf_counter() - start
    run.metrics["fit_seconds"] = seconds
    run.metrics["mapping_recipe"] = map_cfg.recipe
    run.history.append(
        {
            "event": "fit",
            "layer": fit_cfg.layer,
            "k": fit_cfg.clusters,
            "version": __version__,
            "seconds": seconds,
        }
    )
    return run, G
