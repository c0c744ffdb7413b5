"""``clusterguide render``: latents a user holds (exported, edited, from another tool) -> images.

Thin: reads and checks the latents (:func:`clusterguide.generators.latents.read_latents`), loads
the generator as ``fit`` does, renders, and writes the same files as ``sample``.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from clusterguide.cli.common import family_options, generator_options, output_file, quiet_option
from clusterguide.generators.registry import GeneratorSpec, load_generator


@click.command()
@generator_options
@click.option(
    "--latents",
    "latents_path",
    required=True,
    help="FILE.npy (N x D, or one latent) or FILE.npz (its 'latents' array, as `sample` writes, or its "
    "only array). D is the generator's latent size (StyleGAN: z, or w with --latent-space w).",
)
@click.option(
    "--class", "class_label", type=int, default=None, help="Class for class-conditional generators."
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", required=True, help="FILE: writes FILE.png (grid) and FILE.npz (images, latents).")
@quiet_option
def render(
    generator, checkpoint, latent_space, truncation, latents_path, class_label, batch_size, device, out
):
    """Render latents from a file through any generator.

    \b
    Example:
      clusterguide render --generator stylegan2 --checkpoint 550000.pt --latents edited.npy --out edited
    """
    from clusterguide.artifacts import atomic_path
    from clusterguide.errors import UserError
    from clusterguide.generators.latents import read_latents
    from clusterguide.generators.latents import render as render_latents
    from clusterguide.imaging import save_grid

    base = output_file(out, ("", ".png", ".npz"))
    base = base.with_suffix("") if base.suffix else base
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    latents = read_latents(latents_path)  # fails before the generator is loaded
    spec = GeneratorSpec(generator, checkpoint, family_options(latent_space, truncation))
    G = load_generator(spec, device=device).conditioned(class_label)
    images = render_latents(G, latents, batch_size=batch_size, source=latents_path)
    png, npz = Path(f"{base}.png"), Path(f"{base}.npz")
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=images, latents=latents)
    save_grid(images, png)
    click.echo(f"{len(images)} images ({G.name}, {G.image_size}x{G.image_size}) -> {png}, {npz}")
