"""Nearest-neighbour search behind one small interface, so FAISS (CPU or GPU) or torch can serve.

``nearest(queries, base)`` returns, for every query row, the index of its nearest base row and
the squared distance. The FAISS back end is what the paper used; the torch back end avoids the
copy to numpy when the data already lives on a GPU.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from clusterguide.clustering import as_faiss


def nearest_faiss(queries: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(as_faiss(base.detach().cpu().numpy()))
    dist, idx = index.search(as_faiss(queries.detach().cpu().numpy()), 1)
    return torch.from_numpy(idx[:, 0].astype(np.int64)), torch.from_numpy(dist[:, 0])


def nearest_torch(
    queries: torch.Tensor, base: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    base = base.detach()
    base_sq = (base * base).sum(1)
    idx_out, dist_out = [], []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk].detach().to(base.device)
        d = (q * q).sum(1, keepdim=True) - 2 * q @ base.T + base_sq
        dist, idx = d.min(1)
        idx_out.append(idx.cpu())
        dist_out.append(dist.clamp_min(0).cpu())
    return torch.cat(idx_out), torch.cat(dist_out)


def nearest(
    queries: torch.Tensor, base: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "auto":
        backend = "torch" if base.is_cuda else "faiss"
    return nearest_torch(queries, base) if backend == "torch" else nearest_faiss(queries, base)
