"""Tables 1 and 2, the evaluate/report commands, on a tiny seeded run with the generic image probe."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import without_corrections

from clusterguide.cli import main
from clusterguide.evaluation.probes import load_probe
from clusterguide.evaluation.report import svg_bars, svg_histograms
from clusterguide.evaluation.tables import (
    PRIOR,
    EvalConfig,
    evaluate,
    pixel_diversity,
    relative_diversity,
    table1_images,
    table2_images,
)
from clusterguide.evaluation.targets import parse_target
from clusterguide.fitting import fit_run
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.mapping import MappingConfig
from clusterguide.run import FitConfig
from clusterguide.sampler import ClusterSampler

SMALL = [
    "-n",
    "12",
    "--select-n",
    "6",
    "--components",
    "2",
    "--steps",
    "1,3",
    "--ganspace-samples",
    "200",
    "--probe",
    "image",
    "-q",
]
# the library-level twin of SMALL
CONFIG = EvalConfig(probe="image", n=12, select_n=6, components=2, steps=(1.0, 3.0), ganspace_samples=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run, _ = fit_run(
        GeneratorSpec("tiny-dcgan"),
        FitConfig(layer="block1", clusters=3, samples=300, seed=0, eval_samples=64, min_cluster_size=8),
        MappingConfig.preset("fast", epochs=1, seed=0),
        log=lambda _: None,
    )
    # one cluster without a mapping: its IMLE rows must be skipped, its exact rows kept
    run.mappings.pop("2")
    run.skipped["2"] = "dropped for the test"
    out = tmp_path_factory.mktemp("eval") / "run"
    run.save(out)
    return out


@pytest.fixture(scope="module")
def evaluation(run_dir):
    sampler = ClusterSampler.load(run_dir)
    config = CONFIG
    targets = [parse_target("brightness>0.5"), parse_target("contrast<0.2")]
    return sampler, evaluate(sampler, load_probe("image"), config, targets, trained={})


def test_table1_has_every_cluster_and_method_and_the_prior(evaluation):
    _, ev = evaluation
    rows = {(r.cluster, r.method): r for r in ev.table1}
    assert set(rows) == {(c, m) for c in ("0", "1", "2") for m in ("imle", "exact")} | {(PRIOR, PRIOR)}
    assert not rows[("2", "imle")].measured and rows[("2", "exact")].measured
    row = rows[("0", "exact")]
    assert 0 < row.acceptance_rate <= 1 and row.detection_rate == 1.0
    stats = row.stats["brightness"]
    values = np.array(row.values["brightness"])
    assert len(values) == 12 and stats.n == 12
    assert stats.mean == pytest.approx(values.mean(), abs=1e-3) and stats.std == pytest.approx(
        values.std(), abs=1e-3
    )


def test_table1_images_are_the_measured_ones(evaluation):
    sampler, ev = evaluation
    probe = load_probe("image")
    for row in ev.table1:
        if not row.measured:
            continue
        images = table1_images(sampler, ev, row, 4)
        measured = probe.measure(images).values["brightness"]
        assert np.allclose(measured, row.values["brightness"][:4], atol=1e-3)


def test_table2_rows_are_comparable(evaluation):
    sampler, ev = evaluation
    assert [b.target for b in ev.table2] == ["brightness>0.5", "contrast<0.2"]
    for block in ev.table2:
        methods = [r.method for r in block.rows]
        assert methods == ["clusterguide (imle)", "clusterguide (exact)", "GANSpace", "SeFa", "random"]
        for r in block.rows:
            assert r.n == 12 and 0.0 <= r.share <= 1.0
        imle = block.rows[0].setting
        assert imle["cluster"] in ("0", "1")  # cluster 2 has no mapping
        gs = block.rows[2].setting
        assert gs["source"] == "layer block1" and gs["step"] in (1.0, 3.0) and gs["sign"] in (1, -1)
        assert len(gs["direction"]) == sampler.generator.latent_dim
        assert block.rows[3].setting["source"] == "weight of net.main.0"


def test_table2_shares_are_those_of_its_images(evaluation):
    sampler, ev = evaluation
    probe = load_probe("image")
    block = ev.table2[0]
    target = parse_target(block.target)
    for r in block.rows:
        images = table2_images(sampler, ev, r, 12)
        assert target.share(probe.measure(images)) == pytest.approx(r.share)


def test_the_chosen_cluster_is_the_best_on_the_selection_stream(run_dir, evaluation):
    sampler, ev = evaluation
    probe = load_probe("image")
    target = parse_target("brightness>0.5")
    cfg = EvalConfig.from_json(ev.config)
    from clusterguide.seeding import derive_seed

    shares = {
        c: target.share(
            probe.measure(
                sampler(c, cfg.select_n, seed=derive_seed(cfg.seed, "select"), method="exact").images
            )
        )
        for c in ("0", "1", "2")
    }
    exact = ev.table2[0].rows[1]
    assert exact.select_share == pytest.approx(max(shares.values()))


def test_corrected_rows_are_the_corrected_samples_and_skip_what_has_no_mapping(run_dir):
    sampler = ClusterSampler.load(run_dir)
    config = dataclasses.replace(CONFIG, methods=("corrected",))
    ev = evaluate(sampler, load_probe("image"), config, [parse_target("brightness>0.5")], trained={})
    rows = {r.cluster: r for r in ev.table1 if r.method == "corrected"}
    assert set(rows) == {"0", "1", "2"}
    assert not rows["2"].measured and rows["0"].measured and rows["1"].measured  # 2 has no mapping
    probe = load_probe("image")
    for c in ("0", "1"):
        corrected = sampler(c, 12, seed=config.seed, method="corrected").images
        imle = sampler(c, 12, seed=config.seed, method="imle").images
        assert np.allclose(
            probe.measure(corrected).values["brightness"], rows[c].values["brightness"], atol=1e-3
        )
        # the tiny generator's brightness barely moves; its pixel diversity tells the methods apart
        assert rows[c].diversity == pytest.approx(pixel_diversity(corrected), rel=1e-6)
        assert rows[c].diversity != pytest.approx(pixel_diversity(imle), rel=1e-6)
    best = ev.table2[0].rows[0]
    assert best.method == "clusterguide (corrected)" and best.setting["cluster"] in ("0", "1")


def test_corrected_rows_of_a_run_without_moment_maps_are_refused_before_any_work(run_dir, tmp_path, capsys):
    old = without_corrections(run_dir, tmp_path / "old-run")
    assert main(["evaluate", str(old), *SMALL, "--method", "corrected"]) == 2
    err = capsys.readouterr().err.strip()
    assert "refit" in err and "\n" not in err
    assert main(["evaluate", str(old), *SMALL, "--method", "exact"]) == 0  # the other methods still run


def test_evaluate_cli_prints_both_tables_and_writes_json(run_dir, capsys):
    out = run_dir.parent / "ev.json"
    code = main(["evaluate", str(run_dir), *SMALL, "--target", "brightness>0.4", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "Table 1" in text and "Table 2" in text and "GANSpace" in text and "SeFa" in text
    data = json.loads(out.read_text())
    assert data["config"]["n"] == 12 and data["table2"][0]["target"] == "brightness>0.4"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--target", "yaw>10"], "unknown attribute 'yaw'"),
        (["--target", "brightness=3"], "compare with"),
        (["-n", "0"], "-n must be at least 1"),
        (["--json", "out.txt"], "must end in .json"),
        (["--steps", "2,x"], "comma-separated numbers"),
        (["--steps", "0,2"], "--steps must be positive"),
        (["--ganspace-layer", "block9", "--target", "brightness>0.5"], "unknown layer"),
    ],
)
def test_evaluate_cli_errors_are_one_line(run_dir, capsys, args, words):
    assert main(["evaluate", str(run_dir), *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_missing_run_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--probe", "image"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_is_one_self_contained_page(run_dir, tmp_path, capsys):
    page = tmp_path / "report.html"
    evaluation = run_dir.parent / "ev.json"
    main(["evaluate", str(run_dir), *SMALL, "--target", "brightness>0.4", "--json", str(evaluation)])
    code = main(
        ["report", str(run_dir), "--out", str(page), "--evaluation", str(evaluation), "--per-row", "4", "-q"]
    )
    assert code == 0, capsys.readouterr().err
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "Table 1" in text and "Table 2" in text and "brightness&gt;0.4" in text
    assert text.count("data:image/png;base64,") >= 5 + 5  # Table 1 grids + one per Table 2 row
    assert "<svg" in text
    # nothing is loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", text)


def test_report_computes_when_there_is_no_json_and_refuses_a_foreign_one(run_dir, tmp_path, capsys):
    page = tmp_path / "fresh.html"
    assert main(["report", str(run_dir), "--out", str(page), "--fresh", *SMALL]) == 0
    assert "Table 2" not in page.read_text()  # no target given
    foreign = tmp_path / "foreign.json"
    data = (
        json.loads((run_dir.parent / "ev.json").read_text())
        if (run_dir.parent / "ev.json").exists()
        else None
    )
    if data is None:
        main(["evaluate", str(run_dir), *SMALL, "--json", str(run_dir.parent / "ev.json")])
        data = json.loads((run_dir.parent / "ev.json").read_text())
    capsys.readouterr()
    for field, value in (
        ("fit", {**data["fit"], "clusters": 7}),
        ("run_files", {"mappings.safetensors": "0" * 64}),
    ):
        foreign.write_text(json.dumps({**data, field: value}))
        assert main(["report", str(run_dir), "--out", str(page), "--evaluation", str(foreign)]) == 2
        assert "another run" in capsys.readouterr().err


def test_svg_plots_are_well_formed():
    import xml.etree.ElementTree as ET

    ET.fromstring(
        svg_histograms([("imle", [0.1, 0.2, None, 0.9], "#123456"), (PRIOR, [0.5], "#999")], 0.0, 1.0)
    )
    ET.fromstring(svg_bars([("a<b", 0.5, "#000"), ("c", None, "#111")], ("ref", 0.95)))


def test_pixel_diversity_of_copies_is_zero_and_of_opposites_is_one():
    same = np.full((5, 32, 32, 3), 90, np.uint8)
    assert pixel_diversity(same) == 0.0
    pair = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    assert pixel_diversity(pair) == pytest.approx(1.0)
    assert np.isnan(pixel_diversity(same[:1]))


def test_rows_carry_diversity(evaluation):
    _, ev = evaluation
    for row in ev.table1:
        if row.measured:
            assert 0.0 < row.diversity < 1.0
    block = ev.table2[0]
    random_row = block.rows[-1]
    assert relative_diversity(block, random_row) == pytest.approx(1.0)
