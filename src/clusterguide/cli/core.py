"""Core commands: layers, fit, sample, grid, info."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from clusterguide.cli.common import (
    BATCH,
    CLASS,
    CLUSTERS,
    DEVICE,
    EPOCHS,
    IMAGES,
    POOL,
    REDUCE,
    SAMPLES,
    SEED,
    WORKERS,
    Whole,
    family_options,
    generator_options,
    mapping_settings_option,
    method_option,
    output_file,
    quiet_option,
)
from clusterguide.display import goal_line, metrics_table, table
from clusterguide.errors import UserError
from clusterguide.generators.registry import GeneratorSpec, load_generator


@click.command()
@generator_options
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def layers(generator, checkpoint, latent_space, truncation, device):
    """List a generator's layers with their output shapes."""
    G = load_generator(
        GeneratorSpec(generator, checkpoint, family_options(latent_space, truncation)), device=device
    )
    rows = [[info.name, "x".join(map(str, info.shape)), int(np.prod(info.shape))] for info in G.layers()]
    click.echo(f"{G.name}: latent dim {G.latent_dim}, images {G.image_size}x{G.image_size}")
    click.echo(table(["layer", "shape", "features"], rows))


@click.command()
@generator_options
@click.option("--layer", required=True, help="Layer to cluster at (see `clusterguide layers`).")
@click.option("--clusters", "k", type=CLUSTERS, required=True, help="Number of clusters K.")
@click.option("--samples", type=SAMPLES, default=20000, show_default=True, help="Prior latents N.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--mapping",
    "recipe",
    type=click.Choice(["fast", "residual", "paper"]),
    default="fast",
    show_default=True,
    help="Mapping recipe: the default, the previous full-space default, or Algorithm 1 as published.",
)
@click.option(
    "--epochs",
    type=EPOCHS,
    default=None,
    help="Mapping epochs (default: the recipe's; fast trains up to 2x as many while a cluster misses 95% fidelity).",
)
@mapping_settings_option
@click.option(
    "--class",
    "class_label",
    type=CLASS,
    default=None,
    help="Class to cluster within (class-conditional generators: BigGAN, StyleGAN2 cifar10).",
)
@click.option("--pool", type=POOL, default=None, help="Average-pool feature maps to PxP before k-means.")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--reduce",
    type=REDUCE,
    default=None,
    help="PCA axes k-means runs on (0: full features; default: full while they fit in 2 GiB, else 128).",
)
@click.option(
    "--workers", type=WORKERS, default=1, show_default=True, help="Processes (or Ray actors) for features."
)
@click.option("--ray", "ray_address", default=None, help="Features on Ray: 'auto' or a cluster address.")
@click.option("--out", required=True, type=click.Path(), help="Run folder to create.")
@click.option("--force", is_flag=True, help="Replace an existing run folder (never a folder of other files).")
@quiet_option
def fit(
    generator,
    checkpoint,
    latent_space,
    truncation,
    layer,
    k,
    samples,
    seed,
    recipe,
    epochs,
    settings,
    class_label,
    pool,
    device,
    reduce,
    workers,
    ray_address,
    out,
    force,
):
    """Cluster a generator's representations and learn a mapping per cluster."""
    from clusterguide.artifacts import FORMAT, check_folder_target
    from clusterguide.executor import Backend, check_backend
    from clusterguide.fitting import fit_run
    from clusterguide.large_fit import ScaleOptions
    from clusterguide.mapping import MappingConfig, parse_settings
    from clusterguide.run import FitConfig

    out_dir = Path(out)
    if (out_dir.exists() or out_dir.is_symlink()) and not force:
        raise UserError(f"{out_dir} already exists (pass --force to replace it)")
    check_folder_target(out_dir, overwrite=True, kind=FORMAT)  # before minutes of work, not after
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {epochs})")
    overrides = parse_settings(settings)
    check_backend(workers, ray_address)  # an unreachable --ray fails here, not after the sampling
    spec = GeneratorSpec(generator, checkpoint, family_options(latent_space, truncation))
    scale = ScaleOptions(reduce, Backend(workers=workers, ray=ray_address, device=device), spec)
    fit_cfg = FitConfig(
        layer=layer, clusters=k, samples=samples, seed=seed, class_label=class_label, pool=pool
    )
    map_cfg = MappingConfig.preset(recipe, **{"epochs": epochs, **overrides, "seed": seed})
    run, _ = fit_run(
        spec, fit_cfg, map_cfg, device=device, log=lambda m: click.echo(m, err=True), scale=scale
    )
    run.save(out_dir, overwrite=force)
    click.echo(metrics_table(run.metrics))
    summary = run.metrics.get("summary", {})
    click.echo(
        f"fit {run.metrics['fit_seconds']:.1f}s ({_fit_split(run.metrics)}), recipe {recipe}; "
        f"min fidelity {summary.get('min_fidelity', float('nan')):.3f}, "
        f"min norm ratio {summary.get('min_norm_ratio', float('nan')):.3f}, "
        f"min recall {summary.get('min_recall', float('nan')):.3f}"
    )
    click.echo(f"saved {out_dir}")


