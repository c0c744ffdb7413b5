"""How well a cluster's mapping stands for the cluster: fidelity, norm ratio, precision, recall.

- ``fidelity``: share of mapped samples T_c(e) whose representation is assigned back to c (along
  the whole path for a refined cluster).
- ``norm_ratio``: mean |T_c(e)| / mean |z| over the cluster's own latents; well below 1 means the
  mapping collapsed toward the mean.
- ``precision`` / ``recall``: improved precision and recall (Kynkaanniemi et al. 2019, k = 5)
  between mapped samples and exact samples (latents of the cluster) in the layer's representation
  space: precision = share of mapped samples inside the exact samples' k-NN balls, recall = share
  of exact samples inside the mapped samples' balls.
"""

from __future__ import annotations

import faiss
import numpy as np

from clusterguide.clustering import as_faiss


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, _ = index.search(x, k + 1)  # first neighbour is the point itself
    return dist[:, k]


def _inside_any_ball(queries: np.ndarray, ref: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    ref_sq = (ref.astype(np.float64) ** 2).sum(1)
    out = np.zeros(len(queries), dtype=bool)
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk].astype(np.float64)
        d = (q**2).sum(1, keepdims=True) - 2 * q @ ref.T.astype(np.float64) + ref_sq
        out[s : s + chunk] = (d <= radii[None, :]).any(1)
    return out


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` (rows are samples)."""
    fake, real = as_faiss(fake), as_faiss(real)
    if min(len(fake), len(real)) <= k:
        return float("nan"), float("nan")
    precision = _inside_any_ball(fake, real, _knn_radii(real, k)).mean()
    recall = _inside_any_ball(real, fake, _knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def norm_ratio(mapped: np.ndarray, cluster_latents: np.ndarray) -> float:
    return float(np.linalg.norm(mapped, axis=1).mean() / np.linalg.norm(cluster_latents, axis=1).mean())
