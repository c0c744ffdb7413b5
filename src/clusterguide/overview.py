"""The overview picture: one labelled row of samples per leaf cluster of a run.

For a cluster tree each row is a leaf, labelled with its path and the names along it (``1/0``,
"female > blond"), so the fine-grained attribute of the row reads from the label.
"""

from __future__ import annotations

from PIL import Image

from clusterguide.imaging import font, labelled_rows
from clusterguide.sampler import ClusterSampler

SCALE = 2  # image magnification of the rows; the label font follows it (see labelled_rows)


def row_label(sampler: ClusterSampler, path: str, method: str) -> str:
    run = sampler.run
    stats = run.tree.stats.get(path, {})
    m = run.cluster_metrics(path)
    chain = run.tree.ancestors(path)
    lines = [f"cluster {path}" + (f": {run.names[path]}" if path in run.names and len(chain) == 1 else "")]
    if len(chain) > 1 and any(a in run.names for a in chain):
        lines.append(" > ".join(run.names.get(a, a) for a in chain))
    lines.append(f"p_c {stats.get('share', 0):.3f}  n {stats.get('size', 0)}")
    detail = f"@ {run.tree.layer_of(path)}"
    # the fidelity of the samples shown: the corrected sampler's own where it is measured
    fidelity = m.get("corrected_fidelity") if method == "corrected" else m.get("fidelity")
    if fidelity is not None:
        detail += f"  fidelity {fidelity:.2f}"
    lines.append(detail)
    if method in ("exact", "corrected"):
        lines.append(f"{method} samples")
    return "\n".join(lines)


def overview_image(
    sampler: ClusterSampler, per_cluster: int = 8, seed: int = 0, method: str = "imle"
) -> Image.Image:
    rows = []
    for path in sampler.run.leaves():
        use = method if path in sampler.run.mappings else "exact"
        out = sampler(path, per_cluster, seed=seed, method=use)
        rows.append((row_label(sampler, path, use), out.images))
    label_font = font(max(12, 7 * SCALE))
    longest = max(label_font.getlength(line) for label, _ in rows for line in label.split("\n"))
    return labelled_rows(rows, scale=SCALE, label_width=max(220, int(longest) + 16))
