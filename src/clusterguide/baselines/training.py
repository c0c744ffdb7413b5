"""The training loop both baselines share: seeded steps, a time budget, atomic resumable checkpoints.

Every step draws its randomness (batch indices, noise, labels) from its own generator seeded by
``(seed, step)``, and a checkpoint holds every weight, batch-norm statistic, optimiser moment and
method state (e.g. SCGAN's cluster centroids). So a run that stops and resumes computes the same
tensors, bit for bit, as one that never stopped (on the same machine and thread count).

An output folder holds

- ``checkpoint.json``: format, method, config, step, training time, loss history, and the name and
  sha256 of the tensor file it belongs to;
- ``checkpoint-<step>.safetensors``: the tensors (written first; the JSON is replaced after it, and
  older tensor files are deleted only then, so a crash at any point leaves a whole checkpoint);
- ``generator.safetensors`` + ``generator.json``: the trained generator alone, what evaluation loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import clusterguide
from clusterguide.artifacts import load_tensors, read_json, save_tensors, write_json
from clusterguide.errors import UserError
from clusterguide.progress import bar
from clusterguide.seeding import derive_seed

CHECKPOINT = "checkpoint.json"
GENERATOR = "generator"  # generator.safetensors + generator.json
FORMAT = "clusterguide-baseline"


@dataclass(frozen=True)
class BaseConfig:
    """Settings both methods share; each method's config adds its own."""

    k: int = 4  # number of clusters the method learns
    size: int = 32  # image size in pixels (4 * 2**blocks)
    width: int = 32  # channels of the narrowest conv layer (doubling toward 4x4)
    noise_dim: int = 64  # dimension of the Gaussian part of the generator's input
    batch_size: int = 64  # images per step
    seed: int = 0  # seeds initialisation and every step's stream
    generator: str = "digiface-dcgan"  # the pretrained generator the training images come from
    data_n: int = 50000  # training images
    data_seed: int = 0  # latent stream of the training images

    def to_json(self) -> dict:
        return {"class": type(self).__name__, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Any:
        data = {k: v for k, v in data.items() if k != "class"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{cls.__name__}: unknown settings {unknown}")
        return cls(**data)

    def check(self) -> Any:
        if self.k < 2:
            raise UserError(f"k must be at least 2 (got {self.k})")
        if self.size not in (8, 16, 32, 64):
            raise UserError(f"image size must be 8, 16, 32 or 64 (got {self.size})")
        for name in ("width", "noise_dim", "batch_size", "data_n"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 (got {getattr(self, name)})")
        return self


class Method:
    """What the loop needs from a baseline. Subclasses build their nets in ``__init__``."""

    name: str = "method"
    config: BaseConfig

    def modules(self) -> dict[str, nn.Module]:
        """Every network, by name (saved and restored)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Method state besides weights and optimisers (saved and restored)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def start(self, images: np.ndarray) -> None:
        """Called once before the first step of a fresh run (not on resume)."""

    def train_step(self, step: int, images: np.ndarray, g: torch.Generator) -> dict[str, float]:
        """One generator update (and whatever discriminator updates precede it); returns losses."""
        raise NotImplementedError

    def generator_export(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON info) of the trained generator for :mod:`clusterguide.baselines.model`."""
        raise NotImplementedError


def batch(images: np.ndarray, batch_size: int, g: torch.Generator) -> torch.Tensor:
    """A batch of training images drawn with replacement, float NCHW in [-1, 1]."""
    idx = torch.randint(len(images), (batch_size,), generator=g).numpy()
    x = torch.from_numpy(images[np.sort(idx)])
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---- checkpoints ---------------------------------------------------------------------------------


def _flatten(method: Method) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, list] = {}
    for name, module in method.modules().items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value
    for name, opt in method.optimizers().items():
        state = opt.state_dict()
        for idx, entries in state["state"].items():
            for key, value in entries.items():
                tensors[f"opt.{name}.{idx}.{key}"] = torch.as_tensor(value)
        groups[name] = state["param_groups"]
    for key, value in method.extra_state().items():
        tensors[f"extra.{key}"] = value
    return tensors, groups


def _restore(method: Method, tensors: dict[str, torch.Tensor], groups: dict, source: str) -> None:
    used = set()
    for name, module in method.modules().items():
        prefix = f"model.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        used |= {prefix + k for k in state}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{source} does not match the {name} network: {exc}".splitlines()[0]) from None
    for name, opt in method.optimizers().items():
        prefix = f"opt.{name}."
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix) :].split(".", 1)
                opt_state.setdefault(int(idx), {})[key] = v
                used.add(k)
        if name not in groups:
            raise UserError(f"{source} has no state for optimiser {name!r}")
        opt.load_state_dict({"state": opt_state, "param_groups": groups[name]})
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    used |= {f"extra.{k}" for k in extra}
    method.load_extra_state(extra)
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise UserError(f"{source} has unexpected tensors {unexpected[:3]}")


