"""Labelled synthetic datasets: N images of chosen clusters, in shards, with a Parquet manifest.

``export`` plans first (which clusters, how many images each: exact counts), then cuts every
cluster's images into shards of ``shard_size`` and runs the shards on a back end of
:mod:`executor`. Each shard is written atomically (a PNG folder or a WebDataset ``.tar``, plus its
manifest rows as Parquet) and only once complete, so a re-run of the same command skips finished
shards; the merged ``manifest.parquet`` and ``dataset.json`` are written last.

Determinism: image i of cluster c depends only on (seed, c, i), never on the shard size, the
number of workers or the back end.

- ``imle``: the latent is row i of the cluster's mapping stream (the rows ``clusterguide sample
  --seed S`` draws), so export image i equals ``sample``'s image i; latents are mapped in the
  stream's fixed blocks and images are synthesized in batches aligned to multiples of
  ``SYNTH_BATCH`` within the cluster, so every image sees the same batch whoever computes it.
- ``exact``: image i has its own prior stream ``derive_seed(seed, "export-exact", c, i)``; its
  latent is the first candidate of that stream that falls in the cluster.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import clusterguide
from clusterguide import artifacts, correction
from clusterguide.errors import UserError
from clusterguide.executor import Backend, run_tasks
from clusterguide.run import Run
from clusterguide.sampler import METHODS, mapped_blocks
from clusterguide.seeding import BLOCK, derive_seed

FORMATS = ("png", "webdataset")
SYNTH_BATCH = 64  # images per generator pass, aligned within each cluster (see module docstring)
PLAN = "export.json"  # the plan of an export in progress (what a re-run must match)
MANIFEST = "manifest.parquet"
DATASET = "dataset.json"
SHARDS = "shards"
_OWN = (PLAN, MANIFEST, DATASET, SHARDS)


# ---- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportPlan:
    """Everything that decides the bytes of an export (not how it is run)."""

    run_id: str  # sha256 of the run's config.json
    clusters: tuple[str, ...]  # cluster paths, in order
    counts: tuple[int, ...]  # images per cluster (exact)
    method: str
    seed: int
    format: str
    shard_size: int
    device_type: str  # "cpu" or "cuda": float results differ between them

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict:
        d = asdict(self)
        d["clusters"], d["counts"] = list(self.clusters), list(self.counts)
        return d


@dataclass(frozen=True)
class Shard:
    index: int  # shard number (file name)
    cluster: str  # cluster path
    start: int  # first image index within the cluster
    stop: int  # one past the last
    cluster_count: int  # images of this cluster in the whole export (the last synthesis batch)


def split_counts(n: int, weights: Sequence[float]) -> list[int]:
    """n split in proportion to ``weights``, exactly: largest remainders, ties to the first."""
    total = float(sum(weights))
    quotas = [n * w / total for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def parse_weight(text: str, item: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise UserError(f"--mix: weight {text!r} in {item!r} is not a number") from None
    if not math.isfinite(w) or w < 0:
        raise UserError(f"--mix: weight {text!r} in {item!r} must be a finite number ≥ 0")
    return w


def choose_clusters(run: Run, clusters: Sequence[str], mix: str) -> tuple[list[str], list[float]]:
    """Cluster paths and their weights from ``--cluster`` and ``--mix`` (prior, uniform or SPEC)."""
    spec = mix.strip()
    if spec in ("prior", "uniform"):
        paths = [run.resolve(c) for c in clusters] if clusters else run.leaves()
        if len(set(paths)) != len(paths):
            raise UserError("--cluster: a cluster is given twice")
        if spec == "uniform":
            return paths, [1.0] * len(paths)
        weights = [float(run.tree.stats.get(p, {}).get("share") or 0.0) for p in paths]
        if sum(weights) <= 0:
            raise UserError("--mix prior: the run records no share for these clusters; use --mix uniform")
        return paths, weights
    if clusters:
        raise UserError("give clusters either with --cluster or inside --mix SPEC, not both")
    paths, weights = [], []
    for item in spec.split(","):
        item = item.strip()
        name, sep, w = item.rpartition(":")
        if not sep or not name.strip():
            raise UserError(
                f"--mix: {item!r} is not CLUSTER:WEIGHT (use prior, uniform or e.g. '0:0.5,2/1:0.5')"
            )
        paths.append(run.resolve(name.strip()))
        weights.append(parse_weight(w.strip(), item))
    if len(set(paths)) != len(paths):
        raise UserError("--mix: a cluster is given twice")
    if sum(weights) <= 0:
        raise UserError("--mix: the weights sum to zero")
    return paths, weights


def make_plan(
    run: Run,
    n: int,
    *,
    clusters: Sequence[str] = (),
    mix: str = "prior",
    method: str = "imle",
    seed: int = 0,
    format: str = "png",
    shard_size: int = 1024,
    device: str = "cpu",
) -> ExportPlan:
    """Check the options and fix the counts; nothing is computed or written."""
    if n < 1:
        raise UserError(f"-n must be at least 1 (got {n})")
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    paths, weights = choose_clusters(run, clusters, mix)
    counts = split_counts(n, weights)
    if method in ("imle", "corrected"):
        missing = [p for p, c in zip(paths, counts) if c and p not in run.mappings]
        if missing:
            raise UserError(
                f"cluster {missing[0]} has no mapping ({run.skipped.get(missing[0], 'none was trained')}); "
                "use --method exact or leave it out"
            )
    if method == "corrected":
        for path in (p for p, c in zip(paths, counts) if c):
            run.correction_for(path)
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise UserError(f"unknown device {device!r}") from None
    return ExportPlan(
        run_id=run_config_id(run),
        clusters=tuple(paths),
        counts=tuple(counts),
        method=method,
        seed=int(seed),
        format=format,
        shard_size=int(shard_size),
        device_type=device_type,
    )


def run_config_id(run: Run) -> str:
    assert run.path is not None, "export reads saved runs"
    return artifacts.sha256(Path(run.path) / artifacts.CONFIG)


def shards_of(plan: ExportPlan) -> list[Shard]:
    out: list[Shard] = []
    for path, count in zip(plan.clusters, plan.counts):
        for start in range(0, count, plan.shard_size):
            out.append(Shard(len(out), path, start, min(start + plan.shard_size, count), count))
    return out


# ---- computing a shard (runs on the workers) ----------------------------------------------------
@dataclass
class ShardResult:
    shard: Shard
    images: list[bytes]  # PNG files (empty until encoded when the job leaves encoding to the writer)
    latents: np.ndarray  # (n, D) float32
    stream_seeds: list[int]  # the random stream of every image
    seconds: float
    pixels: np.ndarray | None = None  # (n, H, W, 3) uint8, while not yet encoded

    @property
    def count(self) -> int:
        return int(self.latents.shape[0])

    def encode(self, level: int) -> None:
        if self.pixels is not None:
            self.images = [png_bytes(img, level) for img in self.pixels]
            self.pixels = None


def png_bytes(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@dataclass
class ExportJob:
    """Computes shards; picklable, sent once to every worker."""

    fitted: Run
    method: str
    seed: int
    device: str = "cpu"
    png_level: int = 1  # zlib level: 1 is 1.5x faster than 6 for slightly larger files
    # In one process the writer thread encodes while the next shard is synthesized (zlib runs
    # without the GIL); workers encode themselves, so that only compressed bytes travel.
    encode: bool = True

    def setup(self) -> Any:
        from clusterguide.generators.registry import load_generator

        G = load_generator(self.fitted.generator, device=self.device)
        weights = self.fitted.generator_info.get("weights_id")
        if weights and weights != G.weights_id:
            raise UserError(
                f"the generator's weights ({G.weights_id[:12]}) differ from the ones the run was fit on ({weights[:12]})"
            )
        if self.fitted.fit.class_label is not None:
            G = G.conditioned(self.fitted.fit.class_label)
        for net in self.fitted.mappings.values():
            net.to(G.device).eval()
        return G

    @torch.no_grad()
    def run(self, G: Any, shard: Shard) -> ShardResult:
        t0 = time.perf_counter()
        # Synthesis batches are aligned to SYNTH_BATCH within the cluster: compute every batch
        # that overlaps the shard in full, keep the shard's rows.
        lo = (shard.start // SYNTH_BATCH) * SYNTH_BATCH
        hi = min(-(-shard.stop // SYNTH_BATCH) * SYNTH_BATCH, shard.cluster_count)
        if self.method in ("imle", "corrected"):
            z = self._imle_latents(G, shard.cluster, lo, hi, corrected=self.method == "corrected")
            seeds = [derive_seed(self.seed, "e", shard.cluster)] * (shard.stop - shard.start)
        else:
            z = self._exact_latents(G, shard.cluster, lo, hi)
            seeds = [self._exact_seed(shard.cluster, i) for i in range(shard.start, shard.stop)]
        images = []
        for s in range(0, hi - lo, SYNTH_BATCH):
            images.append(_to_uint8(G.synthesize(z[s : s + SYNTH_BATCH].to(G.device))))
        keep = slice(shard.start - lo, shard.stop - lo)
        pixels = np.concatenate(images)[keep]
        return ShardResult(
            shard=shard,
            images=[png_bytes(img, self.png_level) for img in pixels] if self.encode else [],
            latents=z[keep].numpy().astype(np.float32),
            stream_seeds=seeds,
            seconds=time.perf_counter() - t0,
            pixels=None if self.encode else pixels,
        )

    def _imle_latents(self, G: Any, path: str, lo: int, hi: int, corrected: bool = False) -> torch.Tensor:
        # The same rows, mapped (and corrected) in the same blocks, as ClusterSampler.imle_latents
        # (corrected_latents).
        first = (lo // BLOCK) * BLOCK
        blocks = mapped_blocks(G, self.fitted.mappings[path], derive_seed(self.seed, "e", path), first)
        out = []
        for _ in range(first, hi, BLOCK):
            z = next(blocks)
            if corrected:
                z, _ = correction.corrected(G, self.fitted.tree, path, self.fitted.corrections[path], z)
            out.append(z.cpu())
        return torch.cat(out)[lo - first : hi - first]

    def _exact_seed(self, path: str, index: int) -> int:
        return derive_seed(self.seed, "export-exact", path, index)

    def _exact_latents(self, G: Any, path: str, lo: int, hi: int) -> torch.Tensor:
        """Per image, the first candidate of its own prior stream that falls in the cluster;
        candidates are tried in rounds of ``per_round`` for all open images at once."""
        share = float(self.fitted.tree.stats.get(path, {}).get("share") or 0.01)
        per_round = int(min(BLOCK, max(4, math.ceil(2 / max(share, 1e-3)))))
        limit = max(10_000, int(50 / max(share, 1e-4)))
        found: dict[int, torch.Tensor] = {}
        offset = 0
        while len(found) < hi - lo:
            if offset >= limit:
                raise UserError(
                    f"exact sampling of cluster {path}: an image found no member in {offset} prior samples; use --method imle"
                )
            open_rows = [i for i in range(lo, hi) if i not in found]
            z = torch.cat(
                [G.sample_latents(per_round, self._exact_seed(path, i), start=offset) for i in open_rows]
            )
            inside = self.fitted.tree.membership(G, z, path).reshape(len(open_rows), per_round)
            for row, i in enumerate(open_rows):
                hits = np.nonzero(inside[row])[0]
                if len(hits):
                    found[i] = z[row * per_round + int(hits[0])]
            offset += per_round
        return torch.stack([found[i] for i in range(lo, hi)])


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    from clusterguide.imaging import to_uint8

    return to_uint8(images)


# ---- writing -------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"{index:06d}"


def image_key(path: str, index: int) -> str:
    return f"c{path.replace('/', '_')}_{index:07d}"


def _manifest_table(result: ShardResult, files: list[str], keys: list[str], run: Run, method: str, seed: int):
    import pyarrow as pa

    s = result.shard
    n = s.stop - s.start
    dim = result.latents.shape[1]
    latents = pa.FixedSizeListArray.from_arrays(pa.array(result.latents.reshape(-1), pa.float32()), dim)
    return pa.table(
        {
            "file": pa.array(files, pa.string()),
            "key": pa.array(keys, pa.string()),
            "shard": pa.array([s.index] * n, pa.int32()),
            "cluster": pa.array([s.cluster] * n, pa.string()),
            "cluster_name": pa.array([run.names.get(s.cluster, "")] * n, pa.string()),
            "method": pa.array([method] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
            "index": pa.array(range(s.start, s.stop), pa.int64()),
            "stream_seed": pa.array(result.stream_seeds, pa.int64()),
            "latent": latents,
        }
    )


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with artifacts.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_shard(out: Path, result: ShardResult, plan: ExportPlan, run: Run, png_level: int = 1) -> None:
    """Write one shard so that it appears whole or not at all."""
    result.encode(png_level)
    s = result.shard
    name = shard_name(s.index)
    shards = out / SHARDS
    keys = [image_key(s.cluster, i) for i in range(s.start, s.stop)]
    if plan.format == "png":
        stage = shards / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        try:
            files = [f"{SHARDS}/{name}/{k}.png" for k in keys]
            for key, data in zip(keys, result.images):
                (stage / f"{key}.png").write_bytes(data)
            table = _manifest_table(result, files, keys, run, plan.method, plan.seed)
            _write_parquet(table, stage / "manifest.parquet")
            os.replace(stage, shards / name)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return
    import webdataset as wds

    files = [f"{SHARDS}/{name}.tar"] * len(keys)
    # The rows first, the tar last: a shard counts as done only when its tar exists.
    _write_parquet(
        _manifest_table(result, files, keys, run, plan.method, plan.seed), shards / f"{name}.parquet"
    )
    with artifacts.atomic_path(shards / f"{name}.tar") as tmp:
        with wds.TarWriter(str(tmp)) as sink:
            for j, (key, data) in enumerate(zip(keys, result.images)):
                sink.write(
                    {
                        "__key__": key,
                        "png": data,
                        "json": {
                            "cluster": s.cluster,
                            "cluster_name": run.names.get(s.cluster, ""),
                            "method": plan.method,
                            "seed": plan.seed,
                            "index": s.start + j,
                        },
                        "latent.npy": result.latents[j],
                    }
                )


def shard_done(out: Path, plan: ExportPlan, index: int) -> bool:
    name = shard_name(index)
    if plan.format == "png":
        return (out / SHARDS / name / "manifest.parquet").is_file()
    return (out / SHARDS / f"{name}.tar").is_file() and (out / SHARDS / f"{name}.parquet").is_file()


def shard_manifest(out: Path, plan: ExportPlan, index: int) -> Path:
    name = shard_name(index)
    if plan.format == "png":
        return out / SHARDS / name / "manifest.parquet"
    return out / SHARDS / f"{name}.parquet"


# ---- the whole export -----------------------------------------------------------------------------
@dataclass
class ExportReport:
    plan: ExportPlan
    shards: int  # shards of the export
    skipped: int  # shards already done by an earlier run
    images_written: int  # images computed by this run
    seconds: float  # this run's work, start-up included
    out: Path
    startup_seconds: float = 0.0  # starting workers and loading the generator


def prepare_out(out: Path, plan: ExportPlan, force: bool, remove: bool = True) -> bool:
    """Check the output folder before any work; returns whether this resumes an earlier run.

    A folder that holds the same plan is resumed; any other non-empty folder is refused unless
    ``force`` (then the export's own files are removed, unless ``remove`` is false: a check only;
    other files are left alone)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {probe} is not writable")
    if not out.exists() or not any(out.iterdir()):
        return False
    plan_file = out / PLAN
    if plan_file.is_file():
        try:
            previous = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous == plan.to_json():
            return True
    if not force:
        what = "a different export" if plan_file.is_file() else "other files"
        raise UserError(f"{out} is not empty and holds {what}; pass --force to replace it")
    if not remove:
        return False
    for entry in _OWN:
        target = out / entry
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return False


