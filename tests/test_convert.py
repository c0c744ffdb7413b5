"""The pickle converter: NVIDIA-format pickles written here -> config.json + safetensors -> the same
images; the trust flag; what the restricted unpickler refuses; the ``convert`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clusterguide.cli.convert import convert as convert_command
from clusterguide.errors import UserError
from clusterguide.generators import download, load_generator
from clusterguide.generators.convert import convert_stylegan2
from clusterguide.generators.stylegan2_net import StyleGAN2Config, random_generator
from clusterguide.generators.stylegan3_net import (
    SG3SynthesisLayer,
    SG3SynthesisNetwork,
    StyleGAN3Config,
    SynthesisInput,
    random_generator_sg3,
)

CFG = StyleGAN2Config(
    z_dim=8, w_dim=12, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16, conv_clamp=256
)


# ---- a writer for NVIDIA's pickle format ------------------------------------------------------------
# torch_utils.persistence pickles each network as _reconstruct_persistent_obj(meta), meta holding the
# class name, the defining module's source and the object's __dict__. The modules named in the
# stream exist only while writing, as on the machine that trained the network.

_NVIDIA_CLASS = {
    "StyleGAN2Generator": "Generator",
    "SynthesisNetwork": "SynthesisNetwork",
    "SynthesisBlock": "SynthesisBlock",
    "SynthesisLayer": "SynthesisLayer",
    "ToRGBLayer": "ToRGBLayer",
    "MappingNetwork": "MappingNetwork",
    "FullyConnectedLayer": "FullyConnectedLayer",
    "Conv2dLayer": "Conv2dLayer",
    "StyleGAN3Generator": "Generator",
    "SG3SynthesisNetwork": "SynthesisNetwork",
    "SynthesisInput": "SynthesisInput",
    "SG3SynthesisLayer": "SynthesisLayer",
}


class _Persistent:
    def __init__(self, meta: dict, reconstruct) -> None:
        self.meta, self.reconstruct = meta, reconstruct

    def __reduce__(self):
        return (self.reconstruct, (self.meta,))


def _fake_nvidia_modules():
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called by the converter
        raise AssertionError("NVIDIA's loader must not be needed")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    return modules, _reconstruct_persistent_obj, EasyDict


def _as_persistent(
    module: torch.nn.Module, reconstruct, easydict, attrs: dict, class_name: str | None = None
) -> _Persistent:
    state = {
        "training": False,
        "_parameters": OrderedDict((k, v) for k, v in module._parameters.items()),
        "_buffers": OrderedDict((k, v) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict(
            (k, _as_persistent(v, reconstruct, easydict, {})) for k, v in module._modules.items()
        ),
        "_init_args": (),
        "_init_kwargs": easydict(attrs.pop("_init_kwargs", {})),
    }
    # the plain attributes the converter reads, spelled as NVIDIA's classes have them
    for name in (
        "activation",
        "conv_clamp",
        "architecture",
        "resolution",
        "up",
        "use_noise",
        "num_layers",
        "z_dim",
        "c_dim",
        "w_dim",
    ):
        if hasattr(module, name):
            state[name] = getattr(module, name)
    if isinstance(getattr(module, "weight_gain", None), float):
        state["weight_gain"] = np.float64(module.weight_gain)  # NVIDIA's are numpy scalars
    if hasattr(module, "bias_gain"):
        state["bias_gain"] = module.bias_gain
    if isinstance(module, SG3SynthesisLayer):  # StyleGAN3 layers keep their plan as attributes
        state.update(dataclasses.asdict(module.spec))
        state["in_size"], state["out_size"] = (
            np.array([module.spec.in_size] * 2),
            np.array([module.spec.out_size] * 2),
        )
        state["padding"] = list(module.spec.padding)
    if isinstance(module, SynthesisInput):
        state.update(
            channels=module.weight.shape[0],
            size=np.array([module.size] * 2),
            sampling_rate=np.float64(module.sampling_rate),
            bandwidth=np.float64(module.bandwidth),
        )
    if isinstance(module, SG3SynthesisNetwork):
        state.update(layer_names=list(module.layer_names), output_scale=0.25)
    state.update(attrs)
    meta = {
        "type": "class",
        "version": 6,
        "module_src": "# training/networks.py source (never executed)",
        "class_name": class_name or _NVIDIA_CLASS[type(module).__name__],
        "state": state,
    }
    return _Persistent(meta, reconstruct)


def write_nvidia_pickle(path: Path, net: torch.nn.Module, monkeypatch, protocol: int = 4, extra=None) -> None:
    modules, reconstruct, easydict = _fake_nvidia_modules()
    cfg = net.config
    kwargs = easydict(
        z_dim=cfg.z_dim,
        c_dim=cfg.c_dim,
        w_dim=cfg.w_dim,
        img_resolution=cfg.img_resolution,
        img_channels=cfg.img_channels,
        mapping_kwargs=easydict(num_layers=cfg.mapping_layers),
    )
    if isinstance(cfg, StyleGAN2Config):
        kwargs["synthesis_kwargs"] = easydict(
            channel_base=cfg.channel_base,
            channel_max=cfg.channel_max,
            conv_clamp=cfg.conv_clamp,
            num_fp16_res=2,
        )
    top = {
        "z_dim": cfg.z_dim,
        "c_dim": cfg.c_dim,
        "w_dim": cfg.w_dim,
        "img_resolution": cfg.img_resolution,
        "img_channels": cfg.img_channels,
        "_init_kwargs": kwargs,
    }
    with monkeypatch.context() as m:
        for name, module in modules.items():
            m.setitem(sys.modules, name, module)
        G = _as_persistent(net, reconstruct, easydict, top)
        D = _as_persistent(torch.nn.Linear(3, 1), reconstruct, easydict, {}, class_name="Discriminator")
        data = {
            "G": G,
            "D": D,
            "G_ema": G,
            "augment_pipe": None,
            "training_set_kwargs": easydict(path="~/datasets/x.zip", resolution=cfg.img_resolution),
        }
        if extra is not None:
            data["extra"] = extra
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    assert "torch_utils.persistence" not in sys.modules


# ---- round trip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4])
def test_round_trip_gives_the_same_images(tmp_path, monkeypatch, protocol):
    net = random_generator(CFG, seed=3)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    write_nvidia_pickle(pkl, net, monkeypatch, protocol)
    out = convert_stylegan2(pkl, tmp_path / "converted", trust_pickle=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["architecture"] == CFG.to_json() | {"layer_features": 12}
    assert meta["source"]["init_kwargs"]["synthesis_kwargs"]["channel_base"] == 128
    G = load_generator("stylegan2", str(out), truncation=0.6)
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(z), net(z, None, 0.6).clamp(-1, 1), rtol=0, atol=0)


def test_architecture_comes_from_the_objects_not_from_defaults(tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, conv_clamp=None, architecture="resnet", mapping_lr_multiplier=0.5)
    net = random_generator(cfg, seed=1)
    pkl = tmp_path / "resnet.pkl"
    write_nvidia_pickle(pkl, net, monkeypatch)
    out = convert_stylegan2(pkl, tmp_path / "out", trust_pickle=True)
    got = json.loads((out / "config.json").read_text())["architecture"]
    assert (
        got["architecture"] == "resnet" and got["conv_clamp"] is None and got["mapping_lr_multiplier"] == 0.5
    )


def test_pickles_are_opened_only_when_trusted(tmp_path, monkeypatch):
    pkl = tmp_path / "g.pkl"
    write_nvidia_pickle(pkl, random_generator(CFG), monkeypatch)
    with pytest.raises(UserError, match="--trust-pickle"):
        convert_stylegan2(pkl, tmp_path / "out", trust_pickle=False)
    assert not (tmp_path / "out").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_globals_are_refused_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    pkl = tmp_path / "evil.pkl"
    write_nvidia_pickle(pkl, random_generator(CFG), monkeypatch, extra=_Evil(marker))
    with pytest.raises(UserError, match=r"refers to (posix|os|nt)\.system") as info:
        convert_stylegan2(pkl, tmp_path / "out", trust_pickle=True)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert "\n" not in str(info.value)


def test_stylegan3_round_trip(tmp_path, monkeypatch):
    cfg = StyleGAN3Config.design(
        16, z_dim=8, w_dim=12, channel_base=128, channel_max=16, num_layers=6, margin_size=4
    )
    net = random_generator_sg3(cfg, seed=4)
    pkl = tmp_path / "stylegan3-t-tiny.pkl"
    write_nvidia_pickle(pkl, net, monkeypatch)
    out = convert_stylegan2(pkl, tmp_path / "sg3", trust_pickle=True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["class"] == "StyleGAN3Config" and StyleGAN3Config.from_json(meta["architecture"]) == cfg
    G = load_generator("stylegan2", str(out), latent_space="w")
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(G.synthesize(net.mapping(z)), net(z).clamp(-1, 1), rtol=0, atol=0)


def test_tensorflow_pickles_and_junk_are_named(tmp_path):
    tf_pkl = tmp_path / "stylegan2-ffhq-config-f.pkl"
    tf_pkl.write_bytes(
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x14dnnlib.tflib.network\x8c\x07Network\x93."
    )
    with pytest.raises(UserError, match="TensorFlow-era"):
        convert_stylegan2(tf_pkl, tmp_path / "a", trust_pickle=True)
    (tmp_path / "junk.pkl").write_bytes(b"junk")
    with pytest.raises(UserError, match="truncated or damaged"):
        convert_stylegan2(tmp_path / "junk.pkl", tmp_path / "c", trust_pickle=True)


def test_a_network_that_does_not_load_strictly_writes_nothing(tmp_path, monkeypatch):
    net = random_generator(CFG)
    del net.synthesis.b8.conv0.noise_strength  # a key missing from the pickle
    net.synthesis.b8.conv0.noise_strength = torch.tensor(0.0)  # keeps forward working, not in the state
    pkl = tmp_path / "broken.pkl"
    write_nvidia_pickle(pkl, net, monkeypatch)
    with pytest.raises(UserError, match="missing keys .*noise_strength"):
        convert_stylegan2(pkl, tmp_path / "out", trust_pickle=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# ---- the command ------------------------------------------------------------------------------------


def test_convert_command(tmp_path, monkeypatch):
    pkl = tmp_path / "mygan.pkl"
    write_nvidia_pickle(pkl, random_generator(CFG, seed=2), monkeypatch)
    runner = CliRunner()
    refused = runner.invoke(convert_command, ["stylegan2", str(pkl)])
    assert isinstance(refused.exception, UserError) and "--trust-pickle" in str(refused.exception)
    done = runner.invoke(convert_command, ["stylegan2", str(pkl), "--trust-pickle"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "mygan" / "model.safetensors").is_file()
    assert f"--generator stylegan2 --checkpoint {tmp_path / 'mygan'}" in done.output
    again = runner.invoke(convert_command, ["stylegan2", str(pkl), "--trust-pickle"])
    assert isinstance(again.exception, UserError) and "--force" in str(again.exception)
    forced = runner.invoke(convert_command, ["stylegan2", str(pkl), "--trust-pickle", "--force"])
    assert forced.exit_code == 0


def test_convert_published_name_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERGUIDE_CACHE", str(tmp_path))
    entry = dataclasses.replace(download.PUBLISHED["stylegan2"]["ffhq"], url="http://127.0.0.1:9/ffhq.pkl")
    monkeypatch.setitem(download.PUBLISHED["stylegan2"], "ffhq", entry)
    result = CliRunner().invoke(convert_command, ["stylegan2", "ffhq", "--trust-pickle"])
    assert isinstance(result.exception, UserError)
    message = str(result.exception)
    assert "cannot download stylegan2 checkpoint 'ffhq'" in message and "\n" not in message
    unknown = CliRunner().invoke(convert_command, ["stylegan2", "ffhq-9000", "--trust-pickle"])
    assert isinstance(unknown.exception, UserError) and "published" in str(unknown.exception)


def test_convert_force_replaces_only_an_earlier_conversion(tmp_path, monkeypatch):
    from clusterguide import artifacts

    pkl = tmp_path / "mygan.pkl"
    write_nvidia_pickle(pkl, random_generator(CFG, seed=2), monkeypatch)
    run_like = tmp_path / "mygan"  # a run folder (another clusterguide format) where --out points
    run_like.mkdir()
    artifacts.write_json(run_like / "config.json", {"format": artifacts.FORMAT})
    forced = CliRunner().invoke(convert_command, ["stylegan2", str(pkl), "--trust-pickle", "--force"])
    assert isinstance(forced.exception, UserError) and "refusing to replace" in str(forced.exception)
    assert not (run_like / "model.safetensors").exists()
    assert json.loads((run_like / "config.json").read_text()) == {"format": artifacts.FORMAT}
