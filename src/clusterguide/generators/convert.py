"""The one place that opens pickles: NVIDIA StyleGAN2/3 ``.pkl`` -> ``config.json`` + ``model.safetensors``.

NVIDIA's network pickles (stylegan2-ada-pytorch, stylegan3) store each network as a "persistent"
object: ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds the
class name, the *source code* of the module that defined it, and the object's ``__dict__``
(``_parameters``, ``_buffers``, ``_modules``, plain attributes such as ``conv_clamp``). Their own
loader executes that source. We never do: a restricted ``pickle.Unpickler`` resolves only the few
globals such a file needs (tensor and storage rebuilders, ``OrderedDict``, numpy scalars,
``dnnlib`` dictionaries) and turns every persistent object into an inert record of its class name
and state. Anything else in the file stops the conversion with one line naming it.

Even so, a pickle is only opened when the caller passes ``trust_pickle=True`` (the CLI's
``--trust-pickle``); the result is written atomically and checked by loading it strictly into
:class:`~clusterguide.generators.stylegan2_net.StyleGAN2Generator` before it is moved into place.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from clusterguide.errors import UserError

NETWORKS = ("G_ema", "G")  # G_ema (the moving average) is what NVIDIA samples from


@dataclass
class PersistentRecord:
    """What a persistent NVIDIA object becomes here: its class name and its state, nothing else."""

    class_name: str
    module_src: str
    state: dict = field(default_factory=dict)
    version: int | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def child(self, name: str) -> PersistentRecord | None:
        return (self.state.get("_modules") or {}).get(name)


class EasyDictRecord(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access; only the dict part matters)."""


