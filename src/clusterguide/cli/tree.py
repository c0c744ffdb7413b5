"""Cluster-tree commands: refine, name, choose-k."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from clusterguide.cli.common import (
    CLASS,
    CLUSTERS,
    DEVICE,
    EPOCHS,
    MAX_DRAWS,
    POOL,
    SAMPLES,
    SEED,
    Whole,
    family_options,
    generator_options,
    mapping_settings_option,
    output_file,
    quiet_option,
)
from clusterguide.errors import UserError
from clusterguide.generators.registry import GeneratorSpec

# options that pick a generator; with --run the run's own generator is used instead
GENERATOR_FLAGS = {
    "generator": "--generator",
    "checkpoint": "--checkpoint",
    "latent_space": "--latent-space",
    "truncation": "--truncation",
    "class_label": "--class",
}


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--cluster", required=True, help="Cluster to refine: a path (1 or 1/0) or a name.")
@click.option("--layer", required=True, help="Layer to cluster its latents at (see `clusterguide layers`).")
@click.option("--clusters", "k", type=CLUSTERS, required=True, help="Number of children K.")
@click.option(
    "--samples",
    type=SAMPLES,
    default=5000,
    show_default=True,
    help="Latents of the cluster to collect and split.",
)
@click.option("--seed", type=SEED, default=None, help="Seed of the latents and k-means [default: the run's].")
@click.option(
    "--mapping",
    "recipe",
    type=click.Choice(["fast", "residual", "paper"]),
    default=None,
    help="Mapping recipe for the children (default: the run's).",
)
@click.option("--epochs", type=EPOCHS, default=None, help="Mapping epochs (default: the run's).")
@mapping_settings_option
@click.option(
    "--max-draws",
    type=Whole(1, MAX_DRAWS),
    default=2_000_000,
    show_default=True,
    help="Give up when this many prior samples hold too few latents of the cluster.",
)
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace an existing split of the cluster and all under it.")
@quiet_option
def refine(run_dir, cluster, layer, k, samples, seed, recipe, epochs, settings, max_draws, device, force):
    """Split one cluster of a run again at another layer (a cluster tree, paper §4.3)."""
    from clusterguide.artifacts import FORMAT, check_folder_target
    from clusterguide.display import metrics_table
    from clusterguide.mapping import parse_settings
    from clusterguide.refine import refine_run

    if Path(run_dir).is_dir():  # refine replaces the folder: check it can, before minutes of work
        check_folder_target(run_dir, overwrite=True, kind=FORMAT)
    out = refine_run(
        run_dir,
        cluster,
        layer,
        k,
        samples=samples,
        seed=seed,
        device=device,
        recipe=recipe,
        epochs=epochs,
        settings=parse_settings(settings),
        force=force,
        max_draws=max_draws,
        log=lambda m: click.echo(m, err=True),
    )
    run = out.run
    rows = {"clusters": [r for r in run.metrics.get("clusters", []) if r["id"] in out.children]}
    click.echo(metrics_table(rows, run.names))
    click.echo(
        f"refined cluster {run.label(out.cluster)} at {out.layer} into {', '.join(out.children)}: "
        f"{out.collected} latents from {out.drawn:,} prior samples (acceptance {out.acceptance_rate:.3f}), "
        f"{out.seconds:.1f}s"
    )
    click.echo(f"saved {run_dir}")


@click.command("name")
@click.argument("run_dir", type=click.Path())
@click.argument("cluster")
@click.argument("new_name", metavar="[NAME]", required=False)
@click.option("--clear", is_flag=True, help="Remove the cluster's name.")
def name(run_dir, cluster, new_name, clear):
    """Name a cluster (CLUSTER is a path like 1/0 or its current name); without NAME, show it."""
    from clusterguide.run import Run, set_name

    if clear and new_name is not None:
        raise UserError("give a NAME or --clear, not both")
    if new_name is None and not clear:
        run = Run.load(run_dir)
        path = run.resolve(cluster)
        shown = run.names.get(path)
        click.echo(f"cluster {path}: {shown}" if shown else f"cluster {path} has no name")
        return
    if new_name is not None and not new_name.strip():
        raise UserError("the name is empty (use --clear to remove a name)")
    path, names = set_name(run_dir, cluster, "" if clear else new_name)
    shown = names.get(path)
    click.echo(f"cluster {path} is now named {shown!r}" if shown else f"cluster {path} has no name now")


@click.command("choose-k")
@generator_options
@click.option("--layer", required=True, help="Layer to cluster at (see `clusterguide layers`).")
@click.option("--k-range", "k_range", default="2..12", show_default=True, help="Values of k: 2..12 or 2,4,8.")
@click.option("--samples", type=SAMPLES, default=5000, show_default=True, help="Latents to cluster.")
@click.option(
    "--silhouette-samples",
    type=Whole(2, 20_000),  # a dense distance matrix: 1.6 GB at the top
    default=2000,
    show_default=True,
    help="Subsample for the silhouette (pairwise distances).",
)
@click.option(
    "--eigengap-samples",
    type=Whole(2, 10_000),  # a dense eigendecomposition
    default=1000,
    show_default=True,
    help="Subsample for the affinity graph's spectrum.",
)
@click.option("--pool", type=POOL, default=None, help="Average-pool feature maps to PxP (as in fit).")
@click.option("--class", "class_label", type=CLASS, default=None, help="Class to cluster within (BigGAN).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(),
    default=None,
    help="Choose k for refining a cluster of this run (with --cluster), with its generator.",
)
@click.option("--cluster", default=None, help="With --run: the cluster (path or name) to be refined.")
@click.option("--seed", type=SEED, default=None, help="Seed of latents, k-means [default: 0, or the run's].")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--out", required=True, help="PNG file for the plot.")
@quiet_option
@click.pass_context
def choose_k(
    ctx,
    generator,
    checkpoint,
    latent_space,
    truncation,
    layer,
    k_range,
    samples,
    silhouette_samples,
    eigengap_samples,
    pool,
    class_label,
    run_dir,
    cluster,
    seed,
    device,
    out,
):
    """Plot the elbow, silhouette and eigengap over a range of k, and recommend one."""
    from clusterguide import choose_k as ck
    from clusterguide.display import table
    from clusterguide.imaging import save_image

    path = output_file(out, (".png",))
    ks = ck.parse_k_range(k_range)
    if (run_dir is None) != (cluster is None):
        raise UserError("--run and --cluster go together")
    if run_dir is not None:
        given = [
            flag
            for param, flag in GENERATOR_FLAGS.items()
            if ctx.get_parameter_source(param) != ParameterSource.DEFAULT
        ]
        if given:
            raise UserError(f"with --run the run's generator is used; drop {', '.join(given)}")
    found = ck.choose_k(
        layer,
        ks,
        generator=None
        if run_dir is not None
        else GeneratorSpec(generator, checkpoint, family_options(latent_space, truncation)),
        class_label=class_label,
        run_dir=run_dir,
        cluster=cluster,
        samples=samples,
        silhouette_samples=silhouette_samples,
        eigengap_samples=eigengap_samples,
        seed=seed,
        pool=pool,
        device=device,
    )
    scan = found.scan
    save_image(ck.plot_scan(scan, found.title), path)
    rows = []
    for i, k in enumerate(scan.ks):
        picked = " ".join(c for c, v in scan.picks.items() if v == k)
        picked += " <- recommended" if k == scan.k else ""
        rows.append([k, scan.inertia[i], scan.silhouette[i], scan.eigengap[i], picked.strip()])
    click.echo(table(["k", "inertia", "silhouette", "eigengap", "picked by"], rows))
    click.echo(f"recommended k = {scan.k}: {scan.reason}")
    click.echo(f"wrote {path}")
