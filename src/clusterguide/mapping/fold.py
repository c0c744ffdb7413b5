"""A ``fast`` mapping's fold: after training, its output is moved to the cluster's own mean and
covariance (a :class:`~clusterguide.moments.MomentMap`) and then reflected back across the
cluster's boundary faces, a few hyperplanes fitted to where the moved samples cross it.

Why (docs/benchmarks.md, issue 12, round nineteen): on large clusters bounded on many sides the
trained mappings sit deep inside and leave the rim unsampled (recall 0.6-0.9 of the ceiling).
Moving them to the cluster's moments restores the spread but spills a quarter of them across
the boundary; the corrected sampler puts the spill back with Newton steps through the generator
at sampling time. The boundary of a cluster is, face by face, nearly a hyperplane in z (the
gradients of the assignment margin where the spill crosses toward one neighbour agree to a
cosine of 0.92-1.0 at ``block1``), so a reflection across each face puts the spill back inside
without the generator: the fold is part of T_c and costs a matrix product at sampling time.
Reflected mass lands near the face, where the cluster's own density is, rather than on it.

Each face comes from the spilled samples that cross toward one neighbour (an index of the
guide's logits, "outside the parent" included), split further where their margin gradients
disagree (:func:`split_face`): its normal is the mean of their unit margin gradients at the
boundary, its offset the median of their boundary points along it. The faces are only nearly
planar, so each is pulled inward by a shift in units of its boundary points' spread, the least
that brings fresh samples two standard errors past the fidelity target (chosen per cluster, like
the shrink). Where no shift gets there and the mapping alone lands inside more often, the fold
is not kept.

:func:`move_inside` (Newton steps on a margin) is shared with the corrected sampler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clusterguide.mapping.inputs import assignment_margin
from clusterguide.mapping.networks import MappingNetwork, reflect
from clusterguide.moments import fit_moment_map

# Mapped samples the moment map and the faces are estimated from; a face needs at least
# ``MIN_FACE_SHARE`` of them crossing it (with 4,096 samples, 41).
FOLD_SAMPLES = 4096
MIN_FACE_SHARE = 0.01
# the normals of one face agree at least this much (the length of their mean unit vector); at
# `block1` a neighbour's crossings agree to 0.92-1.0
FACE_AGREEMENT = 0.9
# the fold's share inside must be this many standard errors past the fidelity target
FOLD_ERRORS = 2.0
# the inward shifts tried, in units of each face's spread, least first
SHIFTS = tuple(i / 4 for i in range(13))  # 0 .. 3
# Newton steps aim a stray at this margin (the corrected sampler's TARGET_MARGIN)
NEWTON_TARGET = 0.05
NEWTON_STEPS = 10


def move_inside(
    margin: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    max_steps: int = NEWTON_STEPS,
    target: float = NEWTON_TARGET,
    below: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` with every row whose ``margin`` is at most ``below`` (outside: 0) moved by Newton
    steps (z += (target - m) grad m / |grad m|^2) until it is above; other rows are untouched and
    every row is treated on its own. Returns the latents and a mask of the rows still at or
    below ``below`` after ``max_steps``. The caller fixes the batch (a step's rounding can depend
    on the rows beside)."""
    z = z.detach().clone()
    with torch.no_grad():
        low = torch.nonzero(margin(z) <= below)[:, 0]
    # Only the rows still low are carried on: a step moves nothing else, so nothing else needs
    # its margin again (the pass over every row is the expensive part at later layers).
    for _ in range(max_steps):
        if low.numel() == 0:
            break
        with torch.enable_grad():
            x = z[low].clone().requires_grad_(True)
            m = margin(x)
            (grad,) = torch.autograd.grad(m.sum(), x)
        step = (target - m.detach()) / grad.pow(2).sum(1).clamp_min(1e-12)
        z[low] = z[low] + step[:, None] * grad
        with torch.no_grad():
            low = low[margin(z[low]) <= below]
    left = torch.zeros(z.shape[0], dtype=torch.bool)
    left[low.cpu()] = True
    return z, left


@dataclass
class Faces:
    normals: torch.Tensor  # (f, D) unit, pointing into the cluster, most crossed first
    offsets: torch.Tensor  # (f,) the median boundary point along each normal
    spreads: torch.Tensor  # (f,) the standard deviation of those points along it


def find_faces(
    logits: Callable[[torch.Tensor], torch.Tensor],
    own: int,
    x: torch.Tensor,
    min_share: float = MIN_FACE_SHARE,
) -> Faces:
    """The faces the samples ``x`` cross to leave cluster ``own`` (``logits``: the guide)."""

    def margin(z: torch.Tensor) -> torch.Tensor:
        return assignment_margin(logits(z), own)

    with torch.no_grad():
        spilled = torch.nonzero(margin(x) <= 0)[:, 0]
    moved, left = move_inside(margin, x[spilled])
    points = moved[~left.to(moved.device)]
    dim = x.shape[1]
    empty = Faces(x.new_zeros(0, dim), x.new_zeros(0), x.new_zeros(0))
    if points.shape[0] == 0:
        return empty
    with torch.enable_grad():
        at = points.clone().requires_grad_(True)
        scores = logits(at)
        (grad,) = torch.autograd.grad(assignment_margin(scores, own).sum(), at)
    others = scores.detach().clone()
    others[:, own] = -float("inf")
    toward = others.argmax(1)  # the neighbour each crossing leads to
    unit = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
    least = max(min_share * x.shape[0], 2)
    groups = [torch.nonzero(toward == j)[:, 0] for j in range(scores.shape[1])]
    faces = [f for g in groups if g.numel() >= least for f in split_face(unit, g, least)]
    faces.sort(key=lambda f: -f.numel())  # most crossed first
    if not faces:
        return empty
    normals, offsets, spreads = [], [], []
    for rows in faces:
        normal = unit[rows].mean(0)
        normal = normal / normal.norm().clamp_min(1e-12)
        along = points[rows] @ normal
        normals.append(normal)
        offsets.append(along.median())
        spreads.append(along.std())
    return Faces(torch.stack(normals), torch.stack(offsets), torch.stack(spreads))


