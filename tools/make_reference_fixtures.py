"""Write ``tests/fixtures/reference/``: small checkpoints written by each publisher's own code, in the
publisher's own file format, with that code's outputs for fixed latents.

For every family a small configuration (32 px, few channels) gets seeded random weights; the
publisher's code writes the checkpoint exactly as its training or conversion scripts do, and runs
its own generator on fixed latents. The outputs are stored beside the checkpoint
(``reference.npz``: the latents, the images, the features at two named layers, and the
truncation / ``w_avg`` / ``latent_avg`` paths) with a ``reference.json`` that says what was run.
``tests/test_gen_reference.py`` loads each checkpoint with clusterguide alone and compares. The
tests never need the publishers' code; only this script does, and it is never committed here.

Getting the publishers' code (public repositories; these commits were used)::

    ROOT=/tmp/pub
    git clone https://github.com/facebookresearch/pytorch_GAN_zoo        $ROOT/pytorch_GAN_zoo
    git clone https://github.com/NVlabs/stylegan2-ada-pytorch            $ROOT/stylegan2-ada-pytorch
    git clone https://github.com/NVlabs/stylegan3                        $ROOT/stylegan3
    git clone https://github.com/huggingface/pytorch-pretrained-BigGAN   $ROOT/pytorch-pretrained-BigGAN
    git clone https://github.com/rosinality/stylegan2-pytorch            $ROOT/stylegan2-pytorch
    # (check out the commits in PUBLISHERS below for byte-identical fixtures)
    python tools/make_reference_fixtures.py --publishers $ROOT            # all families
    python tools/make_reference_fixtures.py --publishers $ROOT --only pgan,biggan

Nothing else is installed: the script runs with clusterguide's own environment (torch on CPU,
numpy, scipy). What it changes so that 2019-2021 research code runs there, and why that does not
change what the code computes:

- Modules imported only by download helpers that are never called here (``requests``, ``boto3``,
  ``botocore``) are stubbed with empty modules; ``pkg_resources.parse_version`` (removed from recent
  setuptools) is provided by ``packaging.version.parse``.
- NVIDIA (stylegan2-ada-pytorch, stylegan3): nothing is patched. Their custom ops (``bias_act``,
  ``upfirdn2d``, ``filtered_lrelu``) compile CUDA plugins only for CUDA tensors and otherwise run
  their own reference implementations in torch; the generators run with ``force_fp32=True`` and
  ``noise_mode='const'`` (``num_fp16_res=0`` as well).
- rosinality/stylegan2-pytorch: ``op/fused_act.py`` and ``op/upfirdn2d.py`` compile their CUDA
  extensions at import with ``torch.utils.cpp_extension.load``; that call is replaced by a stub that
  returns a placeholder, and the ops' own CPU branches (``upfirdn2d_native``, the CPU branch of
  ``fused_leaky_relu``, plain ``F.conv2d`` / ``F.conv_transpose2d`` in ``conv2d_gradfix``) do the
  work, as they do for any CPU tensor. Its ``Generator`` hard-codes 512 channels up to 32x32; a
  subclass divides the ``channels`` table by 16 as the constructor assigns it, so every module is
  still built by rosinality's own code, only narrower (a 32 px file at full width would be 66 MB).
- pytorch_GAN_zoo: its optimisers pass ``betas=[0, 0.99]``, which recent torch refuses (an int and
  a float); they get ``(0.0, 0.99)``. Optimiser state is not part of what is compared.
- pytorch-pretrained-BigGAN: nothing beyond the stubs; the model is written as its
  ``convert_tf_to_pytorch.py`` does (``torch.save(model.state_dict())`` + ``config.to_json_string()``).

Random weights are made informative where initialisation leaves parts idle: noise strengths,
biases, batch-norm statistics, ``w_avg`` / ``latent_avg`` and the PGAN moving average get seeded
non-trivial values (through the publisher's own modules), and output layers are scaled down so the
images are not saturated.

Re-running gives byte-identical files, except that NVIDIA's pickles name their tensor storages by
memory address (torch's pickling); their contents and every ``reference.npz`` are identical.

Each family runs in its own subprocess: stylegan2-ada-pytorch and stylegan3 both define top-level
packages named ``dnnlib``, ``torch_utils`` and ``training``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import pickle
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
OUT_DEFAULT = REPO / "tests" / "fixtures" / "reference"
SEED = 2024
N_LATENTS = 4
N_FEATURES = 2  # latents whose layer features are stored (keeps the fixtures small)

PUBLISHERS = {
    "pgan": (
        "facebookresearch/pytorch_GAN_zoo",
        "pytorch_GAN_zoo",
        "b75dee40918caabb4fe7ec561522717bf096a8cb",
    ),
    "stylegan2-ada": (
        "NVlabs/stylegan2-ada-pytorch",
        "stylegan2-ada-pytorch",
        "d72cc7d041b42ec8e806021a205ed9349f87c6a4",
    ),
    "stylegan3-t": ("NVlabs/stylegan3", "stylegan3", "c233a919a6faee6e36a316ddd4eddababad1adf9"),
    "stylegan3-r": ("NVlabs/stylegan3", "stylegan3", "c233a919a6faee6e36a316ddd4eddababad1adf9"),
    "biggan-deep": (
        "huggingface/pytorch-pretrained-BigGAN",
        "pytorch-pretrained-BigGAN",
        "1e18aed2dff75db51428f13b940c38b923eb4a3d",
    ),
    "rosinality": (
        "rosinality/stylegan2-pytorch",
        "stylegan2-pytorch",
        "bef283a1c24087da704d16c30abc8e36e63efa0e",
    ),
}


# ---- environment shims (see the module docstring) ---------------------------------------------------


def install_shims() -> None:
    for name in ("requests", "boto3", "botocore"):
        sys.modules.setdefault(name, types.ModuleType(name))
    exceptions = types.ModuleType("botocore.exceptions")
    exceptions.ClientError = type("ClientError", (Exception,), {})  # type: ignore[attr-defined]
    sys.modules.setdefault("botocore.exceptions", exceptions)
    if "pkg_resources" not in sys.modules:
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim


def use_publisher(root: Path, family: str) -> Path:
    path = root / PUBLISHERS[family][1]
    if not path.is_dir():
        raise SystemExit(f"{path} not found: clone https://github.com/{PUBLISHERS[family][0]} there")
    sys.path.insert(0, str(path))
    return path


def capture(module: torch.nn.Module, store: dict, key: str, pick: Callable = lambda out: out) -> None:
    """Keep ``pick(output)`` of every call of ``module`` in ``store[key]`` (a list)."""

    def hook(_m, _inp, out):
        store.setdefault(key, []).append(pick(out).detach().clone())

    module.register_forward_hook(hook)


def randomize_(t: torch.Tensor, scale: float, g: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=g) * scale)


def write(out: Path, family: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    repo, _, commit = PUBLISHERS[family]
    meta = {"family": family, "publisher": {"repository": repo, "commit": commit}, "seed": SEED, **meta}
    meta["saturated_fraction"] = float(np.mean(np.abs(arrays["images"]) >= 1))
    buf = io.BytesIO()
    float32 = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    np.savez_compressed(buf, **float32)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    (out / "reference.npz").write_bytes(buf.getvalue())
    (out / "reference.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ---- facebookresearch/pytorch_GAN_zoo -----------------------------------------------------------------


def make_pgan(root: Path, out: Path) -> None:
    use_publisher(root, "pgan")
    import models.progressive_gan as progressive_gan
    from models.progressive_gan import ProgressiveGAN

    adam = (
        torch.optim.Adam
    )  # recent torch refuses betas=[0, 0.99] (an int and a float); optimisers are not saved
    progressive_gan.optim = types.SimpleNamespace(
        Adam=lambda params, betas, **kw: adam(params, betas=(float(betas[0]), float(betas[1])), **kw)
    )

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    model = ProgressiveGAN(dimLatentVector=32, depthScale0=16, useGPU=False, lossMode="WGANGP")
    for depth in (16, 8, 8):  # 4 -> 32 px, as training adds scales
        model.addScale(depth)
    net, avg = model.getOriginalG(), model.getOriginalAvgG()
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            randomize_(p, 0.1, g)
    # the moving average differs from netG after training; the hub samples from avgG
    avg.load_state_dict(net.state_dict())
    for p in avg.parameters():
        with torch.no_grad():
            p.mul_(0.9).add_(torch.randn(p.shape, generator=g) * 0.05)
    with torch.no_grad():
        for layer in (net.toRGBLayers[-1], avg.toRGBLayers[-1]):
            layer.module.weight.mul_(0.3)
    model.save(str(out / "pgan.pth"))  # torch.save({"config", "netG", "netD", "avgG"})

    z = torch.randn(N_LATENTS, 32, generator=g)
    arrays: dict[str, np.ndarray] = {"z": z.numpy()}
    layers = ["scale1", "scale3"]
    for tag, gen in (("", avg), ("netG_", net)):
        store: dict = {}
        capture(gen.normalizationLayer, store, "norm")
        with torch.no_grad():
            arrays[f"{tag}images"] = gen.eval()(z).numpy()
        for layer in layers:  # the last pixel norm at a resolution is that scale's output
            size = 4 * 2 ** int(layer[5:])
            arrays[f"{tag}features.{layer}"] = [t for t in store["norm"] if t.shape[-1] == size][-1][
                :N_FEATURES
            ].numpy()
    write(
        out,
        "pgan",
        {
            "checkpoint": "pgan.pth",
            "generator": "pgan",
            "layers": layers,
            "written_by": "ProgressiveGAN.save (models/base_GAN.py)",
            "images_from": "avgG (what the hub samples); netG_* from netG",
        },
        arrays,
    )


# ---- NVlabs/stylegan2-ada-pytorch and NVlabs/stylegan3 -------------------------------------------------


def _nvidia_outputs(G, layers: list[str], z: torch.Tensor, psi: float, pick_block: bool) -> dict:
    store: dict = {}
    for layer in layers:
        module = G.synthesis.input if layer == "input" else getattr(G.synthesis, layer)
        capture(module, store, layer, (lambda out: out[0]) if pick_block else (lambda out: out))
    kw = dict(noise_mode="const", force_fp32=True)
    with torch.no_grad():
        ws = G.mapping(z, None)
        images = G.synthesis(ws, **kw)
        ws_psi = G.mapping(z, None, truncation_psi=psi)
        images_psi = G.synthesis(ws_psi, **kw)
        assert torch.equal(G(z, None, truncation_psi=psi, **kw), images_psi)
    arrays = {
        "z": z.numpy(),
        "w": ws[:, 0].numpy(),
        "images": images.numpy(),
        "w_trunc": ws_psi[:, 0].numpy(),
        "images_trunc": images_psi.numpy(),
    }
    for layer in layers:
        arrays[f"features.{layer}"] = store[layer][0][:N_FEATURES].numpy()
    return arrays


def _snapshot(out: Path, G, D, G_ema) -> None:
    """As training/training_loop.py writes network-snapshot-*.pkl."""
    data = {"training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "resolution": 32}}
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", None)]:
        if module is not None:
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[name] = module
    with open(out / "network-snapshot.pkl", "wb") as f:
        pickle.dump(data, f)


def _ema_like(G, g: torch.Generator):
    G_ema = copy.deepcopy(G).eval()
    for p in G_ema.parameters():
        with torch.no_grad():
            p.mul_(0.95).add_(torch.randn(p.shape, generator=g) * 0.02)
    return G_ema


def make_stylegan2_ada(root: Path, out: Path) -> None:
    use_publisher(root, "stylegan2-ada")
    from training import networks

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    common = dict(channel_base=512, channel_max=32, num_fp16_res=0, conv_clamp=256)
    G = networks.Generator(
        z_dim=32,
        c_dim=0,
        w_dim=32,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(**common),
    ).eval()
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, **common).eval()
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            randomize_(p, 0.1, g)
        if ".torgb." in name and name.endswith("weight") and "affine" not in name:
            with torch.no_grad():
                p.mul_(0.3)
    G_ema = _ema_like(G, g)
    with torch.no_grad():  # as if tracked during training
        G_ema.mapping.w_avg.copy_(G_ema.mapping(torch.randn(256, 32, generator=g), None)[:, 0].mean(0))
    _snapshot(out, G, D, G_ema)
    z = torch.randn(N_LATENTS, 32, generator=g)
    layers = ["b8", "b16"]
    arrays = _nvidia_outputs(G_ema, layers, z, 0.5, pick_block=True)
    with torch.no_grad():
        arrays["G_images"] = G.synthesis(G.mapping(z, None), noise_mode="const", force_fp32=True).numpy()
    write(
        out,
        "stylegan2-ada",
        {
            "checkpoint": "network-snapshot.pkl",
            "generator": "stylegan2",
            "layers": layers,
            "truncation": 0.5,
            "written_by": "pickle.dump of the snapshot dict, as training/training_loop.py",
            "images_from": "G_ema, synthesis(mapping(z), noise_mode='const', force_fp32=True); G_images from G",
        },
        arrays,
    )


def make_stylegan3(root: Path, out: Path, config: str) -> None:
    use_publisher(root, f"stylegan3-{config}")
    from training import networks_stylegan2, networks_stylegan3

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    r = config == "r"
    G = networks_stylegan3.Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        channel_base=512 if r else 256,
        channel_max=32 if r else 16,
        num_fp16_res=0,
        conv_clamp=256,
        conv_kernel=1 if r else 3,
        use_radial_filters=r,
        magnitude_ema_beta=0.999,
    ).eval()
    D = networks_stylegan2.Discriminator(
        c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16, conv_clamp=256
    ).eval()
    G_ema = _ema_like(G, g)
    with torch.no_grad():  # tracked during training: input magnitudes and w_avg
        for name in G_ema.synthesis.layer_names:
            getattr(G_ema.synthesis, name).magnitude_ema.copy_(torch.rand([], generator=g) + 0.5)
        G_ema.mapping.w_avg.copy_(G_ema.mapping(torch.randn(256, 16, generator=g), None)[:, 0].mean(0))
    _snapshot(out, G, D, G_ema)
    z = torch.randn(N_LATENTS, 16, generator=g)
    names = G_ema.synthesis.layer_names
    layers = ["input", names[5]]
    arrays = _nvidia_outputs(G_ema, layers, z, 0.7, pick_block=False)
    write(
        out,
        f"stylegan3-{config}",
        {
            "checkpoint": "network-snapshot.pkl",
            "generator": "stylegan2",
            "layers": layers,
            "truncation": 0.7,
            "written_by": "pickle.dump of the snapshot dict, as training/training_loop.py",
            "images_from": "G_ema, synthesis(mapping(z), noise_mode='const', force_fp32=True)",
        },
        arrays,
    )


# ---- huggingface/pytorch-pretrained-BigGAN -------------------------------------------------------------


def make_biggan(root: Path, out: Path) -> None:
    use_publisher(root, "biggan-deep")
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig
    from pytorch_pretrained_biggan.utils import truncated_noise_sample

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    config = BigGANConfig(
        output_dim=32,
        z_dim=16,
        class_embed_dim=16,
        channel_width=4,
        num_classes=10,
        layers=[(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)],
        attention_layer_position=4,
    )
    model = BigGAN(config).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_means"):
                randomize_(buf, 0.1, g)
            elif name.endswith("running_vars"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        model.generator.bn.weight.copy_(1 + 0.1 * torch.randn(model.generator.bn.weight.shape, generator=g))
        model.generator.bn.bias.copy_(0.1 * torch.randn(model.generator.bn.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("bias") and "generator.bn" not in name:
                randomize_(p, 0.05, g)
        if hasattr(model.generator.layers[config.attention_layer_position], "gamma"):
            model.generator.layers[config.attention_layer_position].gamma.fill_(0.5)
        # torch's spectral norm starts from random u, v; its power iteration (train mode only) makes
        # the stored u, v those of a trained model, so that sigma is the largest singular value
        model.train()
        for _ in range(30):
            c = torch.eye(config.num_classes)[torch.randint(config.num_classes, (2,), generator=g)]
            model(torch.randn(2, config.z_dim, generator=g), c, 1.0)
        model.eval()
    folder = out / "biggan"
    folder.mkdir(exist_ok=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # as convert_tf_to_pytorch.py
    (folder / "config.json").write_text(config.to_json_string())

    label = 3
    layers = ["layer2", f"layer{config.attention_layer_position}"]
    arrays: dict[str, np.ndarray] = {}
    for tag, t in (("", 1.0), ("_trunc", 0.4)):
        z = torch.from_numpy(truncated_noise_sample(N_LATENTS, config.z_dim, truncation=t, seed=SEED))
        c = torch.zeros(N_LATENTS, config.num_classes)
        c[:, label] = 1
        store: dict = {}
        for layer in layers:
            capture(model.generator.layers[int(layer[5:])], store, layer)
        with torch.no_grad():
            arrays[f"images{tag}"] = model(z, c, t).numpy()
        for module in model.generator.layers:
            module._forward_hooks.clear()
        arrays[f"z{tag}"] = z.numpy()
        for layer in layers:
            arrays[f"features{tag}.{layer}"] = store[layer][0][:N_FEATURES].numpy()
    write(
        out,
        "biggan-deep",
        {
            "checkpoint": "biggan",
            "generator": "biggan",
            "layers": layers,
            "truncation": 0.4,
            "class_label": label,
            "written_by": "torch.save(model.state_dict()) + config.to_json_string(), as convert_tf_to_pytorch.py",
            "images_from": "BigGAN(z, one_hot(class), truncation); z from utils.truncated_noise_sample",
        },
        arrays,
    )


# ---- rosinality/stylegan2-pytorch ------------------------------------------------------------------


def make_rosinality(root: Path, out: Path) -> None:
    use_publisher(root, "rosinality")
    import torch.utils.cpp_extension as cpp

    cpp.load = lambda *a, **k: types.SimpleNamespace()  # the CUDA kernels are never called on CPU
    import model as rosinality

    class NarrowGenerator(rosinality.Generator):
        def __setattr__(self, name, value):
            if name == "channels":
                value = {k: v // 16 for k, v in value.items()}
            super().__setattr__(name, value)

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    style_dim = 32
    G = NarrowGenerator(size=32, style_dim=style_dim, n_mlp=4, channel_multiplier=2)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                randomize_(p, 0.1, g)
            elif name.endswith("activate.bias") or (name.startswith("to_rgb") and name.endswith(".bias")):
                randomize_(p, 0.1, g)
            elif name.startswith("to_rgb") and name.endswith("conv.weight"):
                p.mul_(0.3)
    g_ema = copy.deepcopy(G).eval()
    with torch.no_grad():
        latent_avg = g_ema.mean_latent(4096)[0]
    # convert_weight.py's format; train.py's checkpoints hold g, d, g_ema, optimisers and args
    torch.save({"g_ema": g_ema.state_dict(), "latent_avg": latent_avg}, out / "rosinality.pt")

    z = torch.randn(N_LATENTS, style_dim, generator=g)
    layers = ["b8", "b16"]
    store: dict = {}
    capture(g_ema.convs[1], store, "b8")
    capture(g_ema.convs[3], store, "b16")
    with torch.no_grad():
        images, _ = g_ema([z], randomize_noise=False)
        w = g_ema.get_latent(z)
        images_w, _ = g_ema([w], input_is_latent=True, randomize_noise=False)
        assert torch.equal(images, images_w)
        psi = 0.5
        images_psi, _ = g_ema([z], truncation=psi, truncation_latent=latent_avg, randomize_noise=False)
    arrays = {
        "z": z.numpy(),
        "w": w.numpy(),
        "images": images.numpy(),
        "w_trunc": (latent_avg + psi * (w - latent_avg)).numpy(),
        "images_trunc": images_psi.numpy(),
        "features.b8": store["b8"][0][:N_FEATURES].numpy(),
        "features.b16": store["b16"][0][:N_FEATURES].numpy(),
    }
    write(
        out,
        "rosinality",
        {
            "checkpoint": "rosinality.pt",
            "generator": "stylegan2",
            "layers": layers,
            "truncation": psi,
            "written_by": "torch.save({'g_ema', 'latent_avg'}), as convert_weight.py",
            "images_from": "Generator([z], randomize_noise=False); truncation with truncation_latent=latent_avg",
        },
        arrays,
    )


FAMILIES: dict[str, Callable[[Path, Path], None]] = {
    "pgan": make_pgan,
    "stylegan2-ada": make_stylegan2_ada,
    "stylegan3-t": lambda root, out: make_stylegan3(root, out, "t"),
    "stylegan3-r": lambda root, out: make_stylegan3(root, out, "r"),
    "biggan-deep": make_biggan,
    "rosinality": make_rosinality,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishers", type=Path, required=True, help="folder holding the five clones")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    parser.add_argument("--only", default=",".join(FAMILIES), help="comma-separated families")
    parser.add_argument("--family", help=argparse.SUPPRESS)  # one family, in this process
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.family:
        install_shims()
        out = args.out / args.family
        out.mkdir(parents=True, exist_ok=True)
        FAMILIES[args.family](args.publishers.resolve(), out)
        return
    for family in args.only.split(","):
        if family not in FAMILIES:
            raise SystemExit(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--publishers", str(args.publishers), "--out", str(args.out)]
        subprocess.run([*cmd, "--family", family], check=True, env=env)
        size = sum(f.stat().st_size for f in (args.out / family).rglob("*") if f.is_file())
        print(f"{family}: {size / 1e6:.2f} MB in {args.out / family}")


if __name__ == "__main__":
    main()
