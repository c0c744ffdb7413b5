"""What every probe is: the attribute record, the result of a batch, the base class, batching.

Kept apart from :mod:`clusterguide.evaluation.probes` (the built-in probes and the registry) so
that probe implementations such as :mod:`clusterguide.evaluation.face` depend on this module only
and the registry can import them without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import numpy as np

from clusterguide.errors import UserError
from clusterguide.progress import progress


@dataclass(frozen=True)
class Attribute:
    """One number a probe measures per image."""

    name: str  # used in targets ("yaw>10") and table columns
    unit: str  # "deg", "L*", "" ...
    description: str  # one line, shown in reports


@dataclass
class ProbeResult:
    values: dict[str, np.ndarray]  # attribute -> (N,) float64, NaN where not measured
    detected: np.ndarray  # (N,) bool: the probe found what it measures (a face, ...)

    def __len__(self) -> int:
        return int(self.detected.shape[0])

    @property
    def detection_rate(self) -> float:
        return float(self.detected.mean()) if len(self) else float("nan")

    @classmethod
    def concat(cls, parts: list[ProbeResult], attributes: Iterable[str]) -> ProbeResult:
        names = list(attributes)
        if not parts:
            return cls({a: np.zeros(0) for a in names}, np.zeros(0, dtype=bool))
        return cls(
            {a: np.concatenate([p.values[a] for p in parts]) for a in names},
            np.concatenate([p.detected for p in parts]),
        )


class Probe:
    """Base class: subclasses set ``name``, ``description``, ``attributes`` and implement ``measure``."""

    name: str = "probe"
    description: str = ""
    attributes: tuple[Attribute, ...] = ()

    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise UserError(
            f"probe {self.name!r} measures no {name!r}; it measures: {', '.join(self.attribute_names())}"
        )

    def measure(self, images: np.ndarray) -> ProbeResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release native resources (the face probe's graph); the probe is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_images(images: np.ndarray) -> np.ndarray:
    """The one image format probes accept: (N, H, W, 3) uint8, C-contiguous."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"probes take (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images)


def measure(probe: Probe, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> ProbeResult:
    """Run ``probe`` over ``images`` in batches (with a progress bar that can be silenced)."""
    images = check_images(images)
    starts = range(0, len(images), batch_size)
    parts = [
        probe.measure(images[s : s + batch_size])
        for s in progress(starts, total=len(starts), desc=desc or f"probe {probe.name}", unit="batch")
    ]
    return ProbeResult.concat(parts, probe.attribute_names())
