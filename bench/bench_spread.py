"""Benchmark: how much of each cluster's spread a fit's mappings keep, direction by direction.

For every mapping of a run folder (a root split), it draws ``--mapped`` fresh samples and takes
``--exact`` fresh exact (rejection-sampled) latents of the cluster, and compares their covariance
on the span the mapping's last layer writes to (its drawn and correction directions, as
:func:`clusterguide.mapping.bases.subspace_of` finds them), whitened by the exact samples' own. An
eigenvalue of 1 is the cluster's variance kept along that direction; 0.25 is a quarter of it. The
same ratios on 20 random directions outside the span show what the sample sizes give by chance.
docs/benchmarks.md (round ten) has the figures of a ``block1`` k = 16 fit:

    .venv/bin/clusterguide fit --layer block1 --clusters 16 --samples 20000 --seed 1 --out /tmp/b1k16s1
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_spread.py /tmp/b1k16s1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from clusterguide.errors import UserError
from clusterguide.fit_metrics import exact_sets
from clusterguide.generators import load_generator
from clusterguide.mapping.bases import subspace_of
from clusterguide.mapping.inputs import draw_inputs
from clusterguide.progress import set_progress
from clusterguide.run import Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT


def variance_ratios(mapped: torch.Tensor, exact: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the mapped samples' covariance along ``directions`` whitened by the exact ones'."""
    mapped_cov = torch.cov((mapped @ directions).T)
    exact_cov = torch.cov((exact @ directions).T)
    whiten = torch.linalg.inv(torch.linalg.cholesky(exact_cov))
    return torch.linalg.eigvalsh(whiten @ mapped_cov @ whiten.T)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--mapped", type=int, default=4000, help="fresh mapped samples per cluster")
    ap.add_argument("--exact", type=int, default=3000, help="fresh exact latents per cluster, at most")
    args = ap.parse_args()
    if min(args.mapped, args.exact) < 2:
        ap.error("--mapped and --exact need at least 2 samples each (a covariance)")
    set_progress(False)
    torch.set_grad_enabled(False)
    try:
        run = Run.load(args.run_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    G = load_generator(run.generator)
    seed = run.fit.seed
    paths = sorted((p for p in run.mappings if "/" not in p), key=int)
    exact = exact_sets(
        G,
        run.tree,
        ROOT,
        {int(p): args.exact for p in paths},
        derive_seed(seed, "bench-spread", "exact"),
        budget=20 * args.exact * len(paths),
    )
    g = torch.Generator().manual_seed(derive_seed(seed, "bench-spread", "outside"))
    print("cluster  exact  written  smallest  geometric mean  largest  | outside the span: min  max")
    for path in paths:
        net = run.mappings[path].eval()
        span = subspace_of(net, G.latent_dim)
        assert span is not None  # a mapping writes to at most every direction
        written = span.shape[1]
        # the span's orthonormal complement: the last columns of a complete QR
        rest = torch.linalg.qr(span.double(), mode="complete").Q[:, written:]
        e = draw_inputs(net, G.sample_latents, derive_seed(seed, "bench-spread", path), 0, args.mapped)
        mapped, own = net(e).double(), exact[int(path)].double()
        pick = torch.linalg.qr(rest @ torch.randn(rest.shape[1], 20, generator=g, dtype=rest.dtype))[0]
        if min(mapped.shape[0], own.shape[0]) <= max(written, pick.shape[1]):
            # a covariance in that many directions needs more samples than directions
            print(f"{path:>7}  {own.shape[0]:5d}  {written:7d}  too few samples for that many directions")
            continue
        inside = variance_ratios(mapped, own, span.double())
        outside = variance_ratios(mapped, own, pick)
        print(
            f"{path:>7}  {own.shape[0]:5d}  {written:7d}  {float(inside.min()):8.2f}  "
            f"{float(inside.log().mean().exp()):14.2f}  {float(inside.max()):7.2f}  "
            f"|                   {float(outside.min()):.2f}  {float(outside.max()):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
