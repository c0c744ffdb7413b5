"""``clusterguide serve``: the local gallery of a run (see docs/web.md)."""

from __future__ import annotations

import logging

import click


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0 = any free port).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but a loopback address exposes the gallery to your network.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda, for sampling.")
@click.option("--verbose", "-v", is_flag=True, help="Log every request, not only refused ones.")
def serve(run_dir, port, host, device, verbose):
    """Browse, name and sample a run's clusters in a web page."""
    from clusterguide.web.server import make_server

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    server = make_server(run_dir, host=host, port=port, device=device)
    if not server.loopback:
        click.echo(
            f"warning: listening on {host}: anyone who can reach this machine can view and rename "
            "clusters (there is no login)",
            err=True,
        )
    click.echo(f"serving {run_dir} at {server.url}  (Ctrl+C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()
