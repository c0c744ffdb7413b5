"""NVIDIA's StyleGAN3 generator (alias-free, configs T and R; stylegan3's ``networks_stylegan3.py``).

Same mapping network as StyleGAN2; the synthesis network starts from Fourier features and every
layer is a modulated conv followed by a "filtered leaky ReLU" (upsample, FIR, lrelu, FIR,
downsample). The filters are stored buffers, so no filter design is needed to load a checkpoint;
the per-layer sizes, factors and paddings are recorded in the converted config
(:class:`StyleGAN3Config`) rather than recomputed. :meth:`StyleGAN3Config.design` derives that plan
the way NVIDIA's constructor does, for seeded random weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import LayerInfo
from clusterguide.generators.stylegan2_net import MappingNetwork
from clusterguide.generators.stylegan_ops import (
    LRELU_GAIN,
    FullyConnectedLayer,
    upfirdn2d,
)


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
    def from_json(cls, data: dict, source: str = "config.json") -> StyleGAN3Config:
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
