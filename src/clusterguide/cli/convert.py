"""``clusterguide convert``: a trusted NVIDIA StyleGAN2/3 pickle -> a safe checkpoint folder, once.

Thin: resolves a published name to its download, then calls
:func:`clusterguide.generators.convert.convert_stylegan2`.
"""

from __future__ import annotations

from pathlib import Path

import click

from clusterguide.errors import UserError


@click.command("convert")
@click.argument("family", type=click.Choice(["stylegan2"]))
@click.argument("source")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Confirm that SOURCE comes from someone you trust: pickles can carry code. Required.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write (config.json + model.safetensors). Default: the download cache for a "
    "published name, else a folder named after the file, beside it.",
)
@click.option(
    "--network",
    type=click.Choice(["G_ema", "G"]),
    default="G_ema",
    show_default=True,
    help="Which generator in the pickle (G_ema is the one NVIDIA samples from).",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def convert(
    family: str, source: str, trust_pickle: bool, out: Path | None, network: str, force: bool
) -> None:
    """Convert SOURCE (a .pkl file, a published name such as ffhq, or hf:OWNER/REPO/FILE.pkl[@REV])
    for --generator FAMILY.

    \b
    Example:
      clusterguide convert stylegan2 ffhq --trust-pickle
      clusterguide convert stylegan2 network-snapshot-025000.pkl --trust-pickle --out my-gan
    """
    from clusterguide.generators import download, hub
    from clusterguide.generators.convert import convert_stylegan2
    from clusterguide.generators.stylegan2 import converted_dir, hub_converted_name

    if not trust_pickle:  # refuse before any download
        raise UserError(
            "converting opens a pickle, which can run code; pass --trust-pickle if you trust "
            f"{source} (NVIDIA's published files are fine)"
        )
    path = Path(source).expanduser()
    name = None
    if hub.is_hub(source):
        name = hub_converted_name(hub.parse(source))
        path = hub.fetch(source)
    elif not path.exists():
        entry = download.lookup(family, source)
        if entry is None:
            names = ", ".join(download.published(family))
            raise UserError(f"{source} is neither a file nor a published {family} name ({names})")
        name = source
        path = download.fetch(entry)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the .pkl file")
    target = out or (converted_dir(name) if name else path.with_suffix(""))
    if target.resolve() == path.resolve():
        raise UserError(f"--out {target} would overwrite the pickle itself")
    if target.exists() and not force:
        raise UserError(f"{target} already exists (pass --force to replace it)")
    convert_stylegan2(path, target, trust_pickle=True, network=network, overwrite=force, source_name=name)
    click.echo(f"wrote {target}")
    click.echo(f"use it with: --generator {family} --checkpoint {source if name else target}")
