"""PGAN (pytorch_GAN_zoo) without the real weights, and the published-checkpoint downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from clusterguide.errors import UserError
from clusterguide.generators import download, families, load_generator
from clusterguide.generators.pgan import PGANAdapter, PGANConfig, PGANGenerator, random_generator

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_state_dicts.json").read_text())

SMALL = PGANConfig(latent_dim=12, depths=(16, 16, 8, 8))


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(REFERENCE["pgan"]))
def test_state_dict_matches_published_format(name):
    entry = REFERENCE["pgan"][name]
    with torch.device("meta"):
        net = PGANGenerator(PGANConfig.standard(entry["config"]["resolution"]))
    assert shapes(net) == entry["state_dict"]


def test_registered_with_layers_per_scale():
    assert "pgan" in families()
    G = load_generator("pgan", "random:celebAHQ-256")
    assert G.image_size == 256 and G.latent_dim == 512
    assert [(i.name, i.shape) for i in G.layers()][:3] == [
        ("scale0", (512, 4, 4)),
        ("scale1", (512, 8, 8)),
        ("scale2", (512, 16, 16)),
    ]
    assert G.layers()[-1].name == "scale6" and G.layers()[-1].shape == (64, 256, 256)


def test_head_then_tail_is_the_forward_pass():
    G = PGANAdapter(random_generator(SMALL, seed=1))
    z = G.sample_latents(3, seed=0)
    with torch.no_grad():
        full = G.synthesize(z)
        assert full.shape == (3, 3, 32, 32) and full.abs().max() <= 1
        for info in G.layers():
            h = G.head(z, info.name)
            assert tuple(h.shape[1:]) == info.shape
            torch.testing.assert_close(G.tail(h, info.name), full, rtol=0, atol=1e-6)


def test_unknown_layer_is_a_user_error():
    G = PGANAdapter(random_generator(SMALL))
    with pytest.raises(UserError, match="scale0"):
        G.head(torch.zeros(1, 12), "scale9")


# ---- hub checkpoints --------------------------------------------------------------------------------


def _hub_checkpoint(path: Path, monkeypatch, state: dict, avg: dict | None, **config) -> None:
    """A torch.save'd checkpoint shaped like pytorch_GAN_zoo's: config is a BaseConfig object."""
    module = types.ModuleType("models.utils.config")

    class BaseConfig:
        pass

    BaseConfig.__module__, BaseConfig.__qualname__ = "models.utils.config", "BaseConfig"
    module.BaseConfig = BaseConfig
    cfg = BaseConfig()
    defaults = {
        "depthScale0": SMALL.depths[0],
        "depthOtherScales": list(SMALL.depths[1:]),
        "latentVectorDim": 12,
        "noiseVectorDim": 12,
        "categoryVectorDim": 0,
        "dimOutput": 3,
        "perChannelNormalization": True,
        "equalizedlR": True,
        "leakyReluLeak": 0.2,
        "alpha": 0.0,
        "lossCriterion": "WGANGP",
        "miniBatchSize": 16,
    }
    cfg.__dict__.update({**defaults, **config})
    blob = {"config": cfg, "netG": state, "netD": {"decisionLayer.module.weight": torch.zeros(1, 2)}}
    if avg is not None:
        blob["avgG"] = avg
    with monkeypatch.context() as m:  # the class exists only while saving, as on a user's machine
        for name in ("models", "models.utils", "models.utils.config"):
            m.setitem(sys.modules, name, module if name.endswith("config") else types.ModuleType(name))
        torch.save(blob, path)


def test_hub_checkpoint_loads_avg_generator_strictly(tmp_path, monkeypatch):
    raw, avg = random_generator(SMALL, seed=1), random_generator(SMALL, seed=2)
    path = tmp_path / "celebaHQ_s3_i1-00000000.pth"
    _hub_checkpoint(path, monkeypatch, raw.state_dict(), avg.state_dict())
    assert "models.utils.config" not in sys.modules
    G = load_generator("pgan", str(path))
    z = torch.randn(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(z), avg(z).clamp(-1, 1))
    assert G.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [i.name for i in G.layers()] == ["scale0", "scale1", "scale2", "scale3"]


def test_hub_checkpoint_with_old_key_names_and_tanh(tmp_path, monkeypatch):
    net = random_generator(dataclasses.replace(SMALL, output_tanh=True), seed=3)
    old_names = {k.replace(".module.", "."): v for k, v in net.state_dict().items()}  # pre-"module." files
    path = tmp_path / "old.pth"
    _hub_checkpoint(path, monkeypatch, old_names, None, lossCriterion="DCGAN")
    G = load_generator("pgan", str(path))
    z = torch.randn(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(z), net(z))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("toRGBLayers.3.module.bias"), "missing keys"),
        (lambda s: s.update({"scaleLayers.9.0.module.weight": torch.zeros(1)}), "unexpected keys"),
        (lambda s: s.update({"groupScale0.0.module.bias": torch.zeros(3)}), "shape mismatch"),
    ],
)
def test_wrong_or_missing_key_is_a_clear_error(tmp_path, monkeypatch, mutate, message):
    state = dict(random_generator(SMALL).state_dict())
    mutate(state)
    path = tmp_path / "bad.pth"
    _hub_checkpoint(path, monkeypatch, state, None)
    with pytest.raises(UserError, match=message) as info:
        load_generator("pgan", str(path))
    assert "\n" not in str(info.value)


class Foreign:
    """A class a checkpoint might mention; weights_only loading must refuse to build it."""


def test_blending_and_foreign_files_are_rejected(tmp_path, monkeypatch):
    path = tmp_path / "blending.pth"
    _hub_checkpoint(path, monkeypatch, random_generator(SMALL).state_dict(), None, alpha=0.5)
    with pytest.raises(UserError, match="alpha"):
        load_generator("pgan", str(path))
    foreign = tmp_path / "foreign.pth"
    _hub_checkpoint(foreign, monkeypatch, random_generator(SMALL).state_dict(), None, lossCriterion=Foreign())
    with pytest.raises(
        UserError, match=r"refers to [\w.]*Foreign, and clusterguide opens only plain weights"
    ):
        load_generator("pgan", str(foreign))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read PGAN checkpoint"):
        load_generator("pgan", str(junk))
    with pytest.raises(UserError, match="neither a file nor a published name"):
        load_generator("pgan", "celebAHQ-1024")


# ---- downloads --------------------------------------------------------------------------------------


def test_published_names_carry_their_hub_checksums():
    names = download.published("pgan")
    assert set(names) == {"celebAHQ-256", "celebAHQ-512", "DTD", "celeba"}
    assert names["celebAHQ-256"].sha256_prefix == "6196db68"
    assert all(e.url.startswith("https://dl.fbaipublicfiles.com/gan_zoo/PGAN/") for e in names.values())


def test_offline_download_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERGUIDE_CACHE", str(tmp_path))
    entry = dataclasses.replace(download.PUBLISHED["pgan"]["celebAHQ-256"], url="http://127.0.0.1:9/x.pth")
    monkeypatch.setitem(download.PUBLISHED["pgan"], "celebAHQ-256", entry)
    with pytest.raises(UserError, match="cannot download pgan checkpoint 'celebAHQ-256'") as info:
        load_generator("pgan", "celebAHQ-256")
    assert "\n" not in str(info.value) and "--checkpoint" in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing half-written, not even empty folders


def test_download_checks_the_checksum_and_caches(tmp_path, monkeypatch):
    from clusterguide.progress import set_progress

    payload = tmp_path / "served.bin"
    payload.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    good = download.Published("pgan", "t", payload.as_uri(), "t.pth", sha256_prefix=digest[:8])
    set_progress(True)  # the bar is drawn on stderr
    try:
        path = download.fetch(good, root=cache)
    finally:
        set_progress(None)
    assert path.read_bytes() == payload.read_bytes() and path.parent == cache / "pgan"
    assert download.fetch(good, root=cache) == path  # cached: no second download
    path.write_bytes(b"truncated")  # a damaged cache file is caught by the recorded digest
    with pytest.raises(UserError, match="failed its checksum"):
        download.fetch(good, root=cache)
    bad = dataclasses.replace(good, name="u", filename="u.pth", sha256_prefix="00000000")
    with pytest.raises(UserError, match="failed its checksum"):
        download.fetch(bad, root=cache)
    assert not (cache / "pgan" / "u.pth").exists()
    assert not list((cache / "pgan").glob(".*part"))
