"""The numerical building blocks of NVIDIA's StyleGAN2 and StyleGAN3 generators, in plain torch.

NVIDIA's custom CUDA kernels (``bias_act``, ``upfirdn2d``, the filtered leaky ReLU) are written out
here with ordinary torch ops, in fp32, so they run on any device; they compute what NVIDIA's own
reference (non-CUDA) paths compute. :class:`FullyConnectedLayer` is the equalized-learning-rate
linear layer both generations use, with NVIDIA's parameter names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through lrelu

ACTIVATIONS = {"linear": (None, 1.0), "lrelu": (0.2, LRELU_GAIN), "relu": (0.0, LRELU_GAIN)}


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
    slope, act_gain = ACTIVATIONS[act]
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
