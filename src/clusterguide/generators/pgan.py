"""``pgan``: Progressive GAN generators in the format of facebookresearch/pytorch_GAN_zoo.

The architecture is pytorch_GAN_zoo's ``GNet`` at the end of training (blending factor alpha = 0):
pixel-normalised latent -> equalized linear to 4x4 -> scale 0 (one 3x3 conv) -> scales 1..N (nearest
upsampling and two 3x3 convs each) -> the last scale's 1x1 toRGB. Every conv and linear layer has
equalized learning rate (weights stored N(0, 1), He's constant applied at run time, bias
included), LeakyReLU(0.2) and pixel norm after it. Parameter names (``formatLayer.module.weight``,
``scaleLayers.2.1.module.bias``, ...) are those of the published state dicts, so they load strictly.

A hub checkpoint is a ``torch.save`` of ``{"config", "netG", "netD", "avgG"}``; the generator used is
``avgG`` (the moving average the hub samples from), else ``netG``. ``config`` is a plain object of
pytorch_GAN_zoo's ``BaseConfig`` class; it is read with ``weights_only=True`` through a stand-in
class that only receives attributes, so nothing from that repository is imported or run.

Layers ``scale0`` .. ``scaleN`` are the outputs of each scale (4x4, 8x8, ...), after pixel norm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter, LayerInfo, published_random
from clusterguide.generators.checkpoints import load_state_dict_strict, load_weights_only, sha256_file
from clusterguide.generators.registry import register

# Channel depth per scale of pytorch_GAN_zoo's standard PGAN configuration (pgan_config.py).
STANDARD_DEPTHS = (512, 512, 512, 512, 256, 128, 64, 32, 16)


@dataclass(frozen=True)
class PGANConfig:
    """The architecture of one GNet."""

    latent_dim: int = 512  # latentVectorDim
    depths: tuple[int, ...] = (512, 512, 512, 512, 256, 128, 64)  # channels of scale 0, 1, ...
    leak: float = 0.2  # leakyReluLeak
    normalization: bool = True  # perChannelNormalization (pixel norm)
    equalized: bool = True  # equalizedlR
    image_channels: int = 3  # dimOutput
    output_tanh: bool = False  # generationActivation: tanh for the MSE/DCGAN losses, none otherwise

    @property
    def resolution(self) -> int:
        return 4 * 2 ** (len(self.depths) - 1)

    @classmethod
    def standard(cls, resolution: int, **overrides) -> PGANConfig:
        scales = int(math.log2(resolution // 4)) + 1
        if 4 * 2 ** (scales - 1) != resolution or not 1 <= scales <= len(STANDARD_DEPTHS):
            raise ValueError(f"no standard PGAN at resolution {resolution}")
        return cls(depths=STANDARD_DEPTHS[:scales], **overrides)


class EqualizedConv2d(nn.Module):
    """Conv2d whose output (bias included, as in pytorch_GAN_zoo) is scaled by He's constant."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int = 0, equalized: bool = True) -> None:
        super().__init__()
        self.module = nn.Conv2d(c_in, c_out, kernel, padding=padding)
        self.gain = math.sqrt(2.0 / (c_in * kernel * kernel)) if equalized else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.gain


class EqualizedLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int, equalized: bool = True) -> None:
        super().__init__()
        self.module = nn.Linear(c_in, c_out)
        self.gain = math.sqrt(2.0 / c_in) if equalized else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.gain


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class PGANGenerator(nn.Module):
    """GNet with its published parameter names (camelCase kept for that reason)."""

    def __init__(self, config: PGANConfig) -> None:
        super().__init__()
        self.config = config
        d, eq = config.depths, config.equalized
        self.formatLayer = EqualizedLinear(config.latent_dim, 16 * d[0], eq)
        self.groupScale0 = nn.ModuleList([EqualizedConv2d(d[0], d[0], 3, 1, eq)])
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(d[k - 1], d[k], 3, 1, eq), EqualizedConv2d(d[k], d[k], 3, 1, eq)])
            for k in range(1, len(d))
        )
        # One toRGB per scale is stored; only the last one is used once growing has finished.
        self.toRGBLayers = nn.ModuleList(EqualizedConv2d(c, config.image_channels, 1, 0, eq) for c in d)

    @property
    def num_scales(self) -> int:
        return len(self.config.depths)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x, self.config.leak)
        return pixel_norm(x) if self.config.normalization else x

    def run_to(self, z: torch.Tensor, scale: int) -> torch.Tensor:
        """The activations at the end of ``scale``."""
        x = pixel_norm(z) if self.config.normalization else z
        x = self._act(self.formatLayer(x.reshape(x.shape[0], -1)).reshape(x.shape[0], -1, 4, 4))
        for conv in self.groupScale0:
            x = self._act(conv(x))
        return self.run_between(x, 0, scale)

    def run_between(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """From the end of scale ``start`` to the end of scale ``stop``."""
        for group in self.scaleLayers[start:stop]:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for conv in group:
                x = self._act(conv(x))
        return x

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        x = self.toRGBLayers[-1](x)
        return torch.tanh(x) if self.config.output_tanh else x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.run_to(z, self.num_scales - 1))


def random_generator(config: PGANConfig, seed: int = 0) -> PGANGenerator:
    """Seeded random weights the way pytorch_GAN_zoo initialises them (N(0, 1), zero bias)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PGANGenerator(config)
        for name, p in net.named_parameters():
            nn.init.normal_(p) if name.endswith("weight") else nn.init.zeros_(p)
    return net


class PGANAdapter(GeneratorAdapter):
    """Layers ``scale0``..``scaleN``: the output of each resolution, 4x4 up to the image size."""

    name = "pgan"

    def __init__(self, net: PGANGenerator, weights_id: str = "random") -> None:
        super().__init__()
        self.net = net.eval()
        self.weights_id = weights_id
        self.latent_dim = net.config.latent_dim
        self.image_size = net.config.resolution

    def layer_names(self) -> list[str]:
        return [f"scale{k}" for k in range(self.net.num_scales)]

    def layers(self) -> list[LayerInfo]:
        return [LayerInfo(f"scale{k}", (c, 4 * 2**k, 4 * 2**k)) for k, c in enumerate(self.net.config.depths)]

    def _scale(self, layer: str) -> int:
        return self.layer_names().index(self.check_layer(layer))

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        return self.net.run_to(z, self._scale(layer))

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        x = self.net.run_between(h, self._scale(layer), self.net.num_scales - 1)
        return self.net.to_rgb(x).clamp(-1, 1)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        # Models trained with WGAN-GP have no output activation; images are clipped to [-1, 1].
        return self.net(z).clamp(-1, 1)

    def describe(self) -> dict:
        return {**super().describe(), "architecture": asdict(self.net.config)}


# ---- checkpoints ----------------------------------------------------------------------------------


class _BaseConfigStandIn:
    """Receives the attributes of a pickled ``models.utils.config.BaseConfig``; has no behaviour."""


_CONFIG_GLOBALS = [(_BaseConfigStandIn, "models.utils.config.BaseConfig")]


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config fields, generator state dict) of a pytorch_GAN_zoo checkpoint, read with weights_only."""
    blob = load_weights_only(path, "PGAN checkpoint", _CONFIG_GLOBALS)
    if not isinstance(blob, dict):
        raise UserError(f"{path} is not a pytorch_GAN_zoo checkpoint (expected a dict with 'netG')")
    state = blob.get("avgG") or blob.get("netG")
    if state is None and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state = blob  # a bare generator state dict
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no generator state ('avgG' or 'netG')")
    raw = blob.get("config")
    config = vars(raw) if isinstance(raw, _BaseConfigStandIn) else dict(raw or {})
    return config, dict(state)


