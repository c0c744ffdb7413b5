"""The per-cluster metrics written to a run's ``metrics.json`` after every fit or refinement:
fidelity, norm ratio, precision and recall of each cluster's mapping (the measures themselves are
in :mod:`clusterguide.metrics`), the same for the corrected sampler on the same inputs
(``corrected_*``, :mod:`clusterguide.correction`), and their summary over clusters."""

from __future__ import annotations

import time

import numpy as np
import torch

from clusterguide import correction
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping import draw_inputs
from clusterguide.metrics import distribution_scores, norm_ratio, precision_recall, project
from clusterguide.reduction import split_features
from clusterguide.run import Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT, ClusterTree

# Prior latents the exact reference sets may cost, as a multiple of the latents the split saw
# (inside the parent): enough for 2 x eval_samples of every cluster holding a few percent.
EXACT_DRAW_FACTOR = 2


@torch.no_grad()
def exact_sets(
    G: GeneratorAdapter,
    tree: ClusterTree,
    parent: str,
    want: dict[int, int],
    seed: int,
    budget: int,
    chunk: int = 2048,
) -> dict[int, torch.Tensor]:
    """Fresh exact (rejection-sampled) latents of children of ``parent``: for every child index in
    ``want``, up to ``want[index]`` of the first latents of the prior stream ``seed`` that fall in
    ``parent`` and in that child, drawing at most ``budget`` latents inside ``parent``."""
    found: dict[int, list[torch.Tensor]] = {i: [] for i in want}
    count = dict.fromkeys(want, 0)
    inside_parent = offset = 0
    while inside_parent < budget and any(count[i] < want[i] for i in want):
        z = G.sample_latents(chunk, seed, start=offset)
        offset += chunk
        if parent:
            z = z[torch.from_numpy(tree.membership(G, z, parent))]
        z = z[: budget - inside_parent]
        inside_parent += z.shape[0]
        if not z.shape[0]:
            continue
        labels = tree.assign_at(G, z, parent)
        for i in want:
            take = z[torch.from_numpy(labels == i)][: want[i] - count[i]]
            found[i].append(take)
            count[i] += take.shape[0]
    return {i: torch.cat(found[i]) if found[i] else torch.empty(0, G.latent_dim) for i in want}


def split_reference(exact: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint, equal-size sets from exact latents: the reference and the ceiling set."""
    half = min(n, exact.shape[0] // 2)
    return exact[:half], exact[half : 2 * half]


@torch.no_grad()
def measure_clusters(
    G: GeneratorAdapter,
    run: Run,
    paths: list[str],
    latents: torch.Tensor,
    labels: np.ndarray,
) -> list[dict]:
    """Metrics of every cluster in ``paths`` (siblings, labelled by index in ``labels``).

    Everything is measured out of sample: mapped samples come from inputs the training never drew
    (their own stream), fidelity assigns them afresh, and precision/recall compare them with fresh
    exact samples of the cluster (rejection-sampled from their own prior stream), never with the
    training latents. The ceiling is a second, disjoint exact set of the same size scored the
    same way: what an ideal sampler reaches with that many samples."""
    n_eval = run.fit.eval_samples
    parent = paths[0].rsplit("/", 1)[0] if "/" in paths[0] else ROOT
    split = run.tree.splits[parent]
    index_of = {path: int(path.rsplit("/", 1)[-1]) for path in paths}
    exact = exact_sets(
        G,
        run.tree,
        parent,
        {index_of[p]: 2 * n_eval for p in paths if p in run.mappings},
        derive_seed(run.fit.seed, "exact-eval", parent or "root"),
        budget=EXACT_DRAW_FACTOR * latents.shape[0],
    )
    rows = []
    for path in paths:
        index = index_of[path]
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
            reference, ceiling = split_reference(exact[index], n_eval)
            row["exact_samples"] = int(reference.shape[0])
            fixed = None
            if path in run.corrections:
                # the corrected sampler on the same inputs (correction.py): reported apart, since
                # its projection makes fidelity high by construction
                started = time.perf_counter()
                fixed, _ = correction.corrected(G, run.tree, path, run.corrections[path], mapped)
                row["corrected_seconds"] = time.perf_counter() - started
                row["corrected_fidelity"] = float(run.tree.membership(G, fixed, path).mean())
            if reference.shape[0] > 5:

                def feats(z: torch.Tensor) -> np.ndarray:
                    # the space the split clustered in: reduced features where it has a reduction
                    return split_features(G, z.to(G.device), split).cpu().numpy()

                # as many mapped samples as exact ones: k-NN balls depend on the set size
                m = reference.shape[0]
                f_ref, f_ceiling = feats(reference), feats(ceiling)
                row.update(distribution_scores(feats(mapped[:m]), f_ref, f_ceiling))
                if fixed is not None:  # the headline figures only (the raw space's cost seconds)
                    ref_pca, fixed_pca = project(f_ref, feats(fixed[:m]))
                    row["corrected_precision"], row["corrected_recall"] = precision_recall(fixed_pca, ref_pca)
            else:
                row.update({"precision": None, "recall": None})
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
