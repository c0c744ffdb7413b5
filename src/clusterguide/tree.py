"""The cluster tree: which clusters exist, at which layer each split was made, and membership.

The first k-means over the whole prior is the split of the root (path ``""``), giving clusters
``"0" .. "k-1"``. Refining cluster ``"1"`` at another layer adds a split at ``"1"`` whose children
are ``"1/0" .. "1/k'-1"`` (paper §4.3). A latent belongs to cluster ``"1/0"`` when it is assigned to
``1`` at the root's layer and to ``0`` at the refinement's layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clusterguide.clustering import assign
from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.reduction import Reduction, split_features

ROOT = ""


@dataclass
class Split:
    """One k-means split of a cluster's latents at a layer."""

    layer: str
    centroids: np.ndarray  # (k, F) float32
    pool: int | None = None  # spatial pooling applied before flattening (see features.py)
    samples: int = 0  # latents the k-means saw
    seed: int = 0
    reduction: Reduction | None = None  # PCA the centroids live in (large fits); None: full features

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def meta(self) -> dict:
        return {
            "layer": self.layer,
            "k": self.k,
            "pool": self.pool,
            "samples": self.samples,
            "seed": self.seed,
            # only reduced splits say so: a full-feature split's config stays as it always was
            **({"reduction": self.reduction.meta()} if self.reduction is not None else {}),
        }


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ROOT


def child_path(parent: str, index: int) -> str:
    return f"{parent}/{index}" if parent else str(index)


def path_key(path: str) -> tuple[int, ...]:
    """Sort key: numeric, depth-first (0, 0/0, 0/1, 1, ...)."""
    return tuple(int(p) for p in path.split("/")) if path else ()


@dataclass
class ClusterTree:
    splits: dict[str, Split] = field(default_factory=dict)  # parent path -> split
    stats: dict[str, dict] = field(default_factory=dict)  # cluster path -> {"size", "share"}

    def clusters(self) -> list[str]:
        """Every cluster path (internal nodes and leaves), depth-first."""
        out = [child_path(p, i) for p, s in self.splits.items() for i in range(s.k)]
        return sorted(out, key=path_key)

    def leaves(self) -> list[str]:
        return [c for c in self.clusters() if c not in self.splits]

    def children(self, path: str) -> list[str]:
        s = self.splits.get(path)
        return [child_path(path, i) for i in range(s.k)] if s else []

    def ancestors(self, path: str) -> list[str]:
        """The clusters along the path from the root, ending with ``path`` itself."""
        parts = path.split("/")
        return ["/".join(parts[: i + 1]) for i in range(len(parts))]

    def check(self, path: str) -> str:
        if path not in self.clusters():
            raise UserError(f"no cluster {path!r}; clusters are: {', '.join(self.clusters())}")
        return path

    def layer_of(self, path: str) -> str:
        """The layer at which cluster ``path`` was formed (its parent's split)."""
        return self.splits[parent_of(path)].layer

    @torch.no_grad()
    def assign_at(self, G: GeneratorAdapter, z: torch.Tensor, parent: str) -> np.ndarray:
        """Child index under ``parent`` for every latent (ignores whether z is in ``parent``)."""
        split = self.splits[parent]
        feats = split_features(G, z.to(G.device), split)
        return assign(feats.cpu().numpy(), split.centroids)

    @torch.no_grad()
    def membership(self, G: GeneratorAdapter, z: torch.Tensor, path: str) -> np.ndarray:
        """Boolean mask: latent falls in every cluster along ``path``."""
        mask = np.ones(z.shape[0], dtype=bool)
        for node in self.ancestors(self.check(path)):
            rows = np.nonzero(mask)[0]
            if len(rows) == 0:
                break
            # Deeper layers only for latents still inside: deep in a tree most are already out.
            index = int(node.rsplit("/", 1)[-1])
            mask[rows] = self.assign_at(G, z[torch.from_numpy(rows)], parent_of(node)) == index
        return mask

    @torch.no_grad()
    def leaf_of(self, G: GeneratorAdapter, z: torch.Tensor) -> list[str]:
        """The deepest cluster every latent falls in."""
        paths = np.full(z.shape[0], ROOT, dtype=object)
        frontier = [ROOT]
        while frontier:
            parent = frontier.pop()
            rows = np.nonzero(paths == parent)[0]
            if len(rows) == 0:
                continue
            labels = self.assign_at(G, z[rows], parent)
            for i, row in enumerate(rows):
                paths[row] = child_path(parent, int(labels[i]))
            frontier += [c for c in self.children(parent) if c in self.splits]
        return list(paths)

    def depth(self, path: str) -> int:
        return len(path.split("/"))
