"""Fitting a run: sample latents, cluster their representations, learn the mappings, measure.

(The module is ``fitting``, not ``fit``: importing a submodule named ``fit`` would replace the
top-level function ``clusterguide.fit``.)

:func:`fit_run` is Algorithm 1 end to end for a fresh run; :func:`split_cluster` is the step it
shares with refinement (cluster some latents at a layer, learn a mapping per child), and
:func:`measure_clusters` computes the metrics written to ``metrics.json`` after every fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clusterguide import __version__
from clusterguide.clustering import fit_kmeans
from clusterguide.errors import UserError
from clusterguide.features import extract_features, representation
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import GeneratorSpec, load_generator
from clusterguide.mapping import MappingConfig, draw_inputs, fit_mappings
from clusterguide.metrics import distribution_scores, norm_ratio
from clusterguide.run import FitConfig, Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT, ClusterTree, Split, child_path, parent_of

Log = Callable[[str], None]


def sample_prior(G: GeneratorAdapter, n: int, seed: int, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([G.sample_latents(min(chunk, n - s), seed, start=s) for s in range(0, n, chunk)])


def make_guide(G: GeneratorAdapter, split: Split):
    """Assignment logits at the split's layer: -|f - c_j|^2 / scale, where scale is a tenth of the
    mean squared gap between centroids (so well-inside samples give near one-hot assignments)."""
    c = torch.from_numpy(split.centroids).to(G.device)
    gaps = torch.cdist(c, c).pow(2)
    scale = float(gaps.sum() / max(c.shape[0] * (c.shape[0] - 1), 1)) * 0.1
    c_sq = (c * c).sum(1)

    def guide(z: torch.Tensor) -> torch.Tensor:
        f = representation(G, z.to(G.device), split.layer, split.pool)
        d = (f * f).sum(1, keepdim=True) - 2 * f @ c.T + c_sq
        return -d / scale

    return guide


def make_path_guide(G: GeneratorAdapter, tree: ClusterTree, parent: str, split: Split):
    """The guide for the children of ``parent``: the sibling logits of ``split`` and one more column,
    "outside the path", that beats every sibling by how far a sample is outside ``parent``'s cluster
    at any split above it. A leaf is the intersection of one cell per split along its path, and the
    siblings' cells alone reach far outside the parent: without this column the consistency hinge
    happily moves a refined cluster's samples out of its parent."""
    base = make_guide(G, split)
    if not parent:
        return base
    above = [
        (make_guide(G, tree.splits[parent_of(node)]), int(node.rsplit("/", 1)[-1]))
        for node in tree.ancestors(parent)
    ]

    def guide(z: torch.Tensor) -> torch.Tensor:
        logits = base(z)
        outside = torch.zeros(logits.shape[0], device=logits.device)
        for ancestor, index in above:
            a = ancestor(z)
            others = a.scatter(1, torch.full((a.shape[0], 1), index, device=a.device), float("-inf"))
            outside = outside + F.relu(others.max(1).values - a[:, index])
        return torch.cat([logits, logits.max(1, keepdim=True).values + outside[:, None]], 1)

    return guide


