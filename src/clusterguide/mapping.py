"""The per-cluster mapping T_c: auxiliary Gaussian e -> the cluster's latents, learned with IMLE.

Two recipes share one network shape (3 bias-free fully connected layers, batch norm between):

- ``paper``: Algorithm 1 of the seed paper, cluster by cluster. Every epoch draws Gamma = 10 x
  cluster-size auxiliary samples, matches every latent of the cluster to its nearest mapped sample
  with FAISS, and regresses the matches with MSE and Adam.
- ``fast`` (default): every sibling cluster trained at once as one batched network; the mapping is
  residual and starts as the identity (T(e) = e + f(e), f = 0 at init), so it starts from the prior
  instead of from a point; matches are refreshed every ``staleness`` epochs (as in Ke Li's IMLE
  code) with Gamma = 4 x size; and a cluster-consistency hinge on fresh mapped samples pulls the
  ones that land outside their cluster back in (zero for samples already inside, so it does not
  squeeze the cluster). Pure IMLE in a 100-d latent space drifts toward the cluster mean (even the
  nearest of many candidates is far from each latent); the hinge and the identity start are what
  keep fidelity and spread. docs/benchmarks.md measures both recipes side by side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.nn_search import nearest
from clusterguide.progress import bar
from clusterguide.seeding import derive_seed

# guide(z) -> (N, k) assignment logits at the clustering layer of the split being learned
Guide = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MappingConfig:
    """How the mappings are learned; saved with every run."""

    recipe: str = "fast"  # "fast" (default) or "paper" (Algorithm 1 as published)
    epochs: int = 400  # passes over each cluster's latents
    gamma: float = 10.0  # auxiliary samples drawn per latent of the cluster (Gamma = gamma x size)
    width: int = 512  # hidden width of the 3-layer network
    batch_size: int = 128  # latents per Adam step (per cluster)
    lr: float = 1e-3  # Adam learning rate
    aux_dim: int | None = None  # dimension of e; None = the generator's latent dimension
    residual: bool = False  # T(e) = e + f(e), f zero at init (needs aux_dim == latent_dim)
    staleness: int = 1  # epochs between nearest-neighbour refreshes (1 = every epoch, as the paper)
    consistency: float = 0.0  # weight of the cluster-consistency hinge (0 = pure IMLE)
    margin: float = 0.0  # the hinge is zero once a sample is this far inside its cluster (logit units)
    guide_batch: int = 128  # free samples per cluster per step for the consistency term
    imle_weight: float = 1.0  # weight of the IMLE regression term
    inflation: float = 0.0  # weight of a penalty on mapped norms growing past the cluster's own
    match_quantile: float = 1.0  # regress only the closest share of matches (1.0 = all, as the paper)
    nn_backend: str = "auto"  # "faiss", "torch", or "auto" (torch on GPU, faiss on CPU)
    seed: int = 0

    @staticmethod
    def preset(recipe: str, **overrides) -> MappingConfig:
        """The named recipes; unspecified (None) overrides keep the recipe's values."""
        presets = {
            "paper": MappingConfig(recipe="paper"),
            "fast": MappingConfig(
                recipe="fast", epochs=15, gamma=4.0, width=256, batch_size=512, lr=1e-3,
                residual=True, staleness=5, consistency=1.0, margin=0.0, guide_batch=64, inflation=10.0,
            ),
        }
        if recipe not in presets:
            raise UserError(f"unknown mapping recipe {recipe!r}; choose one of: {', '.join(presets)}")
        return replace(presets[recipe], **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return asdict(self)


class MappingNetwork(nn.Module):
    """T_c: Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear, no biases (optionally + e)."""

    def __init__(self, aux_dim: int, width: int, latent_dim: int, residual: bool = False) -> None:
        super().__init__()
        if residual and aux_dim != latent_dim:
            raise UserError("a residual mapping needs aux_dim == latent_dim")
        self.residual = residual
        self.fc1 = nn.Linear(aux_dim, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc3 = nn.Linear(width, latent_dim, bias=False)
        if residual:
            nn.init.zeros_(self.fc3.weight)

    @property
    def aux_dim(self) -> int:
        return self.fc1.in_features

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.fc1(e)))
        h = F.relu(self.bn2(self.fc2(h)))
        out = self.fc3(h)
        return out + e if self.residual else out


