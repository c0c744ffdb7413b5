"""Latents a user holds, from a file, rendered through any generator.

``read_latents`` takes ``.npy`` (an N x D array, or one latent of D values) or ``.npz`` (its
``latents`` array, as ``clusterguide sample`` writes, or its only array) and checks it once, at
the boundary, against the generator's latent size. ``render`` turns them into uint8 images in
batches; every latent is rendered on its own, so the batch size does not change the images'
meaning (only float rounding).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.imaging import to_uint8
from clusterguide.progress import bar

LATENTS_KEY = "latents"


def read_latents(path: str | Path, latent_dim: int | None = None) -> np.ndarray:
    """An (N, D) float32 array from ``path``; one line naming the problem otherwise."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise UserError(f"--latents {path} must be a .npy or .npz file")
    if not path.is_file():
        raise UserError(f"--latents {path} not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                array = _pick(loaded, path)
        else:
            array = loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # damaged, or object arrays
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--latents {path} cannot be read: {first}") from None
    return check_latents(array, path, latent_dim)


def _pick(data: np.lib.npyio.NpzFile, path: Path) -> np.ndarray:
    if LATENTS_KEY in data.files:
        return data[LATENTS_KEY]
    if len(data.files) == 1:
        return data[data.files[0]]
    raise UserError(
        f"--latents {path} holds {', '.join(data.files)}; name the array {LATENTS_KEY!r} or keep only one"
    )


def check_latents(array: np.ndarray, source: str | Path, latent_dim: int | None = None) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise UserError(f"--latents {source}: expected numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise UserError(f"--latents {source}: expected an N x D array, got shape {array.shape}")
    if latent_dim is not None and array.shape[1] != latent_dim:
        raise UserError(
            f"--latents {source}: {array.shape[1]} values per latent, but this generator's latent has "
            f"{latent_dim} (for StyleGAN, --latent-space z or w decides which)"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"--latents {source}: contains NaN or infinite values")
    return array


@torch.no_grad()
def render(
    G: GeneratorAdapter, latents: np.ndarray, batch_size: int = 64, source: str | Path = "latents"
) -> np.ndarray:
    """(N, H, W, 3) uint8 images of ``latents`` (checked with :func:`check_latents`; ``source``
    names them in errors) through ``G``."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    latents = check_latents(latents, source, G.latent_dim)
    out = []
    with bar(latents.shape[0], desc="render", unit="img") as progress:
        for start in range(0, latents.shape[0], batch_size):
            z = torch.from_numpy(latents[start : start + batch_size]).to(G.device)
            out.append(to_uint8(G.synthesize(z)))
            progress.update(z.shape[0])
    return np.concatenate(out)
