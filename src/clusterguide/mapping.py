"""The per-cluster mapping T_c: auxiliary input e -> the cluster's latents, learned with IMLE.

Three recipes share one network shape (3 bias-free fully connected layers, batch norm between):

- ``paper``: Algorithm 1 of the seed paper, cluster by cluster. Every epoch draws Gamma = 10 x
  cluster-size auxiliary samples, matches every latent of the cluster to its nearest mapped sample
  with FAISS, and regresses the matches with MSE and Adam. Its mappings collapse toward the
  cluster mean (about half the prior's norm).
- ``fast`` (default): a residual mapping confined to a few directions, T_c(e) = e + U_c g_c(e).
  A cluster is a region of the prior, and its membership hangs on few directions of z: U_c holds
  the ones along which the cluster's second moment departs most from the prior's and those along
  which its assignment margin changes most (see :func:`cluster_basis`). e is drawn from the generator's own prior, and
  every coordinate of it off U_c passes through unchanged, so there the mapped distribution is the
  prior's, exactly. g_c is learned by *conditional* IMLE: every latent z_i keeps its own
  complement, only its few subspace coordinates are drawn as candidates, and the nearest is
  regressed. In a few dimensions the nearest of 32 candidates is close, so IMLE covers the
  cluster instead of averaging it (the failure of IMLE in the full 100-d space). A
  cluster-consistency hinge on fresh samples pulls the strays in (it is zero for samples inside).
  All sibling clusters train at once as one batched network.
- ``residual``: the previous default, kept for comparison: a full-space residual mapping with
  pool-based IMLE (Gamma = 4 x size, refreshed every 5 epochs), a strong consistency hinge and a
  norm-inflation penalty. It keeps fidelity and norm but overshoots into the cluster's interior,
  which costs recall.

docs/benchmarks.md measures them side by side.
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
from clusterguide.seeding import derive_seed, randn_streams

# guide(z) -> (N, k) assignment logits at the clustering layer of the split being learned
Guide = Callable[[torch.Tensor], torch.Tensor]
# Draws n latents from the generator's own prior on CPU; the random stream is ``generator``'s.
Prior = Callable[[int, torch.Generator], torch.Tensor]
RECIPES = ("fast", "residual", "paper")


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise UserError(f"unknown mapping recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return recipe


@dataclass(frozen=True)
class MappingConfig:
    """How the mappings are learned; saved with every run."""

    recipe: str = "fast"  # "fast" (default), "residual" (the previous default) or "paper" (Algorithm 1)
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
    moment_dims: int = 2  # fast: directions where the cluster's second moment departs most from the prior's
    active_dims: int = (
        1  # fast: directions along which the cluster's assignment margin changes most (at least)
    )
    max_active_dims: int = 1  # fast: ... and at most, added one at a time until keep_target is met
    keep_target: float = (
        0.9  # fast: share of the cluster's latents that must stay in it when the complement is redrawn
    )
    candidates: int = 32  # fast: conditional-IMLE candidates drawn per latent at each refresh
    min_steps: int = 0  # batched recipes: optimiser steps per epoch at least (small clusters and refinements)
    nn_backend: str = "auto"  # "faiss", "torch", or "auto" (torch on GPU, faiss on CPU)
    seed: int = 0

    @staticmethod
    def preset(recipe: str, **overrides) -> MappingConfig:
        """The named recipes; unspecified (None) overrides keep the recipe's values."""
        presets = {
            "paper": MappingConfig(recipe="paper"),
            "fast": MappingConfig(
                recipe="fast",
                epochs=15,
                width=256,
                batch_size=512,
                lr=1e-3,
                residual=True,
                staleness=5,
                consistency=1.0,
                margin=0.0,
                guide_batch=64,
                moment_dims=2,
                active_dims=1,
                max_active_dims=8,
                keep_target=0.8,
                candidates=32,
                min_steps=10,
            ),
            "residual": MappingConfig(
                recipe="residual",
                epochs=15,
                gamma=4.0,
                width=256,
                batch_size=512,
                lr=1e-3,
                residual=True,
                staleness=5,
                consistency=1.0,
                margin=0.0,
                guide_batch=64,
                inflation=10.0,
            ),
        }
        return replace(presets[check_recipe(recipe)], **{k: v for k, v in overrides.items() if v is not None})

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
    """K mapping networks evaluated as one: inputs (K, B, aux_dim) -> (K, B, latent_dim).

    With a ``basis`` (K, latent_dim, d) the last layer writes d coordinates that the basis places in
    latent space (T_c(e) = e + U_c g_c(e)); :meth:`export` folds U_c into the plain last layer."""

    def __init__(
        self,
        k: int,
        aux_dim: int,
        width: int,
        latent_dim: int,
        residual: bool,
        generator: torch.Generator,
        basis: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.residual = residual
        if basis is not None and (basis.shape[0] != k or basis.shape[1] != latent_dim or not residual):
            raise ValueError(f"basis must be (k={k}, latent_dim={latent_dim}, d) and the mapping residual")

        def linear(n_in: int, n_out: int, zero: bool = False) -> nn.Parameter:
            bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init
            w = (
                torch.zeros(k, n_in, n_out)
                if zero
                else (torch.rand(k, n_in, n_out, generator=generator) * 2 - 1) * bound
            )
            return nn.Parameter(w)

        self.w1 = linear(aux_dim, width)
        self.w2 = linear(width, width)
        self.w3 = linear(width, latent_dim if basis is None else basis.shape[2], zero=residual)
        self.register_buffer("basis", basis)
        for i in (1, 2):
            self.register_parameter(f"g{i}", nn.Parameter(torch.ones(k, 1, width)))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(k, 1, width)))
            self.register_buffer(f"mean{i}", torch.zeros(k, 1, width))
            self.register_buffer(f"var{i}", torch.ones(k, 1, width))
        self.momentum = 0.1
        self.eps = 1e-5
        self.steps = 0

    def _bn(self, h: torch.Tensor, i: int, c: int | None = None) -> torch.Tensor:
        """Batch norm i of every cluster, or of cluster ``c`` alone (eval statistics)."""
        mean_buf, var_buf = getattr(self, f"mean{i}"), getattr(self, f"var{i}")
        if c is not None:
            scale = getattr(self, f"g{i}")[c] / torch.sqrt(var_buf[c] + self.eps)
            return (h - mean_buf[c]) * scale + getattr(self, f"b{i}")[c]
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
        if self.basis is not None:
            out = torch.bmm(out, self.basis.transpose(1, 2))
        return out + e if self.residual else out

    def last_layer_output(self, e: torch.Tensor, c: int) -> torch.Tensor:
        """Cluster c alone, eval mode: (N, aux_dim) -> what its last layer writes (N, d or latent_dim)."""
        h = F.relu(self._bn(e @ self.w1[c], 1, c))
        h = F.relu(self._bn(h @ self.w2[c], 2, c))
        return h @ self.w3[c]

    @torch.no_grad()
    def start_from(self, net: MappingNetwork) -> None:
        """Every one of the k mappings becomes a copy of ``net`` (same shape)."""
        for i in range(self.w1.shape[0]):
            self.w1[i].copy_(net.fc1.weight.T)
            self.w2[i].copy_(net.fc2.weight.T)
            # with a basis, the parent's last layer in its coordinates (exact when the parent writes
            # only inside the basis, as a refined cluster's parent does)
            w3 = net.fc3.weight.T if self.basis is None else net.fc3.weight.T @ self.basis[i]
            self.w3[i].copy_(w3)
            for j, bn in ((1, net.bn1), (2, net.bn2)):
                getattr(self, f"g{j}")[i, 0].copy_(bn.weight)
                getattr(self, f"b{j}")[i, 0].copy_(bn.bias)
                getattr(self, f"mean{j}")[i, 0].copy_(bn.running_mean)
                getattr(self, f"var{j}")[i, 0].copy_(bn.running_var)

    def export(self, index: int) -> MappingNetwork:
        aux_dim, width = self.w1.shape[1:]
        latent_dim = self.w3.shape[2] if self.basis is None else self.basis.shape[1]
        net = MappingNetwork(aux_dim, width, latent_dim, self.residual)
        with torch.no_grad():
            net.fc1.weight.copy_(self.w1[index].T)
            net.fc2.weight.copy_(self.w2[index].T)
            w3 = self.w3[index] if self.basis is None else self.w3[index] @ self.basis[index].T
            net.fc3.weight.copy_(w3.T)
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


