"""Benchmark: does the mapping hold at every layer, every k and every seed, measured out of sample?

A grid of fits of the default generator: ``block1``..``block4`` x k in {4, 8, 16} x seeds 0, 1, 2,
plus two-level trees (the largest ``block1`` cluster of a k = 4 fit refined at ``block3`` and at
``block4``). For every cluster with at least ``--min-size`` latents it checks the goal of issue 12,
fidelity >= 0.95 and recall >= 0.9 x the recall ceiling, with the metrics every fit writes
(fit_metrics.py: fresh mapped samples, fresh exact reference and ceiling sets), and prints per cell
how many clusters meet both. It judges the corrected sampler (correction.py: the same mapped
samples moved to the cluster's moments and projected inside) apart, against the same exact sets,
with its seconds per 1,000 samples beside an estimate of what exact rejection sampling would
cost (the time to assign 2,048 prior latents along the path, times 1,000 / 2,048 / p_c).

Each cell's result is written atomically to ``<out>/<cell>.json`` and a re-run skips finished
cells, so the grid can be run piecewise (``--layers``, ``--ks``, ``--seeds``, ``--trees``):

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grid.py --layers block1,block2 --ks 4,8 --seeds 0,1
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grid.py --trees block3,block4 --layers '' --seeds 0
    .venv/bin/python bench/bench_grid.py --table          # the table of every finished cell
    .venv/bin/python bench/bench_grid.py --table --overlay docs/bench/grid-trees-fixed   # with a rerun

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
from clusterguide.metrics import meets_goal
from clusterguide.progress import set_progress
from clusterguide.refine import refine_run
from clusterguide.run import FitConfig


def judge(rows: list[dict], min_size: int, prefix: str = "") -> dict:
    """Which clusters (with at least ``min_size`` latents and a mapping) meet both goals, with the
    mapping's own samples (``prefix`` "") or the corrected sampler's (``"corrected_"``; the same
    exact reference and ceiling)."""
    eligible = [r for r in rows if r["size"] >= min_size and r.get(f"{prefix}fidelity") is not None]
    verdicts = []
    for r in eligible:
        ceiling = r.get("recall_ceiling")
        recall = r.get(f"{prefix}recall")
        recall_share = recall / ceiling if recall is not None and ceiling else None
        verdicts.append(
            {
                "id": r["id"],
                "size": r["size"],
                "fidelity": r[f"{prefix}fidelity"],
                "recall": recall,
                "recall_ceiling": ceiling,
                "recall_share": recall_share,
                "precision": r.get(f"{prefix}precision"),
                "precision_ceiling": r.get("precision_ceiling"),
                "ok": bool(meets_goal(r, prefix)),
            }
        )
    return {"met": sum(v["ok"] for v in verdicts), "eligible": len(verdicts), "clusters": verdicts}


def head_seconds(G: GeneratorAdapter, run, parent: str, n: int = 2048) -> float:
    """Seconds to assign ``n`` prior latents at the split below ``parent`` (every split along its
    path): what exact rejection sampling pays per candidate, to set the corrected sampler's cost
    beside (1 / p_c candidates per image)."""
    z = G.sample_latents(n, 987654)
    start = time.perf_counter()
    with torch.no_grad():
        run.tree.membership(G, z, f"{parent}/0" if parent else "0")
    return time.perf_counter() - start


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
        head = head_seconds(G, run, "")
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
        head = head_seconds(G, out.run, largest)
        extra = {
            "refined": largest,
            "refine_seconds": out.seconds,
            "acceptance": out.acceptance_rate,
            "timings": out.run.metrics["timings"],
        }
    verdict = judge(rows, min_size)
    # the corrected sampler (correction.py) against the same reference: reported apart, as its
    # projection makes fidelity high by construction; and what exact sampling would cost instead
    fixed = judge(rows, min_size, prefix="corrected_")
    exact_s = {r["id"]: head * 1000 / 2048 / r["share"] for r in rows if r.get("share")}
    for c in fixed["clusters"]:
        row = next(r for r in rows if r["id"] == c["id"])
        c["seconds_per_1000"] = row.get("corrected_seconds")
        c["exact_seconds_per_1000"] = exact_s.get(c["id"])
    return {
        **cell,
        "samples": samples,
        "fit": fit_cfg.to_json(),
        "mapping": mapping.to_json(),
        "seconds": time.perf_counter() - start,
        **extra,
        **verdict,
        "corrected": fixed,
        "head_seconds_per_2048": head,
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


def finished(out_dir: Path, overlays: list[Path]) -> list[dict]:
    """The finished cells of ``out_dir`` and of ``overlays``; where several folders have a cell of the
    same name, the last one's (a rerun after a fix, kept in its own folder) wins."""
    cells = {path.stem: path for path in out_dir.glob("*.json")}
    for folder in overlays:
        cells.update({path.stem: path for path in folder.glob("*.json")})
    return [json.loads(path.read_text()) for path in cells.values()]


