"""Checks of the values that enter clusterguide: CLI options, API arguments, run files, HTTP fields.

Each check takes the value and the name the user knows it by (``--pool``, ``seed``,
``config.json: fit.samples``) and either returns the value or raises a one-line
:class:`~clusterguide.errors.UserError` naming it; the library inside trusts what passed.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from clusterguide.errors import UserError

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: newlines, escapes, terminal codes


def whole(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number (not a bool, not a float) within ``lo .. hi`` (inclusive)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be a whole number (got {_shown(value)})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"at least {lo}" if lo is not None and value < lo else f"at most {hi}"
        raise UserError(f"{name} must be {bound} (got {value})")
    return value


def real(value: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number within ``lo .. hi``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number (got {_shown(value)})")
    value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"at least {lo}" if lo is not None and value < lo else f"at most {hi}"
        raise UserError(f"{name} must be {bound} (got {value:g})")
    return value


def text(value: Any, name: str, max_chars: int | None = None, control: bool = False) -> str:
    """A string, of at most ``max_chars`` characters, without control characters unless allowed."""
    if not isinstance(value, str):
        raise UserError(f"{name} must be a string (got {_shown(value)})")
    if max_chars is not None and len(value) > max_chars:
        raise UserError(f"{name} is longer than {max_chars} characters")
    if not control and CONTROL.search(value):
        raise UserError(f"{name} contains control characters (newlines, escapes): {value[:40]!r}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false (got {_shown(value)})")
    return value


def obj(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{name} must be a JSON object (got {_kind(value)})")
    return value


def array(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"{name} must be a JSON list (got {_kind(value)})")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, numbers.Number) else type(value).__name__
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def device(value: Any, name: str = "--device") -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    import torch

    text(value, name, 20)
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d{1,3}))?", value)
    if not m or (m[2] is not None and m[1] != "cuda"):
        raise UserError(f"{name} must be cpu, cuda, cuda:N or mps (got {value!r})")
    if m[1] == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{name} {value}: no CUDA device is available")
        if m[2] is not None and int(m[2]) >= count:
            raise UserError(
                f"{name} {value}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    if m[1] == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"{name} mps: no Apple GPU (MPS) is available")
    return value
