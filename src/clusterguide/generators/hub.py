"""Checkpoints on the Hugging Face Hub: ``--checkpoint hf:OWNER/REPO/FILE[@REVISION]``, every family.

Files are fetched with ``huggingface_hub`` (imported only when such a checkpoint is named): its
cache (``HF_HOME`` / ``HF_HUB_CACHE``), its offline mode (``HF_HUB_OFFLINE=1``: the cache only), its
login for gated or private repositories, and its progress bars (silenced with ``-q`` like ours).
The environment is read when a file is fetched, not when a module is imported.

A family whose checkpoint is a folder names its files (``companions``: BigGAN's
``pytorch_model.bin`` + ``config.json``, a converted StyleGAN2's ``config.json`` +
``model.safetensors``); naming either one, or only ``OWNER/REPO``, fetches both and gives the folder.

Checks: the cache stores every file under its content address (sha256 for large files, the git blob
hash for small ones); each fetched file is checked against it, so a truncated or altered file in
the cache is caught. A failed fetch (offline and not cached, unknown repository, file or revision)
is one :class:`~clusterguide.errors.UserError` line, and the repository folder the attempt created
in the cache is removed again, so nothing half-made is left.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterguide.errors import UserError

PREFIX = "hf:"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubFile:
    """``hf:OWNER/REPO/FILE@REVISION`` taken apart (``filename`` may be empty, or in subfolders)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        path = f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id
        return f"{PREFIX}{path}" + (f"@{self.revision}" if self.revision else "")

    @property
    def folder(self) -> str:
        """The file's folder inside the repository ('' for the top level)."""
        return self.filename.rsplit("/", 1)[0] if "/" in self.filename else ""


def is_hub(checkpoint: str | None) -> bool:
    return bool(checkpoint) and str(checkpoint).startswith(PREFIX)


def parse(checkpoint: str) -> HubFile:
    """``hf:OWNER/REPO[/FILE][@REVISION]``; one line naming the problem otherwise."""
    text = checkpoint[len(PREFIX) :]
    revision = None
    if "@" in text:
        text, revision = text.rsplit("@", 1)
        if not revision:
            raise UserError(f"{checkpoint}: nothing after '@' (give a branch, tag or commit)")
    parts = text.strip("/").split("/")
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]) or "" in parts:
        raise UserError(f"{checkpoint} is not of the form hf:OWNER/REPO/FILE[@REVISION]")
    return HubFile(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision)


def cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def fetch(checkpoint: str, companions: tuple[str, ...] = ()) -> Path:
    """The local path of ``checkpoint`` (``hf:...``): a file, or for a folder family the folder
    holding all ``companions``."""
    ref = parse(checkpoint)
    basename = ref.filename.rsplit("/", 1)[-1]
    if companions and (not ref.filename or basename in companions):
        folder = ref.folder if ref.filename else ""
        paths = [_download(ref, f"{folder}/{name}" if folder else name) for name in companions]
        return paths[0].parent
    if not ref.filename:
        raise UserError(f"{checkpoint}: name the checkpoint file (hf:OWNER/REPO/FILE)")
    return _download(ref, ref.filename)


def _repo_folder(root: Path, repo_id: str) -> list[Path]:
    name = "models--" + repo_id.replace("/", "--")
    return [root / name, root / ".locks" / name]


def _download(ref: HubFile, filename: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ModuleNotFoundError:
        raise UserError(f"{ref} needs huggingface_hub: pip install huggingface_hub") from None
    root = cache_dir()
    # what this attempt may create: the repository's folders, and the cache itself if it is new
    fresh = [p for p in (*_repo_folder(root, ref.repo_id), root, *root.parents) if not p.exists()]
    where = f"{ref.repo_id}/{filename}" + (f"@{ref.revision}" if ref.revision else "")
    try:
        local = huggingface_hub.hf_hub_download(
            ref.repo_id,
            filename,
            revision=ref.revision,
            cache_dir=root,
            local_files_only=offline(),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            tqdm_class=_progress_class(),
        )
    except Exception as exc:
        for path in fresh:  # nothing half-made is left in the cache
            if path in (root, *root.parents):
                _remove_if_only_markers(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
        raise UserError(_explain(exc, errors, where, root)) from None
    path = Path(str(local))
    check_content_address(path)
    return path


def _remove_if_only_markers(folder: Path) -> None:
    """Remove a cache folder this attempt created if it holds nothing but empty folders and
    huggingface_hub's ``CACHEDIR.TAG``."""
    if not folder.is_dir():
        return
    files = [f for f in folder.rglob("*") if not f.is_dir()]
    if all(f.name == "CACHEDIR.TAG" for f in files):
        shutil.rmtree(folder, ignore_errors=True)


def _explain(exc: Exception, errors: Any, where: str, root: Path) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):  # before EntryNotFound
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        return (
            f"hf:{where} is not in the Hugging Face cache {root} and {why}; fetch it once with a connection"
        )
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"hf:{where}: the repository is gated; accept its terms on the Hub and log in (`hf auth login`)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"hf:{where}: no such Hugging Face repository (or it is private: log in with `hf auth login`)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"hf:{where}: no such revision in the repository"
    if isinstance(exc, errors.EntryNotFoundError | getattr(errors, "RemoteEntryNotFoundError", ())):
        return f"hf:{where}: no such file in the repository"
    if isinstance(exc, errors.HFValidationError):
        return f"hf:{where}: {first}"
    return f"cannot download hf:{where}: {first}"


def _progress_class() -> type:
    """huggingface_hub's tqdm bars, silenced when clusterguide's are (``-q``, or not a terminal)."""
    from tqdm.auto import tqdm

    from clusterguide.progress import enabled

    class Bars(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = kwargs.get("disable") or not enabled()
            super().__init__(*args, **kwargs)

    return Bars


def check_content_address(path: Path) -> None:
    """A cached file must hash to the name of its blob (sha256 for large files, git's blob sha1
    for small ones); files not stored under a content address are left alone."""
    blob = path.resolve()
    name = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = _hash(blob, hashlib.sha256())
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = _hash(blob, hashlib.sha1(f"blob {blob.stat().st_size}\0".encode(), usedforsecurity=False))
    else:
        return
    if digest != name:
        raise UserError(
            f"{path} in the Hugging Face cache is damaged (its content does not match {name[:12]}...); "
            f"delete {blob} and fetch it again"
        )


def _hash(path: Path, h: Any) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
