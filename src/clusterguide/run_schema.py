"""The run folder's JSON files, checked field by field when a run is loaded.

A run folder can be edited by hand, damaged, or written by a newer clusterguide. Whatever it holds,
loading it either succeeds or fails with one line naming the file and the field (``config.json:
mappings.1.width must be from 1 to 65536 (got 1000000000000)``) -- never a traceback deep inside, and
never an allocation sized by a damaged number. A file written by a newer version that does not
check says so instead of calling it damaged.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

from clusterguide import checks
from clusterguide.errors import UserError

PATH = re.compile(r"\d{1,6}(/\d{1,6}){0,63}")  # a cluster path: 0, 1/0, 1/0/2, ...
MAX_DIM = 65_536  # widths and dimensions of a mapping network
MAX_K = 1_000_000
MAX_COUNT = 10**12
MAX_SEED64 = 2**64 - 1  # seeds in files: older runs were not limited to seeding.MAX_SEED
MAX_NAME_CHARS = 100


def _path(value: Any, name: str, root_ok: bool = False) -> str:
    checks.text(value, name, 400)
    if not (PATH.fullmatch(value) or (root_ok and value == "")):
        raise UserError(f"{name}: {value!r} is not a cluster path (like 0 or 1/0)")
    return value


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> (0, 10, 2); anything unparsable sorts first."""
    parts = []
    for part in str(version).split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def newer_than_this(version: Any) -> bool:
    import clusterguide

    return isinstance(version, str) and version_tuple(version) > version_tuple(clusterguide.__version__)