def split_face(unit: torch.Tensor, rows: torch.Tensor, least: float) -> list[torch.Tensor]:
    """``rows`` of ``unit`` (the unit margin gradients of crossings toward one neighbour) as one
    face, or split in two along their first principal direction, and so on, while their normals
    disagree (mean resultant length under :data:`FACE_AGREEMENT`) and both halves keep ``least``
    rows. One neighbour can border a cluster on several sides: the "outside the parent" column of
    a refined cluster's guide stands for every face of the parent."""
    normals = unit[rows]
    if float(normals.mean(0).norm()) >= FACE_AGREEMENT or rows.numel() < 2 * least:
        return [rows]
    centred = normals - normals.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    side = centred @ direction > 0
    if int(side.sum()) < least or int((~side).sum()) < least:
        return [rows]
    return split_face(unit, rows[side], least) + split_face(unit, rows[~side], least)


@dataclass
class FoldChoice:
    kept: bool  # whether the fold was kept (see :func:`fit_fold` for the rule)
    faces: int  # how many faces it reflects across
    shift: float  # the inward shift, in units of each face's spread
    share: float  # fresh samples inside with the fold (the check's estimate)
    share_before: float  # ... and without it, on the same inputs


def choose_shift(
    x: torch.Tensor, faces: Faces, inside: Callable[[torch.Tensor], torch.Tensor], need: float
) -> tuple[float, float]:
    """The least of :data:`SHIFTS` with which ``x`` reflected across ``faces`` (each pulled inward
    by the shift times its spread) lands ``inside`` (a boolean per row) at least ``need`` of the
    time, and that share; where none does, the shift with the highest share. Only the rows a
    reflection moves are checked again (the pass through the generator is the cost)."""
    base = inside(x)
    best_share, best_shift = -1.0, 0.0
    for shift in SHIFTS:
        y = reflect(x, faces.normals, faces.offsets + shift * faces.spreads)
        moved = (y != x).any(1)
        kept = base & ~moved
        share = (
            (int(kept.sum()) + int(inside(y[moved]).sum())) / x.shape[0]
            if moved.any()
            else float(base.float().mean())
        )
        if share > best_share:
            best_share, best_shift = share, shift
        if share >= need:
            break
    return best_shift, best_share


@torch.no_grad()
def fit_fold(
    net: MappingNetwork,
    latents: torch.Tensor,
    logits: Callable[[torch.Tensor], torch.Tensor],
    own: int,
    fit_inputs: torch.Tensor,
    check_inputs: torch.Tensor,
    need: float,
) -> FoldChoice:
    """Fold ``net`` (cluster ``own`` of the guide ``logits``, its training ``latents``) in place:
    the moment map and faces from the samples of ``fit_inputs``, the shift chosen on the samples of
    ``check_inputs`` (the least whose share inside reaches ``need``, else the one with the highest
    share).

    The fold is kept only where its samples of ``check_inputs`` are nearer the cluster's latents
    than the mapping's own (:func:`energy_distance`), and land inside at least ``need`` of the time
    or at least as often as the mapping's. A cluster that holds much of the prior (k = 4) reaches
    into its tails, which a Gaussian with its moments does not: there the fold lowered recall
    (``block4`` k = 4: 0.97 to 0.84 of the ceiling, docs/benchmarks.md round nineteen)."""
    mapped = net(fit_inputs)
    moment_map = fit_moment_map(mapped.cpu(), latents.cpu())
    moved = moment_map.apply(mapped)
    faces = find_faces(logits, own, moved)
    unfolded = net(check_inputs)

    def inside(z: torch.Tensor) -> torch.Tensor:
        return logits(z).argmax(1) == own

    before = float(inside(unfolded).float().mean())
    to_fold = moment_map.apply(unfolded)
    shift, share = choose_shift(to_fold, faces, inside, need)
    offsets = faces.offsets + shift * faces.spreads
    folded = reflect(to_fold, faces.normals, offsets)
    reference = latents[: check_inputs.shape[0]].to(folded.device)
    nearer = energy_distance(folded, reference) < energy_distance(unfolded, reference)
    kept = nearer and (share >= need or share >= before)
    if kept:
        net.fold_with(moment_map, faces.normals, offsets)
    return FoldChoice(kept, int(faces.normals.shape[0]), shift, share, before)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """The energy distance between the rows of ``x`` and of ``y`` (2 E|x - y| - E|x - x'| -
    E|y - y'|): zero for the same distribution, and it sees the spread and the tails, not only
    the first two moments."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())
