"""Features and assignments of many latents, in chunks, on any :mod:`executor` back end.

``fit`` at large N never holds the full features: latents go out in chunks of ``chunk`` rows (a
multiple of the head's batch size, so batches are the same however the work is split), each
worker computes the chunk's features batch by batch and returns them reduced (a
:class:`~clusterguide.reduction.Reduction`), or only their nearest-centroid labels. Peak memory
is the reduced result plus one chunk per worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clusterguide.clustering import assign
from clusterguide.executor import Backend, run_tasks
from clusterguide.features import feature_dim, representation
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.progress import bar
from clusterguide.reduction import Reduction

CHUNK_BYTES = 64 * 2**20  # full features per chunk at most (reduced chunks are far smaller)


@dataclass
class FeatureJob:
    """One chunk of latents -> (reduced) features and/or labels; picklable for workers."""

    generator: GeneratorSpec | None  # how workers load G (None: only this process may run it)
    class_label: int | None
    layer: str
    pool: int | None
    batch_size: int
    device: str = "cpu"
    reduction: Reduction | None = None
    centroids: np.ndarray | None = None  # with centroids, each chunk's labels come back too
    features: bool = True  # return the (reduced) features

    def setup(self) -> Any:
        from clusterguide.generators.registry import load_generator

        assert self.generator is not None, "worker processes need the generator's spec"
        G = load_generator(self.generator, device=self.device)
        return G.conditioned(self.class_label) if self.class_label is not None else G

    @torch.no_grad()
    def run(self, G: Any, task: tuple[int, torch.Tensor]) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        start, z = task
        parts = []
        for s in range(0, z.shape[0], self.batch_size):
            f = representation(G, z[s : s + self.batch_size].to(G.device), self.layer, self.pool)
            if self.reduction is not None:
                f = self.reduction.apply(f)
            parts.append(f.cpu().numpy())
        feats = np.concatenate(parts)
        labels = assign(feats, self.centroids) if self.centroids is not None else None
        return start, feats if self.features else None, labels


def chunks(latents: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    for s in range(0, latents.shape[0], chunk):
        yield s, latents[s : s + chunk]


def stream_features(
    G: GeneratorAdapter,
    layer: str,
    latents: torch.Tensor,
    *,
    pool: int | None = None,
    batch_size: int = 512,
    reduction: Reduction | None = None,
    centroids: np.ndarray | None = None,
    features: bool = True,
    spec: GeneratorSpec | None = None,
    backend: Backend | None = None,
    chunk: int = 16384,
    desc: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(features or None, labels or None) of every latent, in the latents' order.

    Features are reduced when ``reduction`` is given; labels are computed when ``centroids`` are
    (in the reduced space if there is a reduction). ``spec`` lets worker processes or Ray actors
    load the generator; without a back end the work runs here on ``G``."""
    backend = backend or Backend()
    G.check_layer(layer)
    n = latents.shape[0]
    dim = reduction.dim if reduction is not None else feature_dim(G, layer, pool)
    # A chunk's full features exist twice on a worker (batches, then joined): keep them small.
    row_bytes = 4 * (reduction.in_dim if reduction is not None else dim)
    chunk = min(chunk, max(1, CHUNK_BYTES // row_bytes)) if reduction is None else chunk
    chunk = max(batch_size, (chunk // batch_size) * batch_size)
    out = np.empty((n, dim), np.float32) if features else None
    labels = np.empty(n, np.int64) if centroids is not None else None
    job = FeatureJob(
        spec if backend.workers > 1 or backend.ray else None,
        G.class_label,
        layer,
        pool,
        batch_size,
        backend.device,
        reduction,
        centroids,
        features,
    )
    tasks = list(chunks(latents, chunk))
    with bar(n, desc=desc or f"features @ {layer}", unit="latent") as progress:
        for _, (start, feats, lab) in run_tasks(job, tasks, backend, state=G):
            stop = start + (feats.shape[0] if feats is not None else lab.shape[0])
            if out is not None:
                out[start:stop] = feats
            if labels is not None:
                labels[start:stop] = lab
            progress.update(stop - start)
    return out, labels


def subsample_rows(n: int, m: int, seed: int) -> np.ndarray:
    """``m`` distinct row indices of ``n`` (sorted), the same for the same seed."""
    if m >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
