"""Small DCGAN-style networks shared by the two trained baselines.

Images are ``size x size`` RGB in [-1, 1] with ``size = 4 * 2**blocks`` (32 px: three blocks).
Widths double toward the 4x4 end, as in DCGAN; ``width`` is the narrowest layer's channel count.

- :class:`Generator`: a code vector -> Linear -> 4x4 -> ``blocks`` x (ConvTranspose, BN, ReLU) ->
  image. The code is whatever the method feeds in (ClusterGAN: noise and a one-hot; SCGAN: noise
  and a normalised class embedding).
- :class:`ConvTrunk`: image -> ``blocks`` x (Conv stride 2, optional BN, LeakyReLU) -> flat
  features; the body of both discriminators and of ClusterGAN's encoder. WGAN-GP critics must not
  use batch norm (the gradient penalty is per sample), so it is optional.
"""

from __future__ import annotations

import torch
from torch import nn


def blocks_for(size: int) -> int:
    """Number of stride-2 blocks for a ``size`` x ``size`` image (size = 4 * 2**blocks)."""
    blocks = (size // 4).bit_length() - 1
    if size < 8 or 4 * 2**blocks != size:
        raise ValueError(f"image size must be 4 * 2**b with b >= 1 (8, 16, 32, 64 ...), got {size}")
    return blocks


class Generator(nn.Module):
    def __init__(self, code_dim: int, size: int = 32, width: int = 32) -> None:
        super().__init__()
        blocks = blocks_for(size)
        top = width * 2 ** (blocks - 1)
        self.fc = nn.Linear(code_dim, 4 * 4 * top)
        layers: list[nn.Module] = [nn.Unflatten(1, (top, 4, 4)), nn.BatchNorm2d(top), nn.ReLU()]
        ch = top
        for _ in range(blocks - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(code))


class ConvTrunk(nn.Module):
    """Image -> flat features of size ``self.out_dim``."""

    def __init__(self, size: int = 32, width: int = 32, batch_norm: bool = False) -> None:
        super().__init__()
        blocks = blocks_for(size)
        layers: list[nn.Module] = []
        ch_in, ch = 3, width
        for i in range(blocks):
            layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1))
            if batch_norm and i > 0:  # DCGAN: no normalisation on the first layer
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, ch * 2
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.out_dim = ch_in * 4 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """DCGAN initialisation (N(0, 0.02) weights, BN scale N(1, 0.02)) from one seeded stream."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=generator) * 0.02)
                m.bias.zero_()
