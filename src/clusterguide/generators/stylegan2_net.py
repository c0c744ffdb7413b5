"""NVIDIA's StyleGAN2 generator (stylegan2-ada-pytorch's ``networks.py``): its configuration, the
mapping network (shared with StyleGAN3), the synthesis network in the 'orig', 'skip' and 'resnet'
architectures, and seeded random weights. Parameter and buffer names are those of NVIDIA's
``G_ema``, so a converted state dict loads strictly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import LayerInfo
from clusterguide.generators.stylegan_ops import (
    ACTIVATIONS,
    FullyConnectedLayer,
    bias_act,
    conv2d_resample,
    make_filter,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2d,
)


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of one StyleGAN2 generator (names follow NVIDIA's constructor arguments)."""

    z_dim: int = 512
    c_dim: int = 0  # class-label dimension, 0 = unconditional
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8  # mapping_kwargs.num_layers
    mapping_lr_multiplier: float = 0.01
    mapping_activation: str = "lrelu"
    embed_features: int | None = None  # None = w_dim
    layer_features: int | None = None  # None = w_dim
    has_w_avg: bool = True  # mapping.w_avg is tracked (needed for truncation)
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "skip"  # 'orig', 'skip' or 'resnet'
    activation: str = "lrelu"  # synthesis layers
    conv_clamp: float | None = None  # clamp of conv outputs (256 in stylegan2-ada training configs)
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    use_noise: bool = True

    def __post_init__(self) -> None:
        r = self.img_resolution
        if r < 4 or r & (r - 1):
            raise UserError(f"img_resolution must be a power of two >= 4 (got {r})")
        if self.architecture not in ("orig", "skip", "resnet"):
            raise UserError(f"unknown StyleGAN2 architecture {self.architecture!r}")
        for act in (self.activation, self.mapping_activation):
            if act not in ACTIVATIONS:
                raise UserError(f"activation {act!r} is not supported ({', '.join(ACTIVATIONS)})")

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def to_json(self) -> dict:
        data = asdict(self)
        data["resample_filter"] = list(self.resample_filter)
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = "config.json") -> StyleGAN2Config:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{source}: unknown StyleGAN2 config field(s) {', '.join(sorted(unknown))}")
        data = dict(data)
        if "resample_filter" in data:
            data["resample_filter"] = tuple(data["resample_filter"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"{source}: {exc}") from None


# ---- layers (parameter names as in NVIDIA's G_ema) ------------------------------------------------


class MappingNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.c_dim, self.z_dim = cfg.c_dim, cfg.z_dim
        embed = (cfg.embed_features or cfg.w_dim) if cfg.c_dim else 0
        hidden = cfg.layer_features or cfg.w_dim
        widths = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        if cfg.c_dim:
            self.embed = FullyConnectedLayer(cfg.c_dim, embed)
        self.num_layers = cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            layer = FullyConnectedLayer(
                widths[i],
                widths[i + 1],
                activation=cfg.mapping_activation,
                lr_multiplier=cfg.mapping_lr_multiplier,
            )
            setattr(self, f"fc{i}", layer)
        if cfg.has_w_avg:
            self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0) -> torch.Tensor:
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            if c is None:
                raise UserError("this StyleGAN2 is class-conditional: pass --class N")
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if psi != 1:
            if not hasattr(self, "w_avg"):
                raise UserError("this StyleGAN2 has no w_avg, so --truncation is not available")
            x = self.w_avg.lerp(x, psi)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, cfg: StyleGAN2Config, resolution: int, up: int = 1) -> None:
        super().__init__()
        self.up, self.resolution = up, resolution
        self.activation, self.conv_clamp = cfg.activation, cfg.conv_clamp
        self.register_buffer("resample_filter", make_filter(cfg.resample_filter))
        self.affine = FullyConnectedLayer(cfg.w_dim, c_in, bias_init=1)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.use_noise = cfg.use_noise
        if cfg.use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, padding=1, f=self.resample_filter)
        if self.use_noise:
            x = x + self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    def __init__(self, c_in: int, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, c_in, bias_init=1)
        self.weight = nn.Parameter(torch.randn(cfg.img_channels, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cfg.img_channels))
        self.weight_gain = 1 / math.sqrt(c_in)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """The 1x1 upsampling shortcut of the 'resnet' architecture (no bias, no clamp)."""

    def __init__(self, c_in: int, c_out: int, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.register_buffer("resample_filter", make_filter(cfg.resample_filter))
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 1, 1))
        self.weight_gain = 1 / math.sqrt(c_in)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, up=2)
        return bias_act(x, None, gain=gain)


class SynthesisBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cfg: StyleGAN2Config, resolution: int, is_last: bool) -> None:
        super().__init__()
        self.c_in, self.resolution, self.architecture = c_in, resolution, cfg.architecture
        self.register_buffer("resample_filter", make_filter(cfg.resample_filter))
        if c_in == 0:
            self.const = nn.Parameter(torch.randn(c_out, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(c_in, c_out, cfg, resolution, up=2)
        self.conv1 = SynthesisLayer(c_out, c_out, cfg, resolution)
        self.has_torgb = is_last or cfg.architecture == "skip"
        if self.has_torgb:
            self.torgb = ToRGBLayer(c_out, cfg)
        if c_in != 0 and cfg.architecture == "resnet":
            self.skip = Conv2dLayer(c_in, c_out, cfg)

    def features(self, x: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        """This block's feature maps (everything but the RGB branch)."""
        if self.c_in == 0:
            return self.conv1(self.const[None].expand(w.shape[0], -1, -1, -1), w)
        if self.architecture == "resnet":
            half = math.sqrt(0.5)
            y = self.skip(x, gain=half)
            return y + self.conv1(self.conv0(x, w), w, gain=half)
        return self.conv1(self.conv0(x, w), w)

    def rgb(self, x: torch.Tensor, img: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
        """The running image after this block."""
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.has_torgb:
            y = self.torgb(x, w)
            img = y if img is None else img + y
        return img


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.resolutions = cfg.resolutions
        for res in self.resolutions:
            c_in = cfg.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(c_in, cfg.channels(res), cfg, res, is_last=res == cfg.img_resolution)
            setattr(self, f"b{res}", block)

    def blocks(self, start: int = 0, stop: int | None = None) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.resolutions[start:stop]]


class StyleGAN2Generator(nn.Module):
    """``mapping`` (z, c -> w) and ``synthesis`` (w -> image), with NVIDIA's parameter names."""

    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.config = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.mapping = MappingNetwork(cfg)

    def run(
        self, w: torch.Tensor, stop: int, with_rgb: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, running image) after the first ``stop`` blocks."""
        x = img = None
        for block in self.synthesis.blocks(0, stop):
            x = block.features(x, w)
            img = block.rgb(x, img, w) if with_rgb else None
        assert x is not None
        return x, img

    def run_from(
        self, x: torch.Tensor, img: torch.Tensor | None, w: torch.Tensor, start: int
    ) -> torch.Tensor:
        """The image, continuing from the features and image after block ``start``."""
        for block in self.synthesis.blocks(start):
            x = block.features(x, w)
            img = block.rgb(x, img, w)
        assert img is not None
        return img

    # ---- what the adapter uses: layers, and the split at the end of layer ``stop - 1`` ------------
    def layer_infos(self) -> list[LayerInfo]:
        cfg = self.config
        return [LayerInfo(f"b{res}", (cfg.channels(res), res, res)) for res in cfg.resolutions]

    def features(self, w: torch.Tensor, stop: int) -> torch.Tensor:
        return self.run(w, stop, with_rgb=False)[0]

    def finish(self, h: torch.Tensor, w: torch.Tensor, stop: int) -> torch.Tensor:
        img = None
        if self.config.architecture == "skip" and stop > 1:
            img = self.run(w, stop - 1)[1]  # the running image before this block's ToRGB
        img = self.synthesis.blocks(stop - 1, stop)[0].rgb(h, img, w)
        return self.run_from(h, img, w, stop)

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        x, img = self.run(w, 1)
        return self.run_from(x, img, w, 1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0) -> torch.Tensor:
        return self.synthesize(self.mapping(z, c, psi))


def random_generator(cfg: StyleGAN2Config, seed: int = 0) -> StyleGAN2Generator:
    """Seeded random weights, initialised as NVIDIA's constructors do (plus small noise strengths
    and a w_avg from 1000 samples, so that every part of the network is exercised)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = StyleGAN2Generator(cfg)
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.data.fill_(0.1)
        if cfg.has_w_avg:
            with torch.no_grad():
                z = torch.randn(1000, cfg.z_dim)
                c = F.one_hot(torch.arange(1000) % cfg.c_dim, cfg.c_dim).float() if cfg.c_dim else None
                net.mapping.w_avg.copy_(net.mapping(z, c).mean(0))
    return net
