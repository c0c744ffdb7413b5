"""The overview picture: one labelled row of samples per leaf cluster of a run."""

from __future__ import annotations

from PIL import Image

from clusterguide.imaging import labelled_rows
from clusterguide.sampler import ClusterSampler


def row_label(sampler: ClusterSampler, path: str, method: str) -> str:
    run = sampler.run
    stats = run.tree.stats.get(path, {})
    m = run.cluster_metrics(path)
    lines = [f"cluster {path}" + (f": {run.names[path]}" if path in run.names else "")]
    lines.append(f"p_c {stats.get('share', 0):.2f}  n {stats.get('size', 0)}")
    if m.get("fidelity") is not None:
        lines.append(f"fidelity {m['fidelity']:.2f}")
    if method == "exact":
        lines.append("exact samples")
    return "\n".join(lines)


def overview_image(sampler: ClusterSampler, per_cluster: int = 8, seed: int = 0, method: str = "imle") -> Image.Image:
    rows = []
    for path in sampler.run.leaves():
        use = method if path in sampler.run.mappings else "exact"
        out = sampler(path, per_cluster, seed=seed, method=use)
        rows.append((row_label(sampler, path, use), out.images))
    return labelled_rows(rows, scale=2)
