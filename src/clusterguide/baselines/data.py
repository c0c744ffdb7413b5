"""The baselines' training set: images drawn from a pretrained generator, cached as one .npy file.

Image ``i`` comes from latent ``i`` of the generator's stream ``seed``, shrunk to ``size`` pixels by
area averaging, so the set is the same whatever the batch size and can be regenerated anywhere.
The cache file is named by everything that made it (generator, weights checksum, size, count, seed)
and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clusterguide.artifacts import atomic_path
from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.progress import progress


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def shrink(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3) by area averaging (H a multiple of size)."""
    h = images.shape[1]
    if h == size:
        return np.ascontiguousarray(images)
    if h % size:
        raise ValueError(f"cannot shrink {h}px images to {size}px by an integer factor")
    x = F.avg_pool2d(to_float(images), h // size)
    return to_uint8(x)


def draw_images(
    G: GeneratorAdapter, n: int, size: int, seed: int, start: int = 0, batch_size: int = 256
) -> np.ndarray:
    """Images ``start .. start+n-1`` of ``G``'s stream ``seed`` at ``size`` pixels, uint8 NHWC."""
    if G.image_size % size:
        raise UserError(f"{G.name} draws {G.image_size}px images; {size}px does not divide them")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    starts = range(0, n, batch_size)
    for s in progress(starts, total=len(starts), desc=f"training images from {G.name}", unit="batch"):
        m = min(batch_size, n - s)
        z = G.sample_latents(m, seed, start=start + s).to(G.device)
        with torch.no_grad():
            x = G.synthesize(z)
        if G.image_size != size:
            x = F.avg_pool2d(x, G.image_size // size)
        out[s : s + m] = to_uint8(x)
    return out


def cache_name(G: GeneratorAdapter, n: int, size: int, seed: int) -> str:
    return f"{G.name}-{G.weights_id[:12]}-{size}px-n{n}-seed{seed}.npy"


def training_images(G: GeneratorAdapter, n: int, size: int, seed: int, cache_dir: str | Path) -> np.ndarray:
    """The training set (uint8 NHWC), from the cache when it is there; built and cached otherwise."""
    if n < 1:
        raise UserError(f"the training set needs at least one image (got {n})")
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {cache}: {exc.strerror}") from None
    path = cache / cache_name(G, n, size, seed)
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is damaged ({exc}); delete it to rebuild the training set") from None
        if images.shape == (n, size, size, 3) and images.dtype == np.uint8:
            return images
        raise UserError(f"{path} holds {images.dtype} {images.shape}; delete it to rebuild the training set")
    images = draw_images(G, n, size, seed)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
    return images
