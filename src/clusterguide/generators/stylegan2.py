"""``stylegan2``: NVIDIA's StyleGAN2 and StyleGAN3 generators (NVlabs stylegan2-ada-pytorch and
stylegan3), reimplemented in plain torch and loaded from converted checkpoints.

NVIDIA publishes pickles that run code when opened; :mod:`clusterguide.generators.convert` turns one
into ``config.json`` + ``model.safetensors`` once, when the user says the file is trusted. This
module only ever reads that folder, strictly: every key and shape of ``G_ema``'s state dict is
checked (``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``,
``synthesis.b8.conv0.affine.weight``, ``synthesis.b8.conv0.noise_const``, ``synthesis.b8.torgb.weight``,
...; for StyleGAN3 ``synthesis.input.freqs``, ``synthesis.L3_52_512.up_filter``, ...).

The networks are computed in fp32 with fused modulated convolutions, constant noise (the stored
``noise_const`` buffers, so G is deterministic) and the FIR resampling and filtered leaky ReLU
written out with ordinary torch ops instead of NVIDIA's CUDA kernels. They match the reference
implementations run in fp32 (``force_fp32``); the reference's mixed-precision GPU path differs by
fp16 rounding only.

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

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter, LayerInfo, number_option
from clusterguide.generators.dcgan import load_state_dict_strict
from clusterguide.generators.registry import register
from clusterguide.seeding import randn_streams

FORMAT = "clusterguide-stylegan2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through lrelu


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
            if act not in _ACTIVATIONS:
                raise UserError(f"activation {act!r} is not supported ({', '.join(_ACTIVATIONS)})")

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
    def from_json(cls, data: dict, source: str = CONFIG_NAME) -> StyleGAN2Config:
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


# ---- ops ------------------------------------------------------------------------------------------

_ACTIVATIONS = {"linear": (None, 1.0), "lrelu": (0.2, LRELU_GAIN), "relu": (0.0, LRELU_GAIN)}


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    act: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias, apply the activation, scale by its gain times ``gain``, clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.dim() - 2))
    slope, act_gain = _ACTIVATIONS[act]
    if slope is not None:
        x = F.leaky_relu(x, slope) if slope else F.relu(x)
    total = act_gain * gain
    if total != 1:
        x = x * total
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def make_filter(taps: tuple[int, ...]) -> torch.Tensor:
    """The 2-D FIR low-pass used for resampling: outer product of the taps, summing to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Zero-insertion upsampling, padding (x0, x1, y0, y1; negative crops), FIR convolution with
    ``f`` (2-D, or 1-D applied along x then y; None = identity) times ``gain``, then keeping every
    ``down``-th pixel; channels are filtered independently."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    if f is None:
        if gain != 1:
            x = x * gain
    else:
        # a true convolution (flipped kernel); a 1-D filter carries sqrt(gain) in each of its two passes
        kernel = (f * gain ** (f.dim() / 2)).flip(list(range(f.dim()))).to(x.dtype)
        if f.dim() == 2:
            x = F.conv2d(x, kernel[None, None].repeat(c, 1, 1, 1), groups=c)
        else:
            k = kernel[None, None].repeat(c, 1, 1)
            x = F.conv2d(x, k.unsqueeze(2), groups=c)
            x = F.conv2d(x, k.unsqueeze(3), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def conv2d_resample(
    x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1, padding: int = 0, groups: int = 1
) -> torch.Tensor:
    """Convolution (correlation, like F.conv2d) with optional 2x upsampling: for ``up`` > 1 a
    stride-``up`` transposed convolution followed by the FIR low-pass (padding is with respect
    to the upsampled image, as in NVIDIA's conv2d_resample)."""
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None
    out_ch, in_per_group, kh, kw = w.shape
    fw = f.shape[-1]
    p0 = padding + (fw + up - 1) // 2
    p1 = padding + (fw - up) // 2
    if kw == 1 and kh == 1:  # 1x1: convolve at low resolution, then upsample
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)
    # conv_transpose2d takes (in, out/groups, k, k) weights and flips them itself, which turns the
    # transposed convolution back into a correlation with w.
    wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
    wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    p0, p1 = p0 - (kw - 1), p1 - (kw - up)
    trim = max(min(-p0, -p1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=trim, groups=groups)
    return upfirdn2d(x, f, pad=(p0 + trim, p1 + trim, p0 + trim, p1 + trim), gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    f: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample weights weight * style (scaled to unit output variance when ``demodulate``),
    run as one grouped convolution over the batch."""
    n, c_in = styles.shape
    out_ch, _, kh, kw = weight.shape
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    x = x.reshape(1, n * c_in, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(n * out_ch, c_in, kh, kw), f, up=up, padding=padding, groups=n)
    return x.reshape(n, out_ch, *x.shape[2:])


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ---- layers (parameter names as in NVIDIA's G_ema) ------------------------------------------------


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        c_in: int,
        c_out: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        # Stored weights are divided by the learning-rate multiplier; the gains undo that.
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([c_out], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(c_in)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b[None], x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation)


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


# ---- StyleGAN3 (alias-free, configs T and R) ------------------------------------------------------
# Same mapping network; the synthesis network starts from Fourier features and every layer is a
# modulated conv followed by a "filtered leaky ReLU" (upsample, FIR, lrelu, FIR, downsample). The
# filters are stored buffers, so no filter design is needed to load a checkpoint; the per-layer
# sizes, factors and paddings are recorded in the converted config.


@dataclass(frozen=True)
class SG3Layer:
    """One synthesis layer of a StyleGAN3 (attribute names as on NVIDIA's SynthesisLayer)."""

    name: str  # e.g. L3_52_512: index, output size, output channels
    is_torgb: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    conv_kernel: int
    up_factor: int
    down_factor: int
    padding: tuple[int, int, int, int]
    conv_clamp: float | None
    up_taps: int  # 1 = no upsampling filter
    down_taps: int  # 1 = no downsampling filter
    down_radial: bool  # 2-D radially symmetric downsampling filter (config R)
    # the filters' design targets; only used to draw random weights
    tmp_sampling_rate: float = 0.0
    in_cutoff: float = 0.0
    out_cutoff: float = 0.0
    in_half_width: float = 0.0
    out_half_width: float = 0.0


@dataclass(frozen=True)
class StyleGAN3Config:
    """Architecture of one StyleGAN3 generator; the layer list is recorded, not recomputed."""

    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    input_channels: int
    input_size: int
    input_sampling_rate: float
    input_bandwidth: float
    layers: tuple[SG3Layer, ...]
    output_scale: float = 0.25
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    mapping_activation: str = "lrelu"
    embed_features: int | None = None
    layer_features: int | None = None
    has_w_avg: bool = True

    def to_json(self) -> dict:
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = CONFIG_NAME) -> StyleGAN3Config:
        try:
            data = dict(data)
            data["layers"] = tuple(
                SG3Layer(**{**layer, "padding": tuple(layer["padding"])}) for layer in data["layers"]
            )
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise UserError(f"{source}: not a StyleGAN3 config ({exc})") from None

    @classmethod
    def design(
        cls,
        img_resolution: int,
        *,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_kernel: int = 3,
        radial: bool = False,
        z_dim: int = 512,
        w_dim: int = 512,
        c_dim: int = 0,
        img_channels: int = 3,
        mapping_layers: int = 2,
        num_layers: int = 14,
        num_critical: int = 2,
        margin_size: int = 10,
        filter_size: int = 6,
        conv_clamp: float | None = 256,
    ) -> StyleGAN3Config:
        """The layer plan NVIDIA's constructor derives from these arguments (cutoffs rise
        geometrically from 2 to img_resolution / 2; the last layers are critically sampled)."""
        import numpy as np

        first_cutoff, first_stopband, last_stopband_rel, lrelu_up = 2.0, 2**2.1, 2**0.3, 2
        last_cutoff = img_resolution / 2
        t = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** t
        stopbands = first_stopband * (last_cutoff * last_stopband_rel / first_stopband) ** t
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, rates / 2) - cutoffs
        sizes = rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels
        layers = []
        for i in range(num_layers + 1):
            prev, torgb = max(i - 1, 0), i == num_layers
            in_rate, out_rate = int(rates[prev]), int(rates[i])
            tmp = max(in_rate, out_rate) * (1 if torgb else lrelu_up)
            up, down = tmp // in_rate, tmp // out_rate
            k = 1 if torgb else conv_kernel
            up_taps = filter_size * up if up > 1 and not torgb else 1
            down_taps = filter_size * down if down > 1 and not torgb else 1
            total = (int(sizes[i]) - 1) * down + 1 - (int(sizes[prev]) + k - 1) * up + up_taps + down_taps - 2
            lo = (total + up) // 2
            layers.append(
                SG3Layer(
                    name=f"L{i}_{int(sizes[i])}_{int(channels[i])}",
                    is_torgb=torgb,
                    in_channels=int(channels[prev]),
                    out_channels=int(channels[i]),
                    in_size=int(sizes[prev]),
                    out_size=int(sizes[i]),
                    conv_kernel=k,
                    up_factor=up,
                    down_factor=down,
                    padding=(lo, total - lo, lo, total - lo),
                    conv_clamp=conv_clamp,
                    up_taps=up_taps,
                    down_taps=down_taps,
                    down_radial=radial and i < num_layers - num_critical,
                    tmp_sampling_rate=float(tmp),
                    in_cutoff=float(cutoffs[prev]),
                    out_cutoff=float(cutoffs[i]),
                    in_half_width=float(half_widths[prev]),
                    out_half_width=float(half_widths[i]),
                )
            )
        return cls(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            input_channels=int(channels[0]),
            input_size=int(sizes[0]),
            input_sampling_rate=float(rates[0]),
            input_bandwidth=float(cutoffs[0]),
            layers=tuple(layers),
            mapping_layers=mapping_layers,
        )


class SynthesisInput(nn.Module):
    """Fourier features of the output grid, rotated and translated by an affine function of w."""

    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        c = cfg.input_channels
        self.size, self.sampling_rate, self.bandwidth = (
            cfg.input_size,
            cfg.input_sampling_rate,
            cfg.input_bandwidth,
        )
        self.weight = nn.Parameter(torch.randn(c, c))
        self.affine = FullyConnectedLayer(cfg.w_dim, 4)
        self.register_buffer("transform", torch.eye(3))  # a user's extra inverse transform of the image
        self.register_buffer("freqs", torch.zeros(c, 2))
        self.register_buffer("phases", torch.zeros(c))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty), rotation normalised below
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        rot = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        shift = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rot @ shift @ self.transform.unsqueeze(0)
        freqs, phases = self.freqs.unsqueeze(0), self.phases.unsqueeze(0)
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # frequencies pushed out of band by the transform fade out instead of aliasing
        amplitudes = (
            1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)
        ).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (math.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.weight.shape[0])).t()
        return x.permute(0, 3, 1, 2)


