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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clusterguide.artifacts import sha256 as sha256_file
from clusterguide.errors import UserError

__all__ = [
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
    try:
        with torch.serialization.safe_globals([*_numpy_globals(), *stand_ins]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except Exception as exc:  # weights_only refuses anything but the allowed types; files may be damaged
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise UserError(
                f"cannot read {what} {path}: it refers to {refused.group(1)}, which is not loaded"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise UserError(f"cannot read {what} {path}: {first}") from None


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
