"""The paper's two trained baselines, ClusterGAN and Self-Conditioned GAN, trained from scratch on
images drawn from a pretrained generator (the default: ``digiface-dcgan``).

- :mod:`.data`: the training set, drawn and cached;
- :mod:`.nets`: small DCGAN-style networks both methods share;
- :mod:`.training`: the seeded, resumable training loop and its checkpoints;
- :mod:`.clustergan`, :mod:`.selfcond`: the two methods;
- :mod:`.model`: a trained generator, loaded for evaluation (shipped weights under ``weights/``).
"""

from __future__ import annotations

from clusterguide.baselines.training import BaseConfig, Method


def make_method(name: str, **settings) -> Method:
    """A fresh baseline ``name`` ("clustergan" or "selfcond") with ``settings`` over its defaults."""
    from clusterguide.errors import UserError

    if name == "clustergan":
        from clusterguide.baselines.clustergan import ClusterGAN, ClusterGANConfig

        return ClusterGAN(ClusterGANConfig(**settings))
    if name == "selfcond":
        from clusterguide.baselines.selfcond import SelfCondConfig, SelfCondGAN

        return SelfCondGAN(SelfCondConfig(**settings))
    raise UserError(f"unknown baseline {name!r}; choose clustergan or selfcond")


__all__ = ["BaseConfig", "Method", "make_method"]
