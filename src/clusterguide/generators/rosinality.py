"""rosinality/stylegan2-pytorch checkpoints for the ``stylegan2`` family.

A ``.pt`` file written by that repository's ``train.py`` (``g``, ``d``, ``g_ema``, the optimisers,
``args``) or ``convert_weight.py`` (``g_ema``, ``latent_avg``) is read with
``torch.load(weights_only=True)``; ``args`` (an ``argparse.Namespace``) is received by an inert
stand-in. ``g_ema`` is translated, key by key, into NVIDIA's layout
(:class:`~clusterguide.generators.stylegan2_net.StyleGAN2Generator`, 'skip' architecture), so the
layers have the same names as for NVIDIA's checkpoints (``b4`` ... ``b<resolution>``):

==========================================  ==============================================
rosinality                                  NVIDIA
==========================================  ==============================================
``style.{i+1}.weight`` / ``.bias``           ``mapping.fc{i}.weight`` / ``.bias``
``latent_avg``                              ``mapping.w_avg``
``input.input``                             ``synthesis.b4.const``
``conv1``, ``to_rgb1``, ``noises.noise_0``   ``synthesis.b4.conv1``, ``.torgb``, its ``noise_const``
``convs.{2k}``, ``convs.{2k+1}``            ``synthesis.b{res}.conv0``, ``.conv1`` (res = 8 * 2^k)
``to_rgbs.{k}``                             ``synthesis.b{res}.torgb``
==========================================  ==============================================

Every key of the file is accounted for (a missing, unexpected or misshapen one is named), the blur
kernels must be the standard [1, 3, 3, 1], and where the file carries ``args`` its ``size``,
``channel_multiplier``, ``latent`` and ``n_mlp`` must agree with the tensors. The architecture
comes from the tensor shapes: rosinality's channel table (512 up to 32x32, then
256·multiplier at 64, halving) is NVIDIA's ``min(channel_base / res, channel_max)`` with
``channel_base`` = 16384·multiplier, ``channel_max`` = 512. The mapping's learning-rate multiplier
is rosinality's default 0.01 (``train.py`` has no option for it). A file without ``latent_avg``
(``train.py`` writes none) gets the mean w of 4096 seeded z, as rosinality's ``generate.py`` computes
it for truncation.

The computation is the same up to float rounding: rosinality's fan-in scale is folded into the
stored conv weights (followed by demodulation, so this is exact), and its ToRGB scale is NVIDIA's
style gain.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from clusterguide.errors import UserError
from clusterguide.generators.checkpoints import check_family, family_of, load_weights_only
from clusterguide.generators.stylegan2_net import StyleGAN2Config, StyleGAN2Generator
from clusterguide.generators.stylegan_ops import make_filter

BLUR_TAPS = (1, 3, 3, 1)
LR_MLP = 0.01  # rosinality's Generator(lr_mlp=0.01)
W_AVG_SAMPLES = 4096  # generate.py: g_ema.mean_latent(4096)
W_AVG_SEED = 0


class NamespaceStandIn:
    """Receives the attributes of ``train.py``'s pickled ``argparse.Namespace``; has no behaviour."""


_GLOBALS = [(NamespaceStandIn, "argparse.Namespace")]


def looks_like_rosinality(state: object) -> bool:
    """Whether ``state`` (a loaded file) is a rosinality checkpoint or a bare ``g_ema`` state dict."""
    if not isinstance(state, dict):
        return False
    if isinstance(state.get("g_ema"), dict):
        return True
    return "style.1.weight" in state and "input.input" in state


def read(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict]:
    """(``g_ema`` state dict, ``latent_avg`` or None, ``args`` as a dict) of a rosinality file."""
    blob = load_weights_only(path, "StyleGAN2 checkpoint", _GLOBALS)
    check_family(blob, "stylegan2", path)
    if not looks_like_rosinality(blob):
        if family_of(blob) == "stylegan2":  # NVIDIA's layout, e.g. a bare G_ema state dict
            raise UserError(
                f"{path} holds an NVIDIA-layout state dict without its architecture; convert the "
                "network pickle it came from with `clusterguide convert stylegan2 FILE.pkl --trust-pickle`"
            )
        raise UserError(f"{path} is not a StyleGAN2 checkpoint clusterguide reads (no 'g_ema')")
    state = blob["g_ema"] if "g_ema" in blob else blob
    latent_avg = blob.get("latent_avg") if "g_ema" in blob else None
    raw = blob.get("args") if "g_ema" in blob else None
    args = vars(raw) if isinstance(raw, NamespaceStandIn) else dict(raw) if isinstance(raw, dict) else {}
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise UserError(f"{path}: 'latent_avg' is not a tensor")
    return dict(state), latent_avg, args


