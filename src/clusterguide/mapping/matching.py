"""IMLE's matching step: for every latent of a cluster, the input whose mapping lands nearest it;
conditional (the fast recipe, inside the subspace) or from a shared pool (the residual recipe)."""

from __future__ import annotations

import torch

from clusterguide.mapping.inputs import Prior
from clusterguide.mapping.networks import BatchedMapping
from clusterguide.mapping.recipes import MappingConfig
from clusterguide.nn_search import nearest

# The drawn directions ``MappingConfig.candidates`` is the count for: the demo job's clusters draw
# 3 (a moment pair and one margin direction); at k = 16 clusters draw up to 9 (``block1``) or 10
# (``block3``), the most ``moment_dims`` + ``max_active_dims`` allow.
BASE_DRAWN = 4


def candidates_for(config: MappingConfig, drawn: int) -> int:
    """How many candidates a cluster that draws in ``drawn`` directions gets: ``candidates``,
    times ``candidate_growth`` for every direction past :data:`BASE_DRAWN`, at most
    ``candidates_max`` (but never fewer than ``candidates``).

    The nearest of m candidates in d dimensions is about m^(-1/d) of the spread away, so a count
    that matches closely in 3-4 directions matches loosely in 9; IMLE then regresses a latent on an
    input that is nearly a random draw, which pulls the mapping toward the cluster's mean
    (``block1``, k = 16, seed 0: the five clusters short on recall all drew 7-9 directions;
    docs/benchmarks.md, round seven)."""
    if config.candidate_growth == 1 or drawn <= BASE_DRAWN:
        return config.candidates
    grown = round(config.candidates * config.candidate_growth ** (drawn - BASE_DRAWN))
    return max(config.candidates, min(config.candidates_max, grown))


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
    assert model.basis is not None, "conditional matching needs a subspace mapping"
    live = model.basis[cluster].norm(dim=0) > 0  # clusters with fewer directions are zero-padded
    basis = model.basis[cluster][:, live]
    # the first d columns are drawn; correction columns after them keep z_i's own coordinates
    d = model.drawn[cluster] if model.drawn is not None else basis.shape[1]
    out = torch.empty_like(z)
    for s in range(0, z.shape[0], chunk):
        zc = z[s : s + chunk]
        n = zc.shape[0]
        coords = zc @ basis
        complement = zc - coords @ basis.T
        if draw is None:
            eps = torch.randn(n, candidates, d, generator=g).to(z.device)
        else:
            eps = (draw(n * candidates, g).to(z.device) @ basis[:, :d]).reshape(n, candidates, d)
        kept = coords[:, None, d:].expand(n, candidates, basis.shape[1] - d)
        eps = torch.cat([eps, kept], 2)
        cand = complement[:, None, :] + eps @ basis.T  # (n, m, D)
        written = model.last_layer_output(cand.reshape(n * candidates, -1), cluster)[:, live]
        mapped = eps + written.reshape(n, candidates, -1)
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
        idx, _ = nearest(data[c], mapped[c, : gammas[c]], config.nn_backend)
        matched.append(e_all[c, idx.to(device)])
        targets.append(data[c])
    return matched, targets