def draw_inputs(
    net: MappingNetwork,
    sample_latents: Callable[[int, int, int], torch.Tensor],
    seed: int,
    start: int,
    n: int,
) -> torch.Tensor:
    """Inputs e number ``start .. start+n-1`` of the stream ``seed`` for ``net``: a residual mapping
    (T(e) = e + f(e)) takes the generator's prior, ``sample_latents(n, seed, start)``; the paper's
    mapping a standard Gaussian. For a N(0, I) prior the two are the same numbers."""
    if net.residual:
        return sample_latents(n, seed, start)
    return randn_streams(seed, start, n, net.aux_dim)


def standard_normal(dim: int) -> Prior:
    return lambda n, g: torch.randn(n, dim, generator=g)


def fit_mappings(
    latents: list[torch.Tensor],
    config: MappingConfig,
    *,
    guide: Guide | None = None,
    device: str | torch.device = "cpu",
    desc: str = "mappings",
    init: MappingNetwork | None = None,
    prior: Prior | None = None,
) -> MappingResult:
    """Learn one mapping per entry of ``latents`` (each (n_c, D): the latents of cluster c).

    ``guide`` gives assignment logits at the clustering layer; it is used only by recipes with
    ``consistency > 0``, and cluster c's target is index c of ``latents`` (a guide may add further
    columns, e.g. "outside the parent", that no cluster targets). ``init``, a network of the same
    shape (a refined cluster's parent mapping), is where every ``fast`` and ``residual`` mapping
    starts (``fast`` also keeps the parent's subspace and adds its own directions to it); the
    paper recipe starts from scratch, as published.

    ``prior`` draws the generator's own latents (default: N(0, I)). The residual recipes take
    their inputs e from it, so that a mapping that adds nothing reproduces the prior exactly, also
    where it is not a standard Gaussian (BigGAN's truncated z, StyleGAN's W); the paper's mapping
    takes a standard Gaussian, as published. See :func:`draw_inputs` for the sampling side.
    """
    if not latents:
        raise UserError("no clusters to learn mappings for")
    for i, z in enumerate(latents):
        if z.shape[0] < 2:
            raise UserError(f"cluster {i} has {z.shape[0]} latents; a mapping needs at least 2")
    start = time.perf_counter()
    if check_recipe(config.recipe) == "paper":
        nets, losses = [], []
        for i, z in enumerate(latents):
            net, loss = _fit_paper(
                z, config, device, seed=derive_seed(config.seed, "paper", i), desc=f"{desc} [{i}]"
            )
            nets.append(net)
            losses.append(loss)
    else:
        nets, losses = _fit_batched(latents, config, guide, device, desc, init=init, prior=prior)
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
    model: BatchedMapping,
    guide: Guide,
    k: int,
    config: MappingConfig,
    draw: Prior,
    g,
    device,
    norms: torch.Tensor,
) -> torch.Tensor:
    """Hinge on fresh mapped samples: zero for samples already ``margin`` inside their own
    cluster, so it pulls stray samples in without squeezing the ones inside (a cross-entropy
    would keep pushing every sample toward the centroid and collapse the mapping).

    At later layers the cheapest way "inside" can be outward, to latents far larger than any the
    prior draws (and off the image manifold); the one-sided ``inflation`` term stops mean norms
    from growing past the cluster's own (``norms``) without holding back a collapse, which the
    metrics should still see."""
    m = config.guide_batch
    e_free = draw(k * m, g).reshape(k, m, -1).to(device)
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


