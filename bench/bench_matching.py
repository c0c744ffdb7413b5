"""Benchmark: what conditional IMLE's matching step costs per refresh as a cluster's candidate count
grows (``MappingConfig.candidate_growth``), on one thread.

It times :func:`clusterguide.mapping.matching.conditional_matches` for one cluster of ``--latents``
latents that draws in ``--drawn`` directions (a random mapping with the default width: the cost
does not depend on the weights), at each count of ``--candidates``, and prints seconds per
refresh and per million candidate rows:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_matching.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_matching.py --latents 3313 --candidates 32,512
"""

from __future__ import annotations

import argparse
import time

import torch

from clusterguide.mapping import BatchedMapping, MappingConfig, conditional_matches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=2000, help="the cluster's latents")
    ap.add_argument("--latent-dim", type=int, default=100)
    ap.add_argument("--drawn", type=int, default=9, help="directions the cluster draws in")
    ap.add_argument("--written", type=int, default=32, help="correction directions it writes to")
    ap.add_argument("--candidates", default="32,64,128,256,512")
    ap.add_argument("--repeats", type=int, default=3, help="the fastest of this many refreshes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    width = args.drawn + args.written
    basis = torch.linalg.qr(torch.randn(1, args.latent_dim, width, generator=g))[0]
    model = BatchedMapping(
        1, args.latent_dim, MappingConfig().width, args.latent_dim, True, g, basis=basis, drawn=[args.drawn]
    ).eval()
    with torch.no_grad():
        model.w3.normal_(generator=g)
    z = torch.randn(args.latents, args.latent_dim, generator=g)
    print(f"{args.latents} latents, {args.drawn} drawn + {args.written} written directions, one thread")
    print("| candidates | s per refresh | s per million candidate rows |")
    print("|---|---|---|")
    for m in (int(v) for v in args.candidates.split(",")):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            conditional_matches(model, 0, z, m, g)
            best = min(best, time.perf_counter() - start)
        print(f"| {m} | {best:.2f} | {best / (args.latents * m) * 1e6:.2f} |")


if __name__ == "__main__":
    main()
