"""Training the mappings: :func:`fit_mappings` dispatches to the paper's loop (cluster by cluster)
or the batched loop that learns all siblings at once (``fast`` and ``residual``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clusterguide.errors import UserError
from clusterguide.mapping.bases import cluster_basis, correction_basis, subspace_of
from clusterguide.mapping.inputs import Guide, Prior, standard_normal
from clusterguide.mapping.matching import conditional_matches, pool_matches
from clusterguide.mapping.networks import BatchedMapping, MappingNetwork, make_network
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
    else:
        nets, losses, epochs = _fit_batched(latents, config, guide, device, desc, init=init, prior=prior)
    return MappingResult([n.cpu().eval() for n in nets], time.perf_counter() - start, losses, epochs)


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
    metrics should still see."""
    m = config.guide_batch
    e_free = draw(k * m, g).reshape(k, m, -1).to(device)
    mapped = model(e_free)
    inflation = F.relu(mapped.norm(dim=2).mean(1) / norms - 1).pow(2).sum() / k
    flat = mapped.reshape(k * m, -1)
    target = torch.arange(k, device=flat.device).repeat_interleave(m)

    def margin(logits: torch.Tensor, own_index: torch.Tensor) -> torch.Tensor:
        own = logits.gather(1, own_index[:, None])[:, 0]
        others = logits.scatter(1, own_index[:, None], float("-inf")).max(1).values
        return others - own  # > 0: outside its own cluster

    with torch.no_grad():
        outside = margin(guide(flat.detach()), target) > 0
    inside = 1 - outside.reshape(k, m).float().mean(1).cpu()
    strays = outside.nonzero()[:, 0]
    if strays.numel():
        per_stray = F.relu(margin(guide(flat[strays]), target[strays]))
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


def steer_boost(most: torch.Tensor, inside: torch.Tensor, config: MappingConfig) -> torch.Tensor:
    """Each cluster's top hinge weight for the next epoch: ``hinge_step`` times higher while its
    share inside is below ``fidelity_target``, that much lower once it is a point above, within
    ``hinge_boost``..``hinge_boost_max``. A cluster that stays short (later layers, where the
    boundary runs along many directions) is pulled harder epoch by epoch; one past the target
    lets go again, which is what keeps its spread."""
    if config.hinge_step == 1:
        return most
    target = config.fidelity_target
    most = torch.where(inside < target, most * config.hinge_step, most)
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
        width = max(b.shape[1] for b in bases)
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
    # the fidelity check draws from its own stream, so that it does not shift training's
    check_g = torch.Generator().manual_seed(derive_seed(config.seed, "fidelity-check"))
    # the check's share is an estimate: stop only once every cluster's is a standard error past
    # the target (its binomial noise at the target for that many samples), not at it by chance
    target = config.fidelity_target
    stop_at = target + (
        math.sqrt(max(target * (1 - target), 0.0) / config.fidelity_check)
        if config.fidelity_check > 0
        else 0.0
    )
    epoch = 0
    with bar(most_epochs, desc=desc, unit="epoch") as b:
        while epoch < most_epochs:
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
                        model, guide, k, config, draw, g, device, norms, boost
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
            if boost is not None:
                most = steer_boost(most, inside, config)
                boost = hinge_weights(inside, config.fidelity_target, most)
            epoch += 1
            b.update(1)
            b.set_postfix_str(f"loss {sum(losses) / k:.3f}")
            if epoch >= config.epochs and (not extend or float(inside.min()) >= stop_at):
                break
    model.eval()
    return [model.export(c) for c in range(k)], losses, epoch
