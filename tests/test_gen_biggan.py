"""BigGAN-deep (pytorch-pretrained-BigGAN format) without the real weights: architecture, classes,
truncation, the checkpoint folder format."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from clusterguide.errors import UserError
from clusterguide.generators import families, load_generator
from clusterguide.generators.biggan import (
    BigGAN,
    BigGANAdapter,
    BigGANConfig,
    random_biggan,
    truncated_normal_streams,
)

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_state_dicts.json").read_text())

# Same block structure as the published models, at toy width: 4x4 -> 32x32, attention before block 3.
SMALL = BigGANConfig(
    output_dim=32,
    z_dim=8,
    channel_width=4,
    num_classes=5,
    attention_layer_position=3,
    layers=((False, 16, 16), (True, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)),
)


def small_adapter(truncation: float = 0.5, seed: int = 0) -> BigGANAdapter:
    return BigGANAdapter(random_biggan(SMALL, seed), truncation=truncation)


@pytest.mark.parametrize("name", sorted(REFERENCE["biggan"]))
def test_state_dict_matches_published_format(name):
    entry = REFERENCE["biggan"][name]
    with torch.device("meta"):
        net = BigGAN(BigGANConfig.published(entry["config"]["resolution"]))
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == entry["state_dict"]


def test_published_config_json_is_read():
    # the published config.json is the reference BigGANConfig.to_dict(): layers as [bool, int, int] lists
    data = {
        "output_dim": 256,
        "z_dim": 128,
        "class_embed_dim": 128,
        "channel_width": 128,
        "num_classes": 1000,
        "layers": [list(b) for b in BigGANConfig.published(256).layers],
        "attention_layer_position": 8,
        "eps": 1e-4,
        "n_stats": 51,
    }
    assert BigGANConfig.from_json(data) == BigGANConfig.published(256)
    with pytest.raises(UserError, match="BigGAN-deep"):
        BigGANConfig.from_json({**data, "output_dim": 128})


def test_registered_with_options_and_layer_listing():
    assert {"truncation"} <= set(families()["biggan"].options)
    G = load_generator("biggan", "random:biggan-deep-128", truncation="0.4")
    assert G.truncation == 0.4 and G.latent_dim == 128 and G.image_size == 128 and G.num_classes == 1000
    layers = {i.name: i.shape for i in G.layers()}
    assert list(layers)[:2] == ["gen_z", "layer0"] and len(layers) == 12
    assert layers["gen_z"] == (2048, 4, 4) and layers["layer8"] == (256, 64, 64)  # layer8: self-attention
    assert layers["layer10"] == (128, 128, 128)


def test_head_then_tail_is_the_forward_pass():
    G = small_adapter().conditioned(2)
    z = G.sample_latents(3, seed=1)
    with torch.no_grad():
        full = G.synthesize(z)
        assert full.shape == (3, 3, 32, 32) and full.abs().max() <= 1
        for info in G.layers():
            h = G.head(z, info.name)
            assert tuple(h.shape[1:]) == info.shape
            torch.testing.assert_close(G.tail(h, info.name, z=z), full, rtol=0, atol=1e-6)
        with pytest.raises(TypeError, match="z="):
            G.tail(G.head(z, "layer1"), "layer1")


def test_class_is_required_and_cross_class_transfer_changes_only_the_class():
    G = small_adapter()
    z = G.sample_latents(2, seed=0)
    with pytest.raises(UserError, match="--class"):
        G.synthesize(z)
    with pytest.raises(UserError, match="0..4"):
        G.conditioned(5)
    a, b = G.conditioned(1), G.conditioned(1).conditioned(3)  # fit on one class, sample another
    assert a.net is G.net and b.net is G.net and b.class_label == 3
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(torch.tensor([3, 3]), 5).float()
        torch.testing.assert_close(b.synthesize(z), G.net(z, onehot, 0.5))
        assert not torch.allclose(a.synthesize(z), b.synthesize(z))
    assert b.describe()["class_label"] == 3 and b.describe()["truncation"] == 0.5


def test_truncated_prior_is_seeded_and_batch_independent():
    G = small_adapter(truncation=0.4)
    z = G.sample_latents(300, seed=7)
    assert z.shape == (300, 8) and z.abs().max() <= 0.8 + 1e-6
    torch.testing.assert_close(G.sample_latents(20, seed=7, start=250), z[250:270])
    std = truncated_normal_streams(0, 0, 4096, 4).std().item()
    assert abs(std - 0.880) < 0.02  # std of N(0, 1) truncated to [-2, 2]


def test_truncation_selects_batch_norm_statistics():
    G = small_adapter(truncation=1.0).conditioned(0)
    z = G.sample_latents(2, seed=0)
    with torch.no_grad():
        a = G.synthesize(z)
        G.truncation = 0.3
        assert not torch.allclose(a, G.synthesize(z))
    with pytest.raises(UserError, match="truncation"):
        BigGANAdapter(random_biggan(SMALL), truncation=0)
    with pytest.raises(UserError, match="truncation"):
        load_generator("biggan", "random:biggan-deep-128", truncation="lots")


def _write_folder(folder: Path, net: BigGAN, state: dict | None = None) -> Path:
    folder.mkdir()
    cfg = dataclasses.asdict(net.config)
    cfg["layers"] = [list(b) for b in cfg["layers"]]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    torch.save(state if state is not None else net.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_checkpoint_folder_loads_strictly(tmp_path):
    net = random_biggan(SMALL, seed=4)
    folder = _write_folder(tmp_path / "biggan-small", net)
    G = load_generator("biggan", str(folder), truncation=0.5).conditioned(4)
    assert G.weights_id == hashlib.sha256((folder / "pytorch_model.bin").read_bytes()).hexdigest()
    z = G.sample_latents(2, seed=0)
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(torch.tensor([4, 4]), 5).float()
        torch.testing.assert_close(G.synthesize(z), net(z, onehot, 0.5))
    # the weights file itself is accepted too
    assert load_generator("biggan", str(folder / "pytorch_model.bin")).weights_id == G.weights_id


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("generator.layers.3.gamma"), "missing keys"),
        (lambda s: s.pop("generator.gen_z.weight_v"), "missing keys"),
        (lambda s: s.update({"generator.extra.weight": torch.zeros(1)}), "unexpected keys"),
        (
            lambda s: s.update({"embeddings.weight": torch.zeros(8, 6)}),
            "shape mismatch for embeddings.weight",
        ),
    ],
)
def test_wrong_or_missing_key_is_a_clear_error(tmp_path, mutate, message):
    net = random_biggan(SMALL)
    state = dict(net.state_dict())
    mutate(state)
    folder = _write_folder(tmp_path / "bad", net, state)
    with pytest.raises(UserError, match=message) as info:
        load_generator("biggan", str(folder))
    assert "\n" not in str(info.value)


def test_incomplete_folder_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_generator("biggan", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="published name"):
        load_generator("biggan", "biggan-deep-1024")
