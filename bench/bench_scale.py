"""Scale benchmarks: export throughput per back end against plain G(z), and fit at large N.

    python bench/bench_scale.py export RUN_DIR [-n 2048]      # images/s: G(z), W=1, W=2, Ray x2
    python bench/bench_scale.py fit [--samples 10000 100000 1000000]   # seconds, peak RSS, latents/s
    python bench/bench_scale.py agreement [-n 50000]            # ARI: PCA-reduced vs full k-means

``export`` measures, in one process and one after the other so the figures share the machine's
load: plain G(z) (synthesis + uint8, no files) with this process's threads; PNG encoding alone;
then ``export`` in process (W=1), with two worker processes, and on a local Ray instance with two
actors. Every export's PNG bytes are compared with the W=1 run's.

``fit`` runs every N in its own child process (``clusterguide fit --samples N`` at block1 of the
default generator, 4 clusters) and reads the child's peak RSS from ``resource.getrusage``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.png"))}


def bench_export(run_dir: str, n: int, shard_size: int) -> None:
    from clusterguide.executor import Backend
    from clusterguide.export import export, make_plan
    from clusterguide.imaging import to_uint8
    from clusterguide.progress import set_progress
    from clusterguide.run import Run
    from clusterguide.sampler import ClusterSampler

    set_progress(False)
    threads = torch.get_num_threads()
    sampler = ClusterSampler.load(run_dir)
    G = sampler.generator
    z = G.sample_latents(n, 1)
    with torch.no_grad():
        G.synthesize(z[:64])  # warm-up
        t = time.perf_counter()
        pixels = [to_uint8(G.synthesize(z[s : s + 64])) for s in range(0, n, 64)]
        plain = n / (time.perf_counter() - t)
    images = np.concatenate(pixels)
    rates = {}
    for level in (1, 6):
        t = time.perf_counter()
        for img in images:
            Image.fromarray(img).save(io.BytesIO(), format="PNG", compress_level=level)
        rates[level] = n / (time.perf_counter() - t)
    print(
        f"machine: {os.cpu_count()} cores (shared with other jobs: figures are noisy); torch threads {threads}"
    )
    print(f"plain G(z) (batch 64, uint8, no files): {plain:8.1f} images/s")
    for level, rate in rates.items():
        print(f"PNG encoding alone, zlib level {level}:      {rate:8.1f} images/s")
    run = Run.load(run_dir)
    plan = make_plan(run, n, shard_size=shard_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    reference = None
    try:
        for label, backend in (
            ("export W=1 (this process)", Backend(workers=1)),
            ("export W=2 (local processes)", Backend(workers=2, threads=max(1, threads // 2))),
            ("export Ray, 2 actors", Backend(workers=2, ray="auto", threads=max(1, threads // 2))),
        ):
            out = tmp / label.split()[1].replace("=", "")
            t = time.perf_counter()
            report = export(run, plan, out, backend=backend)
            wall = time.perf_counter() - t
            hashes = _hashes(out)
            reference = reference or hashes
            same = "same bytes as W=1" if hashes == reference else "BYTES DIFFER from W=1"
            work = report.seconds - report.startup_seconds
            print(
                f"{label:30s} {n / wall:7.1f} images/s wall, {report.images_written / work:7.1f} after "
                f"{report.startup_seconds:4.1f}s start-up ({report.images_written / work / plain:4.0%} of plain G(z)); "
                f"{same}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_fit(samples: list[int], clusters: int, epochs: int | None) -> None:
    print(f"machine: {os.cpu_count()} cores (shared with other jobs: figures are noisy)")
    print(f"{'N':>9} {'seconds':>9} {'peak RSS GB':>12} {'latents/s':>10}")
    for n in samples:
        out = Path(tempfile.mkdtemp(prefix="bench_fit_")) / "run"
        args = [sys.executable, "-m", "clusterguide", "fit", "--layer", "block1", "--clusters", str(clusters)]
        args += ["--samples", str(n), "--out", str(out), "-q"]
        if epochs:
            args += ["--epochs", str(epochs)]
        t = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
        if proc.returncode:
            print(f"{n:>9} failed: {proc.stderr.strip().splitlines()[-1:]}")
            shutil.rmtree(out.parent, ignore_errors=True)
            continue
        stages = json.loads((out / "metrics.json").read_text())["timings"]["root"]
        reduced = json.loads((out / "config.json").read_text())["tree"]["splits"][""].get("reduction")
        shutil.rmtree(out.parent, ignore_errors=True)
        note = "" if peak > before else " (peak RSS: an earlier, larger child)"
        print(
            f"{n:>9} {seconds:9.1f} {peak / 2**20:12.2f} {n / seconds:10.0f}   "
            f"features {stages['features_s']:.1f}s, k-means {stages['kmeans_s']:.1f}s, "
            f"mappings {stages['mappings_s']:.1f}s; "
            + (f"PCA {reduced['dim']} ({reduced['explained']:.0%})" if reduced else "full features")
            + note
        )


def bench_agreement(n: int, k: int, dims: list[int], subsample: int, layer: str) -> None:
    """k-means on full features against k-means on PCA-reduced features of the same latents."""
    from clusterguide.clustering import fit_kmeans
    from clusterguide.features import extract_features
    from clusterguide.generators.registry import load_generator
    from clusterguide.large_fit import adjusted_rand_index
    from clusterguide.reduction import fit_pca
    from clusterguide.streaming import subsample_rows

    G = load_generator("digiface-dcgan")
    z = G.sample_latents(n, 0)
    t = time.perf_counter()
    full = extract_features(G, layer, z)
    km = fit_kmeans(full, k, seed=0)
    full_s = time.perf_counter() - t
    print(f"{n} latents at {layer} ({full.shape[1]} features), k={k}: full-feature k-means {full_s:.1f}s")
    ref = fit_kmeans(full, k, seed=1)  # another seed on the same features: the noise floor
    print(
        f"  full features, seed 0 vs seed 1:            ARI {adjusted_rand_index(km.labels, ref.labels):.3f}"
    )
    for dim in dims:
        t = time.perf_counter()
        red = fit_pca(full[subsample_rows(n, subsample, 0)], dim, seed=0)
        reduced = red.apply_numpy(full)
        rkm = fit_kmeans(reduced, k, seed=0)
        seconds = time.perf_counter() - t
        print(
            f"  PCA {dim:4d} (fitted on {subsample}, keeps {red.explained:.1%} of the variance): "
            f"ARI {adjusted_rand_index(km.labels, rkm.labels):.3f} vs full, {seconds:.1f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("export")
    e.add_argument("run_dir")
    e.add_argument("-n", type=int, default=2048)
    e.add_argument("--shard-size", type=int, default=256)
    f = sub.add_parser("fit")
    f.add_argument("--samples", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    f.add_argument("--clusters", type=int, default=4)
    f.add_argument("--epochs", type=int, default=None)
    a = sub.add_parser("agreement")
    a.add_argument("-n", type=int, default=50_000)
    a.add_argument("--clusters", type=int, default=4)
    a.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256])
    a.add_argument("--subsample", type=int, default=20_000)
    a.add_argument("--layer", default="block1")
    args = parser.parse_args()
    if args.what == "agreement":
        bench_agreement(args.n, args.clusters, args.dims, args.subsample, args.layer)
    elif args.what == "export":
        bench_export(args.run_dir, args.n, args.shard_size)
    else:
        bench_fit(args.samples, args.clusters, args.epochs)


if __name__ == "__main__":
    main()
