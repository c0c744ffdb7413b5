"""Cluster-tree commands: refine, name, choose-k."""

from __future__ import annotations

import click
from click.core import ParameterSource

from clusterguide.cli.common import family_options, generator_options, output_file, quiet_option
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
@click.option("--clusters", "k", type=int, required=True, help="Number of children K.")
@click.option(
    "--samples",
    type=int,
    default=5000,
    show_default=True,
    help="Latents of the cluster to collect and split.",
)
@click.option("--seed", type=int, default=None, help="Seed of the latents and k-means [default: the run's].")
@click.option(
    "--mapping",
    "recipe",
    type=click.Choice(["fast", "residual", "paper"]),
    default=None,
    help="Mapping recipe for the children (default: the run's).",
)
@click.option("--epochs", type=int, default=None, help="Mapping epochs (default: the run's).")
@click.option(
    "--max-draws",
    type=int,
    default=2_000_000,
    show_default=True,
    help="Give up when this many prior samples hold too few latents of the cluster.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing split of the cluster and all under it.")
@quiet_option
def refine(run_dir, cluster, layer, k, samples, seed, recipe, epochs, max_draws, device, force):
    """Split one cluster of a run again at another layer (a cluster tree, paper §4.3)."""
    from clusterguide.display import metrics_table
    from clusterguide.refine import refine_run

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
@click.option("--samples", type=int, default=5000, show_default=True, help="Latents to cluster.")
@click.option(
    "--silhouette-samples",
    type=int,
    default=2000,
    show_default=True,
    help="Subsample for the silhouette (pairwise distances).",
)
@click.option(
    "--eigengap-samples",
    type=int,
    default=1000,
    show_default=True,
    help="Subsample for the affinity graph's spectrum.",
)
@click.option("--pool", type=int, default=None, help="Average-pool feature maps to PxP (as in fit).")
@click.option("--class", "class_label", type=int, default=None, help="Class to cluster within (BigGAN).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(),
    default=None,
    help="Choose k for refining a cluster of this run (with --cluster), with its generator.",
)
@click.option("--cluster", default=None, help="With --run: the cluster (path or name) to be refined.")
@click.option("--seed", type=int, default=None, help="Seed of latents, k-means [default: 0, or the run's].")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
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
    from clusterguide.features import extract_features
    from clusterguide.imaging import save_image

    path = output_file(out, (".png",))
    ks = ck.parse_k_range(k_range)
    for flag, value in (
        ("--samples", samples),
        ("--silhouette-samples", silhouette_samples),
        ("--eigengap-samples", eigengap_samples),
    ):
        if value <= ks[-1]:
            raise UserError(f"{flag} {value} must be larger than the largest k ({ks[-1]})")
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
        latents, G, where, pool, seed = _cluster_latents(run_dir, cluster, layer, samples, seed, device, pool)
    else:
        from clusterguide.fitting import sample_prior
        from clusterguide.generators.registry import load_generator

        spec = GeneratorSpec(generator, checkpoint, family_options(latent_space, truncation))
        G = load_generator(spec, device=device).conditioned(class_label)
        G.check_layer(layer)
        seed = 0 if seed is None else seed
        latents, where = sample_prior(G, samples, seed), G.name
    G.check_layer(layer)
    feats = extract_features(G, layer, latents, pool=pool)
    scan = ck.scan_k(
        feats,
        ks,
        seed=seed,
        silhouette_samples=silhouette_samples,
        eigengap_samples=eigengap_samples,
        gpu=G.device.type == "cuda",
    )
    title = f"choosing k: {where} @ {layer}, {scan.samples} samples"
    save_image(ck.plot_scan(scan, title), path)
    rows = []
    for i, k in enumerate(scan.ks):
        picked = " ".join(c for c, v in scan.picks.items() if v == k)
        picked += " <- recommended" if k == scan.k else ""
        rows.append([k, scan.inertia[i], scan.silhouette[i], scan.eigengap[i], picked.strip()])
    click.echo(table(["k", "inertia", "silhouette", "eigengap", "picked by"], rows))
    click.echo(f"recommended k = {scan.k}: {scan.reason}")
    click.echo(f"wrote {path}")


def _cluster_latents(run_dir, cluster, layer, samples, seed, device, pool):
    """The latents `clusterguide refine` would split (same stream), with the run's generator."""
    from clusterguide.refine import collect_latents
    from clusterguide.sampler import ClusterSampler
    from clusterguide.seeding import derive_seed

    sampler = ClusterSampler.load(run_dir, device=device)
    run, G = sampler.run, sampler.generator
    path = run.resolve(cluster)
    seed = run.fit.seed if seed is None else seed
    share = run.tree.stats.get(path, {}).get("share")
    latents, _ = collect_latents(G, run.tree, path, samples, derive_seed(seed, "refine", path), share=share)
    G.check_layer(layer)
    return latents, G, f"cluster {run.label(path)} of {run_dir}", run.fit.pool if pool is None else pool, seed
