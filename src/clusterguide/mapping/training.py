"""Training the mappings: :func:`fit_mappings` dispatches to the paper's loop (cluster by cluster)
or the batched loop that learns all siblings at once (``fast`` and ``residual``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clusterguide.errors import UserError
from clusterguide.mapping.bases import cluster_basis, correction_basis, subspace_of
from clusterguide.mapping.fold import FOLD_ERRORS, FOLD_SAMPLES, FoldChoice, fit_fold
from clusterguide.mapping.inputs import Guide, Prior, assignment_margin, standard_normal
from clusterguide.mapping.matching import candidates_for, conditional_matches, pool_matches
from clusterguide.mapping.networks import BatchedMapping, MappingNetwork, make_network, shrink_along
from clusterguide.mapping.recipes import MappingConfig, check_recipe
from clusterguide.nn_search import nearest
from clusterguide.progress import bar
from clusterguide.seeding import derive_seed


@dataclass
class MappingResult:
    networks: list[MappingNetwork]  # one per cluster, in the order given, eval mode, on CPU
    seconds: float
    final_loss: list[float]  # per cluster, mean MSE of the last epoch
    epochs: int = 0  # epochs trained (more than config.epochs when a fidelity target extended them)
    # per cluster, the epoch whose state it keeps (earlier than ``epochs`` where it stopped on its own)
    stopped_at: list[int] = field(default_factory=list)
    # clusters (indices) that never stopped on their own and keep their best epoch instead
    best_epoch: list[int] = field(default_factory=list)
    # fast: per cluster, how many of its directions IMLE drew at the end (``draw_on_stall`` adds)
    drawn: list[int] | None = None
    # fast: per cluster, the factor its drawn coordinates were shrunk by after training (1: none)
    shrink: list[float] | None = None
    # fast: per cluster, the fold fitted after training (mapping/fold.py), kept or not
    fold: list[FoldChoice] | None = None
    fold_seconds: float = 0.0  # of ``seconds``, the time the folds took


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
    epochs = config.epochs
    if check_recipe(config.recipe) == "paper":
        nets, losses = [], []
        for i, z in enumerate(latents):
            net, loss = _fit_paper(
                z, config, device, seed=derive_seed(config.seed, "paper", i), desc=f"{desc} [{i}]"
            )
            nets.append(net)
            losses.append(loss)
        stopped_at, best_epoch = [epochs] * len(nets), []  # every cluster trains all its epochs
        drawn: list[int] | None = None
        shrink: list[float] | None = None
        folds: list[FoldChoice] | None = None
        fold_seconds = 0.0
    else:
        nets, losses, epochs, stopped_at, best_epoch, drawn, shrink, folds, fold_seconds = _fit_batched(
            latents, config, guide, device, desc, init=init, prior=prior
        )
    return MappingResult(
        [n.cpu().eval() for n in nets],
        time.perf_counter() - start,
        losses,
        epochs,
        stopped_at,
        best_epoch,
        drawn,
        shrink,
        folds,
        fold_seconds,
    )


def _fit_paper(
    z: torch.Tensor, config: MappingConfig, device, seed: int, desc: str, init: MappingNetwork | None = None
) -> tuple[MappingNetwork, float]:
    """Algorithm 1 for one cluster, as published."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_network(config, z.shape[1])
    if init is not None and _can_start_from(init, config, z.shape[1]):
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
    weights: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinge on fresh mapped samples, and each cluster's share of them already inside.

    The hinge is zero for samples already inside their own cluster, so it pulls stray samples in
    without squeezing the ones inside (a cross-entropy would keep pushing every sample toward the
    centroid and collapse the mapping). Those samples add nothing to the gradient either, so the
    guide (the generator up to the clustering layer, the expensive part at later layers) runs on
    all samples without autograd and again, with it, only on the strays: the same loss and
    gradient for a fraction of the backward pass. The guide is a per-sample function (the
    generator is in eval mode with constant noise), so the two passes agree.

    At later layers the cheapest way "inside" can be outward, to latents far larger than any the
    prior draws (and off the image manifold); the one-sided ``inflation`` term stops mean norms
    from growing past the cluster's own (``norms``) without holding back a collapse, which the
    metrics should still see.

    ``active`` (k booleans) leaves out the guide passes of clusters that have stopped
    (``cluster_stop``: their state is kept from an earlier epoch, so their hinge would train
    nothing that is used); their share reads 1."""
    m = config.guide_batch
    e_free = draw(k * m, g).reshape(k, m, -1).to(device)
    mapped = model(e_free)
    inflation = F.relu(mapped.norm(dim=2).mean(1) / norms - 1).pow(2).sum() / k
    flat = mapped.reshape(k * m, -1)
    target = torch.arange(k, device=flat.device).repeat_interleave(m)

    live = slice(None) if active is None else active.to(flat.device).repeat_interleave(m).nonzero()[:, 0]
    outside = torch.zeros(k * m, dtype=torch.bool, device=flat.device)
    with torch.no_grad():
        outside[live] = assignment_margin(guide(flat[live].detach()), target[live]) < 0
    inside = 1 - outside.reshape(k, m).float().mean(1).cpu()
    strays = outside.nonzero()[:, 0]
    if strays.numel():
        per_stray = F.relu(-assignment_margin(guide(flat[strays]), target[strays]))
        if weights is not None:  # each cluster's own weight
            per_stray = per_stray * weights.to(per_stray.device)[target[strays]]
        hinge = per_stray.sum() / (k * m)
    else:
        hinge = flat.sum() * 0  # keeps the graph (and the step) the same shape
    return hinge + config.inflation * inflation, inside, mapped


def _spread(mapped: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """How far the mapped samples' mean and covariance in the subspace coordinates are from the
    cluster's own (per cluster): what keeps the hinge's inward pull from contracting the whole
    mapping, which IMLE's nearest-of-m matching alone restores too weakly.

    The squared distance of moments estimated from a few dozen samples is biased, and its gradient
    shrinks the samples (the estimate's noise grows with their spread); the product of the errors of
    two independent halves has the squared distance as its expectation, without that bias."""
    coords = torch.bmm(mapped, basis)  # (k, m, w)
    half = coords.shape[1] // 2
    errors = []
    for part in (coords[:, :half], coords[:, half : 2 * half]):
        mu = part.mean(1)
        centred = part - mu[:, None]
        c = centred.transpose(1, 2) @ centred / (part.shape[1] - 1)
        errors.append((mu - mean, c - cov))
    (m1, c1), (m2, c2) = errors
    return (m1 * m2).sum(1) + (c1 * c2).sum((1, 2))


@torch.no_grad()
def inside_share(
    model: BatchedMapping, guide: Guide, k: int, draw: Prior, g: torch.Generator, device, m: int
) -> torch.Tensor:
    """Each cluster's share of ``m`` fresh samples that land inside it, mapped as the sampler maps
    them (evaluation mode). The hinge's own samples pass batch norm in training mode, whose batch
    statistics add noise the sampler does not have: their share runs below the fidelity measured
    afterwards (on the demo job one cluster's stayed under 95% through 30 epochs while every
    cluster measured 0.977 or more), which kept weights climbing on clusters already inside."""
    was_training = model.training
    model.eval()
    e = draw(k * m, g).reshape(k, m, -1).to(device)
    flat = model(e).reshape(k * m, -1)
    target = torch.arange(k, device=flat.device).repeat_interleave(m)
    model.train(was_training)
    return (guide(flat).argmax(1) == target).reshape(k, m).float().mean(1).cpu()


def steer_boost(
    most: torch.Tensor, inside: torch.Tensor, config: MappingConfig, rising: torch.Tensor | None = None
) -> torch.Tensor:
    """Each cluster's top hinge weight for the next epoch: ``hinge_step`` times higher while its
    share inside is below ``fidelity_target``, that much lower once it is a point above, within
    ``hinge_boost``..``hinge_boost_max``. A cluster that stays short (later layers, where the
    boundary runs along many directions) is pulled harder epoch by epoch; one past the target
    lets go again, which is what keeps its spread.

    With ``rising`` (per cluster: its share rose since the last epoch; ``steer_on_stall``) a short
    cluster goes up only when it stalled. Every cluster starts far short and climbs on its own for
    the first epochs; raising all of them then sent half the weights to six times their start by
    epoch 8 at ``block1``, k = 16, and the pull they kept cost spread (recall) they did not need
    to lose."""
    if config.hinge_step == 1:
        return most
    target = config.fidelity_target
    short = inside < target if rising is None else (inside < target) & ~rising
    most = torch.where(short, most * config.hinge_step, most)
    most = torch.where(inside > target + 0.01, most / config.hinge_step, most)
    return most.clamp(config.hinge_boost, max(config.hinge_boost, config.hinge_boost_max))


def hinge_weights(inside: torch.Tensor, target: float, most: float | torch.Tensor) -> torch.Tensor:
    """Per-cluster hinge weights from each cluster's share of samples inside: ``most`` at or below
    ``target`` (one per cluster, or one for all), falling linearly to 1 halfway from the target to
    100%. The weights aim above the target so that clusters settle past it (and training can
    stop) rather than hover at it."""
    half = max(1 - target, 1e-6) / 2
    short = ((target + half - inside) / half).clamp(0, 1)
    return 1 + (most - 1) * short


def past_target(target: float, samples: int, errors: float = 1.0) -> float:
    """The share an estimate from ``samples`` fresh samples must reach to count as past ``target``:
    the target plus ``errors`` times the estimate's binomial standard error there, so that a
    cluster at the target does not pass by chance."""
    return target + errors * (math.sqrt(max(target * (1 - target), 0.0) / samples) if samples > 0 else 0.0)


def falls_short(history: list[torch.Tensor], window: int, remaining: int, target: float) -> torch.Tensor:
    """Per cluster: whether its check share, at the rate it rose over the last ``window`` epochs
    (the mean of the last ``window`` shares against the mean of the ``window`` before), stays below
    ``target`` for the ``remaining`` epochs; all False before there are two windows of history.
    Means of several epochs, because one epoch's share of a few hundred samples moves by a couple
    of points by chance."""
    if len(history) < 2 * window:
        return torch.zeros(len(history[-1]) if history else 0, dtype=torch.bool)
    recent = torch.stack(history[-window:]).mean(0)
    before = torch.stack(history[-2 * window : -window]).mean(0)
    rate = (recent - before) / window
    return recent + rate.clamp_min(0) * remaining < target


def draw_more(drawn: list[int], widths: list[int], stalled: torch.Tensor) -> list[int]:
    """Each cluster's count of drawn directions (``MappingConfig.draw_on_stall``): twice as many for
    every ``stalled`` one, up to its whole subspace ``widths`` (drawn and written).

    The directions a mapping only writes to are reached through the consistency hinge alone, and
    at later layers it barely moves the share past what the drawn ones keep (digiface-dcgan,
    ``block4``, k = 4, seed 2: the largest cluster drew 4 directions, which keep 0.805 of its
    latents when the rest is redrawn, and stayed at 0.80-0.88 for 15 epochs at the top hinge
    weight). Drawn directions are matched to the cluster's own latents by IMLE, which reaches them
    directly."""
    return [min(w, 2 * d) if bool(stalled[c]) else d for c, (d, w) in enumerate(zip(drawn, widths))]


SHRINK_STEP = 0.05
# fresh samples, as a multiple of `fidelity_check`, that choose a shrink: the eval's 1,000 measure
# a share to about 0.007, and the chosen factor should hold there
SHRINK_SAMPLES = 8


@torch.no_grad()
def choose_shrink(
    net: MappingNetwork,
    directions: torch.Tensor,
    inside: Callable[[torch.Tensor], torch.Tensor],
    e: torch.Tensor,
    target: float,
    floor: float,
) -> tuple[float, torch.Tensor]:
    """The factor (1, then down in steps of ``SHRINK_STEP`` to ``floor``) by which ``net``'s mapped
    samples of ``e``, scaled along ``directions`` (orthonormal columns) toward their mean, first
    land ``inside`` (a boolean per sample) a standard error past ``target``; where none does, the
    one with the highest share. Returns it and the mean (``MappingConfig.shrink_floor``).

    A cluster that never stopped keeps its best epoch, and at later layers that state covers its
    cluster and more (``digiface-dcgan``, ``block4``, k = 4: recall at the ceiling, fidelity
    0.82-0.90): the consistency hinge, at its top weight, no longer pulls the strays in. Scaling
    the drawn coordinates, where IMLE spread the samples, toward their mean trades that spare
    recall for fidelity, measured on the cluster's own fresh samples. All factors see the same
    samples, so the shares they are compared by differ only by the factor. A cluster that stopped
    is checked the same way (``MappingConfig.shrink_stopped``): most pass at 1 and are left alone."""
    mapped = net(e)
    center = mapped.mean(0)
    need = past_target(target, e.shape[0])
    best_share, best_scale = -1.0, 1.0
    steps = max(0, math.floor((1 - floor) / SHRINK_STEP + 1e-9))  # never below the floor
    for i in range(steps + 1):
        scale = round(1 - i * SHRINK_STEP, 6)  # 0.65, not 0.6499999999999999, in metrics.json
        share = float(inside(shrink_along(mapped, scale, center, directions)).float().mean())
        if share >= need:
            return scale, center
        if share > best_share:
            best_share, best_scale = share, scale
    return best_scale, center


@dataclass
class ClusterStops:
    """Each cluster's own stop (``MappingConfig.cluster_stop``). Later layers' shares swing by
    several points from epoch to epoch under strong hinge weights, so waiting until every cluster
    is past the target in the same epoch ran most fits to the epoch cap and kept whatever state the
    last epoch left (block3, k = 8: shares 0.875-1.000 between epochs 26 and 44, no trend). Instead a
    cluster keeps the state of the first epoch (from ``epochs`` on) its check share is past the
    target, confirmed on ``confirm`` more fresh samples so that a lucky check does not stop it;
    training ends once every cluster has stopped, and one that never does keeps its best epoch."""

    target: float
    checked: int  # samples per cluster of the per-epoch check
    confirm: int  # further samples per cluster that confirm a passing check
    kept: dict[int, tuple[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    best: dict[int, tuple[float, int, dict[str, torch.Tensor]]] = field(default_factory=dict)

    def active(self, k: int) -> torch.Tensor:
        return torch.tensor([c not in self.kept for c in range(k)])

    def done(self, k: int) -> bool:
        return len(self.kept) == k

    def update(
        self, model: BatchedMapping, epoch: int, inside: torch.Tensor, more: Callable[[int], torch.Tensor]
    ) -> list[int]:
        """After ``epoch`` (1-based): stop the clusters whose check ``inside`` is past the target and
        stays past it with ``more(n)`` (every cluster's share of n fresh samples) added. Returns
        the clusters that stopped."""
        k = len(inside)
        passing = [
            c
            for c in range(k)
            if c not in self.kept and float(inside[c]) >= past_target(self.target, self.checked)
        ]
        stopped = []
        if passing and self.confirm > 0:
            total = self.checked + self.confirm
            pooled = (inside * self.checked + more(self.confirm) * self.confirm) / total
            stopped = [c for c in passing if float(pooled[c]) >= past_target(self.target, total)]
        elif passing:
            stopped = passing
        for c in stopped:
            self.kept[c] = (epoch, model.cluster_state(c))
            self.best.pop(c, None)
        for c in range(k):
            if c not in self.kept and (c not in self.best or float(inside[c]) > self.best[c][0]):
                self.best[c] = (float(inside[c]), epoch, model.cluster_state(c))
        return stopped

    def restore(self, model: BatchedMapping, last_epoch: int) -> list[int]:
        """Every cluster back to the state it keeps; returns the epoch each one's state is from."""
        epochs = [last_epoch] * model.w1.shape[0]
        for c, (epoch, state) in self.kept.items():
            model.load_cluster_state(c, state)
            epochs[c] = epoch
        for c, (_, epoch, state) in self.best.items():
            model.load_cluster_state(c, state)
            epochs[c] = epoch
        return epochs


def _can_start_from(net: MappingNetwork | None, config: MappingConfig, latent_dim: int) -> bool:
    """Whether ``net`` has the shape ``config`` asks for (a recipe override may change it)."""
    if net is None:
        return False
    return (
        net.residual == config.residual
        and tuple(net.fc1.weight.shape) == (config.width, latent_dim)
        and tuple(net.fc3.weight.shape) == (latent_dim, config.width)
    )


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
    structured = config.recipe == "fast"
    g = torch.Generator().manual_seed(derive_seed(config.seed, "batched"))
    data = [z.to(device) for z in latents]
    draw = prior or standard_normal(latent_dim)
    start = init if init is not None and _can_start_from(init, config, latent_dim) else None
    basis = parent = None
    widths: list[int] = []  # each cluster's subspace width (drawn and written), fast only
    if structured:
        if not config.residual:
            raise UserError("the fast recipe needs a residual mapping (residual=True)")
        # a refined cluster keeps its parent's subspace and starts as a copy of the parent's mapping
        parent = subspace_of(start, latent_dim // 2) if start is not None else None
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
        # matching draws in U_c; the mapping also writes to the correction directions after it
        drawn = [b.shape[1] for b in bases]
        bases = [
            torch.cat([b, correction_basis(z, guide, c, config, draw, b)], 1)
            for c, (z, b) in enumerate(zip(data, bases))
        ]
        # clusters may need different numbers of directions: pad with zero columns, which write nothing
        widths = [b.shape[1] for b in bases]
        width = max(widths)
        basis = torch.stack([F.pad(b, (0, width - b.shape[1])) for b in bases])
    model = BatchedMapping(
        k,
        latent_dim,
        config.width,
        latent_dim,
        config.residual,
        g,
        basis=basis,
        drawn=drawn if structured else None,
    )
    if start is not None and (not structured or parent is not None):
        model.start_from(start)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sizes = [z.shape[0] for z in data]
    # Each cluster gets Gamma = gamma x its own size candidates (the network runs on the largest
    # count for all, which is cheap; the nearest-neighbour search, which is not, uses only its own).
    gammas = [max(int(config.gamma * n), 1) for n in sizes]
    # An epoch is a pass over the mean cluster, but at least ``min_steps`` steps: a few hundred
    # latents (a refinement, a small run) would otherwise get a handful of steps in all.
    steps = max(1, config.min_steps, math.ceil(sum(sizes) / k / config.batch_size))
    # rows are drawn with replacement, so every cluster takes a full batch, however small it is
    # (a small sibling no longer shrinks every sibling's batch)
    batch = config.batch_size
    use_guide = guide is not None and config.consistency > 0
    norms = torch.stack([z.norm(dim=1).mean() for z in data])
    # the cluster's own mean and covariance in its subspace coordinates, which ``spread`` keeps
    spread_target = None
    if structured and model.basis is not None and config.spread > 0:
        on = model.basis
        coords = [z @ on[c] for c, z in enumerate(data)]
        spread_target = (
            on,
            torch.stack([x.mean(0) for x in coords]),
            torch.stack([torch.cov(x.T, correction=1).reshape(x.shape[1], x.shape[1]) for x in coords]),
        )
    matched: list[torch.Tensor] = []
    targets: list[torch.Tensor] = data
    losses = [float("nan")] * k
    # With a fidelity target, training goes on past ``epochs`` (up to ``max_epoch_factor`` times as
    # many) while some cluster's fresh samples still land inside it less often than the target:
    # later layers and larger k need more steps than the demo job, and a fixed count tuned on one
    # would waste time on the other. The share is the fidelity check's (``fidelity_check``
    # samples in evaluation mode), or the hinge's own samples' where the check is off.
    extend = use_guide and config.fidelity_target > 0
    most_epochs = (
        max(config.epochs, math.ceil(config.epochs * config.max_epoch_factor)) if extend else config.epochs
    )
    # Each cluster's hinge weight follows its own share inside over the last epoch (see
    # :func:`hinge_weights`: its top weight ``most`` at or below the target, 1 well above it), and
    # ``most`` is steered epoch by epoch (:func:`steer_boost`). A cluster that is easy to stay in
    # (a large central one) is not pulled inward more than it needs, which costs spread; a hard one
    # (many neighbours, later layers) is pulled harder the longer it stays short.
    boost = torch.full((k,), config.hinge_boost) if extend and config.hinge_boost > 1 else None
    most = torch.full((k,), config.hinge_boost)
    history: list[torch.Tensor] = []  # each cluster's share inside after every epoch
    # the fidelity check draws from its own stream, so that it does not shift training's
    check_g = torch.Generator().manual_seed(derive_seed(config.seed, "fidelity-check"))
    # the check's share is an estimate: stop only once every cluster's is a standard error past
    # the target (its binomial noise at the target for that many samples), not at it by chance
    target = config.fidelity_target
    stop_at = past_target(target, config.fidelity_check)
    stops = (
        ClusterStops(target, config.fidelity_check, 4 * config.fidelity_check)
        if extend and config.cluster_stop and config.fidelity_check > 0
        else None
    )
    epoch = 0
    with bar(most_epochs, desc=desc, unit="epoch") as b:
        while epoch < most_epochs:
            if epoch % config.staleness == 0:
                model.eval()
                if structured:
                    matched = [
                        conditional_matches(
                            model,
                            c,
                            data[c],
                            candidates_for(config, model.drawn[c] if model.drawn else 0),
                            g,
                            draw=prior,
                        )
                        for c in range(k)
                    ]
                else:
                    matched, targets = pool_matches(model, data, gammas, config, draw, g, device)
            model.train()
            active = stops.active(k) if stops is not None else None
            totals = torch.zeros(k)
            inside = torch.zeros(k)
            for _ in range(steps):
                rows = [torch.randint(len(matched[c]), (batch,), generator=g).to(device) for c in range(k)]
                e_b = torch.stack([matched[c][rows[c]] for c in range(k)])
                z_b = torch.stack([targets[c][rows[c]] for c in range(k)])
                squared = (model(e_b) - z_b) ** 2
                # fast: squared distance, which only the d subspace coordinates feed (complements
                # agree by construction), so its weight against the hinge does not depend on the
                # latent dimension; residual: per-coordinate MSE, as before
                per_cluster = squared.sum(2).mean(1) if structured else squared.mean(dim=(1, 2))
                loss = per_cluster.sum()
                if guide is not None and use_guide:
                    hinge, inside_now, mapped = _consistency(
                        model, guide, k, config, draw, g, device, norms, boost, active
                    )
                    loss = loss + config.consistency * k * hinge
                    if spread_target is not None:
                        loss = loss + config.spread * _spread(mapped, *spread_target).sum()
                    inside += inside_now / steps
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.steps += 1
                totals += per_cluster.detach().cpu()
            losses = (totals / steps).tolist()
            if extend and config.fidelity_check > 0:
                assert guide is not None
                inside = inside_share(model, guide, k, draw, check_g, device, config.fidelity_check)
            history.append(inside)
            epoch += 1
            if stops is not None and epoch >= config.epochs:
                assert guide is not None

                def more(n: int) -> torch.Tensor:
                    return inside_share(model, guide, k, draw, check_g, device, n)

                stops.update(model, epoch, inside, more)
            if (
                config.draw_on_stall
                and stops is not None
                and model.drawn is not None
                and config.epochs <= epoch < most_epochs
                and epoch % config.staleness == 0  # the next epoch refreshes the matches
            ):
                # opt-in: a cluster the hinge will not get past the target draws more directions
                short = falls_short(history, config.staleness, most_epochs - epoch, target)
                model.drawn = draw_more(model.drawn, widths, short & stops.active(k))
            if boost is not None:
                # rose since the epoch before (from nothing, in the first epoch)
                before = history[-2] if len(history) > 1 else torch.zeros(k)
                rising = inside > before if config.steer_on_stall else None
                most = steer_boost(most, inside, config, rising)
                boost = hinge_weights(inside, config.fidelity_target, most)
            b.update(1)
            stopped = f", {len(stops.kept)}/{k} stopped" if stops is not None else ""
            b.set_postfix_str(f"loss {sum(losses) / k:.3f}{stopped}")
            if stops is not None:
                if stops.done(k):
                    break
            elif epoch >= config.epochs and (not extend or float(inside.min()) >= stop_at):
                break
    stopped_at = stops.restore(model, epoch) if stops is not None else [epoch] * k
    best_epoch = sorted(stops.best) if stops is not None else []
    model.eval()
    nets = [model.export(c) for c in range(k)]
    shrink = [1.0] * k if structured else None
    if shrink is not None and config.shrink_floor < 1 and model.drawn is not None and model.basis is not None:
        # a cluster that stopped was judged on checks that chose its epoch (the first of many noisy
        # shares to pass is biased up); these fresh samples are not, so every cluster is checked
        checked = range(k) if config.shrink_stopped and stops is not None else best_epoch
        for c in checked:  # empty without a guide (no fidelity check, no stops)
            assert guide is not None
            # each cluster from its own stream: which others fell back does not change its samples
            shrink_g = torch.Generator().manual_seed(derive_seed(config.seed, "shrink", c))
            e = draw(SHRINK_SAMPLES * config.fidelity_check, shrink_g).to(device)
            net = nets[c].to(device)

            def lands_inside(x: torch.Tensor, c: int = c) -> torch.Tensor:
                return guide(x).argmax(1) == c

            directions = model.basis[c][:, : model.drawn[c]]
            scale, center = choose_shrink(net, directions, lands_inside, e, target, config.shrink_floor)
            if scale < 1:
                net.shrink_toward(scale, center, directions)
            shrink[c] = scale
    folds: list[FoldChoice] | None = None
    fold_started = time.perf_counter()
    if structured and config.fold and use_guide:
        assert guide is not None
        folds = []
        checks = SHRINK_SAMPLES * max(config.fidelity_check, 1)
        for c, net in enumerate(nets):
            # each cluster from its own streams, like the shrink
            fit_inputs = draw(
                FOLD_SAMPLES, torch.Generator().manual_seed(derive_seed(config.seed, "fold", c))
            )
            check_g = torch.Generator().manual_seed(derive_seed(config.seed, "fold-check", c))
            folds.append(
                fit_fold(
                    net.to(device),
                    data[c],
                    guide,
                    c,
                    fit_inputs.to(device),
                    draw(checks, check_g).to(device),
                    # two standard errors: the shift trades the share inside for spread, and the
                    # share chosen must hold on the 1,000 samples a fit is measured on
                    past_target(target, checks, errors=FOLD_ERRORS),
                )
            )
    fold_seconds = time.perf_counter() - fold_started
    return nets, losses, epoch, stopped_at, best_epoch, model.drawn, shrink, folds, fold_seconds
