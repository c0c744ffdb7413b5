"""``clusterguide serve``: the local gallery of a run (see docs/web.md)."""

from __future__ import annotations

import logging

import click

from clusterguide.cli.common import DEVICE


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
@click.option(
    "--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N, for sampling."
)
@click.option("--verbose", "-v", is_flag=True, help="Log every request, not only refused ones.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in your web browser.")
def serve(run_dir, port, host, device, verbose, open_browser):
    """Serve a web page to browse, name and sample a run's clusters; prints its address (with the
    access token the page needs; --open opens it in your browser)."""
    from clusterguide.web.server import make_server

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    server = make_server(run_dir, host=host, port=port, device=device)
    if not server.loopback:
        click.echo(
            f"warning: listening on {host}: anyone on your network who has the address below (with its "
            "token) can view and rename clusters; the traffic is not encrypted",
            err=True,
        )
    click.echo(f"serving {run_dir} at {server.page_url}  (Ctrl+C to stop)", err=False)
    if open_browser:
        import webbrowser

        if not webbrowser.open(server.page_url):
            click.echo("could not open a browser; open the address above", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()
