"""Atomic writes and the run folder's files.

Nothing the library writes is ever half-written: files go to a temporary name beside their target
and are moved into place with ``os.replace`` only once complete; a run folder is assembled under a
temporary name and renamed as a whole. A run folder holds

- ``config.json``   generator spec and weights checksum, fit and mapping settings, the cluster tree,
                    package version, and the sha256 of every tensor file (a damaged folder is caught
                    at load);
- ``clusters.safetensors``  the centroids of every split of the tree;
- ``mappings.safetensors``  the weights of every cluster's mapping network;
- ``names.json``    names people gave to clusters (written on its own, atomically);
- ``metrics.json``  how well each cluster's mapping stays in its cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clusterguide.errors import UserError

CONFIG = "config.json"
CLUSTERS = "clusters.safetensors"
MAPPINGS = "mappings.safetensors"
NAMES = "names.json"
METRICS = "metrics.json"
FORMAT = "clusterguide-run"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is damaged: {exc}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write safetensors atomically; returns the file's sha256."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return sha256(path)


def load_tensors(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise UserError(f"{path} is damaged (checksum does not match config.json)")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path} is damaged: {exc}") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def staged_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``target`` when the block succeeds.

    With ``overwrite`` an existing target is replaced only after the new one is complete; if
    anything fails, the staging folder is removed and the target is left as it was.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists (pass --force to replace it)")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write into {parent}")
    stage = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