def _modulated_conv2d_sg3(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    padding: int,
    demodulate: bool,
    input_gain: torch.Tensor,
) -> torch.Tensor:
    """StyleGAN3's variant: weights and styles pre-normalised to unit RMS, and the input scaled
    by the reciprocal of its tracked magnitude."""
    n, c_in = styles.shape
    kh, kw = weight.shape[2:]
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().unsqueeze(2).unsqueeze(3).unsqueeze(4)
    w = w * input_gain.expand(n, c_in).unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, c_in, kh, kw), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])


class SG3SynthesisLayer(nn.Module):
    def __init__(self, spec: SG3Layer, w_dim: int) -> None:
        super().__init__()
        self.spec = spec
        k = spec.conv_kernel
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        up = torch.ones(spec.up_taps) / spec.up_taps if spec.up_taps > 1 else None
        down = None
        if spec.down_taps > 1:
            shape = [spec.down_taps] * (2 if spec.down_radial else 1)
            down = torch.ones(shape) / spec.down_taps ** len(shape)
        self.register_buffer("up_filter", up)
        self.register_buffer("down_filter", down)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.spec
        styles = self.affine(w)
        if s.is_torgb:
            styles = styles * (1 / math.sqrt(s.in_channels * s.conv_kernel**2))
        x = _modulated_conv2d_sg3(
            x, self.weight, styles, s.conv_kernel - 1, not s.is_torgb, self.magnitude_ema.rsqrt()
        )
        # filtered leaky ReLU: bias, upsample + FIR, lrelu (identity for ToRGB), clamp, FIR + downsample
        x = x + self.bias.reshape(1, -1, 1, 1)
        x = upfirdn2d(x, self.up_filter, up=s.up_factor, pad=s.padding, gain=s.up_factor**2)
        if not s.is_torgb:
            x = F.leaky_relu(x, 0.2) * LRELU_GAIN
        if s.conv_clamp is not None:
            x = x.clamp(-s.conv_clamp, s.conv_clamp)
        return upfirdn2d(x, self.down_filter, down=s.down_factor)


