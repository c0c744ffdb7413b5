"""``biggan``: BigGAN-deep 128/256/512 in the checkpoint format of huggingface's pytorch-pretrained-BigGAN.

A checkpoint is a folder with ``config.json`` (output_dim, z_dim, channel_width, layers, ...) and
``pytorch_model.bin`` (a state dict, read with ``weights_only=True``). The network is written here
with the published parameter names: ``embeddings`` (one-hot class -> 128-d embedding), ``generator.gen_z``,
``generator.layers.N`` (bottleneck residual blocks, one self-attention layer at
``attention_layer_position``), ``generator.bn``, ``generator.conv_to_rgb``. Spectrally normalised
layers keep ``weight_orig`` / ``weight_u`` / ``weight_v`` and divide by sigma = u . (W v) at run
time, as torch's spectral norm does in eval mode (no power iteration).

Class-conditional: every block's batch norm is conditioned on cat(z, embedding(class)), so an
adapter must be fixed to one class with ``conditioned(label)`` before it generates; a mapping fit
on one class can then drive another (cross-class transfer). Truncation t in (0, 1] scales the
truncated-normal prior and picks the batch-norm statistics precomputed for that t.

Layers: ``gen_z`` (the 4x4 input tensor), ``layer0`` .. ``layerN`` (the outputs of
``generator.layers[i]``; ``layer8`` is the self-attention layer in all three sizes). Because of the
skip-z conditioning, ``tail(h, layer, z=z)`` needs the latent too.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter, LayerInfo, number_option, published_random
from clusterguide.generators.checkpoints import load_state_dict_strict, load_weights_only, sha256_file
from clusterguide.generators.registry import register
from clusterguide.seeding import BLOCK, derive_seed

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
TRUNCATION_BOUND = 2.0  # the published sampler draws from N(0, 1) truncated to [-2, 2]

_BLOCKS_128 = [
    (False, 16, 16),
    (True, 16, 16),
    (False, 16, 16),
    (True, 16, 8),
    (False, 8, 8),
    (True, 8, 4),
    (False, 4, 4),
    (True, 4, 2),
    (False, 2, 2),
    (True, 2, 1),
]
_BLOCKS_256 = [*_BLOCKS_128[:5], (True, 8, 8), (False, 8, 8), (True, 8, 4), *_BLOCKS_128[6:]]
_BLOCKS_512 = [*_BLOCKS_256, (False, 1, 1), (True, 1, 1)]


@dataclass(frozen=True)
class BigGANConfig:
    """Fields of the published ``config.json`` (same names)."""

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple[tuple[bool, int, int], ...] = field(default_factory=lambda: tuple(_BLOCKS_128))
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    @classmethod
    def from_json(cls, data: dict, source: str = "config.json") -> BigGANConfig:
        known = {f for f in cls.__dataclass_fields__}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            if "layers" in kwargs:
                kwargs["layers"] = tuple((bool(u), int(i), int(o)) for u, i, o in kwargs["layers"])
            config = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source} is not a BigGAN config: {exc}") from None
        blocks = config.layers
        ups = sum(1 for up, _, _ in blocks if up)
        if (
            not blocks
            or config.channel_width < 3  # the image is the first 3 channels of conv_to_rgb
            or blocks[0][1] != 16  # gen_z makes 16 * channel_width channels
            or blocks[-1][2] != 1  # the final batch norm has channel_width channels
            or any(c_out not in (c_in, c_in // 2) for _, c_in, c_out in blocks)
            or any(a[2] != b[1] for a, b in itertools.pairwise(blocks))
            or 4 * 2**ups != config.output_dim
        ):
            raise UserError(
                f"{source}: its layers do not describe a BigGAN-deep generator of {config.output_dim}px"
            )
        return config

    @classmethod
    def published(cls, resolution: int) -> BigGANConfig:
        blocks = {128: _BLOCKS_128, 256: _BLOCKS_256, 512: _BLOCKS_512}[resolution]
        return cls(output_dim=resolution, layers=tuple(blocks))


class SNLinear(nn.Module):
    """Linear layer with a frozen spectral norm (eval-mode torch.nn.utils.spectral_norm)."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight_orig = nn.Parameter(torch.empty(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_buffer("weight_u", torch.empty(c_out))
        self.register_buffer("weight_v", torch.empty(c_in))

    def weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class SNConv2d(SNLinear):
    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True) -> None:
        super().__init__(c_in * kernel * kernel, c_out, bias)
        self.weight_orig = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class ClassBatchNorm(nn.Module):
    """Batch norm with precomputed statistics per truncation value and (when conditional) a gain
    and bias predicted from the condition vector."""

    def __init__(self, channels: int, cond_dim: int | None, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.step = 1.0 / (n_stats - 1)
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.conditional = cond_dim is not None
        if cond_dim is not None:
            self.scale = SNLinear(cond_dim, channels, bias=False)
            self.offset = SNLinear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def stats(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Same arithmetic as the published model, including its weighting of the two neighbouring
        # entries (the fractional part weights the lower one), so outputs match it exactly.
        coef, index = math.modf(truncation / self.step)
        i = int(index)
        if coef != 0.0:
            mean = self.running_means[i] * coef + self.running_means[i + 1] * (1 - coef)
            var = self.running_vars[i] * coef + self.running_vars[i + 1] * (1 - coef)
            return mean, var
        return self.running_means[i], self.running_vars[i]

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        mean, var = self.stats(truncation)
        if not self.conditional:
            return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        gain = (1 + self.scale(cond))[:, :, None, None]
        bias = self.offset(cond)[:, :, None, None]
        return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps) * gain + bias


class GenBlock(nn.Module):
    """BigGAN-deep bottleneck block: 1x1 down to a quarter of the channels, two 3x3, 1x1 up; the
    shortcut drops channels (keeps the first half) and upsamples by nearest neighbour."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, up: bool, n_stats: int, eps: float) -> None:
        super().__init__()
        mid = c_in // 4
        self.up, self.c_out = up, c_out
        self.bn_0 = ClassBatchNorm(c_in, cond_dim, n_stats, eps)
        self.conv_0 = SNConv2d(c_in, mid, 1)
        self.bn_1 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = SNConv2d(mid, mid, 3)
        self.bn_2 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = SNConv2d(mid, mid, 3)
        self.bn_3 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = SNConv2d(mid, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        skip = x
        x = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        x = F.relu(self.bn_1(x, truncation, cond))
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv_1(x)
        x = self.conv_2(F.relu(self.bn_2(x, truncation, cond)))
        x = self.conv_3(F.relu(self.bn_3(x, truncation, cond)))
        skip = skip[:, : self.c_out]
        if self.up:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return x + skip


class SelfAttention(nn.Module):
    """SAGAN self-attention; keys and values are max-pooled 2x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.snconv1x1_theta(x).reshape(n, c // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(n, c // 8, h * w // 4)
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(n, c // 2, h * w // 4)
        out = torch.bmm(g, attn.transpose(1, 2)).reshape(n, c // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class Generator(nn.Module):
    def __init__(self, config: BigGANConfig) -> None:
        super().__init__()
        ch, cond = config.channel_width, 2 * config.z_dim
        self.channel_width = ch
        self.gen_z = SNLinear(cond, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (up, c_in, c_out) in enumerate(config.layers):
            if i == config.attention_layer_position:
                layers.append(SelfAttention(ch * c_in))
            layers.append(GenBlock(ch * c_in, ch * c_out, cond, up, config.n_stats, config.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = ClassBatchNorm(ch, None, config.n_stats, config.eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)


class BigGAN(nn.Module):
    """Parameter names as in the published ``pytorch_model.bin``."""

    def __init__(self, config: BigGANConfig) -> None:
        super().__init__()
        self.config = config
        # As published: the class embedding is as wide as z (class_embed_dim is not used).
        self.embeddings = nn.Linear(config.num_classes, config.z_dim, bias=False)
        self.generator = Generator(config)

    def start(self, cond: torch.Tensor) -> torch.Tensor:
        x = self.generator.gen_z(cond)
        # The weights come from TensorFlow: the 4x4 tensor is laid out (h, w, c).
        return x.reshape(-1, 4, 4, 16 * self.generator.channel_width).permute(0, 3, 1, 2).contiguous()

    def run(
        self, x: torch.Tensor, cond: torch.Tensor, truncation: float, start: int, stop: int
    ) -> torch.Tensor:
        """Apply ``generator.layers[start:stop]``."""
        for layer in self.generator.layers[start:stop]:
            x = layer(x, cond, truncation) if isinstance(layer, GenBlock) else layer(x)
        return x

    def finish(self, x: torch.Tensor, truncation: float) -> torch.Tensor:
        g = self.generator
        x = g.conv_to_rgb(F.relu(g.bn(x, truncation)))
        return torch.tanh(x[:, :3])

    def forward(self, z: torch.Tensor, class_vector: torch.Tensor, truncation: float) -> torch.Tensor:
        cond = torch.cat([z, self.embeddings(class_vector)], dim=1)
        return self.finish(
            self.run(self.start(cond), cond, truncation, 0, len(self.generator.layers)), truncation
        )


def random_biggan(config: BigGANConfig, seed: int = 0) -> BigGAN:
    """Seeded random weights with plausible statistics (unit spectral norms, sane batch norms)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BigGAN(config)
        for name, t in net.state_dict().items():
            if name.endswith(("weight_orig", "embeddings.weight")):
                t.normal_(0, 1)
            elif name.endswith(("weight_u", "weight_v")):
                t.copy_(F.normalize(torch.randn_like(t), dim=0))
            elif name.endswith("running_vars"):
                t.uniform_(0.5, 1.5)
            elif name.endswith(("running_means", "bias")):
                t.normal_(0, 0.1)
            elif name.endswith("gamma"):
                t.fill_(0.5)
            elif name.endswith("weight"):
                t.fill_(1.0)
        for m in net.modules():  # make u, v the top singular pair so that sigma is the spectral norm
            if isinstance(m, SNLinear):
                w = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
                for _ in range(20):
                    m.weight_v.copy_(F.normalize(w.t() @ m.weight_u, dim=0))
                    m.weight_u.copy_(F.normalize(w @ m.weight_v, dim=0))
    return net


def truncated_normal_streams(
    seed: int, start: int, n: int, dim: int, bound: float = TRUNCATION_BOUND
) -> torch.Tensor:
    """Rows ``start .. start+n-1`` of a N(0, 1) stream truncated to [-bound, bound], batch-size
    independent like :func:`clusterguide.seeding.randn_streams` (inverse-CDF sampling)."""
    if n <= 0:
        return torch.empty(0, dim)
    first, last = start // BLOCK, (start + n - 1) // BLOCK
    lo = 0.5 * (1 + math.erf(-bound / math.sqrt(2)))
    rows = []
    for block in range(first, last + 1):
        g = torch.Generator().manual_seed(derive_seed(seed, "biggan-truncnorm", block))
        u = lo + (1 - 2 * lo) * torch.rand(BLOCK, dim, generator=g, dtype=torch.float64)
        rows.append((math.sqrt(2) * torch.erfinv(2 * u - 1)).clamp(-bound, bound).float())
    out = torch.cat(rows)
    offset = start - first * BLOCK
    return out[offset : offset + n].contiguous()


class BigGANAdapter(GeneratorAdapter):
    """BigGAN-deep fixed (after ``conditioned``) to one ImageNet class and one truncation."""

    name = "biggan"

    def __init__(
        self,
        net: BigGAN,
        weights_id: str = "random",
        truncation: float = 1.0,
        class_label: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < truncation <= 1:
            raise UserError(f"--truncation must be in (0, 1] for BigGAN (got {truncation})")
        self.net = net.eval()
        self.weights_id = weights_id
        self.truncation = float(truncation)
        self.latent_dim = net.config.z_dim
        self.image_size = net.config.output_dim
        self.num_classes = net.config.num_classes
        self.class_label = class_label
        names = ["gen_z"] + [f"layer{i}" for i in range(len(net.generator.layers))]
        self._layer_index = {name: i for i, name in enumerate(names)}  # gen_z = 0, layer i = i + 1

    # ---- conditioning -------------------------------------------------------------------------
    def conditioned(self, class_label: int | None) -> BigGANAdapter:
        if class_label is None:
            return self
        label = int(class_label)
        if not 0 <= label < self.num_classes:
            raise UserError(
                f"--class must be an ImageNet class index in 0..{self.num_classes - 1} (got {label})"
            )
        out = BigGANAdapter(self.net, self.weights_id, self.truncation, label)  # shares the weights
        if hasattr(self, "spec"):
            out.spec = self.spec  # type: ignore[attr-defined]
        return out.train(self.training)

    def _cond(self, z: torch.Tensor) -> torch.Tensor:
        if self.class_label is None:
            raise UserError(
                f"biggan is class-conditional: pass --class N (a class index, 0-{self.num_classes - 1})"
            )
        embed = self.net.embeddings.weight[:, self.class_label]  # = embeddings(one_hot(label))
        return torch.cat([z, embed.to(z.dtype).expand(z.shape[0], -1)], dim=1)

    # ---- layers and the split -----------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return list(self._layer_index)

    def layers(self) -> list[LayerInfo]:
        ch, res = self.net.config.channel_width, 4
        out = [LayerInfo("gen_z", (16 * ch, 4, 4))]
        c = 16 * ch
        for i, layer in enumerate(self.net.generator.layers):
            if isinstance(layer, GenBlock):
                res, c = res * (2 if layer.up else 1), layer.c_out
            out.append(LayerInfo(f"layer{i}", (c, res, res)))
        return out

    def _stop(self, layer: str) -> int:
        self.check_layer(layer)
        return self._layer_index[layer]

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        cond = self._cond(z)
        return self.net.run(self.net.start(cond), cond, self.truncation, 0, self._stop(layer))

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            raise TypeError("BigGAN's tail needs z= (every block is conditioned on the latent)")
        cond = self._cond(z)
        x = self.net.run(h, cond, self.truncation, self._stop(layer), len(self.net.generator.layers))
        return self.net.finish(x, self.truncation)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        cond = self._cond(z)
        x = self.net.run(self.net.start(cond), cond, self.truncation, 0, len(self.net.generator.layers))
        return self.net.finish(x, self.truncation)

    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """The published prior: truncated normal on [-2, 2], scaled by the truncation."""
        return truncated_normal_streams(seed, start, n, self.latent_dim) * self.truncation

    def describe(self) -> dict:
        return {
            **super().describe(),
            "class_label": self.class_label,
            "truncation": self.truncation,
            "architecture": asdict(self.net.config),
        }


# ---- checkpoints ----------------------------------------------------------------------------------

DEFAULT_CHECKPOINT = "biggan-deep-128"
PUBLISHED_RESOLUTION = {"biggan-deep-128": 128, "biggan-deep-256": 256, "biggan-deep-512": 512}


def load_folder(folder: Path, truncation: float) -> BigGANAdapter:
    weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for p in (weights, config_path):
        if not p.is_file():
            raise UserError(
                f"{p} not found (a BigGAN checkpoint folder holds {WEIGHTS_NAME} and {CONFIG_NAME})"
            )
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path} is damaged: {exc}") from None
    config = BigGANConfig.from_json(data, str(config_path))
    state = load_weights_only(weights, "BigGAN weights")
    if not isinstance(state, dict):
        raise UserError(f"{weights} is not a state dict")
    net = BigGAN(config)
    load_state_dict_strict(net, state, str(weights))
    return BigGANAdapter(net, weights_id=sha256_file(weights), truncation=truncation)


def load(checkpoint: str | None = None, truncation: float | str = 1.0, seed: int | str = 0) -> BigGANAdapter:
    """``checkpoint``: a folder (or its pytorch_model.bin), a published name (biggan-deep-128/256/512,
    downloaded once), or ``random:<name>`` for that architecture with seeded random weights."""
    from clusterguide.generators import download

    truncation = number_option("truncation", truncation)
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if checkpoint.startswith("random:"):
        res = published_random("BigGAN", checkpoint, PUBLISHED_RESOLUTION)
        net = random_biggan(BigGANConfig.published(res), int(seed))
        return BigGANAdapter(net, f"{checkpoint}-seed{seed}", truncation)
    path = Path(checkpoint).expanduser()
    if path.is_file():
        path = path.parent
    if not path.exists():
        if checkpoint not in PUBLISHED_RESOLUTION:
            names = ", ".join(PUBLISHED_RESOLUTION)
            raise UserError(
                f"BigGAN checkpoint {checkpoint!r} is neither a folder nor a published name ({names})"
            )
        config = download.fetch(download.PUBLISHED["biggan"][f"{checkpoint}:config"])
        download.fetch(download.PUBLISHED["biggan"][checkpoint])
        path = config.parent
    return load_folder(path, truncation)


register(
    "biggan",
    load,
    "BigGAN-deep (pytorch-pretrained-BigGAN), class-conditional: biggan-deep-128 (default), -256, -512, "
    "or a folder with pytorch_model.bin + config.json; needs --class",
    options=("truncation", "seed"),
)
