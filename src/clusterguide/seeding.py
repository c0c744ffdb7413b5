"""Reproducible random streams that do not depend on batch size.

Every random vector the library draws is addressed by (seed, index): row ``i`` of stream ``seed``
is the same whether it is drawn alone or in a batch of ten thousand. Rows are generated in fixed
blocks of ``BLOCK`` from a generator seeded by (seed, block), so drawing stays fast.
"""

from __future__ import annotations

import torch

from clusterguide.checks import whole

BLOCK = 256
_MASK64 = (1 << 64) - 1
# The seeds a user may give, the same for the CLI, the Python API and the gallery's API: exactly
# the values derive_seed returns, so a seed derived from a seed is a valid seed again. Larger values
# would alias silently (streams use the low 64 bits).
MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int if it is a whole number from 0 to :data:`MAX_SEED`; a one-line error otherwise."""
    return whole(seed, name, 0, MAX_SEED)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and any number of keys (ints or strings)."""
    x = _splitmix64(int(seed) & _MASK64)
    for key in keys:
        if isinstance(key, str):
            for byte in key.encode():
                x = _splitmix64(x ^ byte)
        else:
            x = _splitmix64(x ^ (int(key) & _MASK64))
    return x & ((1 << 63) - 1)


def refinement_stream(seed: int, path: str) -> int:
    """The prior stream whose latents refining cluster ``path`` with ``seed`` collects (and that
    ``choose-k --run`` scans, so it sees exactly the latents a refine would split)."""
    return derive_seed(check_seed(seed), "refine", path)


def randn_streams(seed: int, start: int, n: int, dim: int, *, stream: str = "z") -> torch.Tensor:
    """Rows ``start .. start+n-1`` of the standard-normal stream (seed, stream), float32 on CPU."""
    if n <= 0:
        return torch.empty(0, dim)
    first, last = start // BLOCK, (start + n - 1) // BLOCK
    blocks = []
    for block in range(first, last + 1):
        g = torch.Generator().manual_seed(derive_seed(seed, stream, block))
        blocks.append(torch.randn(BLOCK, dim, generator=g))
    rows = torch.cat(blocks)
    offset = start - first * BLOCK
    return rows[offset : offset + n].contiguous()
