"""Self-Conditioned GAN (Liu, Wang, Hodgins, Zhu, Torralba, CVPR 2020), trained here on images.

A class-conditional GAN whose classes are clusters the discriminator's own features define:

1. A fixed subset of the training images (``cluster_images``) is embedded with a frozen copy of the
   discriminator's trunk (its penultimate features) and clustered with k-means into k groups.
2. Every real batch gets labels from those centroids (nearest centroid of the frozen copy's
   features); fake images are generated for the same labels, ``G(z, y)``, so labels follow the
   clusters' empirical distribution. Losses are the standard non-saturating GAN losses of a
   conditional D that outputs one logit per class and reads the one of the label ("mask"
   conditioning in the authors' code); G concatenates z with a unit-normalised class embedding.
3. Every ``recluster_every`` steps the features are recomputed with the current discriminator and
   k-means restarts from the means the old labels induce; the new clusters are matched to the old
   ones (the permutation that keeps most images in the same label) so label c keeps its meaning.

Defaults follow the authors' code (stevliu/self-conditioned-gan: first clustering at step 0 with the
untrained discriminator, Adam 1e-4 with betas (0, 0.99), no regulariser, as their CIFAR config);
``recluster_every`` is scaled down to this budget. Cluster c is sampled as ``G(z, c)``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.baselines.data import to_float
from clusterguide.baselines.nets import ConvTrunk, Generator, init_weights
from clusterguide.baselines.training import BaseConfig, Method, batch, seeded
from clusterguide.errors import UserError


@dataclass(frozen=True)
class SelfCondConfig(BaseConfig):
    embed_dim: int = 64  # class embedding concatenated to z
    recluster_every: int = 1000  # steps between re-clusterings
    cluster_images: int = 10000  # training images that are clustered
    kmeans_iters: int = 30
    kmeans_restarts: int = 3  # k-means++ restarts of the first clustering (then: warm starts)
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.99

    def check(self) -> SelfCondConfig:
        super().check()
        if self.recluster_every < 1:
            raise UserError(f"recluster_every must be at least 1 (got {self.recluster_every})")
        if self.cluster_images < self.k:
            raise UserError(f"cluster_images ({self.cluster_images}) must be at least k ({self.k})")
        return self


class CondGenerator(nn.Module):
    """G(z, y): z concatenated with the unit-normalised embedding of class y."""

    def __init__(self, config: SelfCondConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.k, config.embed_dim)
        self.net = Generator(config.noise_dim + config.embed_dim, config.size, config.width)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.embed(y)
        return self.net(torch.cat([z, e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)], dim=1))


class CondDiscriminator(nn.Module):
    """One logit per class; the label picks which one is used."""

    def __init__(self, config: SelfCondConfig) -> None:
        super().__init__()
        self.trunk = ConvTrunk(config.size, config.width, batch_norm=True)
        self.head = nn.Linear(self.trunk.out_dim, config.k)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).gather(1, y[:, None]).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


# ---- k-means and matching ------------------------------------------------------------------------


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]


def kmeans(
    x: torch.Tensor, k: int, g: torch.Generator, init: torch.Tensor | None = None, iters: int = 30
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(centroids, labels, inertia) of Lloyd's k-means from ``init`` or a k-means++ start."""
    n = len(x)
    if init is None:
        first = int(torch.randint(n, (1,), generator=g))
        centroids = [x[first]]
        d = _sqdist(x, x[first : first + 1])[:, 0].clamp_min(0)
        for _ in range(1, k):
            p = d / d.sum() if float(d.sum()) > 0 else torch.full((n,), 1.0 / n)
            nxt = int(torch.multinomial(p, 1, generator=g))
            centroids.append(x[nxt])
            d = torch.minimum(d, _sqdist(x, x[nxt : nxt + 1])[:, 0].clamp_min(0))
        c = torch.stack(centroids)
    else:
        c = init.clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = _sqdist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = counts == 0
        new = new / counts.clamp_min(1)[:, None].to(x.dtype)
        if bool(empty.any()):  # a starved cluster restarts at a random point
            idx = torch.randint(n, (int(empty.sum()),), generator=g)
            new[empty] = x[idx]
        if torch.equal(new, c):
            break
        c = new
    d = _sqdist(x, c)
    labels = d.argmin(1)
    return c, labels, float(d.gather(1, labels[:, None]).clamp_min(0).sum())


def match_clusters(new: torch.Tensor, old: torch.Tensor, k: int) -> list[int]:
    """``perm`` with ``perm[new label] = old label`` keeping the most images in the same label.

    The authors use the Hungarian algorithm; for the small k here every permutation is tried
    (k <= 8), and larger k fall back to a greedy match.
    """
    agree = torch.zeros(k, k, dtype=torch.long)
    agree.index_put_((new, old), torch.ones_like(new), accumulate=True)
    a = agree.numpy()
    if k <= 8:
        best = max(itertools.permutations(range(k)), key=lambda p: sum(a[i, p[i]] for i in range(k)))
        return list(best)
    perm = [-1] * k
    taken: set[int] = set()
    for flat in np.argsort(-a, axis=None, kind="stable"):
        i, j = divmod(int(flat), k)
        if perm[i] < 0 and j not in taken:
            perm[i] = j
            taken.add(j)
    return perm