def _shape(state: dict[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise UserError(f"checkpoint {source} does not match the architecture: missing key {key!r}")
    return tuple(state[key].shape)


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def rosinality_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    """The channel table of rosinality's ``Generator`` (model.py)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512}
    table.update({64 * 2**i: (256 >> i) * channel_multiplier for i in range(5)})
    return {r: c for r, c in table.items() if r <= size}


def config_from_state(state: dict[str, torch.Tensor], args: dict, source: str) -> StyleGAN2Config:
    """The architecture from the tensor shapes, checked against ``args`` where the file has them."""
    n_mlp = 0  # style.0 is the pixel norm, without parameters
    while f"style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    if n_mlp == 0:
        raise UserError(f"checkpoint {source} does not match the architecture: missing key 'style.1.weight'")
    style_dim = _shape(state, "style.1.weight", source)[1]
    n_blocks = _count(state, "to_rgbs.{}.conv.weight")
    resolution = 4 * 2**n_blocks
    channels = {4: _shape(state, "conv1.conv.weight", source)[1]}
    for k in range(n_blocks):
        channels[8 * 2**k] = _shape(state, f"convs.{2 * k}.conv.weight", source)[1]
    if args:
        _check_args(args, resolution, channels, style_dim, n_mlp, source)
    channel_max = max(channels.values())
    narrower = [c * r for r, c in channels.items() if c < channel_max]
    channel_base = narrower[0] if narrower else channel_max * resolution
    cfg = StyleGAN2Config(
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=resolution,
        mapping_layers=n_mlp,
        mapping_lr_multiplier=LR_MLP,
        channel_base=channel_base,
        channel_max=channel_max,
        architecture="skip",
        conv_clamp=None,
        resample_filter=BLUR_TAPS,
    )
    plan = {r: cfg.channels(r) for r in channels}
    if plan != channels:
        raise UserError(
            f"{source}: its channel widths {channels} are not a StyleGAN2 channel plan "
            "(min(base / resolution, max))"
        )
    return cfg


def _check_args(
    args: dict, resolution: int, channels: dict[int, int], style_dim: int, n_mlp: int, source: str
) -> None:
    size = args.get("size")
    if size is not None and int(size) != resolution:
        raise UserError(
            f"{source}: its args say size {size}, but its tensors make a {resolution}x{resolution} generator"
        )
    multiplier = args.get("channel_multiplier")
    if multiplier is not None:
        expected = rosinality_channels(resolution, int(multiplier))
        for res, got in channels.items():
            if expected[res] != got:
                raise UserError(
                    f"{source}: its args say channel_multiplier {multiplier} ({expected[res]} channels at "
                    f"{res}x{res}), but its tensors have {got}"
                )
    for name, got in (("latent", style_dim), ("n_mlp", n_mlp)):
        if args.get(name) is not None and int(args[name]) != got:
            raise UserError(f"{source}: its args say {name} {args[name]}, but its tensors say {got}")


def _layer_keys(resolution: int) -> list[tuple[str, str, int]]:
    """(NVIDIA layer prefix, rosinality StyledConv prefix, noise index) of every synthesis conv."""
    out = [("synthesis.b4.conv1", "conv1", 0)]
    for k in range(int(math.log2(resolution)) - 2):
        res = 8 * 2**k
        out.append((f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1))
        out.append((f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2))
    return out


def _torgb_keys(resolution: int) -> list[tuple[str, str]]:
    return [("synthesis.b4.torgb", "to_rgb1")] + [
        (f"synthesis.b{8 * 2**k}.torgb", f"to_rgbs.{k}") for k in range(int(math.log2(resolution)) - 2)
    ]


def translate(
    state: dict[str, torch.Tensor], cfg: StyleGAN2Config, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``g_ema`` in NVIDIA's names (w_avg aside), and for each NVIDIA key the rosinality key it came
    from. Every rosinality key must be used exactly once."""
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise UserError(f"checkpoint {source} does not match the architecture: missing key {key!r}")
        used.add(key)
        return state[key].float()

    def put(nv: str, ros: str, value: torch.Tensor) -> None:
        out[nv], origin[nv] = value, ros

    for i in range(cfg.mapping_layers):
        for part in ("weight", "bias"):
            put(f"mapping.fc{i}.{part}", f"style.{i + 1}.{part}", take(f"style.{i + 1}.{part}"))
    put("synthesis.b4.const", "input.input", _drop_batch(take("input.input"), "input.input", source))
    for nv, ros, noise in _layer_keys(cfg.img_resolution):
        weight = _drop_batch(take(f"{ros}.conv.weight"), f"{ros}.conv.weight", source)
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1
        put(f"{nv}.weight", f"{ros}.conv.weight", weight * (1 / math.sqrt(fan_in)))
        put(f"{nv}.affine.weight", f"{ros}.conv.modulation.weight", take(f"{ros}.conv.modulation.weight"))
        put(f"{nv}.affine.bias", f"{ros}.conv.modulation.bias", take(f"{ros}.conv.modulation.bias"))
        put(f"{nv}.bias", f"{ros}.activate.bias", take(f"{ros}.activate.bias"))
        strength = take(f"{ros}.noise.weight")
        put(
            f"{nv}.noise_strength",
            f"{ros}.noise.weight",
            strength.reshape([]) if strength.numel() == 1 else strength,
        )
        noise_key = f"noises.noise_{noise}"
        noise_map = take(noise_key)
        put(f"{nv}.noise_const", noise_key, noise_map[0, 0] if noise_map.dim() == 4 else noise_map)
        if nv.endswith("conv0"):
            _check_blur(take(f"{ros}.conv.blur.kernel"), f"{ros}.conv.blur.kernel", source)
    for nv, ros in _torgb_keys(cfg.img_resolution):
        put(
            f"{nv}.weight",
            f"{ros}.conv.weight",
            _drop_batch(take(f"{ros}.conv.weight"), f"{ros}.conv.weight", source),
        )
        put(f"{nv}.affine.weight", f"{ros}.conv.modulation.weight", take(f"{ros}.conv.modulation.weight"))
        put(f"{nv}.affine.bias", f"{ros}.conv.modulation.bias", take(f"{ros}.conv.modulation.bias"))
        put(f"{nv}.bias", f"{ros}.bias", take(f"{ros}.bias").reshape(-1))
        if ros != "to_rgb1":
            _check_blur(take(f"{ros}.upsample.kernel"), f"{ros}.upsample.kernel", source)
    unexpected = sorted(set(state) - used)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(
            f"checkpoint {source} does not match the architecture: unexpected key {unexpected[0]!r}{more}"
        )
    return out, origin


def _drop_batch(t: torch.Tensor, key: str, source: str) -> torch.Tensor:
    """rosinality stores conv weights and the constant input with a leading batch axis of 1."""
    if t.dim() < 1 or t.shape[0] != 1:
        raise UserError(
            f"checkpoint {source} does not match the architecture: {key} has shape {tuple(t.shape)}, "
            "expected a leading axis of 1"
        )
    return t[0]


def _check_blur(kernel: torch.Tensor, key: str, source: str) -> None:
    expected = make_filter(BLUR_TAPS) * 4  # rosinality scales its upsampling kernels by factor**2
    if tuple(kernel.shape) != tuple(expected.shape) or not torch.allclose(kernel, expected, atol=1e-6):
        raise UserError(
            f"{source}: {key} is not the standard [1, 3, 3, 1] blur kernel, which is all that is supported"
        )


def load_network(path: Path) -> StyleGAN2Generator:
    """The ``g_ema`` of a rosinality file as an NVIDIA-layout StyleGAN2 generator, strictly checked."""
    state, latent_avg, args = read(path)
    source = str(path)
    cfg = config_from_state(state, args, source)
    net = StyleGAN2Generator(cfg)
    own = net.state_dict()
    translated, origin = translate(state, cfg, source)
    for key, value in translated.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(
                f"checkpoint {source} does not match the architecture: shape mismatch for {origin[key]}: "
                f"checkpoint {tuple(state[origin[key]].shape)} does not fit the "
                f"{cfg.img_resolution}x{cfg.img_resolution} generator its other tensors describe"
            )
    for key in own:
        if key.endswith("resample_filter"):
            translated[key] = own[key]
    if latent_avg is not None:
        w_avg = latent_avg.float().reshape(-1)
        if w_avg.numel() != cfg.w_dim:
            raise UserError(f"{source}: latent_avg has {w_avg.numel()} values, but w has {cfg.w_dim}")
        translated["mapping.w_avg"] = w_avg
    else:
        translated["mapping.w_avg"] = own["mapping.w_avg"]
    net.load_state_dict(translated, strict=True)
    if latent_avg is None:
        generator = torch.Generator().manual_seed(W_AVG_SEED)
        with torch.no_grad():
            z = torch.randn(W_AVG_SAMPLES, cfg.z_dim, generator=generator)
            net.mapping.w_avg.copy_(net.mapping(z).mean(0))
    return net
