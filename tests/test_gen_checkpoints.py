"""Bad checkpoints are one line and exit code 2, naming what is wrong; rosinality's ``.pt`` files
through the CLI. The files are the publishers' reference fixtures, damaged on purpose."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clusterguide.cli import main
from clusterguide.generators import load_generator
from clusterguide.generators.pgan import _CONFIG_GLOBALS
from clusterguide.generators.rosinality import rosinality_channels
from clusterguide.generators.stylegan_ops import make_filter

REF = Path(__file__).parent / "fixtures" / "reference"
PGAN = REF / "pgan" / "pgan.pth"
ROSINALITY = REF / "rosinality" / "rosinality.pt"
BIGGAN = REF / "biggan-deep" / "biggan"
NVIDIA_PKL = REF / "stylegan2-ada" / "network-snapshot.pkl"


def assert_one_line_error(capsys, *args, match: str) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


def layers(generator: str, checkpoint) -> list[str]:
    return ["layers", "--generator", generator, "--checkpoint", str(checkpoint)]


def rosinality_blob() -> dict:
    return torch.load(ROSINALITY, weights_only=True)


# ---- another family's file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generator", "checkpoint", "match"),
    [
        ("pgan", ROSINALITY, "is a StyleGAN2 checkpoint: use --generator stylegan2"),
        ("pgan", BIGGAN / "pytorch_model.bin", "is a BigGAN"),
        ("stylegan2", PGAN, "is a PGAN (pytorch_GAN_zoo) checkpoint: use --generator pgan"),
        ("stylegan2", BIGGAN, "is a BigGAN checkpoint folder: use --generator biggan"),
        ("biggan", PGAN, "is a PGAN (pytorch_GAN_zoo) checkpoint: use --generator pgan"),
        ("biggan", ROSINALITY, "is a StyleGAN2 checkpoint: use --generator stylegan2"),
        ("digiface-dcgan", PGAN, "is a PGAN"),
    ],
)
def test_another_familys_file_names_the_right_generator(capsys, generator, checkpoint, match):
    assert_one_line_error(capsys, *layers(generator, checkpoint), match=match)


def test_converted_stylegan_folder_given_to_biggan(tmp_path, capsys):
    from clusterguide.generators.convert import convert_stylegan2

    folder = convert_stylegan2(NVIDIA_PKL, tmp_path / "sg2", trust_pickle=True)
    assert_one_line_error(capsys, *layers("biggan", folder), match="converted StyleGAN2 folder")


# ---- truncated files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generator", "source", "name"),
    [
        ("pgan", PGAN, "pgan.pth"),
        ("stylegan2", ROSINALITY, "rosinality.pt"),
        ("biggan", BIGGAN / "pytorch_model.bin", "pytorch_model.bin"),
    ],
)
def test_truncated_file(tmp_path, capsys, generator, source, name):
    target = tmp_path / name
    if generator == "biggan":
        shutil.copy(BIGGAN / "config.json", tmp_path / "config.json")
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    checkpoint = tmp_path if generator == "biggan" else target
    assert_one_line_error(capsys, *layers(generator, checkpoint), match="is truncated or damaged")


def test_truncated_nvidia_pickle_and_converted_folder(tmp_path, capsys):
    half = tmp_path / "half.pkl"
    half.write_bytes(NVIDIA_PKL.read_bytes()[:200_000])
    assert_one_line_error(
        capsys,
        "convert",
        "stylegan2",
        half,
        "--trust-pickle",
        "--out",
        tmp_path / "x",
        match="is truncated or damaged",
    )
    assert not (tmp_path / "x").exists()
    main(["convert", "stylegan2", str(NVIDIA_PKL), "--trust-pickle", "--out", str(tmp_path / "ok")])
    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()
    assert_one_line_error(capsys, *layers("stylegan2", tmp_path / "ok"), match="is damaged")


# ---- pickles without --trust-pickle ------------------------------------------------------------------


def test_pickles_are_refused_without_trust(tmp_path, capsys):
    line = assert_one_line_error(
        capsys, *layers("stylegan2", NVIDIA_PKL), match="is a pickle of NVIDIA networks"
    )
    assert "clusterguide convert stylegan2" in line and "--trust-pickle" in line
    assert_one_line_error(capsys, "convert", "stylegan2", NVIDIA_PKL, match="--trust-pickle")
    assert_one_line_error(capsys, *layers("pgan", NVIDIA_PKL), match="is a pickle of NVIDIA networks")
    # a torch.save file that holds an arbitrary object is a pickle too
    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "hook": argparse.ArgumentParser}, evil)
    assert_one_line_error(capsys, *layers("stylegan2", evil), match="argparse.ArgumentParser")


# ---- one missing or misshapen key ---------------------------------------------------------------------


def _pgan_with(tmp_path: Path, mutate) -> Path:
    with torch.serialization.safe_globals(_CONFIG_GLOBALS):
        blob = torch.load(PGAN, weights_only=True)
    blob["config"] = vars(blob["config"])
    mutate(blob["avgG"])
    torch.save(blob, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


def _rosinality_with(tmp_path: Path, mutate, **extra) -> Path:
    blob = rosinality_blob()
    mutate(blob["g_ema"])
    torch.save({**blob, **extra}, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


def _biggan_with(tmp_path: Path, mutate) -> Path:
    shutil.copytree(BIGGAN, tmp_path / "bg")
    state = torch.load(BIGGAN / "pytorch_model.bin", weights_only=True)
    mutate(state)
    torch.save(state, tmp_path / "bg" / "pytorch_model.bin")
    return tmp_path / "bg"


@pytest.mark.parametrize(
    ("generator", "writer", "key"),
    [
        ("pgan", _pgan_with, "scaleLayers.1.1.module.bias"),
        ("stylegan2", _rosinality_with, "convs.2.conv.modulation.weight"),
        ("stylegan2", _rosinality_with, "noises.noise_3"),
        ("biggan", _biggan_with, "generator.layers.3.bn_2.offset.weight_u"),
    ],
)
def test_one_missing_key_is_named(tmp_path, capsys, generator, writer, key):
    path = writer(tmp_path, lambda state: state.pop(key))
    line = assert_one_line_error(capsys, *layers(generator, path), match=key)
    assert "missing" in line


@pytest.mark.parametrize(
    ("generator", "writer", "key"),
    [
        ("pgan", _pgan_with, "scaleLayers.1.1.module.bias"),
        ("stylegan2", _rosinality_with, "convs.3.conv.modulation.weight"),
        ("stylegan2", _rosinality_with, "to_rgbs.1.bias"),
        ("biggan", _biggan_with, "generator.layers.3.conv_1.weight_orig"),
    ],
)
def test_one_misshapen_key_is_named(tmp_path, capsys, generator, writer, key):
    def widen(state):
        t = state[key]
        state[key] = torch.cat([t, t[:1]])

    line = assert_one_line_error(capsys, *layers(generator, writer(tmp_path, widen)), match=key)
    assert "shape" in line


def test_one_unexpected_key_is_named(tmp_path, capsys):
    path = _rosinality_with(tmp_path, lambda state: state.update({"convs.99.conv.weight": torch.zeros(1)}))
    assert_one_line_error(capsys, *layers("stylegan2", path), match="unexpected key 'convs.99.conv.weight'")


# ---- rosinality: train.py files, and args that disagree with the tensors ---------------------------------


def test_rosinality_train_py_file_loads_with_args_and_without_latent_avg(tmp_path):
    """train.py saves g, d, g_ema, the optimisers and args (no latent_avg)."""
    blob = rosinality_blob()
    args = argparse.Namespace(size=32, latent=32, n_mlp=4, iter=800000, batch=16, r1=10.0)
    optim = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.002, "params": [0]}]}
    train = {
        "g": blob["g_ema"],
        "d": {"convs.0.0.weight": torch.zeros(2)},
        "g_ema": blob["g_ema"],
        "g_optim": optim,
        "d_optim": optim,
        "args": args,
        "ada_aug_p": 0.0,
    }
    torch.save(train, tmp_path / "050000.pt")
    ref = np.load(REF / "rosinality" / "reference.npz")
    G = load_generator("stylegan2", str(tmp_path / "050000.pt"))
    with torch.no_grad():
        images = G.synthesize(torch.from_numpy(ref["z"])).numpy()
    assert np.abs(images - np.clip(ref["images"], -1, 1)).max() <= 1e-5
    # no latent_avg: w_avg is the mean w of seeded z's (deterministic), close to the stored one
    w_avg = G.net.mapping.w_avg
    assert torch.equal(w_avg, load_generator("stylegan2", str(tmp_path / "050000.pt")).net.mapping.w_avg)
    assert torch.allclose(w_avg, blob["latent_avg"], atol=0.1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            argparse.Namespace(size=64, latent=32, n_mlp=4),
            "its args say size 64, but its tensors make a 32x32",
        ),
        (
            argparse.Namespace(size=32, channel_multiplier=2),
            "its args say channel_multiplier 2 (512 channels",
        ),
        (argparse.Namespace(size=32, latent=512, n_mlp=8), "its args say latent 512, but its tensors say 32"),
    ],
)
def test_rosinality_args_disagreeing_with_shapes(tmp_path, capsys, args, match):
    path = _rosinality_with(tmp_path, lambda state: None, args=args)
    assert_one_line_error(capsys, *layers("stylegan2", path), match=match)


def _full_width_state(size: int, channel_multiplier: int, style_dim: int = 8, n_mlp: int = 2) -> dict:
    """rosinality's key layout at its real widths; tensors are broadcast views, so this stays small."""
    ch = rosinality_channels(size, channel_multiplier)
    z = torch.zeros(1)
    state = {}
    for i in range(1, n_mlp + 1):
        state[f"style.{i}.weight"], state[f"style.{i}.bias"] = (
            z.expand(style_dim, style_dim),
            z.expand(style_dim),
        )
    state["input.input"] = z.expand(1, ch[4], 4, 4)

    def styled(prefix, c_in, c_out, k=3):
        state[f"{prefix}.conv.weight"] = z.expand(1, c_out, c_in, k, k)
        state[f"{prefix}.conv.modulation.weight"] = z.expand(c_in, style_dim)
        state[f"{prefix}.conv.modulation.bias"] = z.expand(c_in)

    styled("conv1", ch[4], ch[4])
    state["conv1.noise.weight"], state["conv1.activate.bias"] = z.expand(1), z.expand(ch[4])
    styled("to_rgb1", ch[4], 3, k=1)
    state["to_rgb1.bias"] = z.expand(1, 3, 1, 1)
    state["noises.noise_0"] = z.expand(1, 1, 4, 4)
    blur = make_filter((1, 3, 3, 1)) * 4
    c_prev = ch[4]
    for k, res in enumerate(r for r in ch if r > 4):
        for j, c_in in ((2 * k, c_prev), (2 * k + 1, ch[res])):
            styled(f"convs.{j}", c_in, ch[res])
            state[f"convs.{j}.noise.weight"], state[f"convs.{j}.activate.bias"] = (
                z.expand(1),
                z.expand(ch[res]),
            )
            state[f"noises.noise_{j + 1}"] = z.expand(1, 1, res, res)
        state[f"convs.{2 * k}.conv.blur.kernel"] = blur
        styled(f"to_rgbs.{k}", ch[res], 3, k=1)
        state[f"to_rgbs.{k}.bias"], state[f"to_rgbs.{k}.upsample.kernel"] = z.expand(1, 3, 1, 1), blur
        c_prev = ch[res]
    return state


