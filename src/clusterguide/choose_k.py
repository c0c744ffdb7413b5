"""Choosing the number of clusters k (the paper leaves it as future work; §3.2 fixes C by hand).

Three classic criteria over a range of k, on the same features the fit would cluster:

- **elbow**: k-means inertia against k; the elbow is the point farthest below the chord from the
  first to the last point of the normalised curve (the "kneedle" rule of Satopää et al., 2011).
- **silhouette**: mean silhouette coefficient (Rousseeuw, 1987) of the k-means labels, on a seeded
  subsample so the pairwise distances stay small; higher is better.
- **eigengap**: eigenvalues of the normalised Laplacian of a self-tuning Gaussian affinity graph
  (Zelnik-Manor & Perona, 2004) on a smaller subsample; k is where the gap lambda_{k+1} - lambda_k
  is largest (von Luxburg, 2007).

:func:`recommend` turns the three picks into one k and a sentence saying why. Generator features
often have no sharp cluster structure; then the best silhouette is low and the reason says so: k is
a choice of granularity, to be made by looking at the clusters, as the paper does.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clusterguide.clustering import as_faiss, fit_kmeans
from clusterguide.errors import UserError
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.imaging import font as load_font
from clusterguide.progress import progress
from clusterguide.seeding import check_seed, refinement_stream

MAX_K = 10_000  # as fit's --clusters
WEAK_SILHOUETTE = 0.25  # below this Kaufman & Rousseeuw call a structure "not substantial"
BLUE, RED = (40, 90, 170), (200, 30, 30)  # the curves; the recommended k


@dataclass
class KScan:
    ks: list[int]
    inertia: list[float]  # k-means objective on all samples
    silhouette: list[float]  # mean silhouette on the subsample
    eigengap: list[float]  # lambda_{k+1} - lambda_k of the normalised Laplacian
    eigenvalues: list[float]  # lambda_1 .. lambda_{max k + 1}
    picks: dict[str, int | None]  # the k each criterion prefers ("elbow", "silhouette", "eigengap")
    k: int  # the recommendation
    reason: str
    samples: int
    silhouette_samples: int
    eigengap_samples: int

    def to_json(self) -> dict:
        return asdict(self)


def parse_k_range(text: str) -> list[int]:
    """``"2..12"`` (inclusive), ``"2-12"``, or a list ``"2,3,5,8"``."""
    t = str(text).replace(" ", "")
    m = re.fullmatch(r"(\d{1,9})(?:\.\.|-)(\d{1,9})", t)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise UserError(f"--k-range {text!r}: the end is below the start")
        if hi > MAX_K:
            raise UserError(f"--k-range {text!r}: k must be at most {MAX_K}")
        ks = list(range(lo, hi + 1))
    elif re.fullmatch(r"\d{1,9}(,\d{1,9}){0,999}", t):
        ks = sorted(set(int(v) for v in t.split(",")))
    else:
        raise UserError(f"--k-range {text!r} must look like 2..12 or 2,4,8")
    if ks[0] < 2:
        raise UserError(f"--k-range {text!r}: k must be at least 2")
    if ks[-1] > MAX_K or len(ks) > 1000:
        raise UserError(f"--k-range {text!r}: at most 1000 values of k, each at most {MAX_K}")
    if len(ks) < 3:
        raise UserError(f"--k-range {text!r}: give at least 3 values of k to compare")
    return ks


# ---- the criteria ------------------------------------------------------------------------------
def elbow_k(ks: list[int], inertia: list[float]) -> int | None:
    """The k farthest below the chord of the normalised inertia curve; None when it has no bend."""
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    if len(x) < 3 or y[0] <= y[-1]:
        return None
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y[-1]) / (y[0] - y[-1])
    below = (1.0 - xn) - yn  # the chord runs from (0, 1) to (1, 0)
    i = int(np.argmax(below))
    return int(ks[i]) if below[i] > 1e-9 else None


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows (the Gram trick on centred rows, clamped at zero)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    t = t - t.mean(0, keepdim=True)  # centring keeps the float32 Gram trick accurate
    sq = (t * t).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * t @ t.T).clamp_min_(0)
    d2.fill_diagonal_(0)
    return d2.sqrt_().double().numpy()


def silhouette_score(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient from a distance matrix; points alone in their cluster score 0."""
    labels = np.asarray(labels)
    _, inv = np.unique(labels, return_inverse=True)
    k = int(inv.max()) + 1
    if k < 2:
        return 0.0
    onehot = np.zeros((len(inv), k))
    onehot[np.arange(len(inv)), inv] = 1.0
    sums = dist @ onehot  # (m, k) distance from each point to all members of each cluster
    counts = onehot.sum(0)
    rows = np.arange(len(inv))
    own_count = counts[inv]
    a = np.where(own_count > 1, sums[rows, inv] / np.maximum(own_count - 1, 1), 0.0)
    means = sums / counts
    means[rows, inv] = np.inf
    b = means.min(1)
    s = np.where(own_count > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def laplacian_spectrum(dist: np.ndarray, n_eigen: int, neighbours: int = 7) -> np.ndarray:
    """The ``n_eigen`` smallest eigenvalues of the symmetric normalised Laplacian of a self-tuning
    Gaussian affinity: W_ij = exp(-d_ij^2 / (s_i s_j)), s_i = distance to the i-th point's
    ``neighbours``-th nearest neighbour."""
    m = dist.shape[0]
    if n_eigen > m:
        raise UserError(f"the eigengap needs more than {n_eigen - 1} samples (has {m})")
    nn = min(neighbours, m - 1)
    scale = np.sort(dist, axis=1)[:, nn]
    scale = np.maximum(scale, max(float(np.median(scale)) * 1e-3, 1e-12))  # duplicates
    w = np.exp(-(dist**2) / np.outer(scale, scale))
    np.fill_diagonal(w, 0.0)
    d = w.sum(1)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(d, 1e-300))
    lap = torch.from_numpy(np.eye(m) - inv_sqrt[:, None] * w * inv_sqrt[None, :])
    values = torch.linalg.eigvalsh((lap + lap.T) / 2).numpy()  # torch: obeys torch.set_num_threads
    return np.clip(values[:n_eigen], 0.0, 2.0)


