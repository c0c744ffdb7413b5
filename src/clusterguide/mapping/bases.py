"""The fast recipe's subspace U_c: directions where a cluster's second moment departs from the
prior's (moment), directions its assignment boundary runs across (active), a parent's subspace,
and the check of how much the complement off U_c still matters."""

from __future__ import annotations

import torch

from clusterguide.mapping.inputs import Guide, Prior, assignment_margin
from clusterguide.mapping.networks import MappingNetwork
from clusterguide.mapping.recipes import MappingConfig
from clusterguide.seeding import derive_seed


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
        (grad,) = torch.autograd.grad(assignment_margin(guide(zs), cluster).sum(), zs)
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


def grow_until_kept(
    sample: torch.Tensor,
    guide: Guide,
    cluster: int,
    draw: Prior,
    g: torch.Generator,
    fixed: torch.Tensor,
    candidates: torch.Tensor,
    steps: list[int],
    target: float,
) -> torch.Tensor:
    """Orthonormal basis of ``fixed`` and the first j ``candidates`` columns, for the first j of
    ``steps`` at which redrawing the complement keeps ``target`` of ``sample`` in ``cluster``
    (:func:`complement_keep`), or the last j."""
    for j in steps:
        basis = torch.linalg.qr(torch.cat([fixed, candidates[:, :j]], 1).double())[0].float()
        if j == steps[-1] or complement_keep(sample, basis, guide, cluster, draw, g) >= target:
            return basis
    raise ValueError("no steps to take")


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
    # the check draws from its own stream, so that how many checks run does not shift training's
    check_g = torch.Generator().manual_seed(derive_seed(config.seed, "keep", cluster))
    steps = list(range(min(config.active_dims, most), most + 1))
    return grow_until_kept(z[:check], guide, cluster, draw, check_g, fixed, active, steps, config.keep_target)


def correction_basis(
    z: torch.Tensor,
    guide: Guide | None,
    cluster: int,
    config: MappingConfig,
    draw: Prior,
    basis: torch.Tensor,
    check: int = 1000,
) -> torch.Tensor:
    """(D, v) further boundary directions, orthogonal to ``basis`` (U_c), that the mapping may
    write to but does not draw in: enough that a cluster whose complement still matters can be
    reached without bending U_c's coordinates. Added (1, 2, 4, ... up to ``hinge_dims``) until
    :func:`complement_keep` reaches ``fidelity_target``; none without a guide or a target."""
    latent_dim = z.shape[1]
    most = min(config.hinge_dims, latent_dim - basis.shape[1])
    if guide is None or most <= 0 or config.fidelity_target <= 0:
        return z.new_zeros(latent_dim, 0)
    active = active_basis(z, guide, cluster, most, exclude=basis)
    check_g = torch.Generator().manual_seed(derive_seed(config.seed, "keep-write", cluster))
    steps = [0]
    while steps[-1] < most:
        steps.append(min(most, max(1, 2 * steps[-1])))
    full = grow_until_kept(
        z[:check], guide, cluster, draw, check_g, basis, active, steps, config.fidelity_target
    )
    return full[:, basis.shape[1] :]