@dataclass
class TrainState:
    step: int = 0  # generator steps done
    seconds: float = 0.0  # training time over all sessions
    history: list[dict] = field(default_factory=list)  # mean losses per logging interval


def save_checkpoint(out: Path, method: Method, state: TrainState) -> Path:
    tensors, groups = _flatten(method)
    name = f"checkpoint-{state.step:08d}.safetensors"
    digest = save_tensors(out / name, tensors)
    write_json(
        out / CHECKPOINT,
        {
            "format": FORMAT,
            "class": "Checkpoint",
            "version": clusterguide.__version__,
            "method": method.name,
            "config": method.config.to_json(),
            "step": state.step,
            "seconds": round(state.seconds, 3),
            "history": state.history,
            "tensors": name,
            "sha256": digest,
            "param_groups": groups,
        },
    )
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return out / CHECKPOINT


def read_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{path} is not a clusterguide baseline checkpoint")
    return info


def load_checkpoint(out: Path, method: Method, info: dict) -> TrainState:
    if info["method"] != method.name:
        raise UserError(f"{out} holds a {info['method']} checkpoint, not {method.name}")
    if info["config"] != method.config.to_json():
        saved = {k: v for k, v in info["config"].items() if method.config.to_json().get(k) != v}
        raise UserError(f"{out} was trained with other settings ({saved}); use another --out")
    tensors = load_tensors(out / info["tensors"], expected_sha256=info["sha256"])
    _restore(method, tensors, info["param_groups"], str(out / info["tensors"]))
    return TrainState(int(info["step"]), float(info["seconds"]), list(info["history"]))


def export_generator(out: Path, method: Method, state: TrainState) -> Path:
    tensors, info = method.generator_export()
    digest = save_tensors(out / f"{GENERATOR}.safetensors", tensors)
    write_json(
        out / f"{GENERATOR}.json",
        {
            "format": FORMAT,
            "class": "TrainedBaseline",
            "version": clusterguide.__version__,
            "method": method.name,
            "config": method.config.to_json(),
            "step": state.step,
            "seconds": round(state.seconds, 1),
            "sha256": digest,
            **info,
        },
    )
    return out / f"{GENERATOR}.json"


# ---- the loop ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    steps: int  # stop once this many generator steps are done in total
    seconds: float | None = None  # and stop this session after this much wall-clock time
    checkpoint_seconds: float = 300.0  # write a checkpoint at least this often
    log_every: int = 50  # steps per entry of the loss history


def train(
    method: Method,
    images: np.ndarray,
    out: str | Path,
    budget: Budget,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> TrainState:
    """Train ``method`` on ``images`` (uint8 NHWC) in ``out``; returns the state it stopped in."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror}") from None
    info = read_checkpoint(out)
    if info is not None and not resume:
        raise UserError(f"{out} holds a checkpoint at step {info['step']}; pass --resume to continue it")
    if info is not None:
        state = load_checkpoint(out, method, info)
        log(f"resuming {method.name} from step {state.step} ({state.seconds / 60:.1f} min trained)")
    else:
        state = TrainState()
        method.start(images)
    started = last_save = time.monotonic()
    sums: dict[str, float] = {}
    count = 0
    with bar(budget.steps, desc=f"train {method.name}", unit="step") as b:
        b.update(state.step)
        while state.step < budget.steps:
            if budget.seconds is not None and time.monotonic() - started >= budget.seconds:
                log(f"time budget reached at step {state.step}")
                break
            t0 = time.monotonic()
            g = torch.Generator().manual_seed(derive_seed(method.config.seed, "step", state.step))
            losses = method.train_step(state.step, images, g)
            state.step += 1
            state.seconds += time.monotonic() - t0
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if state.step % budget.log_every == 0:
                state.history.append(
                    {"step": state.step, **{k: round(v / count, 5) for k, v in sums.items()}}
                )
                b.set_postfix_str(" ".join(f"{k} {v / count:.3f}" for k, v in sums.items()))
                sums, count = {}, 0
            b.update(1)
            if time.monotonic() - last_save >= budget.checkpoint_seconds:
                save_checkpoint(out, method, state)
                last_save = time.monotonic()
    save_checkpoint(out, method, state)
    export_generator(out, method, state)
    return state


def seeded(seed: int, *keys: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))
