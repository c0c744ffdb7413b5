"""``stylegan2``: NVIDIA's StyleGAN2 and StyleGAN3 generators (NVlabs stylegan2-ada-pytorch and
stylegan3), reimplemented in plain torch and loaded from converted checkpoints.

NVIDIA publishes pickles that run code when opened; :mod:`clusterguide.generators.convert` turns one
into ``config.json`` + ``model.safetensors`` once, when the user says the file is trusted. This
module only ever reads that folder, strictly: every key and shape of ``G_ema``'s state dict is
checked (``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``,
``synthesis.b8.conv0.affine.weight``, ``synthesis.b8.conv0.noise_const``, ``synthesis.b8.torgb.weight``,
...; for StyleGAN3 ``synthesis.input.freqs``, ``synthesis.L3_52_512.up_filter``, ...).

The networks live in :mod:`stylegan2_net` and :mod:`stylegan3_net` (ops in :mod:`stylegan_ops`),
computed in fp32 with constant noise (the stored ``noise_const`` buffers, so G is deterministic).
This module holds the adapter and the loading.

Latent space (option ``latent_space``): ``z`` (the paper: mappings model z ~ N(0, I)) or ``w`` (the
latent is w = mapping(z), broadcast to every layer; ``sample_latents`` draws z from the seeded
stream and maps it). Option ``truncation`` (psi, default 1) pulls w towards ``w_avg``.

Layers: StyleGAN2 ``b4``, ``b8``, ... ``b<resolution>`` (the feature maps at the end of each
synthesis block); StyleGAN3 ``input`` (the Fourier features) and ``L0_36_512`` ... (its synthesis
layers by their own names, the final ToRGB excepted). Every layer is modulated by w and (in
StyleGAN2's default 'skip' architecture) adds to a running RGB image, so ``tail(h, layer, z=latent)``
needs the latent as well as h.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter, LayerInfo, number_option
from clusterguide.generators.checkpoints import load_state_dict_strict
from clusterguide.generators.registry import register
from clusterguide.generators.stylegan2_net import StyleGAN2Config, StyleGAN2Generator, random_generator
from clusterguide.generators.stylegan3_net import StyleGAN3Config, StyleGAN3Generator, random_generator_sg3
from clusterguide.seeding import randn_streams

FORMAT = "clusterguide-stylegan2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ---- the adapter ----------------------------------------------------------------------------------


class StyleGAN2Adapter(GeneratorAdapter):
    name = "stylegan2"

    def __init__(
        self,
        net: StyleGAN2Generator | StyleGAN3Generator,
        weights_id: str = "random",
        latent_space: str = "z",
        truncation: float = 1.0,
        class_label: int | None = None,
    ) -> None:
        super().__init__()
        if latent_space not in ("z", "w"):
            raise UserError(f"--latent-space must be z or w (got {latent_space!r})")
        if not truncation > 0:
            raise UserError(f"--truncation must be positive (got {truncation})")
        cfg = net.config
        self.net = net.eval()
        self.weights_id = weights_id
        self.latent_space = latent_space
        self.truncation = float(truncation)
        self.latent_dim = cfg.z_dim if latent_space == "z" else cfg.w_dim
        self.image_size = cfg.img_resolution
        self.num_classes = cfg.c_dim
        self.class_label = class_label

    def conditioned(self, class_label: int | None) -> StyleGAN2Adapter:
        if class_label is None or not self.num_classes:
            return super().conditioned(class_label)  # type: ignore[return-value]
        label = int(class_label)
        if not 0 <= label < self.num_classes:
            raise UserError(f"--class must be in 0..{self.num_classes - 1} for this StyleGAN2 (got {label})")
        out = StyleGAN2Adapter(self.net, self.weights_id, self.latent_space, self.truncation, label)
        if hasattr(self, "spec"):
            out.spec = self.spec  # type: ignore[attr-defined]
        return out.train(self.training)

    def _c(self, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if self.class_label is None:
            raise UserError("this StyleGAN2 is class-conditional: pass --class N")
        c = torch.zeros(n, self.num_classes, device=device)
        c[:, self.class_label] = 1
        return c

    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.mapping(z, self._c(z.shape[0], z.device), self.truncation)

    def _w(self, latent: torch.Tensor) -> torch.Tensor:
        return self.to_w(latent) if self.latent_space == "z" else latent.float()

    # ---- prior ----------------------------------------------------------------------------------
    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        z = randn_streams(seed, start, n, self.net.config.z_dim)
        if self.latent_space == "z":
            return z
        with torch.no_grad():  # rows are mapped independently, so batch size does not matter
            return self.to_w(z.to(self.device)).cpu()

    @property
    def prior_is_standard_normal(self) -> bool:
        return self.latent_space == "z"

    # ---- layers and the split -------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return [info.name for info in self.net.layer_infos()]

    def layers(self) -> list[LayerInfo]:
        return self.net.layer_infos()

    def _stop(self, layer: str) -> int:
        return self.layer_names().index(self.check_layer(layer)) + 1

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        return self.net.features(self._w(z), self._stop(layer))

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            raise TypeError("StyleGAN's tail needs z= (the latent): every layer is modulated by it")
        return self.net.finish(h, self._w(z), self._stop(layer)).clamp(-1, 1)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.synthesize(self._w(z)).clamp(-1, 1)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "latent_space": self.latent_space,
            "truncation": self.truncation,
            "class_label": self.class_label,
            "architecture": self.net.config.to_json(),
        }


# ---- checkpoints ----------------------------------------------------------------------------------


def load_converted(folder: Path, latent_space: str = "z", truncation: float = 1.0) -> StyleGAN2Adapter:
    """Load a folder written by ``clusterguide convert stylegan2``."""
    from clusterguide.artifacts import load_tensors, read_json, sha256

    meta = read_json(folder / CONFIG_NAME)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG_NAME} is not a converted StyleGAN2 checkpoint (format {FORMAT!r})")
    source = str(folder / CONFIG_NAME)
    net: nn.Module
    if meta.get("class") == "StyleGAN3Config":
        net = StyleGAN3Generator(StyleGAN3Config.from_json(meta.get("architecture") or {}, source))
    else:
        net = StyleGAN2Generator(StyleGAN2Config.from_json(meta.get("architecture") or {}, source))
    weights = folder / WEIGHTS_NAME
    expected = meta.get("weights_sha256")
    state = load_tensors(weights, expected)
    load_state_dict_strict(net, state, str(weights))
    return StyleGAN2Adapter(net, expected or sha256(weights), latent_space, truncation)


def converted_dir(name: str) -> Path:
    """Where ``clusterguide convert stylegan2 NAME`` puts a published checkpoint."""
    from clusterguide.generators.download import cache_dir

    return cache_dir() / "stylegan2" / "converted" / name


def preset(name: str) -> StyleGAN2Config | StyleGAN3Config:
    """Architecture of a published checkpoint, for ``random:<name>`` (the converted file's own
    config always decides; these follow the training configs of the two NVIDIA repositories)."""
    res = {
        "ffhq": 1024,
        "metfaces": 1024,
        "afhqcat": 512,
        "afhqdog": 512,
        "afhqwild": 512,
        "brecahad": 512,
        "cifar10": 32,
    }.get(name)
    m = re.fullmatch(r"stylegan([23])(-[tr])?-([a-z0-9]+)-(\d+)x\4", name)
    if m:
        res = int(m.group(4))
        if m.group(1) == "3":  # config R: 1x1 convs, twice the channels, radial filters
            r = m.group(2) == "-r"
            return StyleGAN3Config.design(
                res,
                channel_base=65536 if r else 32768,
                channel_max=1024 if r else 512,
                conv_kernel=1 if r else 3,
                radial=r,
            )
    if res is None:
        raise KeyError(name)
    if "cifar10" in name:
        return StyleGAN2Config(c_dim=10, img_resolution=32, mapping_layers=2, conv_clamp=256)
    return StyleGAN2Config(img_resolution=res, conv_clamp=None if name == "ffhq" else 256)


DEFAULT_CHECKPOINT = "ffhq"


def load(
    checkpoint: str | None = None, latent_space: str = "z", truncation: float | str = 1.0, seed: int | str = 0
) -> StyleGAN2Adapter:
    """``checkpoint``: a converted folder, a published name converted before (see
    ``clusterguide convert``), or ``random:<name>`` for that architecture with random weights."""
    from clusterguide.generators import download

    psi = number_option("truncation", truncation)
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if checkpoint.startswith("random:"):
        try:
            cfg = preset(checkpoint[7:])
        except KeyError:
            names = ", ".join(download.published("stylegan2"))
            raise UserError(f"unknown StyleGAN2 {checkpoint!r}; choose random:<one of {names}>") from None
        net = (
            random_generator_sg3(cfg, int(seed))
            if isinstance(cfg, StyleGAN3Config)
            else random_generator(cfg, int(seed))
        )
        return StyleGAN2Adapter(net, f"{checkpoint}-seed{seed}", latent_space, psi)
    path = Path(checkpoint).expanduser()
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent
    if path.is_dir():
        return load_converted(path, latent_space, psi)
    if path.is_file():
        raise UserError(
            f"{path} is not a converted checkpoint; convert it once with "
            f"`clusterguide convert stylegan2 {path} --trust-pickle --out DIR` and pass DIR"
        )
    if download.lookup("stylegan2", checkpoint) is None:
        names = ", ".join(download.published("stylegan2"))
        raise UserError(
            f"StyleGAN2 checkpoint {checkpoint!r} is neither a folder nor a published name ({names})"
        )
    folder = converted_dir(checkpoint)
    if not (folder / CONFIG_NAME).is_file():
        raise UserError(
            f"StyleGAN2 {checkpoint!r} is not converted yet: run `clusterguide convert stylegan2 "
            f"{checkpoint} --trust-pickle` once (it downloads NVIDIA's pickle)"
        )
    return load_converted(folder, latent_space, psi)


register(
    "stylegan2",
    load,
    "StyleGAN2 and StyleGAN3 (NVlabs pickles, converted once by `clusterguide convert`): ffhq "
    "(default), metfaces, afhqcat, stylegan3-t-ffhq-1024x1024, ... or a converted folder; "
    "--latent-space z|w, --truncation",
    options=("latent_space", "truncation", "seed"),
)
