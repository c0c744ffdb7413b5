"""Atomic writes and the run folder's files.

Nothing the library writes is ever half-written: files go to a temporary name beside their target
and are moved into place with ``os.replace`` only once complete; a run folder is assembled under a
temporary name and renamed as a whole. A run folder holds

- ``config.json``   generator spec and weights checksum, fit and mapping settings, the cluster tree,
                    package version, and the sha256 of every tensor file (a damaged folder is caught
                    at load);
- ``clusters.safetensors``  the centroids of every split of the tree;
- ``mappings.safetensors``  the weights of every cluster's mapping network (with its shrink, where one
                            was chosen after training);
- ``names.json``    names people gave to clusters (written on its own, atomically);
- ``metrics.json``  how well each cluster's mapping stays in its cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
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
CORRECTIONS = "corrections.safetensors"  # the corrected sampler's moment maps (absent in older runs)
NAMES = "names.json"
METRICS = "metrics.json"
FORMAT = "clusterguide-run"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    # Not mkstemp: its files are 0600 and would stay so after the rename. Created with 0666, the
    # file gets the permissions the user's umask gives any new file, so runs can be shared.
    while True:
        tmp_path = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror}") from None
    mode = tmp_path.stat().st_mode & 0o777
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # writers that replace the file (safetensors) leave theirs at 0600
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


def folder_format(path: str | Path) -> str | None:
    """The ``format`` a clusterguide folder's ``config.json`` declares, or None for any other folder."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    fmt = config.get("format") if isinstance(config, dict) else None
    return fmt if isinstance(fmt, str) and fmt.startswith("clusterguide") else None


def check_folder_target(target: str | Path, overwrite: bool = False, kind: str | None = None) -> Path:
    """Check, before any work, that a folder can be written at ``target``; returns it resolved.

    An existing ``target`` is refused unless ``overwrite``; even then only a folder clusterguide
    wrote (its ``config.json`` names a clusterguide format, ``kind`` if given) or an empty folder is
    replaced: anything else could be someone's data. The nearest existing parent must be a writable
    folder (tried, not guessed from permission bits, which say nothing for root or read-only mounts).
    """
    shown = Path(target)
    target = Path(os.path.abspath(shown))  # "." and "sub/.." become real names; symlinks stay links
    if target.parent == target:
        raise UserError(f"cannot write a folder at {shown}")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UserError(f"{shown} already exists (pass overwrite=True to replace it)")
        if target.is_symlink() or not target.is_dir():
            raise UserError(f"{shown} is not a folder; refusing to replace it")
        fmt = folder_format(target)
        try:
            empty = not any(target.iterdir())
        except OSError:
            empty = False
        if not empty and (fmt is None or (kind is not None and fmt != kind)):
            what = "a clusterguide run folder" if kind == FORMAT else f"a {kind or 'clusterguide'} folder"
            raise UserError(f"{shown} is not {what}; refusing to replace it (nothing was changed)")
        cwd, real = Path.cwd(), Path(os.path.realpath(target))
        if cwd == real or real in cwd.parents:
            raise UserError(f"cannot replace {shown}: it holds the current folder")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    check_writable(parent, shown)
    return target


def check_writable(folder: Path, shown: str | Path) -> None:
    """``folder`` is a folder that files can be created in: tried, not guessed from permission
    bits (which say nothing for root, read-only mounts or special file systems)."""
    if not folder.is_dir():
        raise UserError(f"cannot write {shown}: {folder} is not a folder")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".clusterguide-probe-", dir=folder))
    except OSError as exc:
        raise UserError(f"cannot write {shown}: folder {folder} is not writable ({exc.strerror})") from None
    probe.rmdir()


# Staging and replaced folders carry the writer's host and process id, so a later writer into the
# same parent can tell a folder left by a killed process from one still being written.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _leftover_name(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_stages(parent: str | Path) -> list[Path]:
    """Remove staging folders of dead processes of this host in ``parent``; returns what went.

    A replaced folder (``.NAME.old-*``) whose target is missing is the only copy left (the writer
    died between its two renames): it is moved back instead.
    """
    parent, host = Path(parent), _host_tag()
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _LEFTOVER.fullmatch(entry.name)
        if not m or m["host"] != host or _alive(int(m["pid"])) or entry.is_symlink() or not entry.is_dir():
            continue
        target = parent / m["name"]
        try:
            if m["kind"] == "old" and not target.exists() and not target.is_symlink():
                os.replace(entry, target)
                continue
            shutil.rmtree(entry)
        except OSError:
            continue
        removed.append(entry)
    return removed


@contextmanager
def staged_dir(target: str | Path, overwrite: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``target`` when the block succeeds.

    With ``overwrite`` an existing target is replaced only after the new one is complete, and only
    if it is a folder clusterguide wrote (see :func:`check_folder_target`); if anything fails, the
    staging folder is removed and the target is left as it was. Staging folders that killed
    processes left in the same parent are removed first.
    """
    target = check_folder_target(target, overwrite=overwrite, kind=kind)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {parent}: {exc.strerror}") from None
    remove_stale_stages(parent)
    stage = _leftover_name(target, "tmp")
    stage.mkdir()
    try:
        yield stage
        if target.exists():
            old = _leftover_name(target, "old")
            os.replace(target, old)
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
