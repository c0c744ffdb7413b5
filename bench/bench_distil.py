"""Experiment (issue 12, round fifteen): can the corrected sampler be learned back into a mapping?

The corrected sampler (correction.py) meets both bars where the mappings do not, but it pays a
gradient pass per sample that spills. This fits the default generator, then for every judged
cluster trains a copy of its mapping (the student; same network, one forward pass per sample) on
pairs (e, y): e fresh inputs of the mapping, y the corrected sampler's output for T_c(e), with
every row whose assignment margin is below the ``--depth`` quantile of the cluster's own latents'
margins moved up to that margin (not only the rows outside: a regression's error must not carry a
target just inside the boundary out of it). ``--epochs`` of MSE, then ``--hinge-epochs`` with the
consistency hinge on the student's own margin added (the gradient pass the fit's hinge already
pays), taken on fresh inputs every step (``--hinge-on fresh``) or on the pairs' own. The students
are measured by fit_metrics.measure_clusters, on the same fresh inputs and exact sets as the fit's
own figures, and printed beside the mapping's and the corrected sampler's. ``--fresh-pairs`` draws a
new set of pairs every epoch (round sixteen); ``--width`` trains a wider student that starts as an
exact copy of the mapping.
docs/benchmarks.md (round fifteen) has the figures:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_distil.py --layer block1 --clusters 16 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from clusterguide import artifacts, correction
from clusterguide.errors import UserError
from clusterguide.fit_metrics import measure_clusters
from clusterguide.fitting import fit_run, sample_prior
from clusterguide.generators import GeneratorSpec, load_generator
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping import MappingConfig, MappingNetwork, draw_inputs
from clusterguide.progress import set_progress
from clusterguide.run import FitConfig, Run
from clusterguide.seeding import derive_seed
from clusterguide.tree import ROOT

BATCH = 512
CHUNK = 1024  # rows per projection call


def goal(row: dict, prefix: str = "") -> bool:
    """Issue 12's bars: fidelity >= 0.95 and recall >= 0.9 x the ceiling."""
    fidelity, recall = row.get(prefix + "fidelity"), row.get(prefix + "recall")
    return (
        fidelity is not None
        and recall is not None
        and fidelity >= 0.95
        and recall >= 0.9 * row["recall_ceiling"]
    )


@torch.no_grad()
def widened(net: MappingNetwork, width: int) -> MappingNetwork:
    """A copy of ``net`` with ``width`` hidden units per layer that computes the same function:
    the new units start with random inputs and no effect on the old units or the output."""
    old = net.fc1.out_features
    if width < old:
        raise ValueError(f"--width {width} is narrower than the mapping's {old}")
    wide = MappingNetwork(net.aux_dim, width, net.fc3.out_features, net.residual)
    wide.fc1.weight[:old] = net.fc1.weight
    wide.fc2.weight[:old] = 0.0  # old units read nothing new ...
    wide.fc2.weight[:old, :old] = net.fc2.weight
    wide.fc3.weight.zero_()  # ... and the output reads no new unit
    wide.fc3.weight[:, :old] = net.fc3.weight
    for a, b in ((wide.bn1, net.bn1), (wide.bn2, net.bn2)):
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(a, name)[:old] = getattr(b, name)
    if net.shrink_basis is not None:
        wide.shrink_toward(net.shrink_scale, net.shrink_center, net.shrink_basis)
    return wide.to(net.fc1.weight.device)


