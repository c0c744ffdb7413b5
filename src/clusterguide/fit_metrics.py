"""The per-cluster metrics written to a run's ``metrics.json`` after every fit or refinement:
fidelity, norm ratio, precision and recall of each cluster's mapping (the measures themselves are
in :mod:`clusterguide.metrics`), and their summary over clusters."""

from __future__ import annotations

import numpy as np
import torch

from clusterguide.features import representation
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping import draw_inputs
from clusterguide.metrics import distribution_scores, norm_ratio
from clusterguide.run import Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT


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