class BatchedMapping(nn.Module):
    """K mapping networks evaluated as one: inputs (K, B, aux_dim) -> (K, B, latent_dim)."""

    def __init__(self, k: int, aux_dim: int, width: int, latent_dim: int, residual: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.residual = residual

        def linear(n_in: int, n_out: int, zero: bool = False) -> nn.Parameter:
            bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init
            w = torch.zeros(k, n_in, n_out) if zero else (torch.rand(k, n_in, n_out, generator=generator) * 2 - 1) * bound
            return nn.Parameter(w)

        self.w1 = linear(aux_dim, width)
        self.w2 = linear(width, width)
        self.w3 = linear(width, latent_dim, zero=residual)
        for i in (1, 2):
            self.register_parameter(f"g{i}", nn.Parameter(torch.ones(k, 1, width)))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(k, 1, width)))
            self.register_buffer(f"mean{i}", torch.zeros(k, 1, width))
            self.register_buffer(f"var{i}", torch.ones(k, 1, width))
        self.momentum = 0.1
        self.eps = 1e-5
        self.steps = 0

    def _bn(self, h: torch.Tensor, i: int) -> torch.Tensor:
        mean_buf, var_buf = getattr(self, f"mean{i}"), getattr(self, f"var{i}")
        if self.training:
            mean = h.mean(1, keepdim=True)
            var = h.var(1, keepdim=True, unbiased=False)
            with torch.no_grad():
                n = h.shape[1]
                mean_buf.lerp_(mean, self.momentum)
                var_buf.lerp_(var * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = mean_buf, var_buf
        return (h - mean) / torch.sqrt(var + self.eps) * getattr(self, f"g{i}") + getattr(self, f"b{i}")

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.relu(self._bn(torch.bmm(e, self.w1), 1))
        h = F.relu(self._bn(torch.bmm(h, self.w2), 2))
        out = torch.bmm(h, self.w3)
        return out + e if self.residual else out

    @torch.no_grad()
    def start_from(self, net: MappingNetwork) -> None:
        """Every one of the k mappings becomes a copy of ``net`` (same shape)."""
        for i in range(self.w1.shape[0]):
            self.w1[i].copy_(net.fc1.weight.T)
            self.w2[i].copy_(net.fc2.weight.T)
            self.w3[i].copy_(net.fc3.weight.T)
            for j, bn in ((1, net.bn1), (2, net.bn2)):
                getattr(self, f"g{j}")[i, 0].copy_(bn.weight)
                getattr(self, f"b{j}")[i, 0].copy_(bn.bias)
                getattr(self, f"mean{j}")[i, 0].copy_(bn.running_mean)
                getattr(self, f"var{j}")[i, 0].copy_(bn.running_var)

    def export(self, index: int) -> MappingNetwork:
        aux_dim, width = self.w1.shape[1:]
        net = MappingNetwork(aux_dim, width, self.w3.shape[2], self.residual)
        with torch.no_grad():
            net.fc1.weight.copy_(self.w1[index].T)
            net.fc2.weight.copy_(self.w2[index].T)
            net.fc3.weight.copy_(self.w3[index].T)
            for i, bn in ((1, net.bn1), (2, net.bn2)):
                bn.weight.copy_(getattr(self, f"g{i}")[index, 0])
                bn.bias.copy_(getattr(self, f"b{i}")[index, 0])
                bn.running_mean.copy_(getattr(self, f"mean{i}")[index, 0])
                bn.running_var.copy_(getattr(self, f"var{i}")[index, 0])
                bn.num_batches_tracked.fill_(self.steps)
        return net.eval()


@dataclass
class MappingResult:
    networks: list[MappingNetwork]  # one per cluster, in the order given, eval mode, on CPU
    seconds: float
    final_loss: list[float]  # per cluster, mean MSE of the last epoch


def make_network(config: MappingConfig, latent_dim: int) -> MappingNetwork:
    aux = config.aux_dim or latent_dim
    return MappingNetwork(aux, config.width, latent_dim, config.residual)


def fit_mappings(
    latents: list[torch.Tensor],
    config: MappingConfig,
    *,
    guide: Guide | None = None,
    device: str | torch.device = "cpu",
    desc: str = "mappings",
    init: MappingNetwork | None = None,
) -> MappingResult:
    """Learn one mapping per entry of ``latents`` (each (n_c, D): the latents of cluster c).

    ``guide`` gives assignment logits at the clustering layer; it is used only by recipes with
    ``consistency > 0``, and cluster c's target is index c of ``latents`` (a guide may add further
    columns, e.g. "outside the parent", that no cluster targets). ``init``, a network of the same
    shape (a refined cluster's parent mapping), is where every ``fast`` mapping starts; the paper
    recipe starts from scratch, as published.
    """
    if not latents:
        raise UserError("no clusters to learn mappings for")
    for i, z in enumerate(latents):
        if z.shape[0] < 2:
            raise UserError(f"cluster {i} has {z.shape[0]} latents; a mapping needs at least 2")
    start = time.perf_counter()
    if config.recipe == "paper":
        nets, losses = [], []
        for i, z in enumerate(latents):
            net, loss = _fit_paper(
                z, config, device, seed=derive_seed(config.seed, "paper", i), desc=f"{desc} [{i}]"
            )
            nets.append(net)
            losses.append(loss)
    else:
        nets, losses = _fit_batched(latents, config, guide, device, desc, init=init)
    return MappingResult([n.cpu().eval() for n in nets], time.perf_counter() - start, losses)


def _fit_paper(
    z: torch.Tensor, config: MappingConfig, device, seed: int, desc: str, init: MappingNetwork | None = None
) -> tuple[MappingNetwork, float]:
    """Algorithm 1 for one cluster, as published."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_network(config, z.shape[1])
    if _can_start_from(init, config, z.shape[1]):
        net.load_state_dict(init.state_dict(), strict=True)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    z = z.to(device)
    n = z.shape[0]
    gamma = max(int(config.gamma * n), 1)
    last = float("nan")
    with bar(config.epochs, desc=desc, unit="epoch") as b:
        for epoch in range(config.epochs):
            if epoch % config.staleness == 0:
                e_all = torch.randn(gamma, net.aux_dim, generator=g).to(device)
                net.eval()
                with torch.no_grad():
                    mapped = torch.cat([net(e_all[s : s + 8192]) for s in range(0, gamma, 8192)])
                idx, _ = nearest(z, mapped, config.nn_backend)
                e_match = e_all[idx.to(device)]
            net.train()
            order = torch.randperm(n, generator=g).to(device)
            total = 0.0
            for s in range(0, n, config.batch_size):
                rows = order[s : s + config.batch_size]
                if rows.numel() < 2:  # batch norm needs two rows
                    continue
                loss = F.mse_loss(net(e_match[rows]), z[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * rows.numel()
            last = total / n
            b.update(1)
            b.set_postfix_str(f"mse {last:.3f}")
    return net.eval(), last


def _consistency(
    model: BatchedMapping, guide: Guide, k: int, config: MappingConfig, aux: int, g, device, norms: torch.Tensor
) -> torch.Tensor:
    """Hinge on fresh mapped samples: zero for samples already ``margin`` inside their own
    cluster, so it pulls stray samples in without squeezing the ones inside (a cross-entropy
    would keep pushing every sample toward the centroid and collapse the mapping).

    At later layers the cheapest way "inside" can be outward, to latents far larger than any the
    prior draws (and off the image manifold); the one-sided ``inflation`` term stops mean norms
    from growing past the cluster's own (``norms``) without holding back a collapse, which the
    metrics should still see."""
    m = config.guide_batch
    e_free = torch.randn(k, m, aux, generator=g).to(device)
    mapped = model(e_free)
    inflation = F.relu(mapped.norm(dim=2).mean(1) / norms - 1).pow(2).sum() / k
    logits = guide(mapped.reshape(k * m, -1))
    target = torch.arange(k, device=logits.device).repeat_interleave(m)
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).max(1).values
    return F.relu(others - own + config.margin).mean() + config.inflation * inflation


def _can_start_from(net: MappingNetwork | None, config: MappingConfig, latent_dim: int) -> bool:
    """Whether ``net`` has the shape ``config`` asks for (a recipe override may change it)."""
    if net is None:
        return False
    aux = config.aux_dim or latent_dim
    return (
        net.residual == config.residual
        and tuple(net.fc1.weight.shape) == (config.width, aux)
        and tuple(net.fc3.weight.shape) == (latent_dim, config.width)
    )


def _fit_batched(
    latents: list[torch.Tensor], config: MappingConfig, guide: Guide | None, device, desc: str,
    init: MappingNetwork | None = None,
):
    """All clusters of a split at once; see the module docstring for what differs from the paper."""
    k = len(latents)
    latent_dim = latents[0].shape[1]
    aux = config.aux_dim or latent_dim
    g = torch.Generator().manual_seed(derive_seed(config.seed, "batched"))
    model = BatchedMapping(k, aux, config.width, latent_dim, config.residual, g)
    if _can_start_from(init, config, latent_dim):
        model.start_from(init)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    data = [z.to(device) for z in latents]
    sizes = [z.shape[0] for z in data]
    # Each cluster gets Gamma = gamma x its own size candidates (the network runs on the largest
    # count for all, which is cheap; the nearest-neighbour search, which is not, uses only its own).
    gammas = [max(int(config.gamma * n), 1) for n in sizes]
    steps = max(1, math.ceil(sum(sizes) / k / config.batch_size))
    batch = min(config.batch_size, min(sizes))
    use_guide = guide is not None and config.consistency > 0
    norms = torch.stack([z.norm(dim=1).mean() for z in data])
    matched: list[torch.Tensor] = []
    losses = [float("nan")] * k
    with bar(config.epochs, desc=desc, unit="epoch") as b:
        for epoch in range(config.epochs):
            if epoch % config.staleness == 0:
                e_all = torch.randn(k, max(gammas), aux, generator=g).to(device)
                model.eval()
                with torch.no_grad():
                    mapped = torch.cat([model(e_all[:, s : s + 8192]) for s in range(0, max(gammas), 8192)], 1)
                matched, targets = [], []
                for c in range(k):
                    idx, dist = nearest(data[c], mapped[c, : gammas[c]], config.nn_backend)
                    # In a 100-d latent space even the nearest of many candidates is far away, and
                    # regressing onto far matches drags samples toward the cluster mean; keeping
                    # the closest share of matches is a per-epoch threshold in the spirit of Adaptive IMLE.
                    keep = dist <= torch.quantile(dist, config.match_quantile) if config.match_quantile < 1 else torch.ones_like(dist, dtype=torch.bool)
                    keep = keep.to(device)
                    matched.append(e_all[c, idx.to(device)][keep])
                    targets.append(data[c][keep])
            model.train()
            totals = torch.zeros(k)
            for _ in range(steps):
                rows = [torch.randint(len(matched[c]), (batch,), generator=g).to(device) for c in range(k)]
                e_b = torch.stack([matched[c][rows[c]] for c in range(k)])
                z_b = torch.stack([targets[c][rows[c]] for c in range(k)])
                out = model(e_b)
                per_cluster = ((out - z_b) ** 2).mean(dim=(1, 2))
                loss = config.imle_weight * per_cluster.sum()
                if use_guide:
                    loss = loss + config.consistency * k * _consistency(model, guide, k, config, aux, g, device, norms)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.steps += 1
                totals += per_cluster.detach().cpu()
            losses = (totals / steps).tolist()
            b.update(1)
            b.set_postfix_str(f"mse {sum(losses) / k:.3f}")
    model.eval()
    return [model.export(c) for c in range(k)], losses
