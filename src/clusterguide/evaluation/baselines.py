"""The baselines of the paper's Table 2: GANSpace and SeFa directions, and plain random sampling.

Both baselines give a ranked set of unit directions ``d_k`` in the generator's latent space; an
edit moves prior latents by a step along one of them, ``z + sign * step * d_k`` (z ~ N(0, I), so
the step is in units of the prior's standard deviation).

- **GANSpace** (Härkönen et al. 2020), for generators without a style space: PCA of the
  representation G_[n](z) at a layer, then a linear regression from the PCA coordinates back to z
  gives the latent direction of each component. With ``layer=None`` the PCA is of the latents
  themselves (GANSpace for StyleGAN's W; for a Gaussian z it is only a rotation of noise).
- **SeFa** (Shen & Zhou 2021): closed form, without sampling. For a first layer y = A z + b the
  directions that change y most are the top eigenvectors of A^T A, with A's columns normalised as
  in the authors' code. Adapters may define ``sefa_weight()`` returning A^T as (latent_dim, F);
  otherwise the first Linear/ConvTranspose2d/Conv2d layer that reads the latent is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.features import extract_features
from clusterguide.generators.base import GeneratorAdapter


@dataclass(frozen=True)
class Directions:
    """Ranked latent directions of one baseline."""

    method: str  # "ganspace" or "sefa"
    vectors: np.ndarray  # (K, D) float32, unit norm, strongest first
    strengths: np.ndarray  # (K,) share of variance (GANSpace) or normalised eigenvalue (SeFa)
    source: str  # where they came from: "layer block1", "latents", "weight of net.main.0"

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class Edit:
    """One step along one direction."""

    component: int  # index into Directions.vectors
    sign: int  # +1 or -1 (a component's sign is arbitrary, so both are tried)
    step: float  # length of the step in latent units

    def to_json(self) -> dict:
        return {"component": self.component, "sign": self.sign, "step": self.step}


def edit_latents(z: torch.Tensor, directions: Directions, edit: Edit) -> torch.Tensor:
    """``z + sign * step * d_component`` for every row of ``z``."""
    d = torch.from_numpy(np.ascontiguousarray(directions.vectors[edit.component], dtype=np.float32))
    return z + (edit.sign * edit.step) * d.to(z.device, z.dtype)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.maximum(norms, 1e-12)).astype(np.float32)


# ---- GANSpace --------------------------------------------------------------------------------


def ganspace(
    G: GeneratorAdapter,
    layer: str | None,
    n: int = 4000,
    seed: int = 0,
    components: int = 10,
    batch_size: int = 512,
) -> Directions:
    """Top ``components`` GANSpace directions from ``n`` prior samples of stream ``seed``."""
    if components < 1:
        raise UserError(f"the number of components must be at least 1 (got {components})")
    if n <= components:
        raise UserError(f"GANSpace needs more samples ({n}) than components ({components})")
    z = G.sample_latents(n, seed)
    z64 = z.numpy().astype(np.float64)
    if layer is None:
        x = z64 - z64.mean(0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        k = min(components, vt.shape[0])
        var = s**2
        return Directions("ganspace", _unit_rows(vt[:k]), (var[:k] / var.sum()).astype(np.float32), "latents")

    feats = torch.from_numpy(
        extract_features(G, layer, z, batch_size=batch_size, desc=f"GANSpace features @ {layer}")
    )
    mean = feats.mean(0, keepdim=True)
    q = min(components + 8, min(feats.shape))
    # svd_lowrank draws a random sketch: seed it locally so results never depend on global state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, sv, _ = torch.svd_lowrank(feats, q=q, niter=6, M=mean)
    k = min(components, q)
    coords = (u[:, :k] * sv[:k]).double().numpy()  # PCA coordinates of every sample
    total_var = float(((feats - mean) ** 2).sum())
    # GANSpace's transfer to latent space: z ~ coords @ B by least squares; row k of B is the latent
    # change per unit of component k.
    b, *_ = np.linalg.lstsq(coords, z64 - z64.mean(0), rcond=None)
    strengths = (sv[:k].double() ** 2 / total_var).numpy().astype(np.float32)
    return Directions("ganspace", _unit_rows(b), strengths, f"layer {layer}")


# ---- SeFa ------------------------------------------------------------------------------------


def first_layer_weight(G: GeneratorAdapter) -> tuple[str, np.ndarray]:
    """(where it came from, A^T as (latent_dim, F)) for the layer that reads the latent."""
    hook = getattr(G, "sefa_weight", None)
    if callable(hook):
        w = np.asarray(hook(), dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != G.latent_dim:
            raise ValueError(f"{type(G).__name__}.sefa_weight() must be (latent_dim, F), got {w.shape}")
        return "sefa_weight()", w
    d = G.latent_dim
    for name, module in G.named_modules():
        param = getattr(module, "weight", None)
        if not isinstance(param, torch.Tensor):
            continue
        t = param.detach().double().cpu()
        if isinstance(module, nn.Linear) and module.in_features == d:
            return f"weight of {name}", t.T.numpy()
        if isinstance(module, nn.ConvTranspose2d) and module.in_channels == d:
            return f"weight of {name}", t.reshape(d, -1).numpy()  # (in, out, kh, kw)
        if isinstance(module, nn.Conv2d) and module.in_channels == d:
            return f"weight of {name}", t.transpose(0, 1).reshape(d, -1).numpy()  # (out, in, kh, kw)
    raise UserError(
        f"SeFa needs the weight of the layer that reads the latent; generator {G.name!r} has no Linear or "
        f"convolution with {d} inputs (adapters can provide sefa_weight())"
    )


def sefa(G: GeneratorAdapter, components: int = 10) -> Directions:
    """Top ``components`` SeFa directions: eigenvectors of A^T A, A's columns normalised."""
    if components < 1:
        raise UserError(f"the number of components must be at least 1 (got {components})")
    source, w = first_layer_weight(G)
    # as in the authors' factorize_weight: every output feature's weight vector gets unit norm
    w = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    eigvals, eigvecs = np.linalg.eigh(w @ w.T)
    order = np.argsort(eigvals)[::-1][: min(components, len(eigvals))]
    vals = eigvals[order]
    return Directions(
        "sefa", _unit_rows(eigvecs[:, order].T), (vals / eigvals.sum()).astype(np.float32), source
    )


# ---- random sampling -------------------------------------------------------------------------


def prior_latents(G: GeneratorAdapter, n: int, seed: int) -> torch.Tensor:
    """The ``n`` prior latents every baseline starts from (random sampling uses them unedited)."""
    return G.sample_latents(n, seed)
