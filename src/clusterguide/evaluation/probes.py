"""Probes: measure attributes of images, registered by name.

A probe maps a batch of uint8 images (N, H, W, 3) to a :class:`ProbeResult`: one float array per
attribute (NaN where the attribute could not be measured) and a ``detected`` mask (for the face
probe, whether a face was found; generic probes detect every image).

Built in:

- ``image``: mean colour, brightness and contrast of any image (numpy only);
- ``face``: pose, mouth opening, skin tone and hair brightness from MediaPipe's face mesh
  (:mod:`clusterguide.evaluation.face`, needs ``pip install 'clusterguide[faces]'``; mediapipe is
  imported only when a face probe is built, so the core never needs it).

The base types live in :mod:`clusterguide.evaluation.probe_base` (re-exported here); probe modules
import only that, so imports run one way: ``probes -> face -> probe_base``.

The CLI's ``--probe`` choices come from :func:`probe_names`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clusterguide.errors import UserError
from clusterguide.evaluation.face import FaceProbe
from clusterguide.evaluation.probe_base import Attribute, Probe, ProbeResult, check_images, measure

__all__ = [
    "Attribute",
    "FaceProbe",
    "ImageProbe",
    "Probe",
    "ProbeEntry",
    "ProbeResult",
    "check_images",
    "load_probe",
    "measure",
    "probe_names",
    "probes",
    "register_probe",
]


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


register_probe("image", ImageProbe, ImageProbe.description)
register_probe(
    "face",
    FaceProbe,
    "face found, yaw/pitch/roll, mouth opening, skin tone (ITA), hair brightness (MediaPipe face mesh)",
    extra="faces",
)
