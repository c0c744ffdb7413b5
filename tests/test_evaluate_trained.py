"""The trained baselines' rows in Tables 1 and 2, the sample-quality section, and the typed results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clusterguide.baselines import make_method
from clusterguide.baselines.data import training_images
from clusterguide.baselines.model import TrainedBaseline
from clusterguide.baselines.training import Budget, train
from clusterguide.evaluation.probes import load_probe
from clusterguide.evaluation.quality import image_features, kid
from clusterguide.evaluation.report import build_report
from clusterguide.evaluation.results import Evaluation
from clusterguide.evaluation.tables import EvalConfig, evaluate, table1_images, table2_images
from clusterguide.evaluation.targets import parse_target
from clusterguide.generators import load_generator
from clusterguide.sampler import ClusterSampler
from clusterguide.seeding import derive_seed

CONFIG = EvalConfig(
    probe="image",
    n=12,
    select_n=8,
    components=2,
    steps=(1.0,),
    ganspace_samples=100,
    methods=("exact",),
    quality_reference=24,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ClusterGAN and SCGAN trained for a few steps on 16 px images of tiny-dcgan."""
    root = tmp_path_factory.mktemp("trained")
    images = training_images(load_generator("tiny-dcgan"), 64, 16, 0, root)
    out = {}
    for name, extra in (
        ("clustergan", {"n_critic": 1}),
        ("selfcond", {"recluster_every": 5, "cluster_images": 32}),
    ):
        m = make_method(
            name, size=16, width=4, noise_dim=4, batch_size=8, generator="tiny-dcgan", data_n=64, **extra
        )
        train(m, images, root / name, Budget(3), log=lambda s: None)
        out[name] = TrainedBaseline.load(root / name)
    return out


@pytest.fixture(scope="module")
def evaluation(tiny_run, trained):
    sampler = ClusterSampler.load(tiny_run[0])
    targets = [parse_target("brightness>0.45")]
    return sampler, evaluate(sampler, load_probe("image"), CONFIG, targets, trained=trained)


def test_table1_has_a_row_per_trained_cluster_with_its_images(evaluation, trained):
    sampler, ev = evaluation
    probe = load_probe("image")
    rows = {r.cluster: r for r in ev.table1 if r.method in trained}
    assert set(rows) == {f"{m}:{c}" for m in trained for c in range(4)}
    for key, row in rows.items():
        method, c = key.split(":")
        assert row.share == pytest.approx(trained[method].prior[int(c)])
        assert row.detection_rate == 1.0 and 0 < row.diversity < 1 and row.stats["brightness"].n == 12
        images = table1_images(sampler, ev, row, 5, trained)
        assert images.shape == (5, 16, 16, 3)
        assert np.allclose(
            probe.measure(images).values["brightness"], row.values["brightness"][:5], atol=1e-3
        )


def test_table2_picks_each_baselines_best_cluster_on_the_selection_stream(evaluation, trained):
    sampler, ev = evaluation
    probe = load_probe("image")
    target = parse_target("brightness>0.45")
    block = ev.table2[0]
    by_family = {r.family: r for r in block.rows}
    assert {"clustergan", "selfcond", "ganspace", "sefa", "random", "clusterguide"} == set(by_family)
    for method, tb in trained.items():
        row = by_family[method]
        select = [
            target.share(probe.measure(tb.images(c, CONFIG.select_n, derive_seed(CONFIG.seed, "select"))))
            for c in range(tb.k)
        ]
        assert row.select_share == pytest.approx(max(select))
        assert select[row.setting["cluster"]] == pytest.approx(max(select))
        images = table2_images(sampler, ev, row, CONFIG.n, trained)
        assert target.share(probe.measure(images)) == pytest.approx(row.share)


def test_sample_quality_rows(evaluation, trained):
    _, ev = evaluation
    q = ev.quality
    assert q is not None
    rows = {r.source: r for r in q.rows}
    assert set(rows) == {
        "tiny-dcgan (64 px)",
        "tiny-dcgan shrunk to 16 px",
        "ClusterGAN (16 px)",
        "SCGAN (16 px)",
    }
    generator = rows["tiny-dcgan shrunk to 16 px"]
    assert rows["tiny-dcgan (64 px)"].kid == pytest.approx(generator.kid)  # compared at 16 px either way
    # fresh images of the training distribution are closer to it than 3-step baselines
    assert generator.kid < rows["ClusterGAN (16 px)"].kid and generator.kid < rows["SCGAN (16 px)"].kid
    assert ev.baselines["selfcond"]["steps"] == 3 and ev.baselines["clustergan"]["size"] == 16


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 16, 16, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (300, 16, 16, 3)).astype(np.uint8)
    dark = (b // 2).astype(np.uint8)
    fa, fb, fd = (image_features(x, 16) for x in (a, b, dark))
    same, _ = kid(fa, fb, subset_size=200)
    shifted, _ = kid(fd, fb, subset_size=200)
    assert abs(same) < 0.1 * shifted


def test_json_round_trip_and_files_from_before(evaluation):
    _, ev = evaluation
    data = json.loads(json.dumps(ev.to_json()))
    assert Evaluation.from_json(data).to_json() == data
    old = {k: v for k, v in data.items() if k not in ("quality", "baselines")}
    old["config"] = {k: v for k, v in data["config"].items() if k not in ("trained", "quality_reference")}
    loaded = Evaluation.from_json(old)
    assert loaded.quality is None and EvalConfig.from_json(loaded.config).trained == ()


def test_report_shows_the_baselines_and_quality(evaluation, trained):
    sampler, ev = evaluation
    page = build_report(sampler, ev, per_row=4, trained=trained)
    assert "Sample quality" in page and "SCGAN cluster 3" in page and "ClusterGAN" in page
    assert "KID" in page


def test_cli_says_why_baselines_are_left_out_and_the_flag_drops_them(tiny_run, tmp_path):
    from clusterguide.cli import main

    small = ["-n", "4", "--select-n", "4", "--components", "1", "--steps", "1", "--ganspace-samples", "20"]
    small += ["--probe", "image", "--method", "exact", "-q"]
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(tiny_run[0]), *small, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "quality" not in data  # the shipped baselines were trained on digiface-dcgan, not tiny-dcgan
    assert "trained on digiface-dcgan" in data["baselines"]["selfcond"]["skipped"]
    assert main(["evaluate", str(tiny_run[0]), *small, "--json", str(out), "--no-trained-baselines"]) == 0
    data = json.loads(out.read_text())
    assert "baselines" not in data and data["config"]["trained"] == []
