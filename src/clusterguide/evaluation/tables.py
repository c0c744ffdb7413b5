"""The paper's Tables 1 and 2, measured offline with a probe.

**Table 1** (attribute consistency): for every cluster of a run, and for random prior samples, the
mean and standard deviation of each attribute over the images where the probe found what it
measures, and that detection rate; once for IMLE samples G(T_c(e)) and once for exact samples
(prior latents that fall in the cluster).

**Table 2** (target attributes): for a condition such as ``yaw>10``, the share of images that meet it
(undetected faces count as misses, as in the paper), from

- this method: the cluster that meets the target best, sampled with IMLE and exactly;
- GANSpace and SeFa: the direction (component and sign) and step that meet it best;
- the trained baselines ClusterGAN and SCGAN (:mod:`clusterguide.baselines`), when they were trained
  on images of the run's generator: the one of their k clusters that meets it best;
- random prior samples.

Table 1 has a row for each of the trained baselines' k clusters too, and a **sample quality**
section sets their images next to the generator's: face detection rate and a KID-style distance to
the baselines' training images (:mod:`clusterguide.evaluation.quality`).

Choices are made on a separate *selection* stream of ``select_n`` images per candidate and the
shares are then measured on ``n`` fresh images, so no row profits from picking its own noise. Every
row uses the same generator, the same probe and the same number of images. Baseline edits start
from the same prior latents the random row uses.

Results are typed records (:mod:`clusterguide.evaluation.results`); their JSON is the evaluation file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

import clusterguide
from clusterguide import artifacts
from clusterguide.baselines.data import draw_images, shrink
from clusterguide.baselines.model import METHODS as TRAINED
from clusterguide.baselines.model import TITLES, TrainedBaseline, shipped
from clusterguide.display import table
from clusterguide.errors import UserError
from clusterguide.evaluation.baselines import Directions, Edit, edit_latents, ganspace, prior_latents, sefa
from clusterguide.evaluation.probe_base import Probe, ProbeResult, measure
from clusterguide.evaluation.quality import image_features, kid
from clusterguide.evaluation.results import (
    FORMAT,
    Evaluation,
    Quality,
    QualityRow,
    Stat,
    Table1Row,
    Table2Block,
    Table2Row,
)
from clusterguide.evaluation.targets import Target
from clusterguide.progress import progress
from clusterguide.run import Run
from clusterguide.sampler import METHODS, ClusterSampler
from clusterguide.seeding import derive_seed

PRIOR = "prior"  # the cluster column of the random-sampling row of Table 1
__all__ = ["FORMAT", "PRIOR", "EvalConfig", "evaluate"]


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers; saved in the evaluation JSON."""

    probe: str = "face"  # registered probe name
    n: int = 500  # images per row of both tables
    seed: int = 0  # seed of the evaluation streams (selection streams are derived from it)
    methods: tuple[str, ...] = ("imle", "exact")  # sampling methods of this method's rows (sampler.METHODS)
    select_n: int = 64  # images per candidate when choosing a cluster, direction or step
    components: int = 10  # GANSpace / SeFa directions considered (strongest first)
    steps: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0)  # step lengths tried along a direction
    shortlist: int = 3  # (component, sign) pairs, ranked at the middle step, whose steps are all tried
    ganspace_layer: str | None = None  # None: the run's clustering layer; "latent": PCA of the latents
    ganspace_samples: int = 4000  # prior samples for GANSpace's PCA
    batch_size: int = 64  # images per generator pass
    trained: tuple[str, ...] = TRAINED  # trained baselines compared (when trained on the run's generator)
    quality_reference: int = 1000  # training images the sample-quality distances are measured against

    def to_json(self) -> dict:
        data = asdict(self)
        data["methods"], data["steps"] = list(self.methods), list(self.steps)
        data["trained"] = list(self.trained)
        return data

    @classmethod
    def from_json(cls, data: dict) -> EvalConfig:
        data = dict(data)
        data["methods"], data["steps"] = tuple(data["methods"]), tuple(data["steps"])
        data["trained"] = tuple(data.get("trained", ()))  # files from before the trained baselines: none
        return cls(**data)

    def check(self) -> EvalConfig:
        if self.n < 1:
            raise UserError(f"-n must be at least 1 (got {self.n})")
        if self.select_n < 1:
            raise UserError(f"--select-n must be at least 1 (got {self.select_n})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.components < 1:
            raise UserError(f"--components must be at least 1 (got {self.components})")
        if not self.steps or any(not s > 0 for s in self.steps):
            raise UserError(
                f"--steps must be positive numbers (got {', '.join(f'{s:g}' for s in self.steps) or 'none'})"
            )
        if self.ganspace_samples <= self.components:
            raise UserError(
                f"--ganspace-samples ({self.ganspace_samples}) must exceed --components ({self.components})"
            )
        wrong = [t for t in self.trained if t not in TRAINED]
        if wrong:
            raise UserError(f"unknown trained baseline {wrong[0]!r}; choose from: {', '.join(TRAINED)}")
        if self.quality_reference < 2:
            raise UserError(f"--quality-reference must be at least 2 (got {self.quality_reference})")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(
                f"unknown method {unknown[0] if unknown else '(none)'!r}; choose from: {', '.join(METHODS)}"
            )
        return self


# ---- helpers -------------------------------------------------------------------------------------


def attribute_stats(result: ProbeResult) -> dict[str, Stat]:
    """Mean, standard deviation and count of each attribute over the images where it is defined."""
    out = {}
    for name, values in result.values.items():
        v = np.asarray(values, dtype=np.float64)[np.asarray(result.detected)]
        v = v[~np.isnan(v)]
        out[name] = Stat(float(v.mean()) if len(v) else None, float(v.std()) if len(v) else None, len(v))
    return out


def _values_json(result: ProbeResult, digits: int = 3) -> dict[str, list[float | None]]:
    """Per-image values for plots; None where not measured."""
    out = {}
    for name, values in result.values.items():
        v = np.where(np.asarray(result.detected), np.asarray(values, dtype=np.float64), np.nan)
        out[name] = [None if np.isnan(x) else round(float(x), digits) for x in v]
    return out


def pixel_diversity(images: np.ndarray, size: int = 16, max_images: int = 256) -> float:
    """Mean pairwise RMS distance (0..1) between images shrunk to size x size by area averaging.

    A crude but model-free check that a high share does not come from drawing one picture over and
    over (a collapsed mapping or an edit so strong that it overrides the latent): compare it with
    the random row's value.
    """
    x = torch.from_numpy(np.ascontiguousarray(images[:max_images])).permute(0, 3, 1, 2).float() / 255.0
    if len(x) < 2:
        return float("nan")
    f = torch.nn.functional.adaptive_avg_pool2d(x, size).reshape(len(x), -1).double()
    d = torch.cdist(f, f) / f.shape[1] ** 0.5
    return float(d.sum() / (len(x) * (len(x) - 1)))


@dataclass
class Measured:
    """What the tables keep of a set of images."""

    result: ProbeResult  # the probe's measurements
    diversity: float  # pixel_diversity of the images


def measure_images(probe: Probe, images: np.ndarray, batch_size: int = 64) -> Measured:
    return Measured(measure(probe, images, max(batch_size, 64)), pixel_diversity(images))


def _sample(sampler: ClusterSampler, cluster: str, n: int, seed: int, method: str, batch_size: int):
    return sampler(cluster, n, seed=seed, method=method, batch_size=batch_size)


def _unavailable(run: Run, cluster: str, method: str) -> str | None:
    """Why ``method`` cannot sample ``cluster`` (None: it can). ``imle`` and ``corrected`` need the
    cluster's mapping, ``corrected`` its moment map too; ``exact`` samples every cluster."""
    if method in ("imle", "corrected") and cluster not in run.mappings:
        return run.skipped.get(cluster, "no mapping")
    if method == "corrected" and cluster not in run.corrections:
        return "no correction (fitted before the corrected sampler)"
    return None


def _clusters_for(sampler: ClusterSampler, method: str) -> list[str]:
    run = sampler.run
    return [c for c in run.clusters() if _unavailable(run, c, method) is None]


def baseline_cluster(method: str, cluster: int) -> str:
    """Table 1's cluster column for a trained baseline's cluster: ``clustergan:2``."""
    return f"{method}:{cluster}"


# ---- the trained baselines -----------------------------------------------------------------------


def trained_baselines(
    sampler: ClusterSampler, config: EvalConfig
) -> tuple[dict[str, TrainedBaseline], dict[str, dict]]:
    """The shipped baselines of ``config.trained`` trained on the run's generator (on the sampler's
    device), and for every one either what it is (steps, minutes, size) or why it is left out."""
    device = str(sampler.device)
    used: dict[str, TrainedBaseline] = {}
    info: dict[str, dict] = {}
    for name in config.trained:
        try:
            tb = shipped(name, device)
        except UserError as exc:
            info[name] = {"title": TITLES[name], "skipped": str(exc)}
            continue
        used_on = sampler.run.generator.name
        if tb.config.generator != used_on:
            info[name] = {
                "title": tb.title,
                "skipped": f"trained on {tb.config.generator} images; the run uses {used_on}",
            }
            continue
        used[name] = tb
    return used, {**info, **{name: describe_trained(tb) for name, tb in used.items()}}


def describe_trained(tb: TrainedBaseline) -> dict:
    c = tb.config
    return {
        "title": tb.title,
        "k": tb.k,
        "size": c.size,
        "steps": tb.info.get("step"),
        "minutes": round(float(tb.info.get("seconds", 0.0)) / 60, 1),
        "prior": tb.prior,
        "training_images": c.data_n,
        "generator": c.generator,
    }


# ---- measurements, shared by both tables -------------------------------------------------------


class _Measurements:
    """Probe results of every setting tried, measured once and shared by both tables.

    Keys name the stream too ("select" or "eval"), so a choice made on the selection stream is
    always measured again on fresh images.
    """

    def __init__(
        self,
        sampler: ClusterSampler,
        probe: Probe,
        config: EvalConfig,
        trained: dict[str, TrainedBaseline] | None = None,
    ) -> None:
        self.sampler, self.probe, self.config = sampler, probe, config
        self.trained = trained or {}
        G = sampler.generator
        self.seeds = {"select": derive_seed(config.seed, "select"), "eval": config.seed}
        self.sizes = {"select": config.select_n, "eval": config.n}
        self.prior = {
            stream: prior_latents(G, self.sizes[stream], derive_seed(seed, "baseline"))
            for stream, seed in self.seeds.items()
        }
        self._cache: dict[tuple, Measured | None] = {}

    def cluster(self, stream: str, cluster: str, method: str) -> Measured | None:
        """None when exact sampling of a very rare cluster runs out of tries."""
        key = (stream, "cluster", cluster, method)
        if key not in self._cache:
            try:
                out = _sample(
                    self.sampler,
                    cluster,
                    self.sizes[stream],
                    self.seeds[stream],
                    method,
                    self.config.batch_size,
                )
                self._cache[key] = measure_images(self.probe, out.images, self.config.batch_size)
            except UserError:
                self._cache[key] = None
        return self._cache[key]

    def edit(self, stream: str, dirs: Directions, edit: Edit | None) -> Measured:
        """Prior latents of the stream, moved by ``edit`` (None: unedited, the random row)."""
        key = (stream, dirs.method if edit else "random", edit)
        if key not in self._cache:
            z = self.prior[stream] if edit is None else edit_latents(self.prior[stream], dirs, edit)
            images = self.sampler.synthesize(z, self.config.batch_size)
            self._cache[key] = measure_images(self.probe, images, self.config.batch_size)
        result = self._cache[key]
        assert result is not None
        return result

    def trained_cluster(self, stream: str, method: str, cluster: int) -> Measured:
        """Images of one cluster of a trained baseline."""
        key = (stream, "trained", method, cluster)
        if key not in self._cache:
            images = self.trained[method].images(cluster, self.sizes[stream], self.seeds[stream])
            self._cache[key] = measure_images(self.probe, images, self.config.batch_size)
        result = self._cache[key]
        assert result is not None
        return result


# ---- Table 1 -------------------------------------------------------------------------------------


def table1(
    sampler: ClusterSampler, probe: Probe, config: EvalConfig, seen: _Measurements | None = None
) -> list[Table1Row]:
    """One row per (cluster, method), one per trained baseline's cluster, one for random samples."""
    run = sampler.run
    seen = seen or _Measurements(sampler, probe, config)
    jobs = [(c, m) for c in run.clusters() for m in config.methods]
    rows = []
    for cluster, method in progress(jobs, total=len(jobs), desc="Table 1", unit="cluster"):
        name, share = run.names.get(cluster, ""), run.tree.stats.get(cluster, {}).get("share")
        skipped = _unavailable(run, cluster, method)
        if skipped is not None:
            rows.append(Table1Row(cluster, name, method, config.n, share, skipped=skipped))
            continue
        try:
            out = _sample(sampler, cluster, config.n, config.seed, method, config.batch_size)
        except UserError as exc:  # an exact sample of a very rare cluster can run out of tries
            rows.append(Table1Row(cluster, name, method, config.n, share, skipped=str(exc)))
            continue
        measured = measure_images(probe, out.images, config.batch_size)
        rows.append(_row(cluster, name, method, config.n, share, measured, out.acceptance_rate))
    for method, tb in seen.trained.items():
        for c in range(tb.k):
            measured = seen.trained_cluster("eval", method, c)
            name = f"{tb.title} cluster {c}"
            rows.append(
                _row(baseline_cluster(method, c), name, method, config.n, tb.prior[c], measured, None)
            )
    out = sampler.random(config.n, seed=config.seed, batch_size=config.batch_size)
    measured = measure_images(probe, out.images, config.batch_size)
    rows.append(_row(PRIOR, "random prior samples", PRIOR, config.n, 1.0, measured, None))
    return rows


def _row(
    cluster: str,
    name: str,
    method: str,
    n: int,
    share: float | None,
    measured: Measured,
    acceptance: float | None,
) -> Table1Row:
    return Table1Row(
        cluster,
        name,
        method,
        n,
        share,
        acceptance_rate=acceptance,
        detection_rate=measured.result.detection_rate,
        diversity=measured.diversity,
        stats=attribute_stats(measured.result),
        values=_values_json(measured.result),
    )


# ---- Table 2 -------------------------------------------------------------------------------------


def _score(target: Target, measured: Measured) -> tuple[float, float]:
    """Selection score: share meeting the target, then the mean value in the target's direction."""
    result = measured.result
    v = np.asarray(result.values[target.attribute], dtype=np.float64)[np.asarray(result.detected)]
    v = v[~np.isnan(v)]
    return target.share(result), (target.sign * float(v.mean()) if len(v) else -np.inf)


def _outcome(
    target: Target, measured: Measured, method: str, family: str, setting: dict, select: float | None
) -> Table2Row:
    result = measured.result
    v = np.asarray(result.values[target.attribute], dtype=np.float64)[np.asarray(result.detected)]
    v = v[~np.isnan(v)]
    return Table2Row(
        method=method,
        family=family,
        setting=setting,
        select_share=select,
        share=target.share(result),
        detection_rate=result.detection_rate,
        mean=float(v.mean()) if len(v) else None,
        std=float(v.std()) if len(v) else None,
        n=len(result),
        diversity=measured.diversity,
    )


def baseline_directions(sampler: ClusterSampler, config: EvalConfig) -> list[Directions]:
    G = sampler.generator
    layer = config.ganspace_layer or sampler.run.fit.layer
    gs = ganspace(
        G,
        None if layer == "latent" else G.check_layer(layer),
        n=config.ganspace_samples,
        seed=derive_seed(config.seed, "ganspace"),
        components=config.components,
    )
    return [gs, sefa(G, components=config.components)]


def check_targets(probe: Probe, targets: list[Target]) -> None:
    names = probe.attribute_names()
    for t in targets:
        if t.attribute not in names:
            known = ", ".join(names)
            raise UserError(
                f"target {t}: probe {probe.name!r} measures no {t.attribute!r}; it measures: {known}"
            )


def table2(
    sampler: ClusterSampler,
    probe: Probe,
    targets: list[Target],
    config: EvalConfig,
    directions: list[Directions] | None = None,
    seen: _Measurements | None = None,
) -> list[Table2Block]:
    """One block per target: the best cluster per method, the best GANSpace and SeFa edits, the best
    cluster of each trained baseline, random."""
    if not targets:
        return []
    check_targets(probe, targets)
    run = sampler.run
    directions = directions if directions is not None else baseline_directions(sampler, config)
    seen = seen or _Measurements(sampler, probe, config)
    middle = config.steps[(len(config.steps) - 1) // 2]
    blocks = []
    for target in progress(targets, total=len(targets), desc="Table 2", unit="target"):
        rows = []
        # this method: the best cluster for each sampling method
        for method in config.methods:
            best, best_score = None, (-1.0, -np.inf)
            for c in _clusters_for(sampler, method):
                res = seen.cluster("select", c, method)
                if res is not None and _score(target, res) > best_score:
                    best, best_score = c, _score(target, res)
            res = seen.cluster("eval", best, method) if best is not None else None
            if res is None or best is None:
                continue
            setting: dict[str, Any] = {"cluster": best, "name": run.names.get(best, ""), "method": method}
            rows.append(
                _outcome(target, res, f"clusterguide ({method})", "clusterguide", setting, best_score[0])
            )
        # the baselines: shortlist (component, sign) at the middle step, then try every step on it
        for dirs in directions:
            ranked = sorted(
                (
                    (
                        _score(target, seen.edit("select", dirs, Edit(k, sign, middle))),
                        -k,
                        Edit(k, sign, middle),
                    )
                    for k in range(len(dirs))
                    for sign in (1, -1)
                ),
                key=lambda r: (r[0], r[1]),
                reverse=True,
            )
            best_edit, best_score = Edit(0, 1, middle), (-1.0, -np.inf)
            for _, _, e0 in ranked[: config.shortlist]:
                for step in config.steps:
                    e = Edit(e0.component, e0.sign, step)
                    score = _score(target, seen.edit("select", dirs, e))
                    if score > best_score:
                        best_edit, best_score = e, score
            setting = {
                **best_edit.to_json(),
                "source": dirs.source,
                "strength": float(dirs.strengths[best_edit.component]),
                "direction": [round(float(x), 6) for x in dirs.vectors[best_edit.component]],
            }
            title = {"ganspace": "GANSpace", "sefa": "SeFa"}[dirs.method]
            res = seen.edit("eval", dirs, best_edit)
            rows.append(_outcome(target, res, title, dirs.method, setting, best_score[0]))
        # the trained baselines: the best of their k clusters
        for method, tb in seen.trained.items():
            scores = [(_score(target, seen.trained_cluster("select", method, c)), -c) for c in range(tb.k)]
            (best_trained, neg_cluster) = max(scores)
            chosen = -neg_cluster
            setting = {"baseline": method, "cluster": chosen, "name": f"{tb.title} cluster {chosen}"}
            res = seen.trained_cluster("eval", method, chosen)
            rows.append(_outcome(target, res, tb.title, method, setting, best_trained[0]))
        res = seen.edit("eval", directions[0], None)
        rows.append(_outcome(target, res, "random", "random", {}, None))
        blocks.append(Table2Block(str(target), target.attribute, target.op, target.threshold, rows))
    return blocks


# ---- sample quality ------------------------------------------------------------------------------


def sample_quality(
    sampler: ClusterSampler, probe: Probe, config: EvalConfig, trained: dict[str, TrainedBaseline]
) -> Quality | None:
    """Detection rate and distance to the training images of the generator and each trained baseline.

    The reference is the first ``config.quality_reference`` images of the baselines' training set;
    every compared set is ``config.n`` fresh images of stream ``(seed, "quality")``. The generator
    is measured at its own size and shrunk to the baselines' size, so a reader can tell what the
    resolution costs the probe from what training from scratch costs.
    """
    if not trained:
        return None
    first = next(iter(trained.values()))
    size, data_seed = int(first.config.size), int(first.config.data_seed)
    G = sampler.generator
    reference = draw_images(G, config.quality_reference, size, data_seed, batch_size=config.batch_size)
    ref_feats = image_features(reference, size, seed=config.seed)
    seed = derive_seed(config.seed, "quality")

    def row(source: str, family: str, images: np.ndarray) -> QualityRow:
        measured = measure_images(probe, images, config.batch_size)
        mean, std = kid(image_features(images, size, seed=config.seed), ref_feats, seed=config.seed)
        return QualityRow(
            source,
            family,
            int(images.shape[1]),
            len(images),
            measured.result.detection_rate,
            1000 * mean,
            1000 * std,
            measured.diversity,
        )

    z = G.sample_latents(config.n, seed)
    full = sampler.synthesize(z, config.batch_size)
    rows = [row(f"{G.name} ({G.image_size} px)", "generator", full)]
    if G.image_size != size:
        rows.append(row(f"{G.name} shrunk to {size} px", "generator", shrink(full, size)))
    for method, tb in trained.items():
        rows.append(row(f"{tb.title} ({size} px)", method, tb.random(config.n, seed)))
    features = f"fixed random conv net (seed {config.seed}), channel mean+std at three scales, {size} px"
    reference_text = f"the first {config.quality_reference} training images ({G.name} shrunk to {size} px)"
    return Quality(reference_text, features, rows)


# ---- all of it -----------------------------------------------------------------------------------


def evaluate(
    sampler: ClusterSampler,
    probe: Probe,
    config: EvalConfig,
    targets: list[Target] = (),  # type: ignore[assignment]
    trained: dict[str, TrainedBaseline] | None = None,
) -> Evaluation:
    """Tables 1 and 2 and the sample-quality comparison. ``trained``: the trained baselines to
    compare (default: the shipped ones named in ``config.trained`` that fit the run's generator)."""
    config.check()
    check_targets(probe, list(targets))
    run = sampler.run
    if "corrected" in config.methods and not run.corrections:
        raise UserError(
            "--method corrected needs the moment maps a fit writes (this run was fitted before the "
            "corrected sampler); refit it, or use --method imle or exact"
        )
    if trained is None:
        trained, info = trained_baselines(sampler, config)
    else:
        info = {name: describe_trained(tb) for name, tb in trained.items()}
    seen = _Measurements(sampler, probe, config, trained)
    t1 = table1(sampler, probe, config, seen)
    t2 = table2(sampler, probe, list(targets), config, seen=seen)
    return Evaluation(
        version=clusterguide.__version__,
        run=str(run.path) if run.path else None,
        generator={**run.generator.to_json(), "weights_id": run.generator_info.get("weights_id")},
        fit=run.fit.to_json(),
        run_files=run_fingerprint(run),
        config=config.to_json(),
        probe={
            "name": probe.name,
            "description": probe.description,
            "attributes": [asdict(a) for a in probe.attributes],
        },
        table1=t1,
        table2=t2,
        quality=sample_quality(sampler, probe, config, trained),
        baselines=info,
    )


# ---- images of a table's rows (for the report) ------------------------------------------------


def _trained(
    evaluation: Evaluation, method: str, trained: dict[str, TrainedBaseline] | None
) -> TrainedBaseline:
    """The trained baseline a row came from: from ``trained`` when given, else the shipped one."""
    if trained is not None and method in trained:
        return trained[method]
    if method not in evaluation.baselines or "skipped" in evaluation.baselines[method]:
        raise UserError(f"the evaluation used no {method} baseline")
    return shipped(method)


def table1_images(
    sampler: ClusterSampler,
    evaluation: Evaluation,
    row: Table1Row,
    n: int,
    trained: dict[str, TrainedBaseline] | None = None,
) -> np.ndarray:
    """The first ``n`` of the images a Table 1 row measured (streams do not depend on n)."""
    cfg = EvalConfig.from_json(evaluation.config)
    n = min(n, row.n)
    if row.method == PRIOR:
        return sampler.random(n, seed=cfg.seed, batch_size=cfg.batch_size).images
    if row.method in TRAINED:
        return _trained(evaluation, row.method, trained).images(int(row.cluster.split(":")[1]), n, cfg.seed)
    return _sample(sampler, row.cluster, n, cfg.seed, row.method, cfg.batch_size).images


def table2_images(
    sampler: ClusterSampler,
    evaluation: Evaluation,
    row: Table2Row,
    n: int,
    trained: dict[str, TrainedBaseline] | None = None,
) -> np.ndarray:
    """The first ``n`` of the images a Table 2 row measured."""
    cfg = EvalConfig.from_json(evaluation.config)
    n = min(n, row.n)
    s = row.setting
    if "baseline" in s:
        return _trained(evaluation, s["baseline"], trained).images(int(s["cluster"]), n, cfg.seed)
    if "cluster" in s:
        return _sample(sampler, s["cluster"], n, cfg.seed, s["method"], cfg.batch_size).images
    z = prior_latents(sampler.generator, n, derive_seed(cfg.seed, "baseline"))
    if "component" in s:
        d = torch.tensor(s["direction"], dtype=torch.float32)
        z = z + (s["sign"] * s["step"]) * d
    return sampler.synthesize(z, cfg.batch_size)


def run_fingerprint(run: Run) -> dict[str, str]:
    """Checksums of the run's tensor files: a refit or refinement changes them, renaming does not."""
    if run.path is None:
        return {}
    return {name: artifacts.sha256(run.path / name) for name in (artifacts.CLUSTERS, artifacts.MAPPINGS)}


def check_matches(evaluation: Evaluation, sampler: ClusterSampler) -> None:
    """Refuse an evaluation made for another run, another fit of it, or another generator."""
    run = sampler.run
    if (
        evaluation.fit != run.fit.to_json()
        or evaluation.generator.get("weights_id") != run.generator_info.get("weights_id")
        or evaluation.run_files != run_fingerprint(run)
    ):
        raise UserError(
            "the evaluation was made for another run or generator; recompute it with `clusterguide evaluate`"
        )


# ---- text ----------------------------------------------------------------------------------------


def _pm(stat: Stat | None, digits: int = 2) -> str:
    if stat is None or stat.mean is None or stat.std is None:
        return "-"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def format_table1(evaluation: Evaluation) -> str:
    attrs = evaluation.attribute_names()
    headers = ["cluster", "name", "method", "p_c", "accept", "detected", "diversity", *attrs]
    rows = []
    for r in evaluation.table1:
        if not r.measured:
            rows.append([r.cluster, r.name, r.method, r.share, None, None, None] + ["-"] * len(attrs))
            continue
        rows.append(
            [
                r.cluster,
                r.name,
                r.method,
                r.share,
                r.acceptance_rate,
                r.detection_rate,
                r.diversity,
                *(_pm(r.stats.get(a)) for a in attrs),
            ]
        )
    return table(headers, rows)


def describe_setting(row: Table2Row) -> str:
    s = row.setting
    if "cluster" in s:
        return f"cluster {s['cluster']}" + (
            f" ({s['name']})" if s.get("name") and "baseline" not in s else ""
        )
    if "component" in s:
        return f"component {s['component']}, step {s['sign'] * s['step']:+g}"
    return "-"


def relative_diversity(block: Table2Block, row: Table2Row) -> float | None:
    """A Table 2 row's pixel diversity over the random row's (1: as varied as random samples)."""
    base = block.random_diversity()
    if not base or row.diversity is None:
        return None
    return row.diversity / base


def format_table2(evaluation: Evaluation) -> str:
    out = []
    for block in evaluation.table2:
        rows = [
            [
                r.method,
                describe_setting(r),
                r.share,
                r.detection_rate,
                r.mean,
                relative_diversity(block, r),
                r.select_share,
            ]
            for r in block.rows
        ]
        out.append(f"target {block.target} (share of all images; undetected count as misses)")
        headers = ["method", "setting", "share", "detected", f"mean {block.attribute}", "diversity/random"]
        out.append(table([*headers, "select share"], rows))
    return "\n\n".join(out)


def format_quality(evaluation: Evaluation) -> str:
    q = evaluation.quality
    if q is None:
        return ""
    rows = [[r.source, r.size, r.n, r.detection_rate, r.kid, r.kid_std, r.diversity] for r in q.rows]
    headers = ["images", "px", "n", "detected", "KID x1000", "± std", "diversity"]
    return f"distance to {q.reference}; features: {q.features}\n" + table(headers, rows)
