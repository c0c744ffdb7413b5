"""``clusterguide export``: a labelled synthetic dataset from a run, in resumable shards."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from clusterguide.cli.common import SEED, WORKERS, Whole, method_option, quiet_option


def export_command_line(run_dir: str, out: str, n: int, clusters, mix, method, seed, fmt, shard_size) -> str:
    """The command that reproduces (or resumes) an export, whatever the workers or back end."""
    words = ["clusterguide", "export", run_dir, "--out", out, "-n", str(n)]
    for c in clusters:
        words += ["--cluster", c]
    words += ["--mix", mix, "--method", method, "--seed", str(seed), "--format", fmt]
    words += ["--shard-size", str(shard_size)]
    return " ".join(shlex.quote(w) for w in words)


SHARD = Whole(1, 1_000_000)  # images per shard
# --device stays a plain string: with --ray it names what the actors need, which this machine may lack


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder of the dataset (created).")
@click.option("-n", "n", type=int, required=True, help="Images in all.")
@click.option(
    "--cluster", "clusters", multiple=True, help="Cluster path or name (repeat; default: every leaf)."
)
@click.option(
    "--mix",
    default="prior",
    show_default=True,
    help="How N splits over the clusters: prior (shares p_c), uniform, or weights like '0:0.5,2/1:0.5'.",
)
@method_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "webdataset"]), default="png", show_default=True)
@click.option("--shard-size", type=SHARD, default=1024, show_default=True, help="Images per shard.")
@click.option(
    "--workers", type=WORKERS, default=1, show_default=True, help="Local processes (or Ray actors)."
)
@click.option(
    "--ray", "ray_address", default=None, help="'auto' (a local Ray instance) or a cluster address."
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (with Ray: a GPU per actor).")
@click.option("--force", is_flag=True, help="Replace a different export in --out.")
@quiet_option
def export(
    run_dir, out, n, clusters, mix, method, seed, fmt, shard_size, workers, ray_address, device, force
):
    """Write N labelled images of chosen clusters (PNG shards or WebDataset) with a Parquet manifest.

    Re-running the same command after an interruption finishes the missing shards.
    """
    from clusterguide.executor import Backend, check_backend
    from clusterguide.export import describe_counts, export, make_plan, prepare_out
    from clusterguide.progress import bar
    from clusterguide.run import Run

    run = Run.load(run_dir)
    plan = make_plan(
        run,
        n,
        clusters=clusters,
        mix=mix,
        method=method,
        seed=seed,
        format=fmt,
        shard_size=shard_size,
        device=device,
    )
    check_backend(workers, ray_address)
    # Refuse a folder that holds something else before printing anything (one line, exit 2).
    prepare_out(Path(out), plan, force, remove=False)
    backend = Backend(workers=workers, ray=ray_address, device=device)
    command = export_command_line(run_dir, out, n, clusters, mix, method, seed, fmt, shard_size)
    click.echo(describe_counts(run, plan), err=True)
    try:
        with bar(plan.total, desc=f"export ({backend.describe()})", unit="img") as progress:
            report = export(
                run,
                plan,
                Path(out),
                backend=backend,
                force=force,
                command=command,
                on_progress=progress.update,
            )
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished shards are kept. Resume with: {command}", err=True)
        # exit 130 with the hint as the last line (a bare re-raise would add click's "aborted")
        raise click.exceptions.Exit(130) from None
    rate = report.images_written / report.seconds if report.seconds > 0 else float("nan")
    done = f", {report.skipped} already done" if report.skipped else ""
    click.echo(
        f"wrote {report.images_written} images in {report.shards - report.skipped} shards{done} "
        f"({rate:.1f} images/s) -> {out}"
    )
