"""Probes: measure attributes of images, registered by name.

A probe maps a batch of uint8 images (N, H, W, 3) to a :class:`ProbeResult`: one float array per
attribute (NaN where the attribute could not be measured) and a ``detected`` mask (for the face
probe, whether a face was found; generic probes detect every image).

Built in:

- ``image``: mean colour, brightness and contrast of any image (numpy only);
- ``face``: pose, mouth opening, skin tone and hair brightness from MediaPipe's face mesh
  (:mod:`clusterguide.evaluation.face`, needs ``pip install 'clusterguide[faces]'``; imported only
  when the probe is built, so the core never needs mediapipe).

The CLI's ``--probe`` choices come from :func:`probe_names`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


# ---- generic probes -------------------------------------------------------------------------

# Rec. 601 luma weights: brightness as people perceive it, good enough for summary statistics.
_LUMA = np.array([0.299, 0.587, 0.114])


class ImageProbe(Probe):
    """Statistics of the whole picture; every image is "detected"."""

    name = "image"
    description = "mean colour, brightness and contrast of the whole image (any generator)"
    attributes = (
        Attribute("red", "0-1", "mean red channel"),
        Attribute("green", "0-1", "mean green channel"),
        Attribute("blue", "0-1", "mean blue channel"),
        Attribute("brightness", "0-1", "mean luma (Rec. 601)"),
        Attribute("contrast", "0-1", "standard deviation of luma"),
    )

    def measure(self, images: np.ndarray) -> ProbeResult:
        x = check_images(images).astype(np.float64) / 255.0
        rgb = x.mean(axis=(1, 2))
        luma = x @ _LUMA
        values = {
            "red": rgb[:, 0],
            "green": rgb[:, 1],
            "blue": rgb[:, 2],
            "brightness": luma.mean(axis=(1, 2)),
            "contrast": luma.std(axis=(1, 2)),
        }
        return ProbeResult(values, np.ones(len(x), dtype=bool))


# ---- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeEntry:
    name: str
    factory: Callable[..., Probe]
    description: str
    extra: str | None = None  # the pip extra it needs, for the error message


_PROBES: dict[str, ProbeEntry] = {}


def register_probe(
    name: str, factory: Callable[..., Probe], description: str, extra: str | None = None
) -> None:
    _PROBES[name] = ProbeEntry(name, factory, description, extra)


def probe_names() -> list[str]:
    return sorted(_PROBES)


def probes() -> dict[str, ProbeEntry]:
    return dict(_PROBES)


def load_probe(name: str, **options) -> Probe:
    """Build the probe registered as ``name``; a missing optional dependency is a one-line UserError."""
    entry = _PROBES.get(name)
    if entry is None:
        raise UserError(f"unknown probe {name!r}; choose one of: {', '.join(probe_names())}")
    return entry.factory(**options)


def _face_probe(**options) -> Probe:
    from clusterguide.evaluation.face import FaceProbe  # imports mediapipe only when it is needed

    return FaceProbe(**options)


register_probe("image", ImageProbe, ImageProbe.description)
register_probe(
    "face",
    _face_probe,
    "face found, yaw/pitch/roll, mouth opening, skin tone (ITA), hair brightness (MediaPipe face mesh)",
    extra="faces",
)
