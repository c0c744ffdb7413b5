"""Probes on images with a known answer: generic statistics, and face pose from MediaPipe's mesh."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

from clusterguide.errors import UserError
from clusterguide.evaluation.probes import ImageProbe, ProbeResult, load_probe, measure, probe_names

# ---- generic probes and the registry ------------------------------------------------------------


def test_image_probe_on_flat_and_split_images():
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    split = np.zeros((1, 8, 8, 3), np.uint8)
    split[:, :4] = 255  # top half white, bottom half black
    result = ImageProbe().measure(np.concatenate([red, split]))
    assert result.detected.all()
    v = result.values
    assert v["red"][0] == 1.0 and v["green"][0] == 0.0 and v["blue"][0] == 0.0
    assert v["brightness"][0] == pytest.approx(0.299)
    assert v["contrast"][0] == pytest.approx(0.0)
    assert v["brightness"][1] == pytest.approx(0.5)
    assert v["contrast"][1] == pytest.approx(0.5)


def test_measure_in_batches_equals_one_pass():
    images = np.random.default_rng(0).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    probe = ImageProbe()
    whole = probe.measure(images)
    batched = measure(probe, images, batch_size=3)
    for name in probe.attribute_names():
        assert np.allclose(whole.values[name], batched.values[name])
    assert len(batched) == 10 and batched.detection_rate == 1.0


def test_probes_take_only_uint8_rgb_batches():
    with pytest.raises(ValueError, match="uint8"):
        ImageProbe().measure(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ImageProbe().measure(np.zeros((8, 8, 3), np.uint8))


def test_registry_names_and_errors():
    assert {"image", "face"} <= set(probe_names())
    with pytest.raises(UserError, match="unknown probe 'nose'.*face, image"):
        load_probe("nose")
    probe = load_probe("image")
    assert probe.attribute("contrast").unit == "0-1"
    with pytest.raises(UserError, match="measures no 'yaw'"):
        probe.attribute("yaw")


def test_face_probe_without_mediapipe_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    monkeypatch.delitem(sys.modules, "clusterguide.evaluation.face", raising=False)
    with pytest.raises(UserError, match=r"clusterguide\[faces\]"):
        load_probe("face")


def test_concat_of_nothing_is_empty():
    empty = ProbeResult.concat([], ["a"])
    assert len(empty) == 0 and empty.values["a"].shape == (0,)


# ---- the face probe -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face():
    pytest.importorskip("mediapipe", reason="pip install 'clusterguide[faces]' (make test does)")
    probe = load_probe("face")
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def faces():
    """48 samples of the default generator (seed 0): enough to hold turned, frontal, open- and
    closed-mouthed faces. Which index is which is derived from the probe in ``picks``, never
    hard-coded: a change of generator weights or latent stream must not silently break the tests."""
    import torch

    from clusterguide.generators.registry import load_generator
    from clusterguide.imaging import to_uint8

    try:
        G = load_generator("digiface-dcgan")
    except UserError as exc:  # weights not installed
        pytest.skip(str(exc))
    with torch.no_grad():
        return to_uint8(G.synthesize(G.sample_latents(48, seed=0)))


@pytest.fixture(scope="module")
def picks(face, faces):
    """Indices of the most turned, the most frontal, the most and the least open-mouthed face."""
    result = face.measure(faces)
    found = np.nonzero(result.detected)[0]
    assert len(found) >= 0.8 * len(faces)  # the default generator's faces are nearly all detected
    yaw, pitch, roll, mouth = (result.values[a][found] for a in ("yaw", "pitch", "roll", "mouth"))
    return {
        "turned": int(found[np.argmax(np.abs(yaw))]),
        "frontal": int(found[np.argmin(np.abs(yaw) + np.abs(pitch) + np.abs(roll))]),
        "open": int(found[np.argmax(mouth)]),
        "closed": int(found[np.argmin(mouth)]),
    }


def mirrored(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def test_rotation_and_euler_angles_round_trip():
    pytest.importorskip("mediapipe", reason="pip install 'clusterguide[faces]' (make test does)")
    from clusterguide.evaluation.face import _CANON_IMG, euler_degrees, umeyama

    def rot(axis, deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return {
            "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
        }[axis]

    # image axes: a positive turn about y moves the nose to the image's left, so yaw is its negative
    r = rot("z", 12) @ rot("y", -25) @ rot("x", -8)
    points = 3.0 * _CANON_IMG @ r.T + np.array([90.0, 100.0, 5.0])
    scale, r_fit, shift = umeyama(_CANON_IMG, points)
    assert scale == pytest.approx(3.0) and np.allclose(r_fit, r) and np.allclose(shift, [90, 100, 5])
    yaw, pitch, roll = euler_degrees(r_fit)
    assert (yaw, pitch, roll) == pytest.approx((25.0, 8.0, 12.0))


def test_mirrored_face_flips_yaw_and_roll(face, faces, picks):
    turned = faces[picks["turned"]]
    a, b = face.measure_one(turned), face.measure_one(mirrored(turned))
    assert a is not None and b is not None
    assert abs(a["yaw"]) > 20 and abs(b["yaw"]) > 20  # some faces of 48 are turned well away
    assert np.sign(a["yaw"]) == -np.sign(b["yaw"])  # the mirror turns the face the other way
    assert abs(a["yaw"] + b["yaw"]) < 0.25 * abs(a["yaw"])
    assert np.sign(a["roll"]) == -np.sign(b["roll"])
    assert abs(a["pitch"] - b["pitch"]) < 8
    assert abs(a["mouth"] - b["mouth"]) < 0.1


def test_frontal_face_has_small_angles_and_mirror_changes_little(face, faces, picks):
    frontal = faces[picks["frontal"]]
    a, b = face.measure_one(frontal), face.measure_one(mirrored(frontal))
    assert abs(a["yaw"]) < 8 and abs(b["yaw"]) < 8
    assert abs(a["roll"]) < 5 and abs(a["pitch"]) < 10
    assert abs(a["ita"] - b["ita"]) < 5 and abs(a["hair"] - b["hair"]) < 5


def test_rotating_the_picture_clockwise_adds_to_roll(face, faces, picks):
    big = face.upscale(faces[picks["frontal"]])
    base = face.measure_one(big)["roll"]
    clockwise = np.asarray(
        Image.fromarray(big).rotate(-15, resample=Image.BICUBIC, fillcolor=(128, 128, 128))
    )
    turned = face.measure_one(clockwise)
    assert turned is not None
    assert turned["roll"] - base == pytest.approx(15, abs=4)


def test_open_mouth_measures_open(face, faces, picks):
    # the generator draws both open and closed mouths among 48 faces, and the probe tells them apart
    assert face.measure_one(faces[picks["open"]])["mouth"] > 0.3
    assert face.measure_one(faces[picks["closed"]])["mouth"] < 0.1


def test_no_face_is_not_detected_and_has_no_values(face, faces, picks):
    blank = np.full((2, 64, 64, 3), 127, np.uint8)
    one = picks["frontal"]
    result = face.measure(np.concatenate([blank, faces[one : one + 1]]))
    assert result.detected.tolist() == [False, False, True]
    assert all(np.isnan(result.values[a][:2]).all() for a in face.attribute_names())
    assert not np.isnan(result.values["yaw"][2])
