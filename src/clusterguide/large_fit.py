"""Clustering many latents in bounded memory: the feature step of a split at any N.

Small fits keep what they always did: the full features of every latent, k-means on them. When
the full features would not fit in ``FULL_FEATURES_BYTES`` (or the caller asks for a reduction),
features are streamed twice in chunks (:mod:`streaming`): once for a subsample of
``PCA_SAMPLES`` latents, on which a PCA to ``REDUCED_DIMS`` axes is fitted, then for every latent,
keeping only its reduced row. k-means runs on the reduced rows and the split keeps the reduction,
so assignment, the guides and the metrics use the same space afterwards. The mappings of very
large clusters learn from a seeded subsample of ``MAPPING_SAMPLES`` of their latents: IMLE's
cost grows with the cluster, its accuracy does not beyond a few tens of thousands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clusterguide.clustering import KMeansResult, fit_kmeans
from clusterguide.errors import UserError
from clusterguide.executor import Backend
from clusterguide.features import extract_features, feature_dim
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.reduction import Reduction, fit_pca
from clusterguide.seeding import derive_seed
from clusterguide.streaming import stream_features, subsample_rows

FULL_FEATURES_BYTES = 2 * 2**30  # above this, features are reduced (2 GiB: 65,000 latents at block1)
REDUCED_DIMS = 128  # ARI 0.998 against full-feature k-means on 50,000 latents (docs/scale.md)
PCA_SAMPLES = 16_384
MAPPING_SAMPLES = 20_000


@dataclass(frozen=True)
class ScaleOptions:
    """How a fit's feature step runs (not saved: it does not change the result's meaning)."""

    reduce: int | None = None  # PCA axes; None: only above FULL_FEATURES_BYTES; 0: never
    backend: Backend | None = None  # workers / Ray for the features (None: this process)
    spec: GeneratorSpec | None = None  # how workers load the generator


@dataclass
class Clustered:
    features: np.ndarray  # (N, F) full or (N, d) reduced, float32
    kmeans: KMeansResult
    reduction: Reduction | None
    features_s: float = 0.0
    kmeans_s: float = 0.0


def reduction_dims(n: int, features: int, reduce: int | None) -> int | None:
    """Axes to reduce to: ``reduce`` when given (0: never), else only when the full features
    would exceed ``FULL_FEATURES_BYTES``."""
    if reduce is not None:
        if reduce < 0:
            raise UserError(f"--reduce must be 0 (full features) or a number of axes (got {reduce})")
        return min(reduce, features) if reduce else None
    return min(REDUCED_DIMS, features) if n * features * 4 > FULL_FEATURES_BYTES else None


def cluster_latents(
    G: GeneratorAdapter,
    latents: torch.Tensor,
    layer: str,
    k: int,
    seed: int,
    *,
    pool: int | None = None,
    batch_size: int = 512,
    kmeans_iters: int = 25,
    kmeans_restarts: int = 1,
    kmeans_init: str = "k-means++",
    options: ScaleOptions | None = None,
) -> Clustered:
    """Features of ``latents`` at ``layer`` (reduced at large N) and k-means on them."""
    options = options or ScaleOptions()
    backend = options.backend or Backend()
    t0 = time.perf_counter()
    n = latents.shape[0]
    dims = reduction_dims(n, feature_dim(G, layer, pool), options.reduce)
    reduction = None
    if dims is None and backend.workers == 1 and not backend.ray:
        # Small fits in this process: exactly what fit always did.
        feats = extract_features(G, layer, latents, pool=pool, batch_size=batch_size)
    else:
        common: dict[str, Any] = {
            "pool": pool,
            "batch_size": batch_size,
            "backend": backend,
            "spec": options.spec,
        }
        if dims is not None:
            rows = torch.from_numpy(subsample_rows(n, PCA_SAMPLES, derive_seed(seed, "pca")))
            sample, _ = stream_features(G, layer, latents[rows], desc=f"PCA sample @ {layer}", **common)
            assert sample is not None
            reduction = fit_pca(sample, dims, seed=seed)
            del sample
        streamed, _ = stream_features(G, layer, latents, reduction=reduction, **common)
        assert streamed is not None
        feats = streamed
    t1 = time.perf_counter()
    km = fit_kmeans(
        feats,
        k,
        seed=seed,
        niter=kmeans_iters,
        nredo=kmeans_restarts,
        gpu=G.device.type == "cuda",
        init=kmeans_init,
    )
    return Clustered(feats, km, reduction, t1 - t0, time.perf_counter() - t1)


def mapping_latents(latents: torch.Tensor, labels: np.ndarray, index: int, seed: int) -> torch.Tensor:
    """The latents a cluster's mapping learns from: all of them, or a seeded subsample of
    ``MAPPING_SAMPLES`` when the cluster is larger."""
    own = np.nonzero(labels == index)[0]
    if len(own) > MAPPING_SAMPLES:
        own = own[subsample_rows(len(own), MAPPING_SAMPLES, derive_seed(seed, "mapping", index))]
    return latents[torch.from_numpy(own)]


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert and Arabie's ARI between two labellings (1: the same partition; about 0: chance)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    both, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(a)]))
    return (both - expected) / ((rows + cols) / 2 - expected)
