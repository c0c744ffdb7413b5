"""StyleGAN2 (NVIDIA's G_ema layout) without the real weights: architecture, z/w latent spaces,
truncation, the converted-folder format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clusterguide.errors import UserError
from clusterguide.generators import families, load_generator
from clusterguide.generators.stylegan2 import FORMAT, StyleGAN2Adapter
from clusterguide.generators.stylegan2_net import StyleGAN2Config, StyleGAN2Generator, random_generator
from clusterguide.generators.stylegan3_net import StyleGAN3Config, StyleGAN3Generator, random_generator_sg3

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_state_dicts.json").read_text())


def small(architecture: str = "skip", c_dim: int = 0, **kw) -> StyleGAN2Config:
    return StyleGAN2Config(
        z_dim=8,
        w_dim=12,
        c_dim=c_dim,
        img_resolution=16,
        mapping_layers=2,
        channel_base=128,
        channel_max=16,
        architecture=architecture,
        conv_clamp=256,
        **kw,
    )


def config_from_reference(kwargs: dict) -> StyleGAN2Config:
    """NVIDIA constructor arguments (either repository's spelling) -> our config."""
    syn = {**kwargs, **kwargs.get("synthesis_kwargs", {})}
    return StyleGAN2Config(
        z_dim=kwargs["z_dim"],
        c_dim=kwargs["c_dim"],
        w_dim=kwargs["w_dim"],
        img_resolution=kwargs["img_resolution"],
        img_channels=kwargs["img_channels"],
        mapping_layers=kwargs["mapping_kwargs"]["num_layers"],
        channel_base=syn["channel_base"],
        channel_max=syn["channel_max"],
        architecture=syn.get("architecture", "skip"),
        conv_clamp=syn.get("conv_clamp"),
    )


@pytest.mark.parametrize("name", sorted(REFERENCE["stylegan2"]))
def test_state_dict_matches_published_format(name):
    entry = REFERENCE["stylegan2"][name]
    with torch.device("meta"):
        net = StyleGAN2Generator(config_from_reference(entry["config"]))
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == entry["state_dict"]


@pytest.mark.parametrize("name", sorted(REFERENCE["stylegan3"]))
def test_stylegan3_layer_plan_and_state_dict_match_published_format(name):
    entry = REFERENCE["stylegan3"][name]
    kw = {k: v for k, v in entry["config"].items() if k != "img_resolution"}
    with torch.device("meta"):
        net = StyleGAN3Generator(StyleGAN3Config.design(entry["config"]["img_resolution"], **kw))
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == entry["state_dict"]


def test_registered_with_options_and_layers_per_block():
    assert {"latent_space", "truncation"} <= set(families()["stylegan2"].options)
    with torch.device("meta"):  # architecture only: the listing is computed, not run
        G = StyleGAN2Adapter(StyleGAN2Generator(StyleGAN2Config()))
    layers = [(i.name, i.shape) for i in G.layers()]
    assert layers[0] == ("b4", (512, 4, 4)) and layers[-1] == ("b1024", (32, 1024, 1024))
    assert [n for n, _ in layers] == [f"b{2**i}" for i in range(2, 11)]


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
@pytest.mark.parametrize("latent_space", ["z", "w"])
def test_head_then_tail_is_the_forward_pass(architecture, latent_space):
    G = StyleGAN2Adapter(
        random_generator(small(architecture), seed=1), latent_space=latent_space, truncation=0.7
    )
    latents = G.sample_latents(2, seed=3)
    assert latents.shape == (2, G.latent_dim)
    with torch.no_grad():
        full = G.synthesize(latents)
        assert full.shape == (2, 3, 16, 16) and full.abs().max() <= 1
        for info in G.layers():
            h = G.head(latents, info.name)
            assert tuple(h.shape[1:]) == info.shape
            torch.testing.assert_close(G.tail(h, info.name, z=latents), full, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="z="):
        G.tail(h, info.name)


# A small StyleGAN3-R: 1x1 convs and radial filters, the harder of the two configs.
SMALL3 = StyleGAN3Config.design(
    16,
    z_dim=8,
    w_dim=12,
    channel_base=128,
    channel_max=16,
    conv_kernel=1,
    radial=True,
    num_layers=6,
    margin_size=4,
)


@pytest.mark.parametrize("latent_space", ["z", "w"])
def test_stylegan3_head_then_tail_is_the_forward_pass(latent_space):
    G = StyleGAN2Adapter(random_generator_sg3(SMALL3, seed=1), latent_space=latent_space, truncation=0.7)
    names = G.layer_names()
    assert names[0] == "input" and names[1].startswith("L0_") and len(names) == 7  # ToRGB is not a layer
    latents = G.sample_latents(2, seed=3)
    with torch.no_grad():
        full = G.synthesize(latents)
        assert full.shape == (2, 3, 16, 16) and full.abs().max() <= 1 and full.std() > 0
        for info in G.layers():
            h = G.head(latents, info.name)
            assert tuple(h.shape[1:]) == info.shape
            torch.testing.assert_close(G.tail(h, info.name, z=latents), full, rtol=0, atol=1e-6)


def test_random_presets_cover_both_generations():
    g3 = load_generator("stylegan2", "random:stylegan3-t-ffhqu-256x256")
    assert g3.layers()[0].name == "input" and g3.image_size == 256 and g3.latent_dim == 512
    with pytest.raises(UserError, match="unknown StyleGAN2"):
        load_generator("stylegan2", "random:stylegan4-ffhq")


def test_w_space_latents_are_mapped_z_streams():
    net = random_generator(small(), seed=2)
    Gz = StyleGAN2Adapter(net, latent_space="z", truncation=0.5)
    Gw = StyleGAN2Adapter(net, latent_space="w", truncation=0.5)
    assert Gz.latent_dim == 8 and Gw.latent_dim == 12
    z, w = Gz.sample_latents(5, seed=9), Gw.sample_latents(5, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(w, net.mapping(z, None, 0.5))
        torch.testing.assert_close(Gw.synthesize(w), Gz.synthesize(z))
    torch.testing.assert_close(Gw.sample_latents(2, seed=9, start=3), w[3:])  # batch-size independent


def test_truncation_pulls_towards_w_avg():
    net = random_generator(small(), seed=2)
    G = StyleGAN2Adapter(net, latent_space="w", truncation=1e-9)
    w = G.sample_latents(4, seed=0)
    torch.testing.assert_close(w, net.mapping.w_avg.expand(4, -1), atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="latent-space"):
        StyleGAN2Adapter(net, latent_space="x")


def test_class_conditional_networks_need_a_class():
    G = StyleGAN2Adapter(random_generator(small(c_dim=3), seed=0))
    z = G.sample_latents(2, seed=0)
    with pytest.raises(UserError, match="--class"):
        G.synthesize(z)
    with pytest.raises(UserError, match="0..2"):
        G.conditioned(3)
    with torch.no_grad():
        assert not torch.allclose(G.conditioned(0).synthesize(z), G.conditioned(2).synthesize(z))
    with pytest.raises(UserError, match="unconditional"):
        StyleGAN2Adapter(random_generator(small(), seed=0)).conditioned(1)


def write_converted(folder: Path, net: StyleGAN2Generator, state: dict | None = None) -> Path:
    """A converted folder as `clusterguide convert` writes it (see test_convert.py for the real thing)."""
    from clusterguide.artifacts import save_tensors, write_json

    folder.mkdir()
    digest = save_tensors(folder / "model.safetensors", state if state is not None else net.state_dict())
    write_json(
        folder / "config.json",
        {
            "format": FORMAT,
            "class": type(net.config).__name__,
            "architecture": net.config.to_json(),
            "weights_sha256": digest,
        },
    )
    return folder


def test_converted_stylegan3_folder_loads(tmp_path):
    net = random_generator_sg3(SMALL3, seed=5)
    folder = write_converted(tmp_path / "sg3", net)
    G = load_generator("stylegan2", str(folder))
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(z), net(z).clamp(-1, 1))
    state = dict(net.state_dict())
    state.pop(f"synthesis.{SMALL3.layers[2].name}.down_filter")
    bad = write_converted(tmp_path / "sg3-bad", net, state)
    with pytest.raises(UserError, match="missing keys .*down_filter"):
        load_generator("stylegan2", str(bad))


def test_converted_folder_loads_with_options(tmp_path):
    net = random_generator(small(), seed=5)
    folder = write_converted(tmp_path / "sg2", net)
    G = load_generator("stylegan2", str(folder), latent_space="w", truncation="0.8")
    assert G.latent_space == "w" and G.truncation == 0.8 and G.latent_dim == 12
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(net.mapping(z, None, 0.8)), net(z, None, 0.8).clamp(-1, 1))
    assert G.weights_id == json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert load_generator("stylegan2", str(folder / "config.json")).weights_id == G.weights_id


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("mapping.w_avg"), "missing keys"),
        (lambda s: s.pop("synthesis.b8.conv0.noise_const"), "missing keys"),
        (lambda s: s.update({"synthesis.b32.const": torch.zeros(1)}), "unexpected keys"),
        (
            lambda s: s.update({"synthesis.b4.const": torch.zeros(16, 8, 8)}),
            "shape mismatch for synthesis.b4.const",
        ),
    ],
)
def test_wrong_or_missing_key_is_a_clear_error(tmp_path, mutate, message):
    net = random_generator(small())
    state = dict(net.state_dict())
    mutate(state)
    folder = write_converted(tmp_path / "bad", net, state)
    with pytest.raises(UserError, match=message) as info:
        load_generator("stylegan2", str(folder))
    assert "\n" not in str(info.value)


def test_damaged_or_unconverted_checkpoints_are_clear_errors(tmp_path, monkeypatch):
    net = random_generator(small())
    folder = write_converted(tmp_path / "ok", net)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="damaged"):
        load_generator("stylegan2", str(folder))
    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(b"\x80\x04.")
    with pytest.raises(UserError, match="convert stylegan2 .* --trust-pickle"):
        load_generator("stylegan2", str(pkl))
    monkeypatch.setenv("CLUSTERGUIDE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        UserError, match="not converted yet: run `clusterguide convert stylegan2 ffhq --trust-pickle`"
    ):
        load_generator("stylegan2", "ffhq")
    with pytest.raises(UserError, match="published name"):
        load_generator("stylegan2", "ffhq-2048")
