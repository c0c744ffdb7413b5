"""How well a cluster's mapping stands for the cluster: fidelity, norm ratio, precision, recall,
and the bars a sampler is held to on them (``meets_goal``).

- ``fidelity``: share of mapped samples T_c(e) whose representation is assigned back to c (along
  the whole path for a refined cluster).
- ``norm_ratio``: mean |T_c(e)| / mean |z| over the cluster's own latents; well below 1 means the
  mapping collapsed toward the mean.
- ``precision`` / ``recall``: improved precision and recall (Kynkaanniemi et al. 2019, k = 5)
  between mapped samples and exact samples of the cluster (fresh rejection-sampled latents, never
  the training latents; see :mod:`clusterguide.fit_metrics`) in the layer's representation
  space: precision = share of mapped samples inside the exact samples' k-NN balls, recall = share
  of exact samples inside the mapped samples' balls.

k-NN balls from 1,000 points in thousands of dimensions are unreliable: two independent sets of
exact samples of the same cluster score only about 0.55-0.75 against each other in the raw
8,192-dimensional ``block1`` space. So the headline figures are computed after projecting the
representations on the top ``PR_DIMS`` principal axes of the exact samples (where that ceiling is
about 0.9), and each cluster also reports the raw-space figures and the ceiling (an independent
exact set scored the same way), so a reader can tell a weak mapping from a weak metric.
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


def _inside_any_ball(
    queries: np.ndarray, ref: np.ndarray, radii: np.ndarray, chunk: int = 1024
) -> np.ndarray:
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


PR_DIMS = 16


def project(reference: np.ndarray, *others: np.ndarray, dims: int = PR_DIMS) -> list[np.ndarray]:
    """PCA of ``reference`` to ``dims`` axes, applied to reference and others."""
    ref = as_faiss(reference)
    dims = min(dims, ref.shape[1], max(len(ref) - 1, 1))
    pca = faiss.PCAMatrix(ref.shape[1], dims)
    pca.train(ref)
    return [pca.apply(ref)] + [pca.apply(as_faiss(o)) for o in others]


def distribution_scores(
    mapped: np.ndarray, exact: np.ndarray, exact_heldout: np.ndarray | None, k: int = 5
) -> dict:
    """Precision/recall of mapped vs exact features, projected and raw, with the ceiling an
    independent exact set reaches (None when there is no held-out set)."""
    ref, m, held = project(exact, mapped, exact_heldout if exact_heldout is not None else exact[:0])
    out = {}
    out["precision"], out["recall"] = precision_recall(m, ref, k)
    out["precision_raw"], out["recall_raw"] = precision_recall(mapped, exact, k)
    if exact_heldout is not None and len(exact_heldout) > k:
        out["precision_ceiling"], out["recall_ceiling"] = precision_recall(held, ref, k)
        out["precision_raw_ceiling"], out["recall_raw_ceiling"] = precision_recall(exact_heldout, exact, k)
    return out


def norm_ratio(mapped: np.ndarray, cluster_latents: np.ndarray) -> float:
    return float(np.linalg.norm(mapped, axis=1).mean() / np.linalg.norm(cluster_latents, axis=1).mean())


# The bars a sampler of a cluster is held to (issue 12, docs/benchmarks.md): its samples land in the
# cluster at least this often, and cover at least this share of what independent exact samples
# cover (the recall ceiling, so a weak metric is not taken for a weak sampler).
FIDELITY_GOAL = 0.95
RECALL_SHARE_GOAL = 0.9


def meets_goal(row: dict, prefix: str = "") -> bool | None:
    """Whether a cluster's metrics row (``metrics.json``) meets both bars, fidelity >=
    ``FIDELITY_GOAL`` and recall >= ``RECALL_SHARE_GOAL`` x its recall ceiling, with the mapping's
    own samples (``prefix`` "") or the corrected sampler's (``"corrected_"``); None where the row
    lacks one of the figures (a skipped cluster, a run saved before they were measured)."""
    fidelity, recall = row.get(f"{prefix}fidelity"), row.get(f"{prefix}recall")
    ceiling = row.get("recall_ceiling")
    if fidelity is None or recall is None or not ceiling:
        return None
    return bool(fidelity >= FIDELITY_GOAL and recall >= RECALL_SHARE_GOAL * ceiling)