def export(
    run: Run,
    plan: ExportPlan,
    out: str | Path,
    *,
    backend: Backend | None = None,
    force: bool = False,
    command: str = "",
    on_progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write (or finish) the export ``plan`` of ``run`` into ``out``."""
    out = Path(out)
    resumed = prepare_out(out, plan, force)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    for stale in (out / SHARDS).glob(".*.tmp-*"):  # a killed run's staging folders
        shutil.rmtree(stale, ignore_errors=True)
    if not resumed:
        artifacts.write_json(out / PLAN, plan.to_json())
    shards = shards_of(plan)
    todo = [s for s in shards if not shard_done(out, plan, s.index)]
    if on_progress:
        on_progress(sum(s.stop - s.start for s in shards if s not in todo))
    backend = backend or Backend()
    here = backend.workers == 1 and not backend.ray
    job = ExportJob(run, plan.method, plan.seed, backend.device, encode=not here)
    t0 = time.perf_counter()
    written, startup = 0, 0.0
    # One writer thread: shard k is encoded and written while shard k+1 is computed. Leaving the
    # block waits for the pending write, so an interrupt never cuts a shard short.
    with ThreadPoolExecutor(1) as writer:
        pending: Future | None = None
        for _, result in run_tasks(job, todo, backend):
            if not written:  # until the first shard's work began: processes, Ray, loading G
                startup = time.perf_counter() - t0 - result.seconds
            if pending is not None:
                pending.result()
            pending = writer.submit(write_shard, out, result, plan, run, job.png_level)
            written += result.count
            if on_progress:
                on_progress(result.count)
        if pending is not None:
            pending.result()
    seconds = time.perf_counter() - t0
    _finish(out, run, plan, shards, command)
    return ExportReport(plan, len(shards), len(shards) - len(todo), written, seconds, out, max(startup, 0.0))


def _finish(out: Path, run: Run, plan: ExportPlan, shards: list[Shard], command: str) -> None:
    """The merged manifest, then dataset.json: its presence says the export is complete."""
    import pyarrow.parquet as pq

    first = pq.read_schema(shard_manifest(out, plan, shards[0].index))
    with artifacts.atomic_path(out / MANIFEST) as tmp:
        with pq.ParquetWriter(tmp, first) as writer:
            for s in shards:  # one shard at a time: memory stays bounded
                writer.write_table(pq.read_table(shard_manifest(out, plan, s.index)))
    artifacts.write_json(
        out / DATASET,
        {
            "format": "clusterguide-export",
            "version": clusterguide.__version__,
            "command": command,
            "run": {"path": str(run.path), "config_sha256": plan.run_id},
            "generator": {**run.generator.to_json(), "info": run.generator_info},
            "method": plan.method,
            "seed": plan.seed,
            "image_format": plan.format,
            "shard_size": plan.shard_size,
            "shards": len(shards),
            "images": plan.total,
            "counts": {
                p: {"count": c, "name": run.names.get(p, "")} for p, c in zip(plan.clusters, plan.counts)
            },
            "manifest": MANIFEST,
            "manifest_sha256": artifacts.sha256(out / MANIFEST),
        },
    )


def describe_counts(run: Run, plan: ExportPlan) -> str:
    parts = [f"{run.label(p)}: {c}" for p, c in zip(plan.clusters, plan.counts)]
    return f"{plan.total} images ({plan.method}, seed {plan.seed}) over {len(parts)} clusters: " + ", ".join(
        parts
    )
