"""Distance between two sets of images in a fixed, seeded feature space (a KID computed offline).

KID (Bińkowski et al. 2018) is the unbiased squared MMD between two feature sets under the kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; 0 means the two sets could come from
one distribution. Its usual feature space, Inception-v3, needs a download, so the features here
come from a small convolutional network with **random weights fixed by a seed** (three
conv-ReLU-pool stages; per stage the channel means and standard deviations of the activations,
456 numbers per image, standardised with the reference set's statistics). Randomly initialised
embeddings are known to separate real from generated images usefully where no trained network
fits the domain (Naeem et al. 2020, "Reliable fidelity and diversity metrics"); they see colour,
contrast, edges and texture statistics at three scales, not semantics, so this distance says how
far a generator's images are from the training images in low-level image statistics. It is
reported next to the face detection rate, which is the semantic check. All images are compared at
the same size (``size``, by area averaging), so resolution alone does not count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.baselines.data import shrink, to_float
from clusterguide.seeding import derive_seed


class RandomFeatures(nn.Module):
    """A fixed random conv net: image -> (mean, std) of each channel after each of three stages."""

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(derive_seed(seed, "kid-features"))
        self.convs = nn.ModuleList()
        ch = 3
        for w in widths:
            conv = nn.Conv2d(ch, w, 3, 1, 1)
            with torch.no_grad():  # He initialisation, drawn from the seeded stream
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (ch * 9)) ** 0.5)
                assert conv.bias is not None
                conv.bias.zero_()
            self.convs.append(conv)
            ch = w
        self.out_dim = 2 * sum(widths)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            x = F.avg_pool2d(x, 2)
        return torch.cat(feats, dim=1)


def image_features(images: np.ndarray, size: int, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """(N, 456) float64 features of uint8 NHWC images shrunk to ``size`` pixels."""
    net = RandomFeatures(seed)
    small = shrink(images, size)
    with torch.no_grad():
        out = [net(to_float(small[s : s + batch_size])) for s in range(0, len(small), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, net.out_dim))


def kid(
    features: np.ndarray, reference: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 with the cubic polynomial kernel.

    Both sets are standardised with ``reference``'s per-feature mean and std first.
    """
    mu, sd = reference.mean(0), reference.std(0) + 1e-8
    a, b = (features - mu) / sd, (reference - mu) / sd
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return float("nan"), float("nan")
    d = a.shape[1]
    rng = np.random.default_rng(derive_seed(seed, "kid-subsets"))
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
