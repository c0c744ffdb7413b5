"""Target conditions such as ``yaw>10``: parsed once, checked against a probe's measurements.

A target is ``ATTRIBUTE OP NUMBER`` with OP one of ``>``, ``>=``, ``<``, ``<=`` (spaces allowed).
An image meets it only when the probe detected what it measures and the value is defined, so an
image without a face counts as a miss, as in the paper's Table 2.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from clusterguide.errors import UserError
from clusterguide.evaluation.probe_base import ProbeResult

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|=>|=<|>|<|=)\s*(.*?)\s*$")
_EXAMPLE = 'e.g. "yaw>10", "yaw<-10" or "mouth>=0.3"'


@dataclass(frozen=True)
class Target:
    attribute: str  # a probe attribute name
    op: str  # ">", ">=", "<" or "<="
    threshold: float

    def __str__(self) -> str:
        return f"{self.attribute}{self.op}{self.threshold:g}"

    @property
    def sign(self) -> int:
        """+1 when larger values meet the target, -1 when smaller ones do."""
        return 1 if self.op in (">", ">=") else -1

    def holds(self, result: ProbeResult) -> np.ndarray:
        """(N,) bool: detected, measured, and meeting the condition."""
        if self.attribute not in result.values:
            raise UserError(
                f"the probe measured no {self.attribute!r}; it measured: {', '.join(result.values)}"
            )
        values = np.asarray(result.values[self.attribute], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = _OPS[self.op](values, self.threshold)
        return np.asarray(result.detected, dtype=bool) & ~np.isnan(values) & ok

    def share(self, result: ProbeResult) -> float:
        """Fraction of all images (misses included) that meet the target."""
        return float(self.holds(result).mean()) if len(result) else float("nan")

    def to_json(self) -> dict:
        return {"attribute": self.attribute, "op": self.op, "threshold": self.threshold, "text": str(self)}


def parse_target(text: str, attributes: Iterable[str] | None = None) -> Target:
    """Parse ``"yaw>10"``; ``attributes`` (the probe's names), when given, are checked too."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"empty target; write ATTRIBUTE OP NUMBER, {_EXAMPLE}")
    match = _PATTERN.match(text)
    if match is None:
        if re.match(r"^\s*[-+.\d]", text):
            raise UserError(f"target {text!r}: put the attribute first, {_EXAMPLE}")
        raise UserError(f"target {text!r} is not ATTRIBUTE OP NUMBER with OP one of > >= < <=; {_EXAMPLE}")
    name, op, number = match.groups()
    if op in ("=>", "=<"):
        raise UserError(f"target {text!r}: write {op[::-1]!r}, not {op!r}")
    if op in ("=", "==", "!="):
        raise UserError(
            f"target {text!r}: measured values are continuous, so compare with > >= < or <= instead of {op!r}"
        )
    if not number:
        raise UserError(f"target {text!r} has no number after {op!r}; {_EXAMPLE}")
    try:
        threshold = float(number)
    except ValueError:
        raise UserError(f"target {text!r}: {number!r} is not a number") from None
    if not math.isfinite(threshold):
        raise UserError(f"target {text!r}: the threshold must be a finite number")
    if attributes is not None:
        known = list(attributes)
        if name not in known:
            raise UserError(
                f"target {text!r}: unknown attribute {name!r}; the probe measures: {', '.join(known)}"
            )
    return Target(name, op, threshold)
