"""Refining a cluster into a tree (paper §4.3) on the tiny generator: the tree, its statistics,
exact sampling along a path, the grid and info of a tree, saving in place, and the errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import clusterguide.refine as refine_module
from clusterguide.cli import main
from clusterguide.errors import UserError
from clusterguide.guides import make_path_guide
from clusterguide.mapping.inputs import assignment_margin
from clusterguide.overview import overview_image
from clusterguide.refine import collect_latents, refine_run
from clusterguide.run import Run, set_name
from clusterguide.sampler import ClusterSampler
from clusterguide.tree import parent_of

QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def fitted(tiny_run):
    """The shared 3-cluster tiny run (conftest.py); read-only, tests refine copies of it."""
    return tiny_run[0]


@pytest.fixture(scope="module")
def tree_dir(fitted, tmp_path_factory):
    """Cluster 1 refined at block2 into 2, then 1/0 refined at block2 into 2: a three-level path."""
    path = shutil.copytree(fitted, tmp_path_factory.mktemp("tree") / "run")
    set_name(path, "1", "bright")
    (path / "overview.png").write_bytes(b"a user's file")
    refine_run(path, "bright", "block2", 2, samples=160, **QUIET)
    refine_run(path, "1/0", "block2", 2, samples=64, seed=5, **QUIET)
    return path


@pytest.fixture()
def run_dir(fitted, tmp_path):
    return shutil.copytree(fitted, tmp_path / "run")


def test_refine_builds_the_tree(tree_dir):
    run = Run.load(tree_dir)
    assert run.clusters() == ["0", "1", "1/0", "1/0/0", "1/0/1", "1/1", "2"]
    assert run.leaves() == ["0", "1/0/0", "1/0/1", "1/1", "2"]
    assert run.tree.splits["1"].layer == "block2" and run.tree.splits["1"].samples == 160
    stats = run.tree.stats
    assert stats["1/0"]["size"] + stats["1/1"]["size"] == 160
    # p_c multiplies down the tree: share of the parent times the child's fraction
    for parent in ("1", "1/0"):
        kids = run.tree.children(parent)
        assert sum(stats[c]["share"] for c in kids) == pytest.approx(stats[parent]["share"])
    assert stats["1/0/0"]["share"] < stats["1/0"]["share"] < stats["1"]["share"]
    assert {"1/0", "1/1", "1/0/0", "1/0/1"} <= set(run.mappings)  # every leaf gets its own mapping
    rows = {r["id"]: r for r in run.metrics["clusters"]}
    assert all(0 <= rows[c]["fidelity"] <= 1 for c in ("1/0/0", "1/0/1", "1/1"))
    events = [e for e in run.history if e["event"] == "refine"]
    assert [(e["cluster"], e["layer"], e["k"], e["seed"]) for e in events] == [
        ("1", "block2", 2, 0),
        ("1/0", "block2", 2, 5),
    ]
    # the acceptance rate of collecting estimates the cluster's share of the prior
    assert events[0]["acceptance"] == pytest.approx(stats["1"]["share"], abs=0.15)
    assert run.names == {"1": "bright"}
    assert (tree_dir / "overview.png").read_bytes() == b"a user's file"  # saving in place kept it


def test_exact_sampling_along_a_path(tree_dir):
    sampler = ClusterSampler.load(tree_dir)
    G, tree = sampler.generator, sampler.run.tree
    out = sampler("1/0/1", 5, seed=2, method="exact")
    z = torch.from_numpy(out.latents)
    for node in tree.ancestors("1/0/1"):  # inside every cluster on the way down
        assert (tree.assign_at(G, z, parent_of(node)) == int(node.rsplit("/", 1)[-1])).all()
    assert out.acceptance_rate == pytest.approx(5 / out.tried)
    assert 0 < out.acceptance_rate < 1
    # the first n of the seed's stream that fall inside, whatever the batch size
    z_small, tried_small = sampler.exact_latents("1/0/1", 5, seed=2, batch_size=16)
    torch.testing.assert_close(z_small, z)
    assert tried_small == out.tried
    shallow = sampler("1", 5, seed=2, method="exact")
    assert shallow.acceptance_rate > out.acceptance_rate or shallow.tried < out.tried


def test_leaves_sample_with_their_mapping(tree_dir):
    sampler = ClusterSampler.load(tree_dir)
    a = sampler("1/0/0", 4, seed=0)
    b = sampler("bright", 4, seed=0)  # an internal node keeps its own mapping
    assert a.images.shape == (4, 64, 64, 3) and a.method == "imle" and b.cluster == "1"
    assert not np.array_equal(a.latents, b.latents)


def test_a_refined_mapping_stays_inside_its_parent(fitted, tmp_path):
    run_dir = shutil.copytree(fitted, tmp_path / "run")
    out = refine_run(run_dir, "1", "block3", 2, samples=300, **QUIET)
    sampler = ClusterSampler.load(run_dir)
    for leaf in out.children:
        z = sampler.imle_latents(leaf, 300, seed=1)
        in_parent = (sampler.run.tree.assign_at(sampler.generator, z, "") == 1).mean()
        assert in_parent > 0.8, (leaf, in_parent)  # 0.29 / 0.36 without the path guide and parent start


def test_the_path_guide_gives_members_a_positive_margin_with_a_gradient(tree_dir):
    # at depth two and three: the subspace choice (mapping/bases.py) and the corrected sampler
    # follow this margin's gradient; the argmax is the membership, as the hinge and fidelity use it
    sampler = ClusterSampler.load(tree_dir)
    G, tree = sampler.generator, sampler.run.tree
    z = G.sample_latents(2000, 3)
    for leaf in ("1/1", "1/0/0", "1/0/1"):
        parent = parent_of(leaf)
        guide = make_path_guide(G, tree, parent, tree.splits[parent])
        own = int(leaf.rsplit("/", 1)[-1])
        x = z.clone().requires_grad_(True)
        logits = guide(x)
        margin = assignment_margin(logits, own)
        (grad,) = torch.autograd.grad(margin.sum(), x)
        member = torch.from_numpy(tree.membership(G, z, leaf))
        assert 0 < member.sum() < len(z), leaf
        assert torch.equal(logits.argmax(1) == own, member), leaf
        assert (margin[member] > 0).all() and (margin[~member] <= 0).all(), leaf
        assert (grad[member].norm(dim=1) > 0).all(), leaf


def test_grid_has_one_labelled_row_per_leaf(tree_dir):
    sampler = ClusterSampler.load(tree_dir)
    image = overview_image(sampler, per_cluster=2)
    row_height = ((64 + 2) + 2) * 2  # one grid row of 64px images, 2px padding, scaled x2
    assert image.height == row_height * len(sampler.run.leaves())


def test_info_shows_the_tree(tree_dir, capsys):
    assert main(["info", str(tree_dir)]) == 0
    out = capsys.readouterr().out
    assert "refined 1 at block2: k 2, samples 160" in out
    rows = [line for line in out.splitlines() if line.strip() and line.lstrip()[0].isdigit()]
    lines = {line.split()[0]: line for line in rows}
    assert "bright" in lines["1"] and "split @ block2 into 2" in lines["1"]
    assert next(line for line in out.splitlines() if line.lstrip().startswith("1/0/0")).startswith(
        "    1/0/0"
    )
    assert lines["1/0/0"].rstrip().endswith("leaf")


def test_refine_cli(run_dir, capsys):
    code = main(
        [
            "refine",
            str(run_dir),
            "--cluster",
            "0",
            "--layer",
            "block2",
            "--clusters",
            "2",
            "--samples",
            "80",
            "--epochs",
            "1",
            "--set",
            "spread=0",
            "-q",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "refined cluster 0 at block2 into 0/0, 0/1: 80 latents from" in out
    run = Run.load(run_dir)
    assert run.leaves() == ["0/0", "0/1", "1", "2"]
    # the overrides hold for this split only
    assert run.history[-1]["mapping"]["epochs"] == 1 and run.mapping.epochs == 3
    assert run.history[-1]["mapping"]["spread"] == 0.0 and run.mapping.spread == 1.0


def test_refine_again_needs_force_and_drops_the_subtree(tree_dir, tmp_path, capsys):
    run_dir = shutil.copytree(tree_dir, tmp_path / "run")
    set_name(run_dir, "1/0/1", "dark")
    args = ["--cluster", "1", "--layer", "block1", "--clusters", "3", "--samples", "90"]
    code = main(["refine", str(run_dir), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already split at block2 into 2 (1/0, 1/1); pass --force" in err[0]
    refine_run(run_dir, "1", "block1", 3, samples=90, force=True, **QUIET)
    run = Run.load(run_dir)
    assert run.clusters() == ["0", "1", "1/0", "1/1", "1/2", "2"]
    assert "1/0" not in run.tree.splits and "1/0/0" not in run.tree.stats and "1/0/0" not in run.mappings
    assert {r["id"] for r in run.metrics["clusters"]} == set(run.clusters())
    assert run.names == {"1": "bright"}  # the name of a dropped cluster went with it
    assert run.history[-1]["replaced"] == ["1/0", "1/0/0", "1/0/1", "1/1"]


def test_a_rename_during_refine_is_kept(run_dir, monkeypatch):
    real = refine_module.split_cluster

    def slow_split(*args, **kwargs):
        set_name(run_dir, "0", "renamed meanwhile")  # another process names a cluster mid-refine
        return real(*args, **kwargs)

    monkeypatch.setattr(refine_module, "split_cluster", slow_split)
    refine_run(run_dir, "1", "block2", 2, samples=64, **QUIET)
    assert Run.load(run_dir).names == {"0": "renamed meanwhile"}


def test_a_concurrent_change_is_not_overwritten(run_dir, monkeypatch):
    real = refine_module.split_cluster

    def racing_split(G, run, parent, *args, **kwargs):
        other = Run.load(run_dir)  # another refine finished first
        other.history.append({"event": "other"})
        other.save(run_dir, overwrite=True)
        return real(G, run, parent, *args, **kwargs)

    monkeypatch.setattr(refine_module, "split_cluster", racing_split)
    with pytest.raises(UserError, match="changed by another command"):
        refine_run(run_dir, "1", "block2", 2, samples=64, **QUIET)
    run = Run.load(run_dir)
    assert run.history[-1] == {"event": "other"} and "1" not in run.tree.splits


def test_collect_latents_is_reproducible_and_counts_draws(fitted):
    sampler = ClusterSampler.load(fitted)
    G, tree = sampler.generator, sampler.run.tree
    z, drawn = collect_latents(G, tree, "0", 50, seed=9, chunk=64)
    z2, drawn2 = collect_latents(G, tree, "0", 50, seed=9, chunk=1000)
    torch.testing.assert_close(z, z2)
    assert drawn == drawn2 >= 50
    assert tree.membership(G, z, "0").all()
    assert tree.membership(G, G.sample_latents(drawn, 9), "0").sum() == 50


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--cluster", "7", "--layer", "block2", "--clusters", "2"], "no cluster '7'"),
        (["--cluster", "nobody", "--layer", "block2", "--clusters", "2"], "no cluster 'nobody'"),
        (["--cluster", "1", "--layer", "block9", "--clusters", "2"], "unknown layer 'block9'"),
        (["--cluster", "1", "--layer", "block2", "--clusters", "1"], "--clusters must be at least 2"),
        (
            ["--cluster", "1", "--layer", "block2", "--clusters", "50", "--samples", "20"],
            "larger than --samples",
        ),
        (
            ["--cluster", "1", "--layer", "block2", "--clusters", "2", "--epochs", "0"],
            "--epochs must be at least 1",
        ),
        (
            ["--cluster", "1", "--layer", "block2", "--clusters", "2", "--set", "hinge_dim=4"],
            "unknown mapping setting 'hinge_dim'",
        ),
        # cluster 1 holds about half of the prior: 1000 of its latents need ~2000 draws
        (
            [
                "--cluster",
                "1",
                "--layer",
                "block2",
                "--clusters",
                "2",
                "--samples",
                "1000",
                "--max-draws",
                "500",
            ],
            "raise --max-draws",
        ),
    ],
)
def test_refine_errors_are_one_line(run_dir, capsys, args, match):
    before = (run_dir / "config.json").read_text()
    code = main(["refine", str(run_dir), *args, "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert (run_dir / "config.json").read_text() == before


def test_too_rare_after_drawing_is_a_user_error(fitted):
    # without a known share the limit is hit while drawing
    sampler = ClusterSampler.load(fitted)
    with pytest.raises(UserError, match=r"only \d+ of 400 latents fell in cluster 1 among 300 prior samples"):
        collect_latents(sampler.generator, sampler.run.tree, "1", 400, seed=0, chunk=128, max_draws=300)


def test_missing_run_folder(tmp_path, capsys):
    code = main(["refine", str(tmp_path / "nope"), "--cluster", "0", "--layer", "block2", "--clusters", "2"])
    assert code == 2 and "not a clusterguide run folder" in capsys.readouterr().err


def test_history_is_json(tree_dir):
    config = json.loads((tree_dir / "config.json").read_text())
    assert config["tree"]["splits"]["1/0"]["layer"] == "block2"