def eigengap_k(ks: list[int], eigenvalues: np.ndarray) -> tuple[int, list[float]]:
    """The k in ``ks`` with the largest gap lambda_{k+1} - lambda_k (1-based eigenvalue index)."""
    gaps = [float(eigenvalues[k] - eigenvalues[k - 1]) for k in ks]
    return int(ks[int(np.argmax(gaps))]), gaps


def recommend(
    ks: list[int], inertia: list[float], silhouette: list[float], eigengap: list[float]
) -> tuple[int, str, dict[str, int | None]]:
    """One k from the three criteria, and why: the majority when two or more agree, otherwise the
    silhouette's best (the only one that measures separation directly)."""
    picks: dict[str, int | None] = {
        "elbow": elbow_k(ks, inertia),
        "silhouette": int(ks[int(np.argmax(silhouette))]),
        "eigengap": int(ks[int(np.argmax(eigengap))]),
    }
    votes = Counter(v for v in picks.values() if v is not None)
    k, count = votes.most_common(1)[0]
    if count == 3:
        reason = f"elbow, silhouette and eigengap all pick k={k}"
    elif count == 2:
        agree = [c for c, v in picks.items() if v == k]
        other = [f"{c} {v if v is not None else 'none'}" for c, v in picks.items() if v != k]
        reason = f"{agree[0]} and {agree[1]} pick k={k} ({other[0]})"
    else:
        k = picks["silhouette"]  # type: ignore[assignment]
        said = ", ".join(f"{c} {v if v is not None else 'none'}" for c, v in picks.items())
        reason = (
            f"the criteria disagree ({said}); taking the silhouette's best, k={k}, "
            "as it measures separation directly"
        )
    best = max(silhouette)
    if best < WEAK_SILHOUETTE:
        reason += (
            f"; but the best silhouette is only {best:.2f}, "
            "so these features have no strong cluster structure: "
            "k sets the granularity, so fit a few values and compare their grids"
        )
    else:
        reason += f"; silhouette at k={k} is {silhouette[ks.index(k)]:.2f}"
    return int(k), reason, picks