def distil(
    G: GeneratorAdapter, run: Run, path: str, members: torch.Tensor, args: argparse.Namespace
) -> tuple[MappingNetwork, float]:
    """The student of cluster ``path`` and the margin its targets were pushed to."""
    teacher = run.mappings[path].to(G.device).eval()
    margin = correction.margin_function(G, run.tree, path)
    with torch.no_grad():
        depth = float(torch.quantile(margin(members[:2048].to(G.device)).cpu(), args.depth))
    pair_stream = derive_seed(args.seed, "distil", path)

    def pairs(offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``--pairs`` inputs e from ``offset`` of the cluster's pair stream, and their targets."""
        with torch.no_grad():
            e = draw_inputs(teacher, G.sample_latents, pair_stream, offset, args.pairs).to(G.device)
            moved = run.corrections[path].apply(teacher(e))
        targets = torch.cat(
            [
                correction.project_inside(
                    G, run.tree, path, moved[i : i + CHUNK], target=depth, below=0.999 * depth
                )[0]
                for i in range(0, args.pairs, CHUNK)
            ]
        )
        return e, targets

    e, targets = pairs(0)
    student = (widened(teacher, args.width) if args.width else copy.deepcopy(teacher)).train()
    order = torch.Generator().manual_seed(args.seed)

    fresh_stream, drawn, epochs_done = derive_seed(args.seed, "distil-fresh", path), 0, 0

    def train(epochs: int, lr: float, hinge: bool) -> None:
        nonlocal drawn, epochs_done, e, targets
        steps = epochs * -(-args.pairs // BATCH)
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        # the MSE stage anneals to a close fit; the hinge stage only nudges the strays in
        sched = None if hinge else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(epochs):
            if args.fresh_pairs and epochs_done:  # a new set every epoch: the student never sees one twice
                e, targets = pairs(epochs_done * args.pairs)
            epochs_done += 1
            perm = torch.randperm(args.pairs, generator=order)
            for i in range(0, args.pairs, BATCH):
                idx = perm[i : i + BATCH]
                out = student(e[idx])
                loss = (out - targets[idx]).pow(2).sum(1).mean()
                if hinge:
                    # on the pairs' inputs, or on fresh ones (a new batch every step, as the fit's
                    # own hinge trains): what the student must keep inside is every input
                    if args.hinge_on == "fresh":
                        fresh = draw_inputs(teacher, G.sample_latents, fresh_stream, drawn, BATCH).to(
                            G.device
                        )
                        drawn += BATCH
                        on = student(fresh)
                    else:
                        on = out
                    # the guide's gradient only where the hinge is non-zero (the expensive part)
                    with torch.no_grad():
                        low = torch.nonzero(margin(on) < depth)[:, 0]
                    if low.numel():
                        loss = loss + torch.relu(depth - margin(on[low])).sum() / on.shape[0]
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()

    train(args.epochs, 1e-3, hinge=False)
    train(args.hinge_epochs, 3e-4, hinge=True)
    return student.eval(), depth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="block1")
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--min-size", type=int, default=500, help="clusters with fewer latents are not distilled")
    ap.add_argument("--pairs", type=int, default=8192, help="training pairs per cluster")
    ap.add_argument("--epochs", type=int, default=40, help="MSE epochs")
    ap.add_argument("--hinge-epochs", type=int, default=10, help="MSE + hinge epochs after them (0: none)")
    ap.add_argument(
        "--hinge-on", choices=["pairs", "fresh"], default="fresh", help="inputs the hinge is taken on"
    )
    ap.add_argument(
        "--depth", type=float, default=0.25, help="quantile of the members' margins targets reach"
    )
    ap.add_argument(
        "--fresh-pairs",
        action="store_true",
        help="draw a new set of --pairs pairs every epoch (the corrected sampler's cost, every epoch)",
    )
    ap.add_argument("--width", type=int, default=0, help="hidden units of the student (0: the mapping's own)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    # one line and exit code 2 for settings that cannot run, before the fit
    if args.clusters < 2 or args.samples < args.clusters:
        ap.error("--clusters must be at least 2 and at most --samples")
    if args.pairs < 1 or args.epochs < 0 or args.hinge_epochs < 0 or args.min_size < 0:
        ap.error("--pairs must be at least 1; --epochs, --hinge-epochs and --min-size at least 0")
    if args.out and (Path(args.out).is_dir() or not Path(args.out).resolve().parent.is_dir()):
        ap.error(f"--out {args.out}: not a file in an existing folder")
    mapping_width = MappingConfig.preset("fast").width
    if args.width and args.width < mapping_width:
        ap.error(f"--width {args.width} is narrower than the mapping's {mapping_width} (0: the same)")
    if not 0 < args.depth < 1:
        ap.error(f"--depth is a quantile, strictly between 0 and 1 (got {args.depth})")
    torch.set_num_threads(1)
    set_progress(sys.stderr.isatty())
    spec = GeneratorSpec("digiface-dcgan")
    G = load_generator(spec)
    fit_cfg = FitConfig(layer=args.layer, clusters=args.clusters, samples=args.samples, seed=args.seed)
    try:
        run, _ = fit_run(
            spec, fit_cfg, MappingConfig.preset("fast", seed=args.seed), generator=G, log=lambda m: None
        )
    except UserError as exc:  # e.g. a layer the generator does not have
        ap.error(str(exc))
    before = {r["id"]: r for r in run.metrics["clusters"]}
    latents = sample_prior(G, args.samples, args.seed)  # the fit's own latents (same stream)
    labels = run.tree.assign_at(G, latents, ROOT)
    paths = run.tree.children(ROOT)
    judged = [p for p in paths if p in run.mappings and before[p]["size"] >= args.min_size]
    started = time.perf_counter()
    students, depths = {}, {}
    for path in judged:
        members = latents[torch.as_tensor(labels == int(path))]
        students[path], depths[path] = distil(G, run, path, members, args)
    seconds = time.perf_counter() - started
    run.mappings.update(students)
    run.corrections.clear()  # the students are measured as mappings; the corrected figures are the fit's
    after = {r["id"]: r for r in measure_clusters(G, run, paths, latents, labels)}
    print(
        f"{args.layer} k={args.clusters} seed {args.seed}: students {sum(goal(after[p]) for p in judged)}"
        f" / {len(judged)}, mappings {sum(goal(before[p]) for p in judged)}, corrected sampler"
        f" {sum(goal(before[p], 'corrected_') for p in judged)}; distilling {seconds:.0f} s"
    )
    print("cluster  size  depth  fidelity (mapping -> student, corrected)  recall / ceiling (same)")
    for p in judged:
        b, a, ceiling = before[p], after[p], before[p]["recall_ceiling"]
        print(
            f"{p:>7} {b['size']:>5}  {depths[p]:.2f}  {b['fidelity']:.3f} -> {a['fidelity']:.3f}, "
            f"{b['corrected_fidelity']:.3f}    {b['recall'] / ceiling:.2f} -> {a['recall'] / ceiling:.2f}, "
            f"{b['corrected_recall'] / ceiling:.2f}"
        )
    if args.out:
        rows = {p: {"mapping": before[p], "student": after[p], "depth": depths[p]} for p in judged}
        # atomic: an interrupted run leaves no half-written file
        artifacts.write_json(args.out, {"args": vars(args), "seconds": seconds, "rows": rows})


if __name__ == "__main__":
    main()