class SG3SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        self.input = SynthesisInput(cfg)
        self.layer_names = [layer.name for layer in cfg.layers]
        for layer in cfg.layers:
            setattr(self, layer.name, SG3SynthesisLayer(layer, cfg.w_dim))


class StyleGAN3Generator(nn.Module):
    """``mapping`` and ``synthesis`` with the parameter names of NVIDIA's StyleGAN3 G_ema."""

    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        self.config = cfg
        self.synthesis = SG3SynthesisNetwork(cfg)
        self.mapping = MappingNetwork(cfg)  # type: ignore[arg-type]  (same fields)

    def _layers(self, start: int, stop: int | None = None) -> list[SG3SynthesisLayer]:
        return [getattr(self.synthesis, name) for name in self.synthesis.layer_names[start:stop]]

    def layer_infos(self) -> list[LayerInfo]:
        cfg = self.config
        out = [LayerInfo("input", (cfg.input_channels, cfg.input_size, cfg.input_size))]
        return out + [
            LayerInfo(layer.name, (layer.out_channels, layer.out_size, layer.out_size))
            for layer in cfg.layers[:-1]
        ]

    def features(self, w: torch.Tensor, stop: int) -> torch.Tensor:
        x = self.synthesis.input(w)  # stop 1 = "input", stop i + 2 = after layer i
        for layer in self._layers(0, stop - 1):
            x = layer(x, w)
        return x

    def finish(self, h: torch.Tensor, w: torch.Tensor, stop: int) -> torch.Tensor:
        for layer in self._layers(stop - 1):
            h = layer(h, w)
        return h * self.config.output_scale if self.config.output_scale != 1 else h

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        return self.finish(self.synthesis.input(w), w, 1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0) -> torch.Tensor:
        return self.synthesize(self.mapping(z, c, psi))


