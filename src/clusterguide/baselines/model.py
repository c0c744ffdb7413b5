"""A trained baseline's generator, loaded from ``generator.safetensors`` + ``generator.json``.

:class:`TrainedBaseline` draws images of one of its k clusters: ClusterGAN's ``G(z_n, onehot(c))``
with ``z_n ~ N(0, sigma^2 I)``, SCGAN's ``G(z, c)`` with ``z ~ N(0, I)``. Noise row i of stream
``seed`` is the same whatever n is (seeding.randn_streams), and the same for every cluster, so the
clusters of one seed are drawn from the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clusterguide.artifacts import load_tensors, read_json
from clusterguide.baselines.clustergan import ClusterGANConfig, latent
from clusterguide.baselines.data import to_uint8
from clusterguide.baselines.training import BaseConfig
from clusterguide.errors import UserError
from clusterguide.seeding import randn_streams

WEIGHTS_DIR = Path(__file__).parent / "weights"
METHODS = ("clustergan", "selfcond")
TITLES = {"clustergan": "ClusterGAN", "selfcond": "SCGAN"}


def _build(method: str, config: dict) -> tuple[nn.Module, BaseConfig]:
    if method == "clustergan":
        from clusterguide.baselines.nets import Generator

        c = ClusterGANConfig.from_json(config)
        return Generator(c.noise_dim + c.k, c.size, c.width), c
    if method == "selfcond":
        from clusterguide.baselines.selfcond import CondGenerator, SelfCondConfig

        s = SelfCondConfig.from_json(config)
        return CondGenerator(s), s
    raise UserError(f"unknown baseline {method!r}; choose one of: {', '.join(METHODS)}")


@dataclass
class TrainedBaseline:
    method: str  # "clustergan" or "selfcond"
    net: nn.Module  # the generator, eval mode
    config: BaseConfig  # ClusterGANConfig or SelfCondConfig
    info: dict  # generator.json (step, training time, prior ...)

    @property
    def k(self) -> int:
        return int(self.config.k)

    @property
    def title(self) -> str:
        return TITLES[self.method]

    @property
    def prior(self) -> list[float]:
        """Share of each cluster among the method's own samples (ClusterGAN: uniform)."""
        return [float(p) for p in self.info["prior"]]

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> TrainedBaseline:
        """From a folder holding generator.json + generator.safetensors (a training --out folder)."""
        path = Path(path)
        info = read_json(path / "generator.json")
        if not isinstance(info, dict) or info.get("class") != "TrainedBaseline":
            raise UserError(f"{path / 'generator.json'} is not a trained baseline generator")
        net, config = _build(info["method"], info["config"])
        tensors = load_tensors(path / "generator.safetensors", expected_sha256=info["sha256"])
        try:
            net.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{path} does not match its config: {str(exc).splitlines()[0]}") from None
        return cls(info["method"], net.eval().to(device), config, info)

    def check_cluster(self, cluster: int) -> int:
        if not 0 <= int(cluster) < self.k:
            raise UserError(f"{self.title} has clusters 0..{self.k - 1}, not {cluster}")
        return int(cluster)

    def images(self, cluster: int, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
        """``n`` uint8 (n, size, size, 3) images of ``cluster`` from noise stream ``seed``."""
        cluster = self.check_cluster(cluster)
        c = self.config
        device = next(self.net.parameters()).device
        out = []
        for s in range(0, n, batch_size):
            m = min(batch_size, n - s)
            z = randn_streams(seed, s, m, c.noise_dim, stream="baseline-noise").to(device)
            y = torch.full((m,), cluster, dtype=torch.long, device=device)
            with torch.no_grad():
                if isinstance(c, ClusterGANConfig):
                    x = self.net(latent(z * c.sigma, y, self.k))
                else:
                    x = self.net(z, y)
            out.append(to_uint8(x))
        return np.concatenate(out) if out else np.zeros((0, c.size, c.size, 3), np.uint8)

    def random(self, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
        """``n`` images with clusters drawn from the method's prior (image i's cluster is fixed by seed)."""
        g = torch.Generator().manual_seed(int(seed) % 2**63)
        clusters = torch.multinomial(torch.tensor(self.prior, dtype=torch.float64), n, True, generator=g)
        out = np.zeros((n, self.config.size, self.config.size, 3), np.uint8)
        for c in range(self.k):
            idx = (clusters == c).nonzero()[:, 0].numpy()
            if len(idx):
                out[idx] = self.images(c, n, seed, batch_size)[idx]
        return out


def shipped(method: str, device: str = "cpu") -> TrainedBaseline:
    """The weights that ship with the package (trained with ``clusterguide train-baseline``)."""
    if method not in METHODS:
        raise UserError(f"unknown baseline {method!r}; choose one of: {', '.join(METHODS)}")
    folder = WEIGHTS_DIR / method
    if not (folder / "generator.json").is_file():
        raise UserError(f"the shipped {TITLES[method]} weights are missing ({folder})")
    return TrainedBaseline.load(folder, device)
