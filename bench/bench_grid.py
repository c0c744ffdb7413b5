"""Benchmark: does the mapping hold at every layer, every k and every seed, measured out of sample?

A grid of fits of the default generator: ``block1``..``block4`` x k in {4, 8, 16} x seeds 0, 1, 2,
plus two-level trees (the largest ``block1`` cluster of a k = 4 fit refined at ``block3`` and at
``block4``). For every cluster with at least ``--min-size`` latents it checks the goal of issue 12,
fidelity >= 0.95 and recall >= 0.9 x the recall ceiling, with the metrics every fit writes
(fit_metrics.py: fresh mapped samples, fresh exact reference and ceiling sets), and prints per cell
how many clusters meet both.

Each cell's result is written atomically to ``<out>/<cell>.json`` and a re-run skips finished
cells, so the grid can be run piecewise (``--layers``, ``--ks``, ``--seeds``, ``--trees``):

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grid.py --layers block1,block2 --ks 4,8 --seeds 0,1
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grid.py --trees block3,block4 --layers '' --seeds 0
    .venv/bin/python bench/bench_grid.py --table          # the table of every finished cell

``--set key=value`` overrides the mapping settings, ``--mapping-offset N`` trains the mappings on
another random stream (same clusters) to see how much of a difference is chance (experiments;
give such runs their own --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from clusterguide import artifacts
from clusterguide.fitting import fit_run
from clusterguide.generators import GeneratorSpec, load_generator
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping import MappingConfig, parse_settings
from clusterguide.progress import set_progress
from clusterguide.refine import refine_run
from clusterguide.run import FitConfig

FIDELITY_GOAL = 0.95
RECALL_SHARE_GOAL = 0.9  # of the recall an independent exact set reaches (the ceiling)


def judge(rows: list[dict], min_size: int) -> dict:
    """Which clusters (with at least ``min_size`` latents and a mapping) meet both goals."""
    eligible = [r for r in rows if r["size"] >= min_size and r.get("fidelity") is not None]
    verdicts = []
    for r in eligible:
        ceiling = r.get("recall_ceiling")
        recall_share = r["recall"] / ceiling if r.get("recall") is not None and ceiling else None
        ok_fid = r["fidelity"] >= FIDELITY_GOAL
        ok_rec = recall_share is not None and recall_share >= RECALL_SHARE_GOAL
        verdicts.append(
            {
                "id": r["id"],
                "size": r["size"],
                "fidelity": r["fidelity"],
                "recall": r.get("recall"),
                "recall_ceiling": ceiling,
                "recall_share": recall_share,
                "precision": r.get("precision"),
                "precision_ceiling": r.get("precision_ceiling"),
                "ok": bool(ok_fid and ok_rec),
            }
        )
    return {"met": sum(v["ok"] for v in verdicts), "eligible": len(verdicts), "clusters": verdicts}


def run_cell(
    G: GeneratorAdapter,
    spec: GeneratorSpec,
    cell: dict,
    samples: int,
    overrides: dict,
    min_size: int,
    mapping_offset: int = 0,
) -> dict:
    start = time.perf_counter()
    seed = cell["seed"]
    # the same clusters, another random stream for the mappings: how much of a difference between
    # two recipes is chance
    mapping = MappingConfig.preset("fast", seed=seed + mapping_offset, **overrides)
    quiet = lambda m: None  # noqa: E731
    if cell["kind"] == "flat":
        fit_cfg = FitConfig(layer=cell["layer"], clusters=cell["k"], samples=samples, seed=seed)
        run, _ = fit_run(spec, fit_cfg, mapping, generator=G, log=quiet)
        rows = run.metrics["clusters"]
        extra = {
            "fit_seconds": run.metrics["fit_seconds"],
            "timings": run.metrics["timings"],
            "reduced": run.tree.splits[""].reduction is not None,  # PCA path (large_fit.py)
        }
    else:  # a block1 k=4 fit, its largest cluster refined at the cell's layer
        fit_cfg = FitConfig(layer="block1", clusters=4, samples=samples, seed=seed)
        run, _ = fit_run(spec, fit_cfg, mapping, generator=G, log=quiet)
        largest = max(run.leaves(), key=lambda p: run.tree.stats[p]["size"])
        tmp = Path(tempfile.mkdtemp(prefix="grid-"))
        try:
            run.save(tmp / "run")
            out = refine_run(tmp / "run", largest, cell["layer"], cell["k"], samples=samples // 2, log=quiet)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows = [r for r in out.run.metrics["clusters"] if r["id"] in out.children]
        extra = {
            "refined": largest,
            "refine_seconds": out.seconds,
            "acceptance": out.acceptance_rate,
            "timings": out.run.metrics["timings"],
        }
    verdict = judge(rows, min_size)
    return {
        **cell,
        "samples": samples,
        "fit": fit_cfg.to_json(),
        "mapping": mapping.to_json(),
        "seconds": time.perf_counter() - start,
        **extra,
        **verdict,
        "rows": rows,
    }


def cells(args) -> list[dict]:
    out = []
    for seed in args.seeds:
        for layer in args.layers:
            for k in args.ks:
                out.append(
                    {"name": f"{layer}-k{k}-s{seed}", "kind": "flat", "layer": layer, "k": k, "seed": seed}
                )
        for layer in args.trees:
            out.append(
                {
                    "name": f"tree-block1-{layer}-k4-s{seed}",
                    "kind": "tree",
                    "layer": layer,
                    "k": 4,
                    "seed": seed,
                }
            )
    return out


def table(out_dir: Path) -> str:
    lines = [
        "| cell | seed | met / eligible | failing clusters (fidelity, recall / ceiling) | epochs | seconds |",
        "|---|---|---|---|---|---|",
    ]
    results = [json.loads(path.read_text()) for path in out_dir.glob("*.json")]
    order = {"flat": 0, "tree": 1}
    results.sort(key=lambda r: (r["seed"], order[r["kind"]], r["layer"], r["k"]))
    for r in results:
        fails = ", ".join(
            f"{c['id']} ({c['fidelity']:.3f}, {c['recall_share']:.2f})"
            if c["recall_share"] is not None
            else f"{c['id']} ({c['fidelity']:.3f}, n/a)"
            for c in r["clusters"]
            if not c["ok"]
        )
        name = r["name"].rsplit("-s", 1)[0]
        # epochs the mappings trained (the fast recipe extends them while fidelity is short)
        epochs = "/".join(str(t.get("epochs", "?")) for t in r.get("timings", {}).values()) or "?"
        lines.append(
            f"| {name} | {r['seed']} | {r['met']} / {r['eligible']} | {fails or '-'} | {epochs} "
            f"| {r['seconds']:.0f} |"
        )
    met = sum(r["met"] for r in results)
    eligible = sum(r["eligible"] for r in results)
    lines.append(f"| **all {len(results)} cells** | | **{met} / {eligible}** | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="digiface-dcgan")
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    ap.add_argument("--layers", type=split, default=split("block1,block2,block3,block4"))
    ap.add_argument("--ks", type=lambda s: [int(v) for v in split(s)], default=[4, 8, 16])
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in split(s)], default=[0, 1, 2])
    ap.add_argument(
        "--trees", type=split, default=split("block3,block4"), help="refinement layers of the trees"
    )
    ap.add_argument("--samples", type=int, default=20000, help="prior latents per fit (half per refinement)")
    ap.add_argument("--min-size", type=int, default=500, help="clusters with fewer latents are not judged")
    ap.add_argument("--set", action="append", default=[], help="mapping setting name=value (repeatable)")
    ap.add_argument("--out", default="docs/bench/grid")
    ap.add_argument(
        "--mapping-offset",
        type=int,
        default=0,
        help="train the mappings with seed + this (same latents and clusters, another random stream)",
    )
    ap.add_argument("--table", action="store_true", help="only print the table of finished cells")
    args = ap.parse_args()
    out_dir = Path(args.out)
    if args.table:
        print(table(out_dir))
        return
    torch.set_num_threads(1)
    set_progress(sys.stderr.isatty())
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = GeneratorSpec(args.generator)
    G = load_generator(spec)
    overrides = parse_settings(args.set)
    for cell in cells(args):
        path = out_dir / f"{cell['name']}.json"
        if path.exists():
            print(f"{cell['name']}: done before, skipped", flush=True)
            continue
        result = run_cell(G, spec, cell, args.samples, overrides, args.min_size, args.mapping_offset)
        artifacts.write_json(path, result)
        fails = [c["id"] for c in result["clusters"] if not c["ok"]]
        print(
            f"{cell['name']}: {result['met']} / {result['eligible']} clusters meet both goals "
            f"({result['seconds']:.0f} s){'; failing: ' + ', '.join(fails) if fails else ''}",
            flush=True,
        )


if __name__ == "__main__":
    main()
