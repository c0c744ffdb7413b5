"""The corrected sampler (correction.py): the moment map reaches the cluster's mean and covariance,
the projection brings strays inside without touching the rest, samples do not depend on n and
survive a save, older runs refuse it in one line, refined leaves stay inside their path, and the
CLI and export give the library's samples."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import without_corrections
from PIL import Image

from clusterguide import artifacts
from clusterguide.cli import main
from clusterguide.correction import margin_function, project_inside
from clusterguide.errors import UserError
from clusterguide.moments import MomentMap, fit_moment_map, shrunk_covariance
from clusterguide.refine import refine_run
from clusterguide.run import Run
from clusterguide.sampler import ClusterSampler


def _gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        mean + torch.randn(n, mean.numel(), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    )


def _random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_the_covariance_is_shrunk_only_as_far_as_the_rows_call_for():
    d = 6
    cov = _random_cov(d, 0)
    many = _gaussian(20_000, torch.zeros(d, dtype=torch.float64), cov, 1)
    sample = torch.cov(many.T, correction=0)
    assert torch.allclose(shrunk_covariance(many), sample, atol=0.02)  # almost no shrinkage
    # fewer rows than dimensions: the sample covariance is singular, the shrunk one is not
    few = _gaussian(10, torch.zeros(40, dtype=torch.float64), _random_cov(40, 2), 3)
    assert torch.linalg.eigvalsh(torch.cov(few.T)).min() < 1e-10
    assert torch.linalg.eigvalsh(shrunk_covariance(few)).min() > 1e-3


def test_the_moment_map_takes_the_source_to_the_targets_mean_and_covariance():
    d = 5
    source = _gaussian(40_000, torch.full((d,), 2.0, dtype=torch.float64), _random_cov(d, 4), 5)
    target_cov = _random_cov(d, 6)
    target = _gaussian(40_000, torch.linspace(-1, 1, d, dtype=torch.float64), target_cov, 7)
    moment_map = fit_moment_map(source.float(), target.float())
    assert torch.allclose(moment_map.matrix, moment_map.matrix.T)  # optimal transport: symmetric
    assert torch.linalg.eigvalsh(moment_map.matrix.double()).min() > 0
    moved = moment_map.apply(
        _gaussian(40_000, torch.full((d,), 2.0, dtype=torch.float64), _random_cov(d, 4), 8)
    )
    assert torch.allclose(moved.mean(0), target.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(moved.T), target_cov, atol=0.08)


def test_projection_brings_strays_inside_and_leaves_the_rest_alone(tiny_run, tiny_generator):
    _, run = tiny_run
    G = tiny_generator
    z = G.sample_latents(300, 11)
    inside_before = torch.from_numpy(run.tree.membership(G, z, "1"))
    assert 0 < inside_before.sum() < 300
    moved, still_out = project_inside(G, run.tree, "1", z)
    inside_after = torch.from_numpy(run.tree.membership(G, moved, "1"))
    assert inside_after.float().mean() >= 0.99
    assert torch.equal(~inside_after, still_out)  # what it reports left outside is what is
    assert torch.equal(moved[inside_before], z[inside_before])
    # strays land just inside, not deep: their margin is small
    with torch.no_grad():
        margins = margin_function(G, run.tree, "1")(moved[~inside_before & inside_after])
    assert (margins > 0).all() and margins.median() < 0.5


def test_projection_with_a_floor_lifts_every_low_row_to_the_target(tiny_run, tiny_generator):
    # bench/bench_distil.py's deeper targets: rows inside but below the floor move too
    _, run = tiny_run
    G = tiny_generator
    z = G.sample_latents(300, 11)
    margin = margin_function(G, run.tree, "1")
    with torch.no_grad():
        before = margin(z)
    target = float(before[before > 0].median())
    moved, _ = project_inside(G, run.tree, "1", z, target=target, below=0.999 * target)
    with torch.no_grad():
        after = margin(moved)
    low = before <= 0.999 * target
    assert low.sum() > (before <= 0).sum()  # some rows already inside were below the floor
    assert torch.equal(moved[~low], z[~low])
    assert (after[low] > 0.99 * target).float().mean() >= 0.95


def test_corrected_samples_are_inside_and_do_not_depend_on_n_or_a_save(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    sampler = ClusterSampler.load(run_dir)
    path = sorted(sampler.run.mappings)[0]
    few = sampler.corrected_latents(path, 5, seed=3)
    many = sampler.corrected_latents(path, 300, seed=3)
    assert torch.equal(few, many[:5])
    G = sampler.generator
    assert sampler.run.tree.membership(G, many, path).mean() >= 0.99
    imle = sampler.imle_latents(path, 300, seed=3)
    assert (
        sampler.run.tree.membership(G, imle, path).mean() <= sampler.run.tree.membership(G, many, path).mean()
    )
    assert not torch.equal(imle, many)  # moved to the cluster's moments
    out = sampler.sample(path, 4, seed=3, method="corrected")
    assert out.images.shape[0] == 4 and out.method == "corrected"
    # the maps are saved with the run and sample the same after a load
    shutil.copytree(run_dir, tmp_path / "copy")
    sampler.run.save(tmp_path / "copy", overwrite=True)
    assert torch.equal(ClusterSampler.load(tmp_path / "copy").corrected_latents(path, 5, seed=3), few)


def test_every_fit_reports_the_corrected_sampler_apart(tiny_run):
    _, run = tiny_run
    rows = [r for r in run.metrics["clusters"] if r["id"] in run.mappings]
    assert rows and sorted(run.corrections) == sorted(run.mappings)
    for r in rows:
        assert r["corrected_fidelity"] >= r["fidelity"] - 0.01
        assert 0 <= r["corrected_recall"] <= 1 and 0 <= r["corrected_precision"] <= 1
        assert r["corrected_seconds"] > 0


def test_a_run_fitted_before_the_corrected_sampler_loads_and_refuses_it_in_one_line(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    old = without_corrections(run_dir, tmp_path / "old")
    sampler = ClusterSampler.load(old)
    path = sorted(sampler.run.mappings)[0]
    assert sampler.sample(path, 2, method="imle").images.shape[0] == 2
    with pytest.raises(UserError, match="no correction.*refit"):
        sampler.sample(path, 2, method="corrected")
    # and saving it again writes no corrections file
    sampler.run.save(tmp_path / "again")
    assert not (tmp_path / "again" / artifacts.CORRECTIONS).exists()
    assert Run.load(tmp_path / "again").corrections == {}


def test_a_damaged_corrections_file_is_a_one_line_error(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    broken = shutil.copytree(run_dir, tmp_path / "broken")
    data = bytearray((broken / artifacts.CORRECTIONS).read_bytes())
    data[-1] ^= 0xFF
    (broken / artifacts.CORRECTIONS).write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrections.safetensors is damaged"):
        Run.load(broken)


@pytest.mark.slow
def test_projection_on_a_refined_leaf_moves_only_what_is_outside_it(refined_tiny_run):
    # a leaf's members have a positive margin along its path (guides.make_path_guide), so they are
    # left alone and what is reported left outside is what is
    refined, out = refined_tiny_run
    sampler = ClusterSampler.load(refined)
    G, tree = sampler.generator, sampler.run.tree
    leaf = out.children[0]
    z = G.sample_latents(300, 11)
    inside_before = torch.from_numpy(tree.membership(G, z, leaf))
    assert 0 < inside_before.sum() < 300
    moved, still_out = project_inside(G, tree, leaf, z)
    inside_after = torch.from_numpy(tree.membership(G, moved, leaf))
    assert torch.equal(moved[inside_before], z[inside_before])
    assert torch.equal(~inside_after, still_out)
    assert inside_after.float().mean() >= 0.95


@pytest.mark.slow
def test_a_refined_leafs_corrected_samples_stay_inside_its_parent_and_itself(refined_tiny_run, tmp_path):
    refined, out = refined_tiny_run
    sampler = ClusterSampler.load(refined)
    G, tree = sampler.generator, sampler.run.tree
    leaves = [leaf for leaf in out.children if leaf in sampler.run.mappings]
    assert leaves and all(leaf in sampler.run.corrections for leaf in leaves)
    for leaf in leaves:
        z = sampler.corrected_latents(leaf, 300, seed=7)
        assert tree.membership(G, z, "0").mean() >= 0.99, leaf
        assert tree.membership(G, z, leaf).mean() >= 0.99, leaf
    # refining again drops the old leaves' maps with their mappings
    run_dir = shutil.copytree(refined, tmp_path / "run")
    refine_run(run_dir, "0", "block2", 2, samples=400, epochs=2, force=True, log=lambda m: None)
    again = Run.load(run_dir)
    assert sorted(again.corrections) == sorted(again.mappings)


def test_the_cli_samples_and_draws_a_grid_with_the_corrected_sampler(tiny_run, tmp_path, capsys):
    run_dir, run = tiny_run
    path = sorted(run.mappings)[0]
    assert (
        main(
            [
                "sample",
                str(run_dir),
                "--cluster",
                path,
                "-n",
                "6",
                "--method",
                "corrected",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert "(corrected)" in capsys.readouterr().out
    with np.load(tmp_path / "s.npz") as saved:
        assert saved["images"].shape[0] == 6
        latents = torch.from_numpy(saved["latents"])
    assert torch.equal(latents, ClusterSampler.load(run_dir).corrected_latents(path, 6).float())
    assert (
        main(
            [
                "grid",
                str(run_dir),
                "--out",
                str(tmp_path / "g.png"),
                "--per-cluster",
                "2",
                "--method",
                "corrected",
            ]
        )
        == 0
    )
    assert (tmp_path / "g.png").stat().st_size > 0
    # a run without the maps: one line on stderr, exit code 2
    old = without_corrections(run_dir, tmp_path / "old")
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                str(old),
                "--cluster",
                path,
                "-n",
                "2",
                "--method",
                "corrected",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "refit" in err[0]
    assert not (tmp_path / "o.png").exists()


def test_a_misshapen_map_is_a_one_line_error_at_load(tiny_run, tmp_path):
    _, run = tiny_run
    path = sorted(run.mappings)[0]
    d = run.mappings[path].fc3.out_features + 1
    bad = dataclasses.replace(
        run, corrections={**run.corrections, path: MomentMap(torch.zeros(d), torch.zeros(d), torch.eye(d))}
    )
    bad.save(tmp_path / "shape")
    with pytest.raises(UserError, match=f"source_mean of {path} is missing, of the wrong shape"):
        Run.load(tmp_path / "shape")


def test_export_writes_the_corrected_samplers_images(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    args = ["export", str(run_dir), "-n", "40", "--seed", "3", "--shard-size", "7", "--mix", "uniform", "-q"]
    assert main([*args, "--method", "corrected", "--out", str(tmp_path / "e")]) == 0
    rows = pq.read_table(tmp_path / "e" / "manifest.parquet").to_pylist()
    assert {r["method"] for r in rows} == {"corrected"}
    sampler = ClusterSampler.load(run_dir)
    for path in sorted({r["cluster"] for r in rows}):
        own = sorted((r for r in rows if r["cluster"] == path), key=lambda r: r["index"])
        ref = sampler.sample(path, len(own), seed=3, method="corrected")
        got = np.stack([np.asarray(Image.open(tmp_path / "e" / r["file"])) for r in own])
        assert np.array_equal(got, ref.images)
        assert np.array_equal(np.array([r["latent"] for r in own], np.float32), ref.latents)
    old = without_corrections(run_dir, tmp_path / "old")
    capsys.readouterr()
    assert (
        main(["export", str(old), "-n", "4", "--method", "corrected", "--out", str(tmp_path / "o"), "-q"])
        == 2
    )
    assert "refit" in capsys.readouterr().err and not (tmp_path / "o").exists()