def moment_basis(
    z: torch.Tensor, d: int, exclude: torch.Tensor | None = None, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """(D, d) orthonormal directions, orthogonal to ``exclude`` (D, m), along which the second
    moment of latents ``z`` departs most from the prior's, ``reference`` (default: the identity of
    N(0, I)): where a region of the prior differs from the prior."""
    z = z.double()
    if reference is None:
        reference = torch.eye(z.shape[1], dtype=torch.float64)
    moment = z.T @ z / z.shape[0] - reference.double().to(z.device)
    if exclude is not None and exclude.shape[1]:
        off = (
            torch.eye(z.shape[1], dtype=torch.float64, device=z.device)
            - exclude.double() @ exclude.double().T
        )
        moment = off @ moment @ off
    values, vectors = torch.linalg.eigh(moment)
    return vectors[:, torch.argsort(values.abs(), descending=True)[:d]].float()


def subspace_of(net: MappingNetwork, most: int) -> torch.Tensor | None:
    """Orthonormal basis of the directions a residual mapping writes to (its last layer's column
    space), or None when it writes to more than ``most`` (a full-space mapping)."""
    u, sv, _ = torch.linalg.svd(net.fc3.weight.detach().double(), full_matrices=False)
    rank = int((sv > sv.max() * 1e-6).sum()) if sv.numel() and sv.max() > 0 else 0
    return u[:, :rank].float() if rank <= most else None


def active_basis(
    z: torch.Tensor, guide: Guide, cluster: int, d: int, exclude: torch.Tensor, n: int = 2000
) -> torch.Tensor:
    """(D, d) directions, orthogonal to ``exclude`` (D, m), along which the guide's assignment margin
    of ``cluster`` (own logit minus the best other) changes most over the cluster's latents: the
    directions the boundary runs across, which moments of the inside can miss."""
    grads = []
    for s in range(0, min(n, z.shape[0]), 256):
        zs = z[s : min(s + 256, n)].detach().clone().requires_grad_(True)
        logits = guide(zs)
        others = logits.scatter(1, torch.full((zs.shape[0], 1), cluster, device=logits.device), float("-inf"))
        (grad,) = torch.autograd.grad((logits[:, cluster] - others.max(1).values).sum(), zs)
        grads.append(grad.detach().double())
    grad = torch.cat(grads)
    ex = exclude.double()
    grad = grad - (grad @ ex) @ ex.T
    grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
    values, vectors = torch.linalg.eigh(grad.T @ grad)
    return vectors[:, torch.argsort(values, descending=True)[:d]].float()


@torch.no_grad()
def complement_keep(
    z: torch.Tensor, basis: torch.Tensor, guide: Guide, cluster: int, draw: Prior, g: torch.Generator
) -> float:
    """Share of latents ``z`` still assigned to ``cluster`` when everything off ``basis`` is redrawn
    from the prior: the fidelity a perfect subspace mapping whose complement is the prior's reaches."""
    noise = draw(z.shape[0], g).to(z.device)
    proj = basis @ basis.T
    redrawn = z @ proj + noise - noise @ proj
    return float((guide(redrawn).argmax(1) == cluster).float().mean())


def cluster_basis(
    z: torch.Tensor,
    guide: Guide | None,
    cluster: int,
    config: MappingConfig,
    draw: Prior,
    base: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    check: int = 1000,
) -> torch.Tensor:
    """The fast recipe's U_c, orthonormal: ``base`` (a refined cluster's parent subspace, kept whole),
    ``moment_dims`` moment directions, then active ones (with a guide), from ``active_dims`` up to
    ``max_active_dims``, stopping as soon as the complement no longer matters much
    (:func:`complement_keep` >= ``keep_target``). Early layers need few (faces at ``block1``:
    2 + 1); later ones more (``block2``, k = 8: up to 2 + 8), and the consistency hinge does the
    rest. Every direction added costs recall (conditional IMLE's nearest of a few candidates is
    farther in more dimensions), which is why the target is 0.8 and not higher: docs/benchmarks.md."""
    latent_dim = z.shape[1]
    base = base if base is not None else z.new_zeros(latent_dim, 0)
    moment = moment_basis(
        z, min(config.moment_dims, latent_dim - base.shape[1]), exclude=base, reference=reference
    )
    fixed = torch.cat([base, moment], 1)
    most = min(max(config.max_active_dims, config.active_dims), latent_dim - fixed.shape[1])
    if guide is None or most <= 0:
        return fixed
    active = active_basis(z, guide, cluster, most, exclude=fixed)
    sample = z[:check]
    # the check draws from its own stream, so that how many checks run does not shift training's
    check_g = torch.Generator().manual_seed(derive_seed(config.seed, "keep", cluster))
    for j in range(min(config.active_dims, most), most + 1):
        basis = torch.linalg.qr(torch.cat([fixed, active[:, :j]], 1).double())[0].float()
        if j == most or complement_keep(sample, basis, guide, cluster, draw, check_g) >= config.keep_target:
            return basis
    raise AssertionError("unreachable")


@torch.no_grad()
def conditional_matches(
    model: BatchedMapping,
    cluster: int,
    z: torch.Tensor,
    candidates: int,
    g: torch.Generator,
    chunk: int = 1024,
    draw: Prior | None = None,
) -> torch.Tensor:
    """For every latent z_i of ``cluster``: the input e_i whose mapping lands nearest z_i, among
    ``candidates`` inputs that share z_i's own complement and draw only the subspace coordinates.

    T(e) = e + U g(e) leaves the complement of e untouched, so every candidate already agrees with
    z_i off the subspace and distances need only the d subspace coordinates. The subspace
    coordinates are the prior's (``draw``, default N(0, I)) projected on the basis."""
    live = model.basis[cluster].norm(dim=0) > 0  # clusters with fewer directions are zero-padded
    basis = model.basis[cluster][:, live]
    d = basis.shape[1]
    out = torch.empty_like(z)
    for s in range(0, z.shape[0], chunk):
        zc = z[s : s + chunk]
        n = zc.shape[0]
        coords = zc @ basis
        complement = zc - coords @ basis.T
        if draw is None:
            eps = torch.randn(n, candidates, d, generator=g).to(z.device)
        else:
            eps = (draw(n * candidates, g).to(z.device) @ basis).reshape(n, candidates, d)
        cand = complement[:, None, :] + eps @ basis.T  # (n, m, D)
        written = model.last_layer_output(cand.reshape(n * candidates, -1), cluster)[:, live]
        mapped = eps + written.reshape(n, candidates, d)
        best = ((mapped - coords[:, None, :]) ** 2).sum(2).argmin(1)
        out[s : s + n] = cand[torch.arange(n, device=z.device), best]
    return out


@torch.no_grad()
def pool_matches(
    model: BatchedMapping,
    data: list[torch.Tensor],
    gammas: list[int],
    config: MappingConfig,
    draw: Prior,
    g: torch.Generator,
    device,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Paper-style IMLE matches for every cluster: Gamma candidates, each latent's nearest."""
    k = len(data)
    e_all = draw(k * max(gammas), g).reshape(k, max(gammas), -1).to(device)
    mapped = torch.cat([model(e_all[:, s : s + 8192]) for s in range(0, max(gammas), 8192)], 1)
    matched, targets = [], []
    for c in range(k):
        idx, dist = nearest(data[c], mapped[c, : gammas[c]], config.nn_backend)
        # In a 100-d latent space even the nearest of many candidates is far away, and
        # regressing onto far matches drags samples toward the cluster mean; keeping
        # the closest share of matches is a per-epoch threshold in the spirit of Adaptive IMLE.
        keep = (
            dist <= torch.quantile(dist, config.match_quantile)
            if config.match_quantile < 1
            else torch.ones_like(dist, dtype=torch.bool)
        )
        keep = keep.to(device)
        matched.append(e_all[c, idx.to(device)][keep])
        targets.append(data[c][keep])
    return matched, targets


def _fit_batched(
    latents: list[torch.Tensor],
    config: MappingConfig,
    guide: Guide | None,
    device,
    desc: str,
    init: MappingNetwork | None = None,
    prior: Prior | None = None,
):
    """All clusters of a split at once, ``fast`` or ``residual``; see the module docstring."""
    k = len(latents)
    latent_dim = latents[0].shape[1]
    aux = config.aux_dim or latent_dim
    structured = config.recipe == "fast"
    g = torch.Generator().manual_seed(derive_seed(config.seed, "batched"))
    data = [z.to(device) for z in latents]
    if aux != latent_dim:  # a plain (not residual) mapping of another input size: Gaussian inputs
        prior = standard_normal(aux)
    draw = prior or standard_normal(latent_dim)
    can_start = _can_start_from(init, config, latent_dim)
    basis = parent = None
    if structured:
        if not config.residual or aux != latent_dim:
            raise UserError("the fast recipe needs a residual mapping with aux_dim == latent_dim")
        # a refined cluster keeps its parent's subspace and starts as a copy of the parent's mapping
        parent = subspace_of(init, latent_dim // 2) if can_start else None
        # the prior's second moment, which a cluster's is compared with (N(0, I): the identity)
        if prior is None:
            reference = None
        else:
            e = prior(20_000, g).double()
            reference = e.T @ e / e.shape[0]
        bases = [
            cluster_basis(z, guide, c, config, draw, base=parent, reference=reference)
            for c, z in enumerate(data)
        ]
        # clusters may need different numbers of directions: pad with zero columns, which write nothing
        width = max(b.shape[1] for b in bases)
        basis = torch.stack([F.pad(b, (0, width - b.shape[1])) for b in bases])
    model = BatchedMapping(k, aux, config.width, latent_dim, config.residual, g, basis=basis)
    if can_start and (not structured or parent is not None):
        model.start_from(init)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sizes = [z.shape[0] for z in data]
    # Each cluster gets Gamma = gamma x its own size candidates (the network runs on the largest
    # count for all, which is cheap; the nearest-neighbour search, which is not, uses only its own).
    gammas = [max(int(config.gamma * n), 1) for n in sizes]
    # An epoch is a pass over the mean cluster, but at least ``min_steps`` steps: a few hundred
    # latents (a refinement, a small run) would otherwise get a handful of steps in all.
    steps = max(1, config.min_steps, math.ceil(sum(sizes) / k / config.batch_size))
    batch = min(config.batch_size, min(sizes))
    use_guide = guide is not None and config.consistency > 0
    norms = torch.stack([z.norm(dim=1).mean() for z in data])
    matched: list[torch.Tensor] = []
    targets: list[torch.Tensor] = data
    losses = [float("nan")] * k
    with bar(config.epochs, desc=desc, unit="epoch") as b:
        for epoch in range(config.epochs):
            if epoch % config.staleness == 0:
                model.eval()
                if structured:
                    matched = [
                        conditional_matches(model, c, data[c], config.candidates, g, draw=prior)
                        for c in range(k)
                    ]
                else:
                    matched, targets = pool_matches(model, data, gammas, config, draw, g, device)
            model.train()
            totals = torch.zeros(k)
            for _ in range(steps):
                rows = [torch.randint(len(matched[c]), (batch,), generator=g).to(device) for c in range(k)]
                e_b = torch.stack([matched[c][rows[c]] for c in range(k)])
                z_b = torch.stack([targets[c][rows[c]] for c in range(k)])
                squared = (model(e_b) - z_b) ** 2
                # fast: squared distance, which only the d subspace coordinates feed (complements
                # agree by construction), so its weight against the hinge does not depend on the
                # latent dimension; residual: per-coordinate MSE, as before
                per_cluster = squared.sum(2).mean(1) if structured else squared.mean(dim=(1, 2))
                loss = config.imle_weight * per_cluster.sum()
                if use_guide:
                    loss = loss + config.consistency * k * _consistency(
                        model, guide, k, config, draw, g, device, norms
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.steps += 1
                totals += per_cluster.detach().cpu()
            losses = (totals / steps).tolist()
            b.update(1)
            b.set_postfix_str(f"loss {sum(losses) / k:.3f}")
    model.eval()
    return [model.export(c) for c in range(k)], losses
