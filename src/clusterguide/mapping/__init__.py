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
  cluster instead of averaging it (the failure of IMLE in the full 100-d space); a cluster that
  draws in more directions gets more candidates, twice as many per direction past 4. A
  cluster-consistency hinge on fresh samples pulls the strays in (it is zero for samples inside,
  so only the strays go through the generator with autograd). Where the complement still
  matters, the mapping may also write (not draw) along further boundary directions, as many as
  bring the cluster's keep to ``fidelity_target`` (:func:`correction_basis`), so the hinge can
  pull strays in there instead of bending U_c's coordinates. The hinge alone contracts the whole
  mapping (its samples sit twice as deep inside as exact ones), so a ``spread`` term matches the
  mapped samples' mean and covariance in the subspace to the cluster's own (estimated without
  bias from two halves of the batch). Each cluster's hinge weight is steered epoch by epoch:
  up while its share of fresh samples inside (mapped in evaluation mode, as the sampler maps
  them) is below ``fidelity_target``, down again once it is past. All sibling clusters train at
  once as one batched network, for ``epochs`` and up to twice as many while some cluster is
  still short of the target; each stops on its own once past it. One that never gets there
  keeps its best epoch, and its drawn coordinates are then shrunk toward its samples' mean by
  the largest factor whose fresh samples get past the target (``shrink_floor``). Last, each
  mapping is folded (``fold``, :mod:`~clusterguide.mapping.fold`): its output moved to the
  cluster's own mean and covariance and reflected back across the cluster's boundary faces, the
  few hyperplanes its spill crosses. The trained mappings sit deep inside large, many-sided
  clusters and leave their rim unsampled; the fold gives them the cluster's spread without
  letting them out. It moves every coordinate (the cluster's own moments), so the complement
  passes through unchanged only before it.
- ``residual``: the previous default, kept for comparison: a full-space residual mapping with
  pool-based IMLE (Gamma = 4 x size, refreshed every 5 epochs), a strong consistency hinge and a
  norm-inflation penalty. It keeps fidelity and norm but overshoots into the cluster's interior,
  which costs recall.

docs/benchmarks.md measures them side by side.

Modules: ``recipes`` (the names and :class:`MappingConfig`), ``networks`` (T_c and the batched
form), ``inputs`` (prior, guide, input streams), ``bases`` (the fast recipe's subspace),
``matching`` (IMLE's nearest matches), ``training`` (the loops and :func:`fit_mappings`),
``fold`` (the moment map and reflections fitted after training).
"""

from clusterguide.mapping.bases import (
    active_basis,
    cluster_basis,
    complement_keep,
    correction_basis,
    moment_basis,
    subspace_of,
)
from clusterguide.mapping.inputs import Guide, Prior, draw_inputs, standard_normal
from clusterguide.mapping.matching import conditional_matches, pool_matches
from clusterguide.mapping.networks import BatchedMapping, MappingNetwork, make_network
from clusterguide.mapping.recipes import RECIPES, MappingConfig, check_recipe, check_settings, parse_settings
from clusterguide.mapping.training import MappingResult, fit_mappings

__all__ = [
    "RECIPES",
    "BatchedMapping",
    "Guide",
    "MappingConfig",
    "MappingNetwork",
    "MappingResult",
    "Prior",
    "active_basis",
    "check_recipe",
    "check_settings",
    "cluster_basis",
    "complement_keep",
    "conditional_matches",
    "correction_basis",
    "draw_inputs",
    "fit_mappings",
    "make_network",
    "moment_basis",
    "parse_settings",
    "pool_matches",
    "standard_normal",
    "subspace_of",
]
