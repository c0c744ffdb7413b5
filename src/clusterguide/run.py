"""A fitted run: generator spec, settings, cluster tree, mappings, names and metrics.

:class:`Run` is the in-memory form of a run folder (see :mod:`artifacts` for the files). It knows
how to resolve what a user types as a cluster (a path like ``1/0`` or a name like ``"turned
left"``) and how to save and load itself, checking every checksum, key and shape on the way in.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import clusterguide
from clusterguide import artifacts, checks, run_schema
from clusterguide.errors import NameTakenError, UserError
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.mapping import MappingConfig, MappingNetwork
from clusterguide.moments import MomentMap
from clusterguide.reduction import Reduction
from clusterguide.tree import ClusterTree, Split, path_key


@dataclass(frozen=True)
class FitConfig:
    """How the clusters were formed; saved with every run."""

    layer: str  # layer of the first split
    clusters: int  # k of the first split
    samples: int = 20000  # prior latents drawn for clustering and for the mappings
    seed: int = 0  # seed of the latent stream and of k-means
    class_label: int | None = None  # class of a class-conditional generator (BigGAN)
    pool: int | None = None  # spatial pooling of features before k-means (None = full map)
    batch_size: int = 512  # latents per head pass
    kmeans_iters: int = 25
    min_cluster_size: int = 32  # smaller clusters are reported and get no mapping
    eval_samples: int = 1000  # mapped samples per cluster for the metrics
    kmeans_init: str = "k-means++"  # "k-means++", or "random" (FAISS's default; older runs)
    kmeans_restarts: int = 1  # k-means runs per split; the one with the lowest inertia is kept

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        """A saved config; one written before the k-means fields existed used one random-seeded
        run, and keeps it, so that refining it reproduces what it always did."""
        return cls(**{"kmeans_init": "random", "kmeans_restarts": 1, **data})


@dataclass
class Run:
    generator: GeneratorSpec
    generator_info: dict  # name, weights_id, latent_dim as seen at fit time
    fit: FitConfig
    mapping: MappingConfig
    tree: ClusterTree
    mappings: dict[str, MappingNetwork] = field(default_factory=dict)  # cluster path -> T_c
    # cluster path -> the corrected sampler's moment map (correction.py); empty in older runs
    corrections: dict[str, MomentMap] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # cluster path -> why it has no mapping
    metrics: dict = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # cluster path -> name
    history: list[dict] = field(default_factory=list)  # fit / refine events with their settings
    path: Path | None = None

    # ---- clusters and names ---------------------------------------------------------------
    def clusters(self) -> list[str]:
        return self.tree.clusters()

    def leaves(self) -> list[str]:
        return self.tree.leaves()

    def resolve(self, cluster: str | int) -> str:
        """A cluster path from a path (``1/0``), an int, or a name; one-line error otherwise."""
        text = str(cluster).strip()
        if text in self.tree.clusters():
            return text
        matches = [p for p, n in self.names.items() if n == text] or [
            p for p, n in self.names.items() if n.lower() == text.lower()
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(
                f"cluster name {text!r} is ambiguous: it names {', '.join(sorted(matches, key=path_key))}"
            )
        known = ", ".join(self.tree.clusters())
        raise UserError(f"no cluster {text!r} (by path or name); clusters are: {known}")

    def label(self, path: str) -> str:
        name = self.names.get(path)
        return f"{path} {name}" if name else path

    def mapping_for(self, path: str) -> MappingNetwork:
        if path not in self.mappings:
            why = self.skipped.get(path, "it has none")
            raise UserError(f"cluster {path} has no mapping ({why}); use --method exact")
        return self.mappings[path]

    def correction_for(self, path: str) -> MomentMap:
        """The corrected sampler's moment map of ``path``; one-line error for a cluster without one."""
        moment_map = self.corrections.get(path)
        if moment_map is None:
            self.mapping_for(path)  # a cluster without a mapping says that first
            raise UserError(
                f"cluster {path} has no correction (the run was fitted before the corrected sampler); "
                "refit it, or use --method imle or exact"
            )
        return moment_map

    def cluster_metrics(self, path: str) -> dict:
        for row in self.metrics.get("clusters", []):
            if str(row.get("id")) == path:
                return row
        return {}

    # ---- persistence ----------------------------------------------------------------------
    def save(self, run_dir: str | Path, overwrite: bool = False, keep_other_files: bool = False) -> Path:
        """Write the whole folder atomically (staged under a temporary name, then renamed).

        ``overwrite=True`` replaces an existing run folder (never a folder of other files).

        ``keep_other_files`` carries over files a user put in an existing folder (an overview
        picture, samples): updating a run in place (refine) must not delete them.
        """
        run_dir = Path(run_dir)
        with artifacts.staged_dir(run_dir, overwrite=overwrite, kind=artifacts.FORMAT) as stage:
            if keep_other_files and run_dir.is_dir():
                _carry_other_files(run_dir, stage)
            cluster_sha = artifacts.save_tensors(
                stage / artifacts.CLUSTERS,
                {
                    **{
                        f"split:{p}": torch.from_numpy(np.ascontiguousarray(s.centroids))
                        for p, s in self.tree.splits.items()
                    },
                    # a large fit's PCA, beside the centroids that live in its space
                    **{
                        key: tensor
                        for p, s in self.tree.splits.items()
                        if s.reduction is not None
                        for key, tensor in s.reduction.tensors(f"reduce:{p}").items()
                    },
                },
            )
            mapping_tensors = {
                f"{p}::{k}": v for p, net in self.mappings.items() for k, v in net.state_dict().items()
            }
            mapping_sha = artifacts.save_tensors(
                stage / artifacts.MAPPINGS, mapping_tensors or {"_empty": torch.zeros(0)}
            )
            files = {artifacts.CLUSTERS: cluster_sha, artifacts.MAPPINGS: mapping_sha}
            # a map belongs to its mapping: one whose mapping was dropped is not saved
            corrections = {p: m for p, m in self.corrections.items() if p in self.mappings}
            if corrections:
                files[artifacts.CORRECTIONS] = artifacts.save_tensors(
                    stage / artifacts.CORRECTIONS,
                    {k: v for p, m in corrections.items() for k, v in m.tensors(p).items()},
                )
            artifacts.write_json(stage / artifacts.METRICS, self.metrics)
            artifacts.write_json(stage / artifacts.NAMES, self.names)
            artifacts.write_json(stage / artifacts.CONFIG, self._config_json(files))
        self.path = run_dir
        return run_dir

    def _config_json(self, files: dict[str, str]) -> dict:
        return {
            "format": artifacts.FORMAT,
            "class": "Run",
            "version": clusterguide.__version__,
            "generator": {**self.generator.to_json(), "info": self.generator_info},
            "fit": self.fit.to_json(),
            "mapping": self.mapping.to_json(),
            "tree": {
                "splits": {p: s.meta() for p, s in self.tree.splits.items()},
                "stats": self.tree.stats,
            },
            "mappings": {
                p: {
                    "aux_dim": n.aux_dim,
                    "width": n.fc1.out_features,
                    "latent_dim": n.fc3.out_features,
                    "residual": n.residual,
                }
                for p, n in self.mappings.items()
            },
            "skipped": self.skipped,
            "history": self.history,
            "files": files,
        }

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """Load a run folder, checking every field of its JSON files (see :mod:`run_schema`), then
        every checksum, tensor key and shape."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} does not exist")
        config = artifacts.read_json(run_dir / artifacts.CONFIG)
        if not isinstance(config, dict) or config.get("format") != artifacts.FORMAT:
            raise UserError(f"{run_dir} is not a clusterguide run folder (config.json has no run format)")
        version = config.get("version")
        raw_names = read_names(run_dir, checked=False)  # unreadable JSON says so itself
        metrics_path = run_dir / artifacts.METRICS
        raw_metrics = artifacts.read_json(metrics_path) if metrics_path.exists() else {}
        try:
            run_schema.check_config(config)
            names = run_schema.check_names(raw_names)
            metrics = run_schema.check_metrics(raw_metrics)
        except UserError as exc:
            raise run_schema.in_file(run_dir, exc, version) from None
        try:
            return cls._from_checked(run_dir, config, names, metrics)
        except UserError as exc:  # a newer writer may have changed more than the JSON shows
            if run_schema.newer_than_this(version):
                raise run_schema.in_file(run_dir, exc, version) from None
            raise

    @classmethod
    def _from_checked(cls, run_dir: Path, config: dict, names: dict[str, str], metrics: dict) -> Run:
        """The run from JSON that passed :mod:`run_schema`: tensors, checksums and shapes."""
        files = config["files"]
        centroids = artifacts.load_tensors(run_dir / artifacts.CLUSTERS, files[artifacts.CLUSTERS])
        weights = artifacts.load_tensors(run_dir / artifacts.MAPPINGS, files[artifacts.MAPPINGS])
        splits = {}
        for p, meta in config["tree"]["splits"].items():
            c = centroids.get(f"split:{p}")
            if c is None or c.dim() != 2 or c.shape[0] != meta["k"]:
                got = "none" if c is None else "x".join(map(str, c.shape))
                raise UserError(
                    f"{run_dir}: split {p!r} has centroids of shape {got}, config.json says {meta['k']} rows"
                )
            reduction = None
            if "reduction" in meta:  # runs without one cluster on the full features
                reduction = Reduction.from_tensors(centroids, f"reduce:{p}", meta["reduction"])
                if c.shape[1] != reduction.dim:
                    raise UserError(
                        f"{run_dir}: split {p!r} has centroids of {c.shape[1]} dimensions, "
                        f"its reduction {reduction.dim}"
                    )
            splits[p] = Split(
                meta["layer"],
                c.numpy(),
                meta.get("pool"),
                meta.get("samples", 0),
                meta.get("seed", 0),
                reduction,
            )
        tree = ClusterTree(splits, config["tree"].get("stats", {}))
        mappings = {}
        for p, arch in config["mappings"].items():
            prefix = f"{p}::"
            state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            _check_mapping_shapes(run_dir, p, arch, state)  # before allocating a network of that size
            net = MappingNetwork(arch["aux_dim"], arch["width"], arch["latent_dim"], arch["residual"])
            if any(name in state for name in MappingNetwork.SHRINK):
                # a mapping shrunk after training (training.choose_shrink)
                _check_shrink(run_dir, p, arch, state)
                net.shrink_toward(state["shrink_scale"], state["shrink_center"], state["shrink_basis"])
            if any(name in state for name in MappingNetwork.FOLD):
                # a mapping folded after training (mapping/fold.py)
                _check_fold(run_dir, p, arch, state)
                dim = arch["latent_dim"]
                net.fold_with(
                    MomentMap(state["fold_source"], state["fold_target"], state["fold_matrix"]),
                    state["fold_normals"].reshape(-1, dim),
                    state["fold_offsets"],
                )
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise UserError(
                    f"{run_dir}: mapping of cluster {p} does not load: {str(exc).splitlines()[0]}"
                ) from None
            mappings[p] = net.eval()
        corrections = {}
        if artifacts.CORRECTIONS in files:
            saved = artifacts.load_tensors(run_dir / artifacts.CORRECTIONS, files[artifacts.CORRECTIONS])
            for p in sorted({key.split("::", 1)[0] for key in saved}, key=path_key):
                if p not in mappings:
                    raise UserError(
                        f"{run_dir}: {artifacts.CORRECTIONS} has a map for {p!r}, which has no mapping"
                    )
                try:
                    corrections[p] = MomentMap.from_tensors(saved, p, mappings[p].fc3.out_features)
                except ValueError as exc:
                    raise UserError(f"{run_dir}/{artifacts.CORRECTIONS}: {exc}") from None
        return cls(
            generator=GeneratorSpec.from_json(config["generator"]),
            generator_info=config["generator"].get("info", {}),
            fit=FitConfig.from_json(config["fit"]),
            mapping=MappingConfig.from_json(config["mapping"]),
            tree=tree,
            mappings=mappings,
            corrections=corrections,
            skipped=config.get("skipped", {}),
            metrics=metrics,
            names=names,
            history=config.get("history", []),
            path=run_dir,
        )


def _check_mapping_shapes(run_dir: Path, path: str, arch: dict, state: dict[str, torch.Tensor]) -> None:
    expected = {
        "fc1.weight": (arch["width"], arch["aux_dim"]),
        "fc2.weight": (arch["width"], arch["width"]),
        "fc3.weight": (arch["latent_dim"], arch["width"]),
    }
    for key, shape in expected.items():
        tensor = state.get(key)
        if tensor is None or tuple(tensor.shape) != shape:
            got = "missing" if tensor is None else "x".join(map(str, tensor.shape))
            raise UserError(
                f"{run_dir}: mapping of cluster {path}: {key} is {got}, config.json says "
                f"{'x'.join(map(str, shape))}"
            )


def _check_shrink(run_dir: Path, path: str, arch: dict, state: dict[str, torch.Tensor]) -> None:
    scale, center, basis = (state.get(name) for name in MappingNetwork.SHRINK)
    dim = arch["latent_dim"]
    if (
        scale is None
        or center is None
        or basis is None
        or scale.numel() != 1
        or tuple(center.shape) != (dim,)
        or basis.dim() != 2
        or basis.shape[0] != dim
    ):
        raise UserError(
            f"{run_dir}: mapping of cluster {path}: its shrink needs shrink_scale (one value), "
            f"shrink_center ({dim}) and shrink_basis ({dim} x d)"
        )


def _check_fold(run_dir: Path, path: str, arch: dict, state: dict[str, torch.Tensor]) -> None:
    source, target, matrix, normals, offsets = (state.get(name) for name in MappingNetwork.FOLD)
    dim = arch["latent_dim"]
    if (
        source is None
        or target is None
        or matrix is None
        or normals is None
        or offsets is None
        or tuple(source.shape) != (dim,)
        or tuple(target.shape) != (dim,)
        or tuple(matrix.shape) != (dim, dim)
        or normals.dim() != 2
        or normals.shape[1] != dim
        or tuple(offsets.shape) != (normals.shape[0],)
    ):
        raise UserError(
            f"{run_dir}: mapping of cluster {path}: its fold needs fold_source and fold_target "
            f"({dim}), fold_matrix ({dim} x {dim}), fold_normals (f x {dim}) and fold_offsets (f)"
        )


def read_names(run_dir: str | Path, checked: bool = True) -> dict[str, str]:
    """The names in ``run_dir``'s names.json (none if it is missing), checked unless told not to."""
    path = Path(run_dir) / artifacts.NAMES
    names = artifacts.read_json(path) if path.exists() else {}
    if not checked:
        return names
    try:
        return run_schema.check_names(names)
    except UserError as exc:
        raise run_schema.in_file(Path(run_dir), exc) from None


