"""ClusterGAN (Mukherjee, Asnani, Lin, Kannan, AAAI 2019), trained here on images.

The latent is ``z = (z_n, z_c)``: Gaussian noise ``z_n ~ N(0, sigma^2 I)`` and a one-hot cluster
code ``z_c`` drawn uniformly from k. A generator G maps z to an image, a critic D tells real from
generated images (WGAN-GP), and an encoder E maps an image back to ``(z_n, logits of z_c)``.
G and E are trained together to fool D and to recover the latent they started from:

    L_GE = -E[D(G(z))] + beta_n * mean||z_n - E_n(G(z))||^2 + beta_c * CE(z_c, E_c(G(z)))
    L_D  = E[D(G(z))] - E[D(x)] + lambda * E[(||grad D(x_hat)||_2 - 1)^2]

with ``n_critic`` critic updates per G/E update. The defaults follow the authors' image code
(sudiptodip15/ClusterGAN: sigma 0.1, beta_n = beta_c = 10, lambda 10, five critic updates,
Adam 1e-4 with betas (0.5, 0.9)). Cluster c is sampled as ``G(z_n, onehot(c))``; a real image is
assigned to ``argmax E_c(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.baselines.nets import ConvTrunk, Generator, init_weights
from clusterguide.baselines.training import BaseConfig, Method, batch, seeded
from clusterguide.errors import UserError


@dataclass(frozen=True)
class ClusterGANConfig(BaseConfig):
    sigma: float = 0.1  # standard deviation of z_n
    beta_n: float = 10.0  # weight of the z_n reconstruction
    beta_c: float = 10.0  # weight of the cluster-code cross-entropy
    gp_weight: float = 10.0  # WGAN-GP lambda
    n_critic: int = 5  # critic updates per generator/encoder update
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9

    def check(self) -> ClusterGANConfig:
        super().check()
        if self.n_critic < 1:
            raise UserError(f"n_critic must be at least 1 (got {self.n_critic})")
        return self


class Encoder(nn.Module):
    """Image -> (z_n estimate, cluster logits)."""

    def __init__(self, config: ClusterGANConfig) -> None:
        super().__init__()
        self.trunk = ConvTrunk(config.size, config.width, batch_norm=False)
        self.head = nn.Linear(self.trunk.out_dim, config.noise_dim + config.k)
        self.noise_dim = config.noise_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.trunk(x))
        return out[:, : self.noise_dim], out[:, self.noise_dim :]


class Critic(nn.Module):
    def __init__(self, config: BaseConfig) -> None:
        super().__init__()
        self.trunk = ConvTrunk(config.size, config.width, batch_norm=False)
        self.head = nn.Linear(self.trunk.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(1)


def latent(noise: torch.Tensor, clusters: torch.Tensor, k: int) -> torch.Tensor:
    """Generator input: (z_n, one-hot z_c)."""
    return torch.cat([noise, F.one_hot(clusters, k).to(noise.dtype)], dim=1)


class ClusterGAN(Method):
    name = "clustergan"
    config: ClusterGANConfig

    def __init__(self, config: ClusterGANConfig) -> None:
        self.config = config.check()
        c = config
        self.G = Generator(c.noise_dim + c.k, c.size, c.width)
        self.D = Critic(c)
        self.E = Encoder(c)
        g = seeded(c.seed, "init")
        for net in (self.G, self.D, self.E):
            init_weights(net, g)
        betas = (c.beta1, c.beta2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=betas)
        self.opt_ge = torch.optim.Adam([*self.G.parameters(), *self.E.parameters()], lr=c.lr, betas=betas)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "E": self.E}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"D": self.opt_d, "GE": self.opt_ge}

    def sample_latent(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        noise = torch.randn(n, c.noise_dim, generator=g) * c.sigma
        clusters = torch.randint(c.k, (n,), generator=g)
        return noise, clusters

    def train_step(self, step: int, images: np.ndarray, g: torch.Generator) -> dict[str, float]:
        c = self.config
        self.G.train()
        d_loss = gp = torch.zeros(())
        for _ in range(c.n_critic):
            real = batch(images, c.batch_size, g)
            noise, clusters = self.sample_latent(c.batch_size, g)
            with torch.no_grad():
                fake = self.G(latent(noise, clusters, c.k))
            eps = torch.rand(c.batch_size, 1, 1, 1, generator=g)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            scores = self.D(torch.cat([real, fake, mixed]))
            s_real, s_fake, s_mixed = scores.split(c.batch_size)
            (grad,) = torch.autograd.grad(s_mixed.sum(), mixed, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            d_loss = s_fake.mean() - s_real.mean()
            self.opt_d.zero_grad(set_to_none=True)
            (d_loss + c.gp_weight * gp).backward()
            self.opt_d.step()

        noise, clusters = self.sample_latent(c.batch_size, g)
        fake = self.G(latent(noise, clusters, c.k))
        for p in self.D.parameters():
            p.requires_grad_(False)
        adv = -self.D(fake).mean()
        for p in self.D.parameters():
            p.requires_grad_(True)
        noise_hat, logits = self.E(fake)
        loss_n = ((noise - noise_hat) ** 2).mean()
        loss_c = F.cross_entropy(logits, clusters)
        self.opt_ge.zero_grad(set_to_none=True)
        (adv + c.beta_n * loss_n + c.beta_c * loss_c).backward()
        self.opt_ge.step()
        return {
            "d": float(d_loss.detach()),
            "gp": float(gp.detach()),
            "g": float(adv.detach()),
            "zn": float(loss_n.detach()),
            "zc": float(loss_c.detach()),
        }

    def encode_clusters(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster of each image (float NCHW in [-1, 1]): argmax of the encoder's logits."""
        self.E.eval()
        with torch.no_grad():
            return self.E(x)[1].argmax(dim=1)

    def generator_export(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {k: v.detach().clone() for k, v in self.G.state_dict().items()}
        return tensors, {"code": "clustergan", "prior": [1.0 / self.config.k] * self.config.k}