def table(out_dir: Path, overlays: list[Path] = ()) -> str:
    lines = [
        "| cell | seed | met / eligible | failing clusters (fidelity, recall / ceiling) | epochs | seconds "
        "| corrected: met | corrected: failing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = finished(out_dir, list(overlays))
    order = {"flat": 0, "tree": 1}
    results.sort(key=lambda r: (r["seed"], order[r["kind"]], r["layer"], r["k"]))

    def failing(verdict: dict) -> str:
        return ", ".join(
            f"{c['id']} ({c['fidelity']:.3f}, {c['recall_share']:.2f})"
            if c["recall_share"] is not None
            else f"{c['id']} ({c['fidelity']:.3f}, n/a)"
            for c in verdict["clusters"]
            if not c["ok"]
        )

    for r in results:
        fails = failing(r)
        # cells run before the corrected sampler have no verdict for it
        fixed = r.get("corrected")
        fixed_cells = f"{fixed['met']} / {fixed['eligible']} | {failing(fixed) or '-'}" if fixed else "| "
        name = r["name"].rsplit("-s", 1)[0]
        # epochs the mappings trained (the fast recipe extends them while fidelity is short)
        epochs = "/".join(str(t.get("epochs", "?")) for t in r.get("timings", {}).values()) or "?"
        lines.append(
            f"| {name} | {r['seed']} | {r['met']} / {r['eligible']} | {fails or '-'} | {epochs} "
            f"| {r['seconds']:.0f} | {fixed_cells} |"
        )
    met = sum(r["met"] for r in results)
    eligible = sum(r["eligible"] for r in results)
    with_fixed = [r["corrected"] for r in results if r.get("corrected")]
    fixed_total = (
        f"**{sum(v['met'] for v in with_fixed)} / {sum(v['eligible'] for v in with_fixed)}** "
        f"({len(with_fixed)} cells)"
        if with_fixed
        else ""
    )
    lines.append(f"| **all {len(results)} cells** | | **{met} / {eligible}** | | | | {fixed_total} | |")
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
    ap.add_argument(
        "--overlay",
        action="append",
        default=[],
        type=Path,
        help="with --table: also this folder's cells, replacing those of the same name (repeatable)",
    )
    args = ap.parse_args()
    out_dir = Path(args.out)
    if args.table:
        for folder in args.overlay:
            if not folder.is_dir():
                ap.error(f"--overlay {folder}: not a folder")
        print(table(out_dir, args.overlay))
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
        fixed = result["corrected"]
        print(
            f"{cell['name']}: {result['met']} / {result['eligible']} clusters meet both goals "
            f"({result['seconds']:.0f} s){'; failing: ' + ', '.join(fails) if fails else ''}; "
            f"corrected sampler: {fixed['met']} / {fixed['eligible']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