def _rename_legacy_keys(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Old pytorch_GAN_zoo files name ``X.weight`` what is now ``X.module.weight``; their own
    loader maps one to the other, and so do we (every key must still be accounted for)."""
    out = {}
    for key, value in state.items():
        if key not in own:
            for suffix in ("weight", "bias"):
                if key.endswith("." + suffix):
                    candidate = key[: -len(suffix)] + "module." + suffix
                    if candidate in own:
                        key = candidate
                        break
        out[key] = value
    return out


def config_from_checkpoint(fields: dict, state: dict[str, torch.Tensor], source: str) -> PGANConfig:
    """The architecture, from the saved config where it says, from tensor shapes otherwise."""
    if float(fields.get("alpha", 0) or 0) != 0:
        raise UserError(
            f"{source} was saved while a new scale was still blending in (alpha > 0); not supported"
        )
    if int(fields.get("categoryVectorDim", 0) or 0) > 0:
        raise UserError(
            f"{source} is a class-conditional (AC-GAN) PGAN; only unconditional ones are supported"
        )

    def shape(suffix: str) -> tuple[int, ...] | None:
        for key in (suffix.replace("#", "module."), suffix.replace("#", "")):
            if key in state:
                return tuple(state[key].shape)
        return None

    fmt = shape("formatLayer.#weight")
    s0 = shape("groupScale0.0.#weight")
    if fmt is None or s0 is None:
        raise UserError(
            f"checkpoint {source} does not match the architecture: no formatLayer / groupScale0 weights"
        )
    depths = [s0[0]]
    while (w := shape(f"scaleLayers.{len(depths) - 1}.0.#weight")) is not None:
        depths.append(w[0])
    latent = int(fields.get("latentVectorDim", fields.get("noiseVectorDim", fmt[1])))
    declared = fields.get("depthOtherScales")
    if declared is not None and [int(fields.get("depthScale0", depths[0])), *map(int, declared)] != depths:
        raise UserError(f"{source}: its config's depths disagree with its tensors")
    return PGANConfig(
        latent_dim=latent,
        depths=tuple(depths),
        leak=float(fields.get("leakyReluLeak", 0.2)),
        normalization=bool(fields.get("perChannelNormalization", True)),
        equalized=bool(fields.get("equalizedlR", True)),
        image_channels=int(fields.get("dimOutput", 3)),
        output_tanh=str(fields.get("lossCriterion", "WGANGP")) in ("MSE", "DCGAN"),
    )


def load_checkpoint(path: Path) -> PGANAdapter:
    fields, state = read_checkpoint(path)
    config = config_from_checkpoint(fields, state, str(path))
    net = PGANGenerator(config)
    load_state_dict_strict(net, _rename_legacy_keys(state, set(net.state_dict())), str(path))
    return PGANAdapter(net, weights_id=sha256_file(path))


# Resolutions of the published checkpoints, for ``random:<name>`` (architecture only, no download).
PUBLISHED_RESOLUTION = {"celebAHQ-256": 256, "celebAHQ-512": 512, "DTD": 128, "celeba": 128}
DEFAULT_CHECKPOINT = "celebAHQ-256"


def load(checkpoint: str | None = None, seed: int | str = 0) -> PGANAdapter:
    """``checkpoint``: a .pth file, a published name (downloaded once), or ``random:<name>`` for the
    published architecture with seeded random weights (standard depths; for dry runs and tests)."""
    from clusterguide.generators import download

    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if checkpoint.startswith("random:"):
        res = published_random("PGAN", checkpoint, PUBLISHED_RESOLUTION)
        adapter = PGANAdapter(
            random_generator(PGANConfig.standard(res), int(seed)), f"{checkpoint}-seed{seed}"
        )
        return adapter
    path = Path(checkpoint).expanduser()
    if not path.exists():
        entry = download.lookup("pgan", checkpoint)
        if entry is None:
            names = ", ".join(download.published("pgan"))
            raise UserError(
                f"PGAN checkpoint {checkpoint!r} is neither a file nor a published name ({names})"
            )
        path = download.fetch(entry)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the .pth checkpoint file")
    return load_checkpoint(path)


register(
    "pgan",
    load,
    "Progressive GAN (pytorch_GAN_zoo): celebAHQ-256 (default), celebAHQ-512, DTD, celeba, or a .pth file",
    options=("seed",),
)
