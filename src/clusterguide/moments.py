"""Gaussian moments: a covariance estimate that holds for few rows, and the linear optimal
transport map between two Gaussians (:class:`MomentMap`). The corrected sampler (correction.py)
and a ``fast`` mapping's fold (mapping/fold.py) both move samples to a cluster's own moments."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shrunk_covariance(x: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf covariance of the rows of ``x``: the sample covariance shrunk toward a scaled
    identity by as much as its own estimation noise calls for (little with many rows per
    dimension, more for a small cluster in a large latent space, where the sample covariance is
    singular)."""
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    delta = (s - mu * torch.eye(d, dtype=x.dtype, device=x.device)).pow(2).sum() / d
    # the average squared deviation of a single row's outer product from s
    beta = ((xc.pow(2).sum(1).pow(2)).sum() / n - s.pow(2).sum()) / (d * n)
    shrink = float((beta.clamp(max=delta) / delta).clamp(0, 1)) if delta > 0 else 1.0
    return (1 - shrink) * s + shrink * mu * torch.eye(d, dtype=x.dtype, device=x.device)


def _sqrtm(c: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(c)
    values = values.clamp_min(1e-9 * float(values.max().clamp_min(1e-30)))
    return (vectors * (values.rsqrt() if inverse else values.sqrt())) @ vectors.T


@dataclass
class MomentMap:
    """z -> target_mean + (z - source_mean) A^T: the linear optimal transport map between the
    Gaussians with the mapping's and with the cluster's mean and covariance."""

    source_mean: torch.Tensor  # (D,)
    target_mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D), symmetric positive semi-definite

    KEYS = ("source_mean", "target_mean", "matrix")

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        m = self.matrix.to(z.device, z.dtype)
        return self.target_mean.to(z.device, z.dtype) + (z - self.source_mean.to(z.device, z.dtype)) @ m.T

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}::{key}": getattr(self, key).float().contiguous() for key in self.KEYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, latent_dim: int) -> MomentMap:
        """The map saved under ``prefix``; ValueError naming what is missing or misshapen."""
        parts = {}
        for key, shape in zip(cls.KEYS, ((latent_dim,), (latent_dim,), (latent_dim, latent_dim))):
            t = tensors.get(f"{prefix}::{key}")
            if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                raise ValueError(f"{key} of {prefix} is missing, of the wrong shape or not finite")
            parts[key] = t.float()
        return cls(**parts)


def fit_moment_map(mapped: torch.Tensor, latents: torch.Tensor) -> MomentMap:
    """The map taking the mapping's samples ``mapped`` to the mean and covariance of the cluster's
    ``latents`` (both estimated with :func:`shrunk_covariance`, in float64)."""
    x, y = mapped.double(), latents.double()
    source, target = shrunk_covariance(x), shrunk_covariance(y)
    root = _sqrtm(source)
    inv_root = _sqrtm(source, inverse=True)
    matrix = inv_root @ _sqrtm(root @ target @ root) @ inv_root
    matrix = (matrix + matrix.T) / 2
    return MomentMap(x.mean(0).float(), y.mean(0).float(), matrix.float())
