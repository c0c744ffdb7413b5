"""Cluster trees: refine one cluster of a run at another layer (paper §4.3, Figure 4).

The paper forms fine-grained attributes in two steps: cluster the prior at one layer (gender at the
first layer of PGAN), then cluster only that cluster's latents again at a later layer (hair tone at
the fifth), and learn the IMLE mapping for the leaf. :func:`refine_run` is that second step for any
cluster of a saved run, at any depth:

1. draw prior latents from a seeded stream and keep those that fall in every cluster along the
   path (:meth:`ClusterTree.membership`) until ``samples`` are collected;
2. k-means at ``layer`` over their representations and one mapping per child
   (:func:`clusterguide.fitting.split_cluster`, the step a fresh fit uses too);
3. save the run folder in place, atomically, keeping the names people gave meanwhile.

The collection costs about ``samples / p_c`` head passes, where p_c is the cluster's share of the
prior. Deep in a tree p_c is small, exact (rejection) sampling becomes slow, and the learned
mapping is what makes sampling the leaf cheap.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clusterguide import __version__, artifacts
from clusterguide.errors import UserError
from clusterguide.fitting import split_cluster
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping import MappingConfig, check_settings
from clusterguide.progress import bar
from clusterguide.run import Run, names_lock
from clusterguide.seeding import refinement_stream
from clusterguide.tree import ClusterTree

Log = Callable[[str], None]

DEFAULT_SAMPLES = 5000  # latents of the cluster to collect (the children split them)
DEFAULT_MAX_DRAWS = 2_000_000  # prior latents we are willing to evaluate to collect them


@dataclass
class RefineOutput:
    run: Run  # the updated run, as saved
    cluster: str  # the refined cluster's path
    children: list[str]  # its new children
    layer: str
    drawn: int  # prior latents evaluated to collect the cluster's latents
    collected: int  # latents of the cluster that were clustered
    seconds: float

    @property
    def acceptance_rate(self) -> float:
        """Share of prior latents that fell in the cluster (an estimate of p_c)."""
        return self.collected / max(self.drawn, 1)


def collect_latents(
    G: GeneratorAdapter,
    tree: ClusterTree,
    path: str,
    n: int,
    seed: int,
    *,
    chunk: int = 2048,
    max_draws: int = DEFAULT_MAX_DRAWS,
    share: float | None = None,
) -> tuple[torch.Tensor, int]:
    """The first ``n`` latents of the prior stream ``seed`` that fall in every cluster along ``path``,
    and how many prior latents were evaluated to find them (counted up to the last one kept, so the
    number does not depend on ``chunk``).

    ``share`` (the cluster's p_c, if known) lets a hopeless request fail at once instead of after
    ``max_draws`` head passes.
    """
    tree.check(path)
    if n < 1:
        raise UserError(f"--samples must be at least 1 (got {n})")
    if share is not None and share > 0 and n / share > max_draws:
        raise UserError(
            f"cluster {path} holds about {share:.2%} of the prior; collecting {n} of its latents would take "
            f"about {n / share:,.0f} prior samples (limit {max_draws:,}); "
            "lower --samples or raise --max-draws"
        )
    kept: list[torch.Tensor] = []
    found = offset = last = 0
    with bar(n, desc=f"latents in {path}", unit="latent") as b:
        while found < n:
            if offset >= max_draws:
                raise UserError(
                    f"only {found} of {n} latents fell in cluster {path} among {offset:,} prior samples "
                    f"(--max-draws); lower --samples or raise --max-draws"
                )
            z = G.sample_latents(min(chunk, max_draws - offset), seed, start=offset)
            inside = torch.from_numpy(tree.membership(G, z, path).nonzero()[0])
            take = min(n - found, inside.numel())
            if take:
                kept.append(z[inside[:take]])
                last = offset + int(inside[take - 1]) + 1
                found += take
                b.update(take)
            offset += z.shape[0]
    return torch.cat(kept), last


def refine_run(
    run_dir: str | Path,
    cluster: str,
    layer: str,
    k: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int | None = None,
    device: str = "cpu",
    recipe: str | None = None,
    epochs: int | None = None,
    settings: dict | None = None,
    force: bool = False,
    max_draws: int = DEFAULT_MAX_DRAWS,
    log: Log = print,
    generator: GeneratorAdapter | None = None,
) -> RefineOutput:
    """Split ``cluster`` (a path or a name) of the run at ``run_dir`` into ``k`` children at ``layer``,
    learn a mapping per child, and save the run folder in place.

    ``seed`` defaults to the run's seed; ``recipe``, ``epochs`` and ``settings`` (mapping fields by
    name, e.g. ``{"hinge_dims": 32}``) override the run's mapping settings for this split only
    (recorded in the run's history). With ``force`` an existing split of the cluster is replaced,
    and everything under it (mappings, names, metrics) is dropped.
    """
    from clusterguide.sampler import ClusterSampler

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if samples < 2:
        raise UserError(f"--samples must be at least 2 (got {samples})")
    if k < 2:
        raise UserError(f"--clusters must be at least 2 (got {k})")
    if k > samples:
        raise UserError(f"--clusters {k} is larger than --samples {samples}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {epochs})")
    if max_draws < 1:
        raise UserError(f"--max-draws must be at least 1 (got {max_draws})")
    settings = check_settings(dict(settings or {}))
    config_sha = _config_sha(run_dir)
    if generator is None:
        sampler = ClusterSampler.load(run_dir, device=device)
        run, G = sampler.run, sampler.generator
    else:
        run, G = Run.load(run_dir), generator
    path = run.resolve(cluster)
    G.check_layer(layer)
    if path in run.tree.splits and not force:
        old = run.tree.splits[path]
        raise UserError(
            f"cluster {path} is already split at {old.layer} into {old.k} "
            f"({', '.join(run.tree.children(path))}); "
            "pass --force to replace that split and everything under it"
        )
    seed = run.fit.seed if seed is None else seed
    share = run.tree.stats.get(path, {}).get("share")
    latents, drawn = collect_latents(
        G, run.tree, path, samples, refinement_stream(seed, path), max_draws=max_draws, share=share
    )
    log(
        f"collected {samples} latents of cluster {path} from {drawn:,} prior samples "
        f"(acceptance {samples / drawn:.3f})"
    )

    dropped = _drop_subtree(run, path)
    mapping = _mapping_config(run.mapping, recipe, {"epochs": epochs, **settings})
    fit_mapping, run.mapping = run.mapping, mapping  # split_cluster reads run.mapping
    try:
        timings = split_cluster(G, run, path, latents, layer, k, seed, log)
    finally:
        run.mapping = fit_mapping
    seconds = time.perf_counter() - start
    event = {
        "event": "refine",
        "cluster": path,
        "layer": layer,
        "k": k,
        "samples": samples,
        "seed": seed,
        "drawn": drawn,
        "acceptance": samples / drawn,
        "replaced": sorted(dropped) if dropped else [],
        "version": __version__,
        "seconds": seconds,
        **timings,
    }
    if mapping != fit_mapping:
        event["mapping"] = mapping.to_json()
    run.history.append(event)
    _save_in_place(run, run_dir, config_sha, dropped)
    return RefineOutput(run, path, run.tree.children(path), layer, drawn, samples, seconds)


def _mapping_config(base: MappingConfig, recipe: str | None, overrides: dict) -> MappingConfig:
    """The children's mapping settings: another recipe's, or the run's, with ``overrides``
    (None values keep the recipe's)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if recipe is not None and recipe != base.recipe:
        return MappingConfig.preset(recipe, **overrides, seed=base.seed)
    return dataclasses.replace(base, **overrides)


def _drop_subtree(run: Run, path: str) -> set[str]:
    """Forget everything below ``path`` (its split, descendants' mappings, stats, metrics, names)."""
    below = {c for c in run.tree.clusters() if c.startswith(path + "/")}
    for parent in [p for p in run.tree.splits if p == path or p in below]:
        del run.tree.splits[parent]
        run.metrics.get("timings", {}).pop(parent, None)
    for c in below:
        run.tree.stats.pop(c, None)
        run.mappings.pop(c, None)
        run.corrections.pop(c, None)
        run.skipped.pop(c, None)
        run.names.pop(c, None)
    if "clusters" in run.metrics:
        run.metrics["clusters"] = [r for r in run.metrics["clusters"] if str(r.get("id")) not in below]
    return below


def _config_sha(run_dir: Path) -> str:
    if not (run_dir / artifacts.CONFIG).is_file():
        raise UserError(f"{run_dir} is not a clusterguide run folder (no {artifacts.CONFIG})")
    return artifacts.sha256(run_dir / artifacts.CONFIG)


def _save_in_place(run: Run, run_dir: Path, config_sha: str, dropped: set[str]) -> None:
    """Replace the run folder, under the names lock so a rename made meanwhile is kept, not lost."""
    with names_lock(run_dir):
        if _config_sha(run_dir) != config_sha:
            raise UserError(
                f"{run_dir} was changed by another command while refining; nothing was saved, run again"
            )
        names = artifacts.read_json(run_dir / artifacts.NAMES) if (run_dir / artifacts.NAMES).exists() else {}
        known = set(run.tree.clusters())
        run.names = {str(p): str(n) for p, n in names.items() if p not in dropped and p in known}
        run.save(run_dir, overwrite=True, keep_other_files=True)