def scan_k(
    features: np.ndarray,
    ks: list[int],
    *,
    seed: int = 0,
    silhouette_samples: int = 2000,
    eigengap_samples: int = 1000,
    niter: int = 25,
    nredo: int = 3,
    gpu: bool = False,
) -> KScan:
    """Run k-means for every k in ``ks`` and score the three criteria."""
    x = as_faiss(features)
    n = x.shape[0]
    ks = sorted(set(int(k) for k in ks))
    if ks[0] < 2:
        raise UserError("k must be at least 2")
    if ks[-1] >= n:
        raise UserError(f"the largest k ({ks[-1]}) needs more samples than {n}")
    if silhouette_samples < 2 or eigengap_samples < 2:
        raise UserError("the silhouette and eigengap subsamples need at least 2 samples each")
    rng = np.random.default_rng(seed)
    m_sil = min(silhouette_samples, n)
    m_eig = min(eigengap_samples, m_sil)
    if m_eig <= ks[-1]:
        raise UserError(f"the eigengap needs more than {ks[-1]} samples (--eigengap-samples {m_eig})")
    sub = np.sort(rng.choice(n, m_sil, replace=False))
    dist = pairwise_distances(x[sub])
    inertia, silhouette = [], []
    for k in progress(ks, total=len(ks), desc="k-means over k", unit="k"):
        # k-means++: random seeding stops in local minima that bend the elbow and silhouette curves
        km = fit_kmeans(x, k, seed=seed, niter=niter, nredo=nredo, gpu=gpu, init="k-means++")
        inertia.append(km.inertia)
        silhouette.append(silhouette_score(dist, km.labels[sub]))
    # the eigengap subsample is the first part of a fresh permutation of the silhouette one
    eig_rows = rng.permutation(m_sil)[:m_eig]
    eigenvalues = laplacian_spectrum(dist[np.ix_(eig_rows, eig_rows)], ks[-1] + 1)
    _, gaps = eigengap_k(ks, eigenvalues)
    k, reason, picks = recommend(ks, inertia, silhouette, gaps)
    return KScan(
        ks,
        inertia,
        silhouette,
        gaps,
        eigenvalues.tolist(),
        picks,
        k,
        reason,
        n,
        m_sil,
        m_eig,
    )


# ---- the whole job -----------------------------------------------------------------------------
@dataclass
class ChooseK:
    """What :func:`choose_k` found: the scan, and where its latents came from (for titles)."""

    scan: KScan
    layer: str
    source: str  # "tiny-dcgan", or "cluster 1 smiling of runs/faces"
    seed: int
    pool: int | None

    @property
    def title(self) -> str:
        return f"choosing k: {self.source} @ {self.layer}, {self.scan.samples} samples"


def choose_k(
    layer: str,
    ks: list[int],
    *,
    generator: GeneratorSpec | None = None,
    class_label: int | None = None,
    run_dir: str | Path | None = None,
    cluster: str | None = None,
    samples: int = 5000,
    silhouette_samples: int = 2000,
    eigengap_samples: int = 1000,
    seed: int | None = None,
    pool: int | None = None,
    device: str = "cpu",
) -> ChooseK:
    """Scan ``ks`` on the features at ``layer`` of ``samples`` latents: of ``generator``'s prior
    (``seed`` default 0), or -- with ``run_dir`` and ``cluster`` -- of that cluster of a saved run,
    the very latents ``refine`` would split (same stream and seed, the run's generator and pool)."""
    from clusterguide.features import check_pool, extract_features
    from clusterguide.fitting import sample_prior
    from clusterguide.generators.registry import load_generator
    from clusterguide.refine import collect_latents
    from clusterguide.sampler import ClusterSampler

    for name, value in (
        ("--samples", samples),
        ("--silhouette-samples", silhouette_samples),
        ("--eigengap-samples", eigengap_samples),
    ):
        if value <= max(ks):
            raise UserError(f"{name} {value} must be larger than the largest k ({max(ks)})")
    if (run_dir is None) != (cluster is None):
        raise UserError("--run and --cluster go together")
    if run_dir is not None and cluster is not None:
        if generator is not None or class_label is not None:
            raise UserError("with a run, the run's generator is used; pass no generator or class")
        sampler = ClusterSampler.load(run_dir, device=device)
        run, G = sampler.run, sampler.generator
        path = run.resolve(cluster)
        G.check_layer(layer)
        seed = run.fit.seed if seed is None else check_seed(seed)
        pool = run.fit.pool if pool is None else pool
        share = run.tree.stats.get(path, {}).get("share")
        latents, _ = collect_latents(G, run.tree, path, samples, refinement_stream(seed, path), share=share)
        source = f"cluster {run.label(path)} of {run_dir}"
    else:
        G = load_generator(generator or GeneratorSpec("digiface-dcgan"), device=device).conditioned(
            class_label
        )
        G.check_layer(layer)
        seed = 0 if seed is None else check_seed(seed)
        latents, source = sample_prior(G, samples, seed), G.name
    check_pool(G, layer, pool)
    feats = extract_features(G, layer, latents, pool=pool)
    scan = scan_k(
        feats,
        ks,
        seed=seed,
        silhouette_samples=silhouette_samples,
        eigengap_samples=eigengap_samples,
        gpu=G.device.type == "cuda",
    )
    return ChooseK(scan, layer, source, seed, pool)