def _reconstruct_persistent(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UserError("the pickle holds a persistent object of an unknown kind")
    state = meta.get("state")
    return PersistentRecord(
        str(meta.get("class_name")), str(meta.get("module_src") or ""), dict(state or {}), meta.get("version")
    )


def _load_storage(data: bytes):
    # torch pickles a storage as torch.save() bytes; read them back with the weights-only loader.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy(name: str):
    import numpy as np

    if name == "dtype":
        return np.dtype
    if name == "ndarray":
        return np.ndarray
    core = getattr(np, "_core", None) or np.core
    return getattr(core.multiarray, name)


class _RestrictedUnpickler(pickle.Unpickler):
    _TORCH: ClassVar[dict[tuple[str, str], Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Tensor"): torch.Tensor,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.storage", "_load_from_bytes"): _load_storage,
    }

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in self._TORCH:
            return self._TORCH[key]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if key == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _reconstruct_persistent
        if module in ("dnnlib.util", "dnnlib") and name == "EasyDict":
            return EasyDictRecord
        if key == ("collections", "OrderedDict"):
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice"):
            return {"set": set, "frozenset": frozenset, "slice": slice}[name]
        if key in {("numpy", "dtype"), ("numpy", "ndarray")} or (
            module in ("numpy.core.multiarray", "numpy._core.multiarray")
            and name in ("scalar", "_reconstruct")
        ):
            return _numpy(name)
        if module.startswith("dnnlib.tflib"):
            raise UserError(
                "this is a TensorFlow-era StyleGAN pickle; use the PyTorch re-release of the same network "
                "(e.g. the stylegan2-ada-pytorch or stylegan3 downloads) instead"
            )
        raise UserError(f"the pickle refers to {module}.{name}, which the converter does not load")


def read_pickle(path: Path, trust_pickle: bool) -> dict:
    """The top-level dict of an NVIDIA network pickle, persistent objects as records."""
    if not trust_pickle:
        raise UserError(
            f"{path} is a pickle, and opening a pickle can run code; pass --trust-pickle if you trust it "
            "(NVIDIA's published files are fine)"
        )
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except UserError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise UserError(
                f"{path} is truncated or damaged ({exc or 'EOF'}); download or copy it again"
            ) from None
        raise UserError(
            f"cannot read {path} as an NVIDIA network pickle: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:  # a damaged or foreign file
        raise UserError(
            f"cannot read {path} as an NVIDIA network pickle: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), PersistentRecord) for k in NETWORKS):
        raise UserError(f"{path} holds no generator ('G_ema' or 'G'); is it a StyleGAN2 network pickle?")
    return data


def state_dict_of(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict torch would give for the module this record stands for."""
    out: dict[str, torch.Tensor] = {}
    skip = set(record.attr("_non_persistent_buffers_set") or ())
    for name, p in (record.attr("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in (record.attr("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b.detach()
    for name, child in (record.attr("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise UserError(f"unexpected submodule {prefix}{name} of type {type(child).__name__}")
        out.update(state_dict_of(child, f"{prefix}{name}."))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return repr(value)


def stylegan2_config(G: PersistentRecord, state: dict[str, torch.Tensor]):
    """The architecture, read from the objects' own attributes and tensor shapes (so defaults that
    differ between NVIDIA's two repositories never matter)."""
    from clusterguide.generators.stylegan2_net import StyleGAN2Config

    synthesis, mapping = G.child("synthesis"), G.child("mapping")
    if synthesis is None or mapping is None:
        raise UserError(f"the generator ({G.class_name}) has no 'synthesis' and 'mapping' networks")
    b4 = synthesis.child("b4")
    conv = b4.child("conv1") if b4 is not None else None
    fc0 = mapping.child("fc0")
    if b4 is None or conv is None or fc0 is None:
        raise UserError("the generator does not have StyleGAN2's layout (synthesis.b4.conv1, mapping.fc0)")
    kwargs = G.attr("_init_kwargs") or {}
    syn_kwargs = {**kwargs, **(kwargs.get("synthesis_kwargs") or {})}
    res = int(G.attr("img_resolution"))
    channels = {
        r: int(state[f"synthesis.b{r}.conv1.weight"].shape[0])
        for r in (2**i for i in range(2, res.bit_length()))
    }
    c_dim = int(G.attr("c_dim") or 0)
    w_dim = int(G.attr("w_dim"))
    num_layers = int(mapping.attr("num_layers"))
    clamp = conv.attr("conv_clamp")
    base = int(syn_kwargs.get("channel_base", 32768))
    cmax = int(syn_kwargs.get("channel_max", 512))
    if any(min(base // r, cmax) != c for r, c in channels.items()):
        # constructor arguments not recorded: find the pair that gives the stored widths
        cmax = max(channels.values())
        base = max(c * r for r, c in channels.items())
    return StyleGAN2Config(
        z_dim=int(G.attr("z_dim")),
        c_dim=c_dim,
        w_dim=w_dim,
        img_resolution=res,
        img_channels=int(G.attr("img_channels")),
        mapping_layers=num_layers,
        mapping_lr_multiplier=float(fc0.attr("bias_gain", 0.01)),
        mapping_activation=str(fc0.attr("activation", "lrelu")),
        embed_features=int(state["mapping.embed.weight"].shape[0]) if c_dim else None,
        layer_features=int(state["mapping.fc0.weight"].shape[0]) if num_layers > 1 else None,
        has_w_avg="mapping.w_avg" in state,
        channel_base=base,
        channel_max=cmax,
        architecture=str(b4.attr("architecture", "skip")),
        activation=str(conv.attr("activation", "lrelu")),
        conv_clamp=None if clamp is None else float(clamp),
        resample_filter=tuple(int(t) for t in syn_kwargs.get("resample_filter", (1, 3, 3, 1))),
        use_noise="synthesis.b4.conv1.noise_const" in state,
    )


def _square(value: Any, what: str) -> int:
    sizes = [int(v) for v in (value if hasattr(value, "__len__") else [value, value])]
    if len(set(sizes)) != 1:
        raise UserError(f"non-square StyleGAN3 {what} {sizes} is not supported")
    return sizes[0]


def _padding(value: Any) -> tuple[int, int, int, int]:
    x0, x1, y0, y1 = (int(p) for p in value)
    return x0, x1, y0, y1


def stylegan3_config(G: PersistentRecord, state: dict[str, torch.Tensor]):
    """A StyleGAN3's layer plan, copied from its layers' own attributes (nothing recomputed)."""
    from clusterguide.generators.stylegan3_net import SG3Layer, StyleGAN3Config

    synthesis, mapping = G.child("synthesis"), G.child("mapping")
    if synthesis is None or mapping is None:
        raise UserError("the generator does not have StyleGAN3's layout (synthesis, mapping)")
    inp, fc0 = synthesis.child("input"), mapping.child("fc0")
    if inp is None or fc0 is None:
        raise UserError("the generator does not have StyleGAN3's layout (synthesis.input, mapping.fc0)")
    layers = []
    for name in synthesis.attr("layer_names"):
        rec = synthesis.child(name)
        if rec is None:
            raise UserError(f"StyleGAN3 layer {name} is missing from the pickle")
        clamp = rec.attr("conv_clamp")
        layers.append(
            SG3Layer(
                name=str(name),
                is_torgb=bool(rec.attr("is_torgb")),
                in_channels=int(rec.attr("in_channels")),
                out_channels=int(rec.attr("out_channels")),
                in_size=_square(rec.attr("in_size"), "size"),
                out_size=_square(rec.attr("out_size"), "size"),
                conv_kernel=int(rec.attr("conv_kernel")),
                up_factor=int(rec.attr("up_factor")),
                down_factor=int(rec.attr("down_factor")),
                padding=_padding(rec.attr("padding")),
                conv_clamp=None if clamp is None else float(clamp),
                up_taps=int(rec.attr("up_taps")),
                down_taps=int(rec.attr("down_taps")),
                down_radial=bool(rec.attr("down_radial")),
                tmp_sampling_rate=float(rec.attr("tmp_sampling_rate")),
                in_cutoff=float(rec.attr("in_cutoff")),
                out_cutoff=float(rec.attr("out_cutoff")),
                in_half_width=float(rec.attr("in_half_width")),
                out_half_width=float(rec.attr("out_half_width")),
            )
        )
    return StyleGAN3Config(
        z_dim=int(G.attr("z_dim")),
        c_dim=int(G.attr("c_dim") or 0),
        w_dim=int(G.attr("w_dim")),
        img_resolution=int(G.attr("img_resolution")),
        img_channels=int(G.attr("img_channels")),
        input_channels=int(inp.attr("channels")),
        input_size=_square(inp.attr("size"), "input size"),
        input_sampling_rate=float(inp.attr("sampling_rate")),
        input_bandwidth=float(inp.attr("bandwidth")),
        layers=tuple(layers),
        output_scale=float(synthesis.attr("output_scale", 1.0)),
        mapping_layers=int(mapping.attr("num_layers")),
        mapping_lr_multiplier=float(fc0.attr("bias_gain", 0.01)),
        mapping_activation=str(fc0.attr("activation", "lrelu")),
    )


def convert_stylegan2(
    source: str | Path,
    out: str | Path,
    *,
    trust_pickle: bool,
    network: str = "G_ema",
    overwrite: bool = False,
    source_name: str | None = None,
) -> Path:
    """Convert one NVIDIA pickle into a folder ``out`` that ``--generator stylegan2 --checkpoint out``
    loads; returns ``out``."""
    from clusterguide import __version__
    from clusterguide.artifacts import save_tensors, staged_dir, write_json
    from clusterguide.generators.checkpoints import load_state_dict_strict, sha256_file
    from clusterguide.generators.stylegan2 import CONFIG_NAME, FORMAT, WEIGHTS_NAME
    from clusterguide.generators.stylegan2_net import StyleGAN2Generator
    from clusterguide.generators.stylegan3_net import StyleGAN3Config, StyleGAN3Generator

    source = Path(source)
    if network not in NETWORKS:
        raise UserError(f"--network must be one of {', '.join(NETWORKS)} (got {network!r})")
    data = read_pickle(source, trust_pickle)
    G = data.get(network)
    if not isinstance(G, PersistentRecord):
        raise UserError(f"{source} has no network {network!r}")
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state_dict_of(G).items()}
    synthesis = G.child("synthesis")
    # StyleGAN3's synthesis starts from Fourier features (synthesis.input); StyleGAN2's from b4.const
    alias_free = synthesis is not None and synthesis.child("input") is not None
    try:
        cfg = stylegan3_config(G, state) if alias_free else stylegan2_config(G, state)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: cannot read the architecture ({type(exc).__name__}: {exc})") from None
    net = StyleGAN3Generator(cfg) if isinstance(cfg, StyleGAN3Config) else StyleGAN2Generator(cfg)
    load_state_dict_strict(net, state, str(source))  # fail before writing anything
    # --force replaces only an earlier conversion, never a run folder or another clusterguide folder
    with staged_dir(out, overwrite=overwrite, kind=FORMAT) as stage:
        digest = save_tensors(stage / WEIGHTS_NAME, state)
        write_json(
            stage / CONFIG_NAME,
            {
                "format": FORMAT,
                "class": type(cfg).__name__,
                "version": __version__,
                "architecture": cfg.to_json(),
                "weights_sha256": digest,
                "source": {
                    "name": source_name or source.name,
                    "sha256": sha256_file(source),
                    "network": network,
                    "class_name": G.class_name,
                    "init_kwargs": _jsonable(G.attr("_init_kwargs") or {}),
                },
            },
        )
    return Path(out)
