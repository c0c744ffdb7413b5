"""Generators by name. The CLI's ``--generator`` choices come from here.

A family registers a loader ``(checkpoint, **options) -> GeneratorAdapter``. A name with a colon,
``package.module:factory``, is a user generator loaded through :mod:`custom`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter

Loader = Callable[..., GeneratorAdapter]


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator; stored in every run folder."""

    name: str  # registry name, or package.module:factory
    checkpoint: str | None = None  # file path or published checkpoint name; None = family default
    options: dict = field(default_factory=dict)  # family options (latent_space, truncation, ...)

    def to_json(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: dict) -> GeneratorSpec:
        return cls(data["name"], data.get("checkpoint"), dict(data.get("options") or {}))


@dataclass(frozen=True)
class Family:
    name: str
    loader: Loader
    description: str
    options: tuple[str, ...] = ()  # option names the loader accepts


_FAMILIES: dict[str, Family] = {}


def register(name: str, loader: Loader, description: str, options: tuple[str, ...] = ()) -> None:
    _FAMILIES[name] = Family(name, loader, description, options)


def families() -> dict[str, Family]:
    _ensure_builtin()
    return dict(_FAMILIES)


def load_generator(
    spec: GeneratorSpec | str, checkpoint: str | None = None, device: str = "cpu", **options
) -> GeneratorAdapter:
    """Build the generator named by ``spec`` on ``device``, in eval mode, gradients off."""
    if isinstance(spec, str):
        spec = GeneratorSpec(spec, checkpoint, {k: v for k, v in options.items() if v is not None})
    if ":" in spec.name:
        from clusterguide.generators.custom import CustomAdapter

        adapter: GeneratorAdapter = CustomAdapter.from_spec(spec.name, spec.checkpoint)
    else:
        family = families().get(spec.name)
        if family is None:
            raise UserError(
                f"unknown generator {spec.name!r}; choose one of: {', '.join(sorted(_FAMILIES))}"
                " (or package.module:factory)"
            )
        unknown = set(spec.options) - set(family.options)
        if unknown:
            raise UserError(f"generator {spec.name!r} takes no option(s) {', '.join(sorted(unknown))}")
        adapter = family.loader(spec.checkpoint, **spec.options)
    adapter.spec = spec
    adapter.requires_grad_(False)
    return adapter.eval().to(resolve_device(device))


def resolve_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda")
    return device


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    """Import the built-in families once (lazily, so importing the package stays cheap)."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    from clusterguide.generators import dcgan

    register(
        "digiface-dcgan",
        lambda checkpoint=None: dcgan.DCGANAdapter.pretrained(checkpoint),
        "64x64 faces, DCGAN trained on DigiFace-1M (weights from the gan-face-generate package)",
    )
    register(
        "tiny-dcgan",
        lambda checkpoint=None, seed=0: _tiny_dcgan(int(seed)),
        "a small DCGAN with seeded random weights, for tests and dry runs; its images mean nothing",
        options=("seed",),
    )
    # Families of the paper's generators register themselves on import when present.
    for module in ("pgan", "stylegan2", "biggan"):
        try:
            __import__(f"clusterguide.generators.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"clusterguide.generators.{module}":
                raise


def _tiny_dcgan(seed: int) -> GeneratorAdapter:
    import torch

    from clusterguide.generators.dcgan import DCGAN, DCGANAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DCGAN(nz=16, ngf=8)
        # Random BN statistics so that the layers carry some structure worth clustering.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    adapter = DCGANAdapter(net, weights_id=f"tiny-random-seed{seed}")
    adapter.name = "tiny-dcgan"
    return adapter