def split_cluster(
    G: GeneratorAdapter,
    run: Run,
    parent: str,
    latents: torch.Tensor,
    layer: str,
    k: int,
    seed: int,
    log: Log = print,
) -> dict:
    """Cluster ``latents`` (all inside ``parent``) at ``layer`` into k children of ``parent``, learn a
    mapping for every child large enough, and record everything in ``run``. Returns timings."""
    cfg = run.fit
    G.check_layer(layer)
    if k < 2:
        raise UserError(f"--clusters must be at least 2 (got {k})")
    if k > latents.shape[0]:
        raise UserError(f"--clusters {k} is larger than the number of samples {latents.shape[0]}")
    t0 = time.perf_counter()
    feats = extract_features(G, layer, latents, pool=cfg.pool, batch_size=cfg.batch_size)
    t1 = time.perf_counter()
    km = fit_kmeans(feats, k, seed=seed, niter=cfg.kmeans_iters, gpu=G.device.type == "cuda")
    t2 = time.perf_counter()
    split = Split(layer, km.centroids, cfg.pool, latents.shape[0], seed)
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
        sub = Split(layer, km.centroids[train], cfg.pool)
        result = fit_mappings(
            [latents[torch.from_numpy(km.labels == i)] for i in train],
            run.mapping,
            guide=make_path_guide(G, run.tree, parent, sub),
            device=G.device,
            desc=f"mappings @ {layer}",
            # children start from their parent's mapping, which already lands inside the parent
            init=run.mappings.get(parent) if parent else None,
            prior=None if G.prior_is_standard_normal else G.prior(),
        )
        for i, net in zip(train, result.networks):
            run.mappings[child_path(parent, i)] = net
        mapping_seconds = result.seconds
    else:
        mapping_seconds = 0.0
    timings = {"features_s": t1 - t0, "kmeans_s": t2 - t1, "mappings_s": mapping_seconds}
    rows = measure_clusters(G, run, children, latents, km.labels, feats)
    by_id = {r["id"]: r for r in run.metrics.get("clusters", [])}
    by_id.update({r["id"]: r for r in rows})
    run.metrics["clusters"] = [by_id[p] for p in run.tree.clusters() if p in by_id]
    run.metrics.setdefault("timings", {})[parent or "root"] = {**timings, "inertia": km.inertia}
    run.metrics["summary"] = summarize(run.metrics["clusters"])
    return timings


@torch.no_grad()
def measure_clusters(
    G: GeneratorAdapter,
    run: Run,
    paths: list[str],
    latents: torch.Tensor,
    labels: np.ndarray,
    feats: np.ndarray,
) -> list[dict]:
    """Metrics of every cluster in ``paths`` (siblings, labelled by index in ``labels``)."""
    n_eval = run.fit.eval_samples
    rows = []
    for path in paths:
        index = int(path.rsplit("/", 1)[-1])
        own = np.nonzero(labels == index)[0]
        stats = run.tree.stats[path]
        row: dict = {
            "id": path,
            "size": stats["size"],
            "share": stats["share"],
            "layer": run.tree.layer_of(path),
        }
        if path in run.mappings:
            net = run.mappings[path].to(G.device).eval()
            e = draw_inputs(net, G.sample_latents, derive_seed(run.fit.seed, "eval", path), 0, n_eval).to(
                G.device
            )
            mapped = net(e)
            row["fidelity"] = float(run.tree.membership(G, mapped, path).mean())
            z_own = latents[own].numpy()
            row["norm_ratio"] = norm_ratio(mapped.cpu().numpy(), z_own)
            row["mapped_norm"] = float(mapped.norm(dim=1).mean())
            row["latent_norm"] = float(np.linalg.norm(z_own, axis=1).mean())
            split = run.tree.splits[path.rsplit("/", 1)[0] if "/" in path else ROOT]
            mapped_feats = representation(G, mapped, split.layer, split.pool).cpu().numpy()
            # exact samples: the cluster's own latents; a second, disjoint share gives the ceiling
            half = min(n_eval, len(own) // 2)
            heldout = feats[own[half : 2 * half]] if half > 5 else None
            row.update(
                distribution_scores(mapped_feats, feats[own[: max(half, min(n_eval, len(own)))]], heldout)
            )
        else:
            row.update({"fidelity": None, "norm_ratio": None, "precision": None, "recall": None})
            row["note"] = run.skipped.get(path, "")
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    def vals(key):
        return [r[key] for r in rows if r.get(key) is not None]

    out = {}
    for key in ("fidelity", "norm_ratio", "precision", "recall"):
        v = vals(key)
        if v:
            out[f"min_{key}"] = float(min(v))
            out[f"mean_{key}"] = float(np.mean(v))
    return out


def fit_run(
    spec: GeneratorSpec,
    fit_cfg: FitConfig,
    map_cfg: MappingConfig,
    device: str = "cpu",
    log: Log = print,
    generator: GeneratorAdapter | None = None,
) -> tuple[Run, GeneratorAdapter]:
    """Algorithm 1 for a fresh run; nothing is written (call ``run.save``)."""
    G = generator or load_generator(spec, device=device)
    G = G.conditioned(fit_cfg.class_label)
    G.check_layer(fit_cfg.layer)
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
    split_cluster(G, run, ROOT, latents, fit_cfg.layer, fit_cfg.clusters, fit_cfg.seed, log)
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
