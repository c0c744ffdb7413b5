"""``evaluate`` (Tables 1 and 2 as text and JSON) and ``report`` (one self-contained HTML page)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from clusterguide.baselines.model import METHODS as TRAINED
from clusterguide.cli.common import BATCH, DEVICE, IMAGES, SAMPLES, SEED, Whole, output_file, quiet_option
from clusterguide.errors import UserError
from clusterguide.evaluation.probes import probe_names


def evaluation_options(f):
    """The options that decide an evaluation's numbers (shared by evaluate and report)."""
    options = [
        click.option(
            "--probe",
            type=click.Choice(probe_names()),
            default="face",
            show_default=True,
            help="Attribute probe (face needs pip install 'clusterguide[faces]').",
        ),
        click.option(
            "-n", "n", type=IMAGES, default=500, show_default=True, help="Images per row of both tables."
        ),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option(
            "--method",
            "methods",
            type=click.Choice(["imle", "corrected", "exact"]),
            multiple=True,
            help="Sampling method(s) of the clusters' rows, repeatable (default: imle and exact).",
        ),
        click.option(
            "--target",
            "targets",
            multiple=True,
            help='Table 2 condition, e.g. "yaw>10", "yaw<-10", "mouth>0.3"; repeatable.',
        ),
        click.option(
            "--select-n",
            type=IMAGES,
            default=64,
            show_default=True,
            help="Images per candidate when choosing a cluster, direction or step for Table 2.",
        ),
        click.option(
            "--components",
            type=Whole(1, 4096),
            default=10,
            show_default=True,
            help="GANSpace/SeFa directions considered.",
        ),
        click.option(
            "--ganspace-layer",
            default=None,
            help="Layer of GANSpace's PCA (default: the run's layer; 'latent' for the latents).",
        ),
        click.option(
            "--ganspace-samples",
            type=SAMPLES,
            default=4000,
            show_default=True,
            help="Prior samples for GANSpace's PCA.",
        ),
        click.option(
            "--steps",
            default="2,4,6,8",
            show_default=True,
            help="Step lengths tried along a GANSpace/SeFa direction (comma-separated).",
        ),
        click.option("--batch-size", type=BATCH, default=64, show_default=True),
        click.option("--device", type=DEVICE, default="cpu", show_default=True),
        click.option(
            "--no-trained-baselines",
            "no_trained",
            is_flag=True,
            help="Leave out the trained ClusterGAN/SCGAN rows and the sample-quality section.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _prepare(run_dir, probe, targets, device):
    """Probe, parsed targets and sampler; targets are checked before anything slow is loaded."""
    from clusterguide.evaluation.probes import load_probe
    from clusterguide.evaluation.targets import parse_target
    from clusterguide.sampler import ClusterSampler

    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    probe_obj = load_probe(probe)
    parsed = [parse_target(t, probe_obj.attribute_names()) for t in targets]
    return probe_obj, parsed, ClusterSampler.load(run_dir, device=device)


def _steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--steps takes comma-separated numbers, e.g. 2,4,6,8 (got {text!r})") from None
    if not steps or len(steps) > 100 or not all(math.isfinite(s) for s in steps):
        raise UserError(f"--steps takes 1 to 100 finite numbers, e.g. 2,4,6,8 (got {text!r})")
    return steps


def _compute(
    run_dir,
    *,
    probe,
    n,
    seed,
    methods,
    targets,
    select_n,
    components,
    ganspace_layer,
    ganspace_samples,
    steps,
    batch_size,
    device,
    no_trained,
):
    """Run the evaluation the :func:`evaluation_options` ask for; returns (sampler, result)."""
    from clusterguide.evaluation.tables import EvalConfig, evaluate

    config = EvalConfig(
        probe=probe,
        n=n,
        seed=seed,
        methods=tuple(methods) or ("imle", "exact"),
        select_n=select_n,
        components=components,
        steps=_steps(steps),
        ganspace_layer=ganspace_layer,
        ganspace_samples=ganspace_samples,
        batch_size=batch_size,
        trained=() if no_trained else TRAINED,
    ).check()
    probe_obj, parsed, sampler = _prepare(run_dir, probe, targets, device)
    if ganspace_layer not in (None, "latent"):
        sampler.generator.check_layer(ganspace_layer)
    with probe_obj:
        return sampler, evaluate(sampler, probe_obj, config, parsed)


def default_json(run_dir: str, probe: str) -> Path:
    return Path(run_dir) / f"evaluation-{probe}.json"


@click.command("evaluate")
@click.argument("run_dir", type=click.Path())
@evaluation_options
@click.option(
    "--json",
    "json_path",
    default=None,
    help="Where to write the JSON [default: RUN_DIR/evaluation-PROBE.json].",
)
@quiet_option
def evaluate(run_dir, json_path, **options):
    """Attribute statistics per cluster (Table 1) and, with --target, shares against GANSpace,
    SeFa and random sampling (Table 2)."""
    from clusterguide.artifacts import write_json
    from clusterguide.evaluation.tables import format_quality, format_table1, format_table2

    path = output_file(json_path, (".json",)) if json_path else default_json(run_dir, options["probe"])
    _, result = _compute(run_dir, **options)
    click.echo(
        f"Table 1: attributes per cluster ({options['n']} images per row; mean ± std over detected images)"
    )
    click.echo(format_table1(result))
    if result.table2:
        click.echo("")
        click.echo("Table 2: share of images meeting the target")
        click.echo(format_table2(result))
    if result.quality is not None:
        click.echo("")
        click.echo("Sample quality: the generator and the trained baselines")
        click.echo(format_quality(result))
    write_json(path, result.to_json())
    click.echo(f"wrote {path}")


@click.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, help="HTML file to write.")
@click.option(
    "--evaluation",
    "evaluation_path",
    default=None,
    help="Evaluation JSON to use [default: RUN_DIR/evaluation-PROBE.json when it exists].",
)
@click.option("--fresh", is_flag=True, help="Recompute the evaluation even when a JSON exists.")
@click.option(
    "--per-row", type=Whole(1, 1024), default=16, show_default=True, help="Images in each sample grid."
)
@evaluation_options
@quiet_option
def report(run_dir, out, evaluation_path, fresh, per_row, **options):
    """One self-contained HTML page: sample grids, Tables 1 and 2, attribute histograms."""
    from clusterguide.artifacts import atomic_path, read_json
    from clusterguide.evaluation.report import build_report
    from clusterguide.evaluation.results import Evaluation
    from clusterguide.evaluation.tables import check_matches
    from clusterguide.sampler import ClusterSampler

    path = output_file(out, (".html", ".htm"))
    if per_row < 1:
        raise UserError(f"--per-row must be at least 1 (got {per_row})")
    source = Path(evaluation_path) if evaluation_path else default_json(run_dir, options["probe"])
    if evaluation_path and fresh:
        raise UserError("--evaluation and --fresh exclude each other")
    if not fresh and (evaluation_path or source.is_file()):
        evaluation = Evaluation.from_json(read_json(source))
        sampler = ClusterSampler.load(run_dir, device=options["device"])
        check_matches(evaluation, sampler)
        click.echo(
            f"using {source} (n {evaluation.config['n']}, seed {evaluation.config['seed']}); "
            "pass --fresh to recompute",
            err=True,
        )
    else:
        sampler, evaluation = _compute(run_dir, **options)
    page = build_report(sampler, evaluation, per_row=per_row)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    click.echo(f"wrote {path} ({len(page) / 1e6:.1f} MB)")