# ---- the method ----------------------------------------------------------------------------------


class SelfCondGAN(Method):
    name = "selfcond"
    config: SelfCondConfig

    def __init__(self, config: SelfCondConfig) -> None:
        self.config = config.check()
        c = config
        self.G = CondGenerator(c)
        self.D = CondDiscriminator(c)
        g = seeded(c.seed, "init")
        init_weights(self.G, g)
        init_weights(self.D, g)
        with torch.no_grad():
            self.G.embed.weight.copy_(torch.randn(self.G.embed.weight.shape, generator=g))
        self.D_frozen = copy.deepcopy(self.D).eval()  # the features the current clusters come from
        for p in self.D_frozen.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.centroids = torch.zeros(c.k, self.D.trunk.out_dim)  # row y: the centroid of label y
        self.labels = torch.full((0,), -1, dtype=torch.long)  # labels of the clustered images
        self.reclusters = torch.zeros((), dtype=torch.long)  # how many times clusters were fit

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "D_frozen": self.D_frozen}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.centroids, "labels": self.labels, "reclusters": self.reclusters}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = {"centroids", "labels", "reclusters"} - set(tensors)
        if missing:
            raise UserError(f"the checkpoint lacks SCGAN state {sorted(missing)}")
        self.centroids = tensors["centroids"].clone()
        self.labels = tensors["labels"].clone()
        self.reclusters = tensors["reclusters"].clone()

    # ---- clustering ------------------------------------------------------------------------------
    def cluster_subset(self, n_images: int) -> np.ndarray:
        """Indices of the training images that are clustered (fixed by the seed)."""
        g = seeded(self.config.seed, "cluster-subset")
        m = min(self.config.cluster_images, n_images)
        return np.sort(torch.randperm(n_images, generator=g)[:m].numpy())

    def features(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [self.D_frozen.features(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
            )

    def recluster(self, images: np.ndarray) -> None:
        c = self.config
        self.D_frozen.load_state_dict(self.D.state_dict())
        self.D_frozen.eval()
        x = to_float(images[self.cluster_subset(len(images))])
        f = self.features(x)
        g = seeded(c.seed, "kmeans", int(self.reclusters))
        if len(self.labels) == len(f):
            # warm start: the means the old labels induce on the new features
            init = torch.zeros(c.k, f.shape[1]).index_add_(0, self.labels, f)
            counts = torch.bincount(self.labels, minlength=c.k)
            init = init / counts.clamp_min(1)[:, None]
            starved = counts == 0
            if bool(starved.any()):
                init[starved] = f[torch.randint(len(f), (int(starved.sum()),), generator=g)]
            cent, new, _ = kmeans(f, c.k, g, init=init, iters=c.kmeans_iters)
            perm = match_clusters(new, self.labels, c.k)
            order = torch.tensor([perm.index(j) for j in range(c.k)])  # old label j <- new cluster
            cent = cent[order]
            new = torch.tensor(perm)[new]
        else:
            runs = [kmeans(f, c.k, g, iters=c.kmeans_iters) for _ in range(c.kmeans_restarts)]
            cent, new, _ = min(runs, key=lambda r: r[2])
        self.centroids, self.labels = cent, new
        self.reclusters = self.reclusters + 1

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _sqdist(self.D_frozen.features(x), self.centroids).argmin(1)

    def start(self, images: np.ndarray) -> None:
        self.recluster(images)

    # ---- one step ------------------------------------------------------------------------------
    def train_step(self, step: int, images: np.ndarray, g: torch.Generator) -> dict[str, float]:
        c = self.config
        if step > 0 and step % c.recluster_every == 0:
            self.recluster(images)
        self.G.train()
        self.D.train()
        real = batch(images, c.batch_size, g)
        y = self.assign(real)
        z = torch.randn(c.batch_size, c.noise_dim, generator=g)
        with torch.no_grad():
            fake = self.G(z, y)
        ones, zeros = torch.ones(c.batch_size), torch.zeros(c.batch_size)
        d_real = self.D(real, y)
        d_fake = self.D(fake, y)
        d_loss = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
            d_fake, zeros
        )
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        for p in self.D.parameters():
            p.requires_grad_(False)
        g_loss = F.binary_cross_entropy_with_logits(self.D(self.G(z, y), y), ones)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        for p in self.D.parameters():
            p.requires_grad_(True)
        return {"d": float(d_loss.detach()), "g": float(g_loss.detach())}

    def prior(self) -> list[float]:
        """Share of each label among the clustered images (what G's labels are drawn from)."""
        counts = torch.bincount(self.labels, minlength=self.config.k).double()
        return (counts / counts.sum().clamp_min(1)).tolist()

    def generator_export(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {k: v.detach().clone() for k, v in self.G.state_dict().items()}
        return tensors, {"code": "selfcond", "prior": self.prior()}