def _lowpass(taps: int, cutoff: float, half_width: float, rate: float, radial: bool) -> torch.Tensor:
    """A Kaiser-windowed sinc low-pass, for random StyleGAN3 weights only (real ones are stored)."""
    n = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    atten = 2.285 * (taps - 1) * math.pi * (2 * half_width / (rate / 2)) / 2 + 7.95
    beta = (
        0.1102 * (atten - 8.7)
        if atten > 50
        else (0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21) if atten > 21 else 0.0)
    )
    f = torch.sinc(2 * cutoff / rate * n) * torch.kaiser_window(
        taps, periodic=False, beta=beta, dtype=torch.float64
    )
    f = f / f.sum()
    if radial:
        f = torch.outer(f, f)
        f = f / f.sum()
    return f.float()


def random_generator_sg3(cfg: StyleGAN3Config, seed: int = 0) -> StyleGAN3Generator:
    """Seeded random StyleGAN3 weights, initialised as NVIDIA's constructors do."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = StyleGAN3Generator(cfg)
        inp = net.synthesis.input
        freqs = torch.randn(cfg.input_channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        inp.freqs.copy_(freqs / (radii * radii.square().exp().pow(0.25)) * cfg.input_bandwidth)
        inp.phases.copy_(torch.rand(cfg.input_channels) - 0.5)
        with torch.no_grad():
            inp.affine.weight.zero_()
            inp.affine.bias.copy_(torch.tensor([1.0, 0, 0, 0]))
        for name in net.synthesis.layer_names:
            layer = getattr(net.synthesis, name)
            s = layer.spec
            if layer.up_filter is not None:
                layer.up_filter.copy_(
                    _lowpass(s.up_taps, s.in_cutoff, s.in_half_width, s.tmp_sampling_rate, False)
                )
            if layer.down_filter is not None:
                layer.down_filter.copy_(
                    _lowpass(s.down_taps, s.out_cutoff, s.out_half_width, s.tmp_sampling_rate, s.down_radial)
                )
        with torch.no_grad():
            z = torch.randn(1000, cfg.z_dim)
            c = F.one_hot(torch.arange(1000) % cfg.c_dim, cfg.c_dim).float() if cfg.c_dim else None
            net.mapping.w_avg.copy_(net.mapping(z, c).mean(0))
    return net


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
