"""Face attributes from MediaPipe's face mesh, offline (``pip install 'clusterguide[faces]'``).

``mediapipe.solutions.face_mesh`` ships its detector and landmark models inside the wheel, so the
probe needs no network. mediapipe is imported when a :class:`FaceProbe` is built, not when this
module is: without it, building the probe (``load_probe("face")``) raises a one-line UserError.

How each attribute is measured, for one image:

1. The image is upscaled (bicubic) to at least ``size`` pixels: the default generator draws 64x64
   faces, below what the face detector was trained on.
2. The face mesh gives 468 landmarks: x, y in pixels and z (depth) on the scale of x.
3. Pose: a similarity transform (Umeyama) aligns rigid points of MediaPipe's canonical face model
   (:data:`CANONICAL`) to the landmarks; its rotation, as Tait-Bryan angles R = Rz(roll) Ry(yaw)
   Rx(pitch) in image axes, gives degrees. The conventions are about the image, so a mirrored
   image flips the sign of yaw and roll and keeps pitch:

   - ``yaw > 0``: the face turns toward the image's right (its nose points right of the camera);
   - ``pitch > 0``: the face tilts up;
   - ``roll > 0``: the face is turned clockwise in the picture.
4. ``mouth``: inner-lip gap over mouth width (0 closed, ~0.3 clearly open, ~0.6 wide open).
5. ``ita``: Individual Typology Angle of the skin, atan((L* - 50) / b*) in degrees, from the mean
   CIELAB colour of two cheek patches (only the cheek nearer the camera when |yaw| > 20, because the
   nose hides the other). Above 55 very light ... below -30 dark (Chardon et al. 1991).
6. ``hair``: mean L* (0 black .. 100 white) of a band just above the forehead, placed with the
   fitted pose; NaN when less than a third of the band is inside the picture.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
from PIL import Image

from clusterguide.errors import UserError
from clusterguide.evaluation.probe_base import Attribute, Probe, ProbeResult, check_images


def _face_mesh_module():
    """``mediapipe.solutions.face_mesh``, or a one-line UserError saying what to install."""
    try:
        import mediapipe as mp
    except ImportError as exc:  # missing package, or OpenCV without its system libraries (libGL)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"the face probe needs mediapipe 0.10.14: pip install 'clusterguide[faces]' (import failed: {why})"
        ) from None
    return mp.solutions.face_mesh


# Rigid landmarks of MediaPipe's canonical face model (mediapipe/modules/face_geometry/data/
# canonical_face_model.obj, Apache-2.0; landmark i is vertex i+1), in its own axes: x toward the
# image's right for a frontal face, y up, z toward the camera, units about a centimetre. Mouth and
# chin points are left out because they move when the mouth opens.
CANONICAL: dict[int, tuple[float, float, float]] = {
    1: (0.0, -1.126865, 7.475604),  # nose tip
    4: (0.0, -0.463170, 7.586580),
    6: (0.0, 2.473255, 5.788627),  # nose bridge
    9: (0.0, 4.885979, 5.385258),
    10: (0.0, 8.261778, 4.481535),  # top of the face oval
    151: (0.0, 6.545390, 5.027311),
    168: (0.0, 3.271027, 5.236015),
    33: (-4.445859, 2.663991, 3.173422),  # outer eye corners
    263: (4.445859, 2.663991, 3.173422),
    133: (-1.856432, 2.585245, 3.757904),  # inner eye corners
    362: (1.856432, 2.585245, 3.757904),
    129: (-1.785794, -0.978284, 4.850470),  # nose wings
    358: (1.785794, -0.978284, 4.850470),
    50: (-4.765501, -0.701554, 3.534632),  # cheeks
    280: (4.765501, -0.701554, 3.534632),
    105: (-3.986562, 5.109487, 4.466315),  # brows
    334: (3.986562, 5.109487, 4.466315),
    70: (-5.720968, 4.254584, 2.830852),
    300: (5.720968, 4.254584, 2.830852),
    127: (-7.743095, 2.364999, -2.005167),  # face outline at the temples
    356: (7.743095, 2.364999, -2.005167),
    234: (-7.664182, 0.673132, -2.435867),
    454: (7.664182, 0.673132, -2.435867),
}
_RIGID = np.array(list(CANONICAL), dtype=np.int64)
# Canonical axes (x right, y up, z to camera) -> image axes (x right, y down, z away from camera).
_TO_IMAGE = np.array([1.0, -1.0, -1.0])
_CANON_IMG = np.array(list(CANONICAL.values())) * _TO_IMAGE

# Landmarks of the mouth: inner upper lip, inner lower lip, the two corners.
_LIP_TOP, _LIP_BOTTOM, _MOUTH_LEFT, _MOUTH_RIGHT = 13, 14, 61, 291


def _patch(center: tuple[float, float, float], half_w: float, half_h: float, steps: int = 7) -> np.ndarray:
    """A grid of canonical points (in image axes) around ``center``, on a plane facing the camera."""
    xs = np.linspace(center[0] - half_w, center[0] + half_w, steps)
    ys = np.linspace(center[1] - half_h, center[1] + half_h, steps)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, center[2])], axis=1)
    return pts * _TO_IMAGE


# Cheek patches (subject's right = image left for a frontal face) and the band above the forehead.
_CHEEK_RIGHT = _patch((-4.3, -1.0, 3.6), 1.1, 1.0)
_CHEEK_LEFT = _patch((4.3, -1.0, 3.6), 1.1, 1.0)
_HAIR = _patch((0.0, 12.0, 2.5), 4.5, 1.5, steps=11)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity transform dst ~ s R src + t by least squares (Umeyama 1991); R is a rotation."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    fix = np.diag([1.0, 1.0, d])
    rot = vt.T @ fix @ u.T
    scale = float((sig * np.diag(fix)).sum() / (a**2).sum())
    return scale, rot, mu_d - scale * rot @ mu_s


def euler_degrees(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in this module's conventions from a rotation in image axes."""
    beta = math.asin(max(-1.0, min(1.0, -rot[2, 0])))  # about y (down): positive turns the nose left
    alpha = math.atan2(rot[2, 1], rot[2, 2])  # about x (right): positive tips the nose down
    gamma = math.atan2(rot[1, 0], rot[0, 0])  # about z (into the picture): positive is clockwise
    return -math.degrees(beta), -math.degrees(alpha), math.degrees(gamma)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> CIELAB (D65)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Pixels (float RGB in [0, 1]) at the points of ``xy`` that fall inside the image."""
    h, w = image.shape[:2]
    ix, iy = np.round(xy[:, 0]).astype(np.int64), np.round(xy[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    return image[iy[inside], ix[inside]].astype(np.float64) / 255.0


@contextlib.contextmanager
def _quiet_native_logs():
    """Hide the TFLite/absl lines mediapipe writes straight to file descriptor 2 at start-up."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceProbe(Probe):
    name = "face"
    description = "MediaPipe face mesh: pose, mouth opening, skin tone (ITA), hair brightness"
    attributes = (
        Attribute("yaw", "deg", "left-right turn; > 0 turned toward the image's right"),
        Attribute("pitch", "deg", "up-down tilt; > 0 looking up"),
        Attribute("roll", "deg", "in-plane rotation; > 0 clockwise"),
        Attribute("mouth", "ratio", "inner-lip gap / mouth width; 0 closed, ~0.3 open"),
        Attribute("ita", "deg", "skin tone, Individual Typology Angle of the cheeks; higher is lighter"),
        Attribute("hair", "L*", "lightness of the band above the forehead; 0 black, 100 white"),
    )

    def __init__(self, size: int = 192, min_detection_confidence: float = 0.5) -> None:
        self.size = int(size)
        self._mesh = None
        face_mesh = _face_mesh_module()
        with _quiet_native_logs():
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=min_detection_confidence,
            )
            # the first call loads the models and prints the rest of the start-up noise
            self._landmarks(np.zeros((self.size, self.size, 3), np.uint8))

    def close(self) -> None:
        mesh, self._mesh = getattr(self, "_mesh", None), None
        if mesh is not None:
            mesh.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn mediapipe down already
            self.close()

    # ---- one image --------------------------------------------------------------------------
    def _landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """(468, 3) landmarks in pixels of ``image`` (z on the scale of x), or None."""
        if self._mesh is None:
            raise RuntimeError("this FaceProbe was closed")
        h, w = image.shape[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # protobuf's deprecation notice per call
            result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return None
        pts = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        return pts * np.array([w, h, w])

    def upscale(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if min(h, w) >= self.size:
            return np.ascontiguousarray(image)
        f = self.size / min(h, w)
        return np.asarray(
            Image.fromarray(image).resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC)
        )

    def measure_one(self, image: np.ndarray) -> dict[str, float] | None:
        """Attributes of one (H, W, 3) uint8 image, or None when no face is found."""
        big = self.upscale(image)
        pts = self._landmarks(big)
        if pts is None:
            return None
        scale, rot, shift = umeyama(_CANON_IMG, pts[_RIGID])
        yaw, pitch, roll = euler_degrees(rot)

        def project(canon: np.ndarray) -> np.ndarray:
            return (scale * canon @ rot.T + shift)[:, :2]

        width = np.linalg.norm(pts[_MOUTH_LEFT] - pts[_MOUTH_RIGHT])
        mouth = float(np.linalg.norm(pts[_LIP_TOP] - pts[_LIP_BOTTOM]) / width) if width > 0 else float("nan")

        # The cheek nearer the camera: turned toward the image's right shows the subject's right cheek.
        if abs(yaw) <= 20:
            cheeks = np.concatenate([project(_CHEEK_RIGHT), project(_CHEEK_LEFT)])
        else:
            cheeks = project(_CHEEK_RIGHT if yaw > 0 else _CHEEK_LEFT)
        skin = _sample(big, cheeks)
        ita = float("nan")
        if len(skin):
            lab = srgb_to_lab(skin).mean(0)
            # skin has b* > 0; clipping keeps greyish or bluish patches at the ends of (-90, 90)
            ita = math.degrees(math.atan((lab[0] - 50.0) / max(float(lab[2]), 1e-3)))

        band = project(_HAIR)
        hair_px = _sample(big, band)
        hair = float(srgb_to_lab(hair_px)[:, 0].mean()) if len(hair_px) >= len(band) / 3 else float("nan")
        return {"yaw": yaw, "pitch": pitch, "roll": roll, "mouth": mouth, "ita": ita, "hair": hair}

    def measure(self, images: np.ndarray) -> ProbeResult:
        images = check_images(images)
        names = self.attribute_names()
        values = {a: np.full(len(images), np.nan) for a in names}
        detected = np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            found = self.measure_one(image)
            if found is None:
                continue
            detected[i] = True
            for a in names:
                values[a][i] = found[a]
        return ProbeResult(values, detected)
