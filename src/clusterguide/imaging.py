"""Images as arrays and grids as pictures: tensor -> uint8, labelled grids, PNG writing.

PIL only (no torchvision). Every writer goes through :func:`clusterguide.artifacts.atomic_write`
so a failed save never leaves a half-written picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from clusterguide.artifacts import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (a fixed-size bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def grid_image(images: np.ndarray, ncol: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile (N, H, W, 3) uint8 images into one picture, ``ncol`` per row."""
    n, h, w, _ = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w
        ] = img
    out = Image.fromarray(canvas)
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    return out


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 2, label_width: int = 220) -> Image.Image:
    """One row per (label, images) pair, label on the left; used for per-cluster overviews."""
    strips = [grid_image(imgs, ncol=len(imgs), scale=scale) for _, imgs in rows]
    width = label_width + max(s.width for s in strips)
    height = sum(s.height for s in strips)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    label_font = font(max(12, 7 * scale))
    y = 0
    for (label, _), strip in zip(rows, strips):
        canvas.paste(strip, (label_width, y))
        lines = label.split("\n")
        line_h = label_font.getbbox("Ag")[3] + 4
        ty = y + (strip.height - line_h * len(lines)) // 2
        for line in lines:
            draw.text((8, ty), line, fill="black", font=label_font)
            ty += line_h
        y += strip.height
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_grid(images: np.ndarray, path: str | Path, ncol: int | None = None, scale: int = 2) -> Path:
    return save_image(grid_image(images, ncol=ncol, scale=scale), path)