@pytest.mark.slow
def test_rosinality_real_widths_agree_with_args(tmp_path, capsys):
    state = _full_width_state(64, 1)
    torch.save({"g_ema": state, "args": argparse.Namespace(size=64, channel_multiplier=1)}, tmp_path / "a.pt")
    G = load_generator("stylegan2", str(tmp_path / "a.pt"))
    assert [(i.name, i.shape[0]) for i in G.layers()] == [
        ("b4", 512),
        ("b8", 512),
        ("b16", 512),
        ("b32", 512),
        ("b64", 256),
    ]
    torch.save({"g_ema": state, "args": argparse.Namespace(size=64, channel_multiplier=2)}, tmp_path / "b.pt")
    assert_one_line_error(
        capsys,
        *layers("stylegan2", tmp_path / "b.pt"),
        match="its args say channel_multiplier 2 (512 channels at 64x64), but its tensors have 256",
    )


# ---- rosinality through the CLI ------------------------------------------------------------------------


def test_rosinality_layers_and_options_on_the_command_line(capsys):
    code = main([*layers("stylegan2", ROSINALITY), "--latent-space", "w", "--truncation", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "latent dim 32, images 32x32" in out
    assert [line.split()[0] for line in out.splitlines()[-4:]] == ["b4", "b8", "b16", "b32"]
