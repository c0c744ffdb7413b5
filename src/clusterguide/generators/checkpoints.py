"""Reading checkpoint files safely and checking them: the helpers every generator family shares.

- :func:`load_weights_only`: ``torch.load(weights_only=True)`` on CPU, every refusal or damage as one
  :class:`~clusterguide.errors.UserError` line (pickles proper are opened only in :mod:`convert`).
- :func:`load_state_dict_strict`: a state dict into a network, every key and shape checked, the first
  missing, unexpected or misshapen key named.
- :func:`sha256_file` (the one implementation, :func:`clusterguide.artifacts.sha256`) and the
  recorded checksum kept beside a downloaded file (``FILE.sha256``): a file with no published digest
  is checked on every use against the digest recorded at its first download.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clusterguide.artifacts import sha256 as sha256_file
from clusterguide.errors import UserError

__all__ = [
    "check_family",
    "family_of",
    "load_state_dict_strict",
    "load_weights_only",
    "read_recorded_sha256",
    "record_sha256",
    "sha256_file",
]


def _numpy_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found: list = [np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found.append((core.multiarray.scalar, f"{module}.scalar"))
    found += [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return found


def load_weights_only(path: Path, what: str, stand_ins: Sequence[tuple[type, str]] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors, plain containers and numpy scalars
    only, plus inert ``stand_ins`` received under a foreign class name. Any refusal or damage is one
    UserError line (torch's own message is a page long)."""
    _refuse_plain_pickle(Path(path), what)
    try:
        with torch.serialization.safe_globals([*_numpy_globals(), *stand_ins]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; pass the checkpoint file") from None
    except Exception as exc:  # weights_only refuses anything but the allowed types; files may be damaged
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            name = refused.group(1)
            if name == _PGAN_CONFIG:
                raise UserError(f"{path} is {_FAMILY_HINTS['pgan']}") from None
            hint = _convert_hint(path) if name.startswith(("torch_utils.", "dnnlib.")) else ""
            raise UserError(
                f"cannot read {what} {path}: it is a pickle that refers to {name}, and clusterguide "
                f"opens only plain weights (pickles run code){hint}"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if _looks_truncated(exc, text):
            raise UserError(
                f"{what} {path} is truncated or damaged ({first}); download or copy it again"
            ) from None
        raise UserError(f"cannot read {what} {path}: {first}") from None


_PGAN_CONFIG = "models.utils.config.BaseConfig"  # pytorch_GAN_zoo's config object in its .pth files
# torch.save's legacy (pre-zip) format starts with this pickled magic number; other pickles do not
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_SCAN_BYTES = 8 << 20  # where a network pickle names its classes (near the start)


def _convert_hint(path: Path) -> str:
    return (
        "; an NVIDIA network pickle is converted once with "
        f"`clusterguide convert stylegan2 {path} --trust-pickle --out DIR`"
    )


def _refuse_plain_pickle(path: Path, what: str) -> None:
    """A plain pickle (not a torch.save file) is refused before torch sees it, naming what it is."""
    if not path.is_file() or zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(_SCAN_BYTES)
    if not head.startswith(b"\x80") or head.startswith(_LEGACY_TORCH_MAGIC):
        return
    nvidia = b"torch_utils.persistence" in head or b"dnnlib" in head
    suggest = nvidia or path.suffix == ".pkl"  # NVIDIA's file extension
    raise UserError(
        f"cannot read {what} {path}: it is a pickle"
        + (" of NVIDIA networks (it carries their source code)" if nvidia else "")
        + ", and clusterguide opens only plain weights (pickles run code)"
        + (_convert_hint(path) if suggest else "")
    )


def _looks_truncated(exc: Exception, text: str) -> bool:
    markers = ("central directory", "zip archive", "truncated", "unexpected EOF", "Ran out of input")
    return isinstance(exc, EOFError) or any(m in text for m in markers)


_FAMILY_HINTS = {
    "pgan": "a PGAN (pytorch_GAN_zoo) checkpoint: use --generator pgan",
    "stylegan2": "a StyleGAN2 checkpoint: use --generator stylegan2",
    "biggan": "a BigGAN (pytorch-pretrained-BigGAN) checkpoint: use --generator biggan with its folder",
    "digiface-dcgan": "a DCGAN checkpoint: use --generator digiface-dcgan",
}


def family_of(blob: object) -> str | None:
    """The generator family whose checkpoint ``blob`` (a loaded file) is, by its keys; None if unknown."""
    if not isinstance(blob, dict):
        return None
    keys = {k for k in blob if isinstance(k, str)}
    if "g_ema" in keys or {"style.1.weight", "input.input"} <= keys:
        return "stylegan2"
    if any(k.startswith("mapping.") for k in keys) and any(k.startswith("synthesis.") for k in keys):
        return "stylegan2"
    if keys & {"avgG", "netG"} or any(k.startswith("formatLayer.") for k in keys):
        return "pgan"
    if "embeddings.weight" in keys and any(k.startswith("generator.") for k in keys):
        return "biggan"
    if "netG_state_dict" in keys or "main.0.weight" in keys:
        return "digiface-dcgan"
    return None


def check_family(blob: object, family: str, path: Path) -> None:
    """Stop with one line when ``blob`` is recognisably another family's checkpoint."""
    other = family_of(blob)
    if other is not None and other != family:
        raise UserError(f"{path} is {_FAMILY_HINTS[other]} (not --generator {family})")


def load_state_dict_strict(module: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``module``, every key and shape checked, as one clear UserError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(
                f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
            )
        raise UserError(f"checkpoint {source} does not match the architecture: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_recorded_sha256(path: Path) -> str | None:
    """The digest recorded beside ``path`` at its first download, if any."""
    side = _sidecar(path)
    return side.read_text().strip() if side.is_file() else None


def record_sha256(path: Path, digest: str) -> None:
    """Record ``digest`` beside ``path`` (``path`` need not exist yet: it may be moved in next)."""
    _sidecar(path).write_text(digest + "\n")
