"""The ``clusterguide`` command line: thin wrappers that parse, call the library, and print.

Every error a user can cause is a :class:`~clusterguide.errors.UserError` (or a click usage
error) and is shown as one line on stderr with exit code 2.
"""

from __future__ import annotations

import click

from clusterguide.cli.baselines import train_baseline
from clusterguide.cli.convert import convert
from clusterguide.cli.core import fit, grid, info, layers, sample
from clusterguide.cli.evaluate import evaluate, report
from clusterguide.cli.export import export
from clusterguide.cli.render import render
from clusterguide.cli.serve import serve
from clusterguide.cli.tree import choose_k, name, refine
from clusterguide.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clusterguide")
def cli() -> None:
    """Label-free control for pretrained unconditional generators (cluster-guided sampling)."""


# Every command, by area: the main job, trees and names, evaluation, the gallery, converters.
for command in (layers, fit, sample, grid, info, refine, name, choose_k, evaluate, report, serve, convert):
    cli.add_command(command)
cli.add_command(render)  # latents from a file -> images
cli.add_command(train_baseline)  # the trained baselines of the evaluation (clusterguide.baselines)
cli.add_command(export)  # labelled datasets at scale


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    try:
        code = cli.main(args=argv, prog_name="clusterguide", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("error: interrupted; nothing half-written was left behind", err=True)
        return 130
    return code if isinstance(code, int) else 0
