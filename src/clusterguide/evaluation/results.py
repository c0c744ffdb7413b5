"""The evaluation's results as small typed records: what :mod:`.tables` computes, :mod:`.report`
draws and the evaluation JSON stores.

Each record's ``to_json`` writes the same keys the JSON has always had (files written before these
classes existed load with ``from_json``); fields a row does not have are left out of its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clusterguide.errors import UserError

FORMAT = "clusterguide-evaluation"


def _opt(data: dict, key: str) -> Any:
    return data.get(key)


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation of one attribute over the images where it was measured."""

    mean: float | None  # None when no image had it
    std: float | None
    n: int  # images it was measured on

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    @classmethod
    def from_json(cls, data: dict) -> Stat:
        return cls(data["mean"], data["std"], int(data["n"]))


@dataclass(frozen=True)
class Table1Row:
    """One set of images of Table 1: a cluster sampled one way, a trained baseline's cluster, or
    random prior samples."""

    cluster: str  # the run's cluster path, "prior", or "<baseline>:<c>" for a trained baseline
    name: str  # the cluster's name (or a description of the row)
    method: str  # "imle", "corrected", "exact", "prior", or a trained baseline ("clustergan", "selfcond")
    n: int  # images asked for
    share: float | None  # the cluster's share of its prior (p_c)
    skipped: str | None = None  # why no images were measured
    acceptance_rate: float | None = None  # exact sampling's acceptance rate
    detection_rate: float | None = None  # share of images where the probe found its object
    diversity: float | None = None  # pixel_diversity of the images
    stats: dict[str, Stat] = field(default_factory=dict)  # per attribute
    values: dict[str, list[float | None]] = field(default_factory=dict)  # per image, for plots

    @property
    def measured(self) -> bool:
        return self.skipped is None

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "cluster": self.cluster,
            "name": self.name,
            "method": self.method,
            "n": self.n,
            "share": self.share,
        }
        if self.skipped is not None:
            out["skipped"] = self.skipped
            return out
        out.update(
            acceptance_rate=self.acceptance_rate,
            detection_rate=self.detection_rate,
            diversity=self.diversity,
            stats={k: v.to_json() for k, v in self.stats.items()},
            values=self.values,
        )
        return out

    @classmethod
    def from_json(cls, data: dict) -> Table1Row:
        return cls(
            cluster=str(data["cluster"]),
            name=data.get("name", ""),
            method=data["method"],
            n=int(data["n"]),
            share=_opt(data, "share"),
            skipped=_opt(data, "skipped"),
            acceptance_rate=_opt(data, "acceptance_rate"),
            detection_rate=_opt(data, "detection_rate"),
            diversity=_opt(data, "diversity"),
            stats={k: Stat.from_json(v) for k, v in (data.get("stats") or {}).items()},
            values=dict(data.get("values") or {}),
        )


@dataclass(frozen=True)
class Table2Row:
    """One method's best setting for a target, measured on the evaluation stream."""

    method: str  # shown name: "clusterguide (imle)", "GANSpace", "ClusterGAN", "random" ...
    family: str  # "clusterguide", "ganspace", "sefa", "clustergan", "selfcond" or "random"
    setting: dict  # what was chosen: cluster (and method or baseline), or component/sign/step
    select_share: float | None  # share on the selection stream (None: nothing was chosen)
    share: float  # share of all images meeting the target
    detection_rate: float
    mean: float | None  # mean attribute value over detected images
    std: float | None
    n: int
    diversity: float | None

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "family": self.family,
            "setting": self.setting,
            "select_share": self.select_share,
            "share": self.share,
            "detection_rate": self.detection_rate,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "diversity": self.diversity,
        }

    @classmethod
    def from_json(cls, data: dict) -> Table2Row:
        return cls(
            data["method"],
            data["family"],
            dict(data["setting"]),
            data["select_share"],
            data["share"],
            data["detection_rate"],
            data["mean"],
            data["std"],
            int(data["n"]),
            _opt(data, "diversity"),
        )


@dataclass(frozen=True)
class Table2Block:
    """Every method's row for one target."""

    target: str  # "yaw>10"
    attribute: str
    op: str
    threshold: float
    rows: list[Table2Row]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "attribute": self.attribute,
            "op": self.op,
            "threshold": self.threshold,
            "text": self.target,
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict) -> Table2Block:
        return cls(
            data["target"],
            data["attribute"],
            data["op"],
            float(data["threshold"]),
            [Table2Row.from_json(r) for r in data["rows"]],
        )

    def random_diversity(self) -> float | None:
        return next((r.diversity for r in self.rows if r.family == "random"), None)


@dataclass(frozen=True)
class QualityRow:
    """Sample quality of one image source against the trained baselines' training images."""

    source: str  # "digiface-dcgan (64 px)", "ClusterGAN" ...
    family: str  # "generator", "clustergan", "selfcond"
    size: int  # pixels of the images the probe saw
    n: int  # images
    detection_rate: float  # share of images where the probe found its object
    kid: float | None  # kernel inception-style distance to the training images (x 1000), 32 px
    kid_std: float | None  # its standard deviation over subsets
    diversity: float | None  # pixel_diversity

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict) -> QualityRow:
        return cls(**data)


@dataclass(frozen=True)
class Quality:
    """The sample-quality comparison (only when the trained baselines share the run's generator)."""

    reference: str  # what the distances are measured against
    features: str  # the feature space, in words
    rows: list[QualityRow]

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "features": self.features,
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict) -> Quality:
        return cls(data["reference"], data["features"], [QualityRow.from_json(r) for r in data["rows"]])


@dataclass(frozen=True)
class Evaluation:
    """Tables 1 and 2 (and sample quality) of one run, with everything that decided them."""

    version: str  # clusterguide version that computed it
    run: str | None  # the run folder
    generator: dict  # the run's generator spec and weights_id
    fit: dict  # the run's FitConfig
    run_files: dict[str, str]  # sha256 of the run's tensor files
    config: dict  # the EvalConfig, as JSON
    probe: dict  # name, description, attributes (name, unit, description)
    table1: list[Table1Row]
    table2: list[Table2Block]
    quality: Quality | None = None
    baselines: dict[str, dict] = field(default_factory=dict)  # trained baselines used, or why not

    def attribute_names(self) -> list[str]:
        return [a["name"] for a in self.probe["attributes"]]

    def to_json(self) -> dict:
        out = {
            "format": FORMAT,
            "class": "Evaluation",
            "version": self.version,
            "run": self.run,
            "generator": self.generator,
            "fit": self.fit,
            "run_files": self.run_files,
            "config": self.config,
            "probe": self.probe,
            "table1": [r.to_json() for r in self.table1],
            "table2": [b.to_json() for b in self.table2],
        }
        if self.quality is not None:
            out["quality"] = self.quality.to_json()
        if self.baselines:
            out["baselines"] = self.baselines
        return out

    @classmethod
    def from_json(cls, data: Any) -> Evaluation:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError("the file is not a clusterguide evaluation (no evaluation format)")
        try:
            return cls(
                version=data["version"],
                run=data.get("run"),
                generator=dict(data["generator"]),
                fit=dict(data["fit"]),
                run_files=dict(data.get("run_files") or {}),
                config=dict(data["config"]),
                probe=dict(data["probe"]),
                table1=[Table1Row.from_json(r) for r in data["table1"]],
                table2=[Table2Block.from_json(b) for b in data["table2"]],
                quality=Quality.from_json(data["quality"]) if data.get("quality") else None,
                baselines=dict(data.get("baselines") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"the evaluation file is damaged ({type(exc).__name__}: {exc})") from None