def check_dataclass_fields(cls: type, data: Any, name: str, ranges: dict[str, tuple] | None = None) -> dict:
    """``data`` has exactly the fields of dataclass ``cls``'s (missing ones take defaults), each of
    the field's annotated type (str, int, float, bool, or one of them | None), within ``ranges``."""
    checks.obj(data, name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(f"{name}.{key} is not a known field")
    for key, f in fields.items():
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{name}.{key} is missing")
            continue
        value, hint = data[key], hints[key]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        lo, hi = (ranges or {}).get(key, (None, None))
        if int in allowed:
            checks.whole(value, f"{name}.{key}", lo, hi)
        elif float in allowed:
            checks.real(value, f"{name}.{key}", lo, hi)
        elif bool in allowed:
            checks.flag(value, f"{name}.{key}")
        elif str in allowed:
            checks.text(value, f"{name}.{key}", 1000)
    return data


def check_config(config: Any) -> None:
    """Every field of a run's ``config.json`` that loading reads (names say ``config.json: ...``)."""
    from clusterguide import artifacts
    from clusterguide.mapping import MappingConfig
    from clusterguide.run import FitConfig

    checks.obj(config, "config.json")
    if "version" in config:
        checks.text(config["version"], "config.json: version", 100)
    gen = checks.obj(config.get("generator"), "config.json: generator")
    checks.text(gen.get("name"), "config.json: generator.name", 1000)
    if gen.get("checkpoint") is not None:
        checks.text(gen["checkpoint"], "config.json: generator.checkpoint", 4096)
    checks.obj(gen.get("options", {}), "config.json: generator.options")
    checks.obj(gen.get("info", {}), "config.json: generator.info")
    check_dataclass_fields(
        FitConfig,
        config.get("fit"),
        "config.json: fit",
        {
            "clusters": (2, MAX_K),
            "samples": (2, MAX_COUNT),
            "seed": (0, MAX_SEED64),
            "class_label": (0, None),
            "pool": (1, None),
            "batch_size": (1, None),
            "kmeans_iters": (1, None),
            "min_cluster_size": (0, None),
            "eval_samples": (0, MAX_COUNT),
        },
    )
    check_dataclass_fields(
        MappingConfig,
        config.get("mapping"),
        "config.json: mapping",
        {"width": (1, MAX_DIM), "aux_dim": (1, MAX_DIM), "batch_size": (1, None), "seed": (0, MAX_SEED64)},
    )
    tree = checks.obj(config.get("tree"), "config.json: tree")
    splits = checks.obj(tree.get("splits"), "config.json: tree.splits")
    if "" not in splits:
        raise UserError('config.json: tree.splits has no first split (the key "")')
    for path, meta in splits.items():
        where = f"config.json: tree.splits.{path or '(root)'}"
        _path(path, where, root_ok=True)
        checks.obj(meta, where)
        checks.text(meta.get("layer"), f"{where}.layer", 1000)
        checks.whole(meta.get("k"), f"{where}.k", 1, MAX_K)
        if meta.get("pool") is not None:
            checks.whole(meta["pool"], f"{where}.pool", 1, None)
        checks.whole(meta.get("samples", 0), f"{where}.samples", 0, MAX_COUNT)
        checks.whole(meta.get("seed", 0), f"{where}.seed", 0, MAX_SEED64)
        if "reduction" in meta:  # a large fit's PCA (reduction.py); older runs have none
            reduction = checks.obj(meta["reduction"], f"{where}.reduction")
            checks.whole(reduction.get("dim"), f"{where}.reduction.dim", 1, MAX_DIM)
            checks.real(reduction.get("explained", 0.0), f"{where}.reduction.explained", 0.0, 1.0)
            checks.whole(reduction.get("samples", 0), f"{where}.reduction.samples", 0, MAX_COUNT)
        if path:
            parent, _, index = path.rpartition("/")
            if parent not in splits or int(index) >= splits[parent].get("k", 0):
                raise UserError(f"{where}: cluster {path} is not a child of any split")
    stats = checks.obj(tree.get("stats", {}), "config.json: tree.stats")
    clusters = [f"{p}/{i}" if p else str(i) for p, m in splits.items() for i in range(m["k"])]
    for path in clusters:
        row = checks.obj(stats.get(path), f"config.json: tree.stats.{path}")
        checks.whole(row.get("size"), f"config.json: tree.stats.{path}.size", 0, MAX_COUNT)
        checks.real(row.get("share"), f"config.json: tree.stats.{path}.share", 0.0, 1.0)
    for path, arch in checks.obj(config.get("mappings"), "config.json: mappings").items():
        where = f"config.json: mappings.{path}"
        _path(path, where)
        if path not in clusters:
            raise UserError(f"{where}: no such cluster in tree.splits")
        checks.obj(arch, where)
        for key in ("aux_dim", "width", "latent_dim"):
            checks.whole(arch.get(key), f"{where}.{key}", 1, MAX_DIM)
        checks.flag(arch.get("residual"), f"{where}.residual")
        if arch["residual"] and arch["aux_dim"] != arch["latent_dim"]:
            raise UserError(f"{where}: a residual mapping needs aux_dim == latent_dim")
    for path, why in checks.obj(config.get("skipped", {}), "config.json: skipped").items():
        checks.text(why, f"config.json: skipped.{_path(path, 'config.json: skipped')}", 10_000)
    for i, event in enumerate(checks.array(config.get("history", []), "config.json: history")):
        _check_event(event, f"config.json: history.{i}")
    files = checks.obj(config.get("files"), "config.json: files")
    for key in (artifacts.CLUSTERS, artifacts.MAPPINGS):
        checks.text(files.get(key), f"config.json: files.{key}", 200)
    if artifacts.CORRECTIONS in files:  # runs fitted before the corrected sampler have none
        checks.text(files[artifacts.CORRECTIONS], f"config.json: files.{artifacts.CORRECTIONS}", 200)


def _check_event(event: Any, where: str) -> None:
    checks.obj(event, where)
    if event.get("event") != "refine":
        return
    _path(event.get("cluster"), f"{where}.cluster")
    checks.text(event.get("layer"), f"{where}.layer", 1000)
    checks.whole(event.get("k"), f"{where}.k", 1, MAX_K)
    checks.whole(event.get("samples"), f"{where}.samples", 0, MAX_COUNT)
    checks.whole(event.get("seed"), f"{where}.seed", 0, MAX_SEED64)
    checks.real(event.get("acceptance"), f"{where}.acceptance", 0.0, 1.0)
    if "mapping" in event:
        mapping = checks.obj(event["mapping"], f"{where}.mapping")
        checks.text(mapping.get("recipe"), f"{where}.mapping.recipe", 100)
        checks.whole(mapping.get("epochs"), f"{where}.mapping.epochs", 0, None)


def check_names(names: Any, file: str = "names.json") -> dict[str, str]:
    """names.json: cluster path -> a name of at most 100 characters, no control characters."""
    checks.obj(names, file)
    for path, name in names.items():
        _path(path, f"{file}: key")
        checks.text(name, f"{file}: name of cluster {path}", MAX_NAME_CHARS)
    return names


def check_metrics(metrics: Any, file: str = "metrics.json") -> dict:
    """metrics.json: an object; ``clusters`` a list of rows with an ``id``; rows and ``summary``
    hold numbers, strings, booleans or null."""
    checks.obj(metrics, file)
    for i, row in enumerate(checks.array(metrics.get("clusters", []), f"{file}: clusters")):
        checks.obj(row, f"{file}: clusters.{i}")
        if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
            raise UserError(f"{file}: clusters.{i}.id must be a cluster path")
        for key, value in row.items():
            _scalar(value, f"{file}: clusters.{i}.{key}")
    for key, value in checks.obj(metrics.get("summary", {}), f"{file}: summary").items():
        _scalar(value, f"{file}: summary.{key}")
    if "fit_seconds" in metrics:
        checks.real(metrics["fit_seconds"], f"{file}: fit_seconds", 0.0, None)
    return metrics


def _scalar(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise UserError(f"{name} must be a number, string or null")


def in_file(run_dir: Path, exc: UserError, version: Any = None) -> UserError:
    """``exc`` about a field, as one line naming the run folder -- or, for a file written by a newer
    clusterguide, a line saying so."""
    import clusterguide

    if newer_than_this(version):
        return UserError(
            f"{run_dir} was written by clusterguide {version}; this is {clusterguide.__version__}: "
            f"upgrade clusterguide to read it ({exc})"
        )
    return UserError(f"{run_dir}/{exc} (the file is damaged or was edited)")