_OWN_FILES = {
    artifacts.CONFIG,
    artifacts.CLUSTERS,
    artifacts.MAPPINGS,
    artifacts.CORRECTIONS,
    artifacts.NAMES,
    artifacts.METRICS,
}


def _carry_other_files(src: Path, dst: Path) -> None:
    """Hard-link (or copy) everything in ``src`` that is not one of the run's own files."""
    for entry in src.iterdir():
        if entry.name in _OWN_FILES or entry.name.startswith("."):  # staging leftovers, locks
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dst / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dst / entry.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def set_name(run_dir: str | Path, cluster: str, name: str) -> tuple[str, dict[str, str]]:
    """Name a cluster of the run at ``run_dir`` (empty name clears it); written atomically.

    Returns the cluster path and all names. Names must be unique and must not look like a path.
    """
    with names_lock(Path(run_dir)):
        return _set_name_locked(Path(run_dir), cluster, name)


@contextmanager
def names_lock(run_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of a run folder's names.json between processes and threads.

    Anything that rewrites the folder and must keep names given meanwhile (``refine``) holds it
    while it reads names.json and replaces the folder."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    with _THREAD_LOCK, open(run_dir / ".names.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_THREAD_LOCK = threading.Lock()
_names_lock = names_lock  # the old private name, for branches written before it was public


def _set_name_locked(run_dir: Path, cluster: str, name: str) -> tuple[str, dict[str, str]]:
    run = Run.load(run_dir)
    path = run.resolve(cluster)
    # newlines, tabs, escapes and other control characters would mangle every table that shows names
    name = " ".join(checks.text(name, "a cluster name", control=False).split())
    if len(name) > 100:
        raise UserError("a cluster name is at most 100 characters")
    # Any path-shaped name, not only existing ones: a later refine could create that path.
    if name and (name in run.clusters() or re.fullmatch(r"\d+(\s*/\s*\d+)*", name)):
        raise UserError(f"{name!r} looks like a cluster path; choose a name that is not one")
    names = dict(run.names)
    if name:
        taken = [p for p, n in names.items() if n.lower() == name.lower() and p != path]
        if taken:
            raise NameTakenError(f"the name {name!r} is already used by cluster {taken[0]}")
        names[path] = name
    else:
        names.pop(path, None)
    artifacts.write_json(Path(run_dir) / artifacts.NAMES, names)
    return path, names
