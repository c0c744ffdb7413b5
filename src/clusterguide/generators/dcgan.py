"""``digiface-dcgan``: the built-in 64x64 face generator.

The architecture is the PyTorch-tutorial DCGAN (nz=100, ngf=64, five ConvTranspose layers),
defined here; the weights ship inside the PyPI package ``gan-face-generate`` (MIT license,
trained on DigiFace-1M) as ``gan_face_generate/weights.tar`` under the key ``netG_state_dict``.
We read only that file, with ``weights_only=True``, and never import the package's code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.checkpoints import load_state_dict_strict, sha256_file

WEIGHTS_PACKAGE = "gan_face_generate"
WEIGHTS_FILE = "weights.tar"
WEIGHTS_KEY = "netG_state_dict"


class DCGAN(nn.Module):
    """The tutorial DCGAN generator; parameter names match the published ``netG_state_dict``."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        in_ch = nz
        for i, out_ch in enumerate(widths):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 4, stride, pad, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(True),
            ]
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], -1, 1, 1))


def find_weights() -> Path:
    """Path of the shipped weights file, or a one-line UserError saying how to install it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default generator's weights are missing: run `pip install --no-deps gan-face-generate`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: reinstall with `pip install --no-deps gan-face-generate`")
    return path


class DCGANAdapter(GeneratorAdapter):
    """Adapter over :class:`DCGAN`. Layers ``block1``..``block4`` are the outputs of the four
    ConvTranspose-BatchNorm-ReLU blocks (4x4, 8x8, 16x16, 32x32)."""

    name = "digiface-dcgan"
    latent_dim = 100
    image_size = 64
    _BLOCKS = ("block1", "block2", "block3", "block4")

    def __init__(self, net: DCGAN | None = None, weights_id: str = "random") -> None:
        super().__init__()
        self.net = (net or DCGAN()).eval()
        self.weights_id = weights_id
        self.latent_dim = self.net.main[0].in_channels
        self.image_size = 4 * 2 ** (len(self._BLOCKS))

    @classmethod
    def pretrained(cls, checkpoint: str | None = None) -> DCGANAdapter:
        path = Path(checkpoint) if checkpoint else find_weights()
        if not path.is_file():
            raise UserError(f"checkpoint {path} not found")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read DCGAN checkpoint {path}: {exc}") from None
        state = blob.get(WEIGHTS_KEY, blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise UserError(f"{path} holds no {WEIGHTS_KEY!r} state dict")
        net = DCGAN()
        load_state_dict_strict(net, state, str(path))
        return cls(net, weights_id=sha256_file(path))

    def layer_names(self) -> list[str]:
        return list(self._BLOCKS)

    def _block_end(self, layer: str) -> int:
        # block k (1-based) ends after module index 3k-1 of net.main (ConvT, BN, ReLU per block)
        return 3 * (self._BLOCKS.index(self.check_layer(layer)) + 1)

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1)
        return self.net.main[: self._block_end(layer)](x)

    def tail(self, h: torch.Tensor, layer: str, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.main[self._block_end(layer) :](h)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