def _fit_split(metrics: dict) -> str:
    """Where a fit's time went: the stages of its first split, and the rest (mostly evaluation)."""
    root = metrics.get("timings", {}).get("root", {})
    parts = {
        "features": root.get("features_s"),
        "k-means": root.get("kmeans_s"),
        "mappings": root.get("mappings_s"),
    }
    known = {k: v for k, v in parts.items() if isinstance(v, (int, float))}
    rest = metrics["fit_seconds"] - sum(known.values())
    return ", ".join([*(f"{k} {v:.1f}s" for k, v in known.items()), f"evaluation and the rest {rest:.1f}s"])


def _sampler(run_dir: str, device: str, class_label: int | None):
    from clusterguide.sampler import ClusterSampler

    return ClusterSampler.load(run_dir, device=device, class_label=class_label)


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--cluster", required=True, help="Cluster path (e.g. 2 or 1/0) or name.")
@click.option("-n", "n", type=IMAGES, default=16, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@method_option
@click.option(
    "--class", "class_label", type=CLASS, default=None, help="Sample another class (cross-class transfer)."
)
@click.option("--batch-size", type=BATCH, default=64, show_default=True)
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
@click.option("--out", required=True, help="FILE: writes FILE.png (grid) and FILE.npz (images, latents).")
@quiet_option
def sample(run_dir, cluster, n, seed, method, class_label, batch_size, device, out):
    """Sample images of one cluster."""
    from clusterguide.artifacts import atomic_path
    from clusterguide.imaging import save_grid

    base = output_file(out, ("", ".png", ".npz"))
    base = base.with_suffix("") if base.suffix else base
    if n < 1:
        raise UserError(f"-n must be at least 1 (got {n})")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    sampler = _sampler(run_dir, device, class_label)
    result = sampler(cluster, n, seed=seed, method=method, batch_size=batch_size)
    png, npz = Path(f"{base}.png"), Path(f"{base}.npz")
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=result.images, latents=result.latents)
    save_grid(result.images, png)
    extra = (
        f", acceptance {result.acceptance_rate:.3f} ({result.tried} prior samples)"
        if result.acceptance_rate
        else ""
    )
    click.echo(f"cluster {sampler.run.label(result.cluster)}: {n} images ({method}{extra}) -> {png}, {npz}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, help="PNG file for the overview.")
@click.option("--per-cluster", type=Whole(1, 256), default=8, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@method_option
@click.option("--class", "class_label", type=CLASS, default=None)
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
@quiet_option
def grid(run_dir, out, per_cluster, seed, method, class_label, device):
    """One labelled row per cluster (per leaf of a tree)."""
    from clusterguide.imaging import save_image
    from clusterguide.overview import overview_image

    path = output_file(out, (".png",))
    if per_cluster < 1:
        raise UserError(f"--per-cluster must be at least 1 (got {per_cluster})")
    sampler = _sampler(run_dir, device, class_label)
    save_image(overview_image(sampler, per_cluster, seed=seed, method=method), path)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("run_dir", type=click.Path())
def info(run_dir):
    """Show a run: generator, settings, the cluster tree with names and metrics."""
    from clusterguide.run import Run

    run = Run.load(run_dir)
    g = run.generator
    click.echo(f"run {run_dir}")
    click.echo(
        f"  generator {g.name} (weights {str(run.generator_info.get('weights_id', '?'))[:12]})"
        + (f", checkpoint {g.checkpoint}" if g.checkpoint else "")
        + (f", options {g.options}" if g.options else "")
    )
    click.echo(
        f"  fit: layer {run.fit.layer}, k {run.fit.clusters}, samples {run.fit.samples}, seed {run.fit.seed}"
        + (f", class {run.fit.class_label}" if run.fit.class_label is not None else "")
    )
    click.echo(
        f"  mapping: recipe {run.mapping.recipe}, epochs {run.mapping.epochs}, width {run.mapping.width}"
    )
    for event in run.history:
        if event.get("event") == "refine":
            click.echo(
                f"  refined {event['cluster']} at {event['layer']}: k {event['k']}, samples {event['samples']}, "
                f"seed {event['seed']}, acceptance {event['acceptance']:.3f}"
                + (
                    f", mapping {event['mapping']['recipe']} {event['mapping']['epochs']} epochs"
                    if "mapping" in event
                    else ""
                )
            )
    rows = []
    for path in run.clusters():
        m = run.cluster_metrics(path)
        depth = path.count("/")
        rows.append(
            [
                "  " * depth + path,
                run.names.get(path, ""),
                run.tree.layer_of(path),
                run.tree.stats[path]["size"],
                run.tree.stats[path]["share"],
                m.get("fidelity"),
                m.get("norm_ratio"),
                m.get("recall"),
                _node_kind(run, path),
            ]
        )
    click.echo(
        table(["cluster", "name", "layer", "size", "p_c", "fidelity", "norm_ratio", "recall", "node"], rows)
    )
    goal = goal_line([{**run.cluster_metrics(path), "id": path} for path in run.clusters()])
    if goal:
        click.echo(goal)
    if run.skipped:
        for path, why in run.skipped.items():
            click.echo(f"  note: cluster {path} has no mapping: {why}")


def _node_kind(run, path: str) -> str:
    split = run.tree.splits.get(path)
    return f"split @ {split.layer} into {split.k}" if split else "leaf"