# ---- the picture -------------------------------------------------------------------------------
def plot_scan(scan: KScan, title: str = "") -> Image.Image:
    """Three panels (inertia, silhouette, eigengap) against k; each criterion's pick is a filled
    dot, the recommended k a dashed red line; the reason is written underneath."""
    pw, ph, margin = 330, 250, 16
    panels = [
        ("inertia (elbow)", scan.inertia, scan.picks["elbow"]),
        ("silhouette (higher is better)", scan.silhouette, scan.picks["silhouette"]),
        ("eigengap lambda(k+1) - lambda(k)", scan.eigengap, scan.picks["eigengap"]),
    ]
    font, small = load_font(14), load_font(11)
    reason_lines = _wrap(f"recommended k = {scan.k}: {scan.reason}", 3 * pw // 7)
    head = 30 if title else 6
    canvas = Image.new("RGB", (3 * pw + 2 * margin, head + ph + 18 * len(reason_lines) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, 8), title, fill="black", font=font)
    for i, (name, values, pick) in enumerate(panels):
        _panel(draw, (margin + i * pw, head, pw, ph), name, scan.ks, values, pick, scan.k, font, small)
    y = head + ph + 6
    for line in reason_lines:
        draw.text((margin, y), line, fill="black", font=small if len(reason_lines) > 1 else font)
        y += 18
    return canvas


def _panel(draw, box, name, ks, values, pick, chosen, font, small) -> None:
    x0, y0, w, h = box
    left, right, top, bottom = x0 + 58, x0 + w - 16, y0 + 28, y0 + h - 36
    draw.text((x0 + 10, y0 + 4), name, fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(k):
        return left + (right - left) * (k - ks[0]) / max(ks[-1] - ks[0], 1)

    def py(val):
        return bottom - (bottom - top) * (val - lo) / (hi - lo)

    step = max(1, int(np.ceil(len(ks) / 12)))
    for j, k in enumerate(ks):
        x = px(k)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        if j % step == 0 or k == chosen:
            label = str(k)
            draw.text((x - small.getlength(label) / 2, bottom + 6), label, fill="black", font=small)
    draw.text(((left + right) / 2 - small.getlength("k") / 2, bottom + 20), "k", fill="black", font=small)
    for frac in (0.0, 0.5, 1.0):
        val = lo + pad + frac * (hi - lo - 2 * pad)
        y = py(val)
        draw.line([(left - 4, y), (left, y)], fill="black")
        label = _tick(val, hi - lo)
        draw.text((left - 6 - small.getlength(label), y - 6), label, fill="black", font=small)
    if chosen in ks:
        x = px(chosen)
        for y in range(int(top), int(bottom), 8):
            draw.line([(x, y), (x, min(y + 4, bottom))], fill=RED, width=2)
    points = [(px(k), py(val)) for k, val in zip(ks, v)]
    draw.line(points, fill=BLUE, width=2)
    for k, (x, y) in zip(ks, points):
        r = 5 if k == pick else 3
        fill = BLUE if k == pick else "white"
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=BLUE)


def _tick(val: float, span: float) -> str:
    a = abs(val)
    if a < 1e-6 * span:
        return "0"
    if a != 0 and (a >= 1e4 or a < 1e-2):
        return f"{val:.1e}"
    return f"{val:.2f}" if a < 10 else f"{val:.0f}"


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
