"""``clusterguide export``: exact counts, byte-identical shards whatever the back end, resume after
a real SIGKILL, the manifest read back with pyarrow and webdataset, and every bad input as one
line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clusterguide.cli import main
from clusterguide.export import split_counts
from clusterguide.run import Run
from clusterguide.sampler import ClusterSampler

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def export(capsys, run_dir, out, *args):
    code, stdout, err = run_cli(capsys, "export", run_dir, "--out", out, "-q", *args)
    assert code == 0, err
    return stdout, err


def png_hashes(out: Path) -> dict[str, str]:
    """Image key -> sha256 of its PNG bytes, from either format."""
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    hashes = {}
    for row in table:
        if row["file"].endswith(".png"):
            data = (out / row["file"]).read_bytes()
        else:
            data = _tar_members(out / row["file"])[f"{row['key']}.png"]
        hashes[row["key"]] = hashlib.sha256(data).hexdigest()
    return hashes


def _tar_members(path: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_split_counts_is_exact_and_proportional():
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.random(rng.integers(1, 8)) * rng.choice([1e-3, 1, 1e3])
        n = int(rng.integers(1, 5000))
        counts = split_counts(n, weights.tolist())
        assert sum(counts) == n
        quotas = n * weights / weights.sum()
        assert np.all(np.abs(np.array(counts) - quotas) < 1)


def test_mix_counts_are_printed_and_written(tiny_run, tmp_path, capsys):
    run_dir, run = tiny_run
    _, err = export(capsys, run_dir, tmp_path / "a", "-n", 10, "--mix", "0:1, 2:3", "--shard-size", 4)
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    counts = {p: c["count"] for p, c in info["counts"].items()}
    assert counts == dict(zip(["0", "2"], split_counts(10, [1, 3])))
    assert f"0: {counts['0']}" in err and f"2: {counts['2']}" in err
    rows = pq.read_table(tmp_path / "a" / "manifest.parquet").to_pylist()
    assert {p: sum(r["cluster"] == p for r in rows) for p in counts} == counts

    export(capsys, run_dir, tmp_path / "u", "-n", 11, "--mix", "uniform")
    counts = json.loads((tmp_path / "u" / "dataset.json").read_text())["counts"]
    assert sorted(c["count"] for c in counts.values()) == [3, 4, 4]

    export(capsys, run_dir, tmp_path / "p", "-n", 50)  # prior: p_c of every leaf
    counts = json.loads((tmp_path / "p" / "dataset.json").read_text())["counts"]
    for path, c in counts.items():
        assert abs(c["count"] - 50 * run.tree.stats[path]["share"]) < 1


def test_names_select_clusters(tmp_path, capsys, tiny_run):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    assert run_cli(capsys, "name", run_dir, "2", "round ones")[0] == 0
    export(capsys, run_dir, tmp_path / "e", "-n", 5, "--cluster", "round ones", "--cluster", "0")
    rows = pq.read_table(tmp_path / "e" / "manifest.parquet").to_pylist()
    assert {r["cluster"] for r in rows} == {"0", "2"}
    assert {r["cluster_name"] for r in rows if r["cluster"] == "2"} == {"round ones"}


def test_images_are_the_samplers_images(tiny_run, tmp_path, capsys):
    """Export image i of cluster c is `sample --cluster c --seed S` image i, whatever the shards."""
    run_dir, _ = tiny_run
    export(capsys, run_dir, tmp_path / "e", "-n", 150, "--seed", 3, "--shard-size", 17, "--mix", "uniform")
    rows = pq.read_table(tmp_path / "e" / "manifest.parquet").to_pylist()
    sampler = ClusterSampler.load(run_dir)
    for path in ("0", "2"):
        own = sorted((r for r in rows if r["cluster"] == path), key=lambda r: r["index"])
        ref = sampler.sample(path, len(own), seed=3)
        got = np.stack([np.asarray(Image.open(tmp_path / "e" / r["file"])) for r in own])
        assert np.array_equal(got, ref.images)
        assert np.array_equal(np.array([r["latent"] for r in own], np.float32), ref.latents)


def test_exact_method_latents_fall_in_their_cluster(tiny_run, tmp_path, capsys):
    run_dir, run = tiny_run
    export(capsys, run_dir, tmp_path / "a", "-n", 24, "--method", "exact", "--shard-size", 5)
    export(capsys, run_dir, tmp_path / "b", "-n", 24, "--method", "exact", "--shard-size", 64)
    assert png_hashes(tmp_path / "a") == png_hashes(tmp_path / "b")
    rows = pq.read_table(tmp_path / "a" / "manifest.parquet").to_pylist()
    G = ClusterSampler.load(run_dir).generator
    for path in {r["cluster"] for r in rows}:
        z = torch.tensor([r["latent"] for r in rows if r["cluster"] == path])
        assert run.tree.membership(G, z, path).all()
    assert len({r["stream_seed"] for r in rows}) == len(rows)  # one stream per image


def test_webdataset_shards_read_back(tiny_run, tmp_path, capsys):
    import webdataset as wds

    run_dir, _ = tiny_run
    export(capsys, run_dir, tmp_path / "png", "-n", 40, "--shard-size", 16)
    export(capsys, run_dir, tmp_path / "wds", "-n", 40, "--shard-size", 16, "--format", "webdataset")
    table = pq.read_table(tmp_path / "wds" / "manifest.parquet")
    assert table.num_rows == 40
    assert table.schema.field("latent").type.list_size == 16
    rows = {r["key"]: r for r in table.to_pylist()}
    tars = sorted(str(p) for p in (tmp_path / "wds" / "shards").glob("*.tar"))
    assert len(tars) == len({r["file"] for r in rows.values()})
    seen = 0
    for sample in wds.WebDataset(tars, shardshuffle=False).decode("rgb8"):
        row = rows[sample["__key__"]]
        meta = sample["json"]
        assert (meta["cluster"], meta["index"]) == (row["cluster"], row["index"])
        assert np.array_equal(sample["latent.npy"], np.array(row["latent"], np.float32))
        assert sample["png"].shape == (64, 64, 3)
        seen += 1
    assert seen == 40
    assert png_hashes(tmp_path / "png") == png_hashes(tmp_path / "wds")


def test_same_command_skips_finished_work_and_another_is_refused(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "e"
    export(capsys, run_dir, out, "-n", 20, "--shard-size", 8)
    before = png_hashes(out)
    stdout, _ = export(capsys, run_dir, out, "-n", 20, "--shard-size", 8)
    assert "wrote 0 images" in stdout and "3 already done" in stdout
    code, _, err = run_cli(capsys, "export", run_dir, "--out", out, "-n", 21, "--shard-size", 8)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--force" in err
    assert png_hashes(out) == before
    export(capsys, run_dir, out, "-n", 21, "--shard-size", 8, "--force")
    assert len(png_hashes(out)) == 21


@pytest.mark.slow
def test_two_worker_processes_give_the_same_bytes(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    export(capsys, run_dir, tmp_path / "one", "-n", 90, "--shard-size", 7, "--method", "imle")
    export(capsys, run_dir, tmp_path / "two", "-n", 90, "--shard-size", 40, "--workers", 2)
    assert png_hashes(tmp_path / "one") == png_hashes(tmp_path / "two")


@pytest.mark.slow
def test_ray_gives_the_same_bytes(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    export(capsys, run_dir, tmp_path / "one", "-n", 60, "--shard-size", 9, "--method", "exact")
    export(
        capsys, run_dir, tmp_path / "ray", "-n", 60, "--shard-size", 25, "--method", "exact",
        "--ray", "auto", "--workers", 2,
    )  # fmt: skip
    assert png_hashes(tmp_path / "one") == png_hashes(tmp_path / "ray")
    import ray

    assert not ray.is_initialized()  # the local instance was shut down


@pytest.mark.slow
def test_resume_after_sigkill(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "e"
    args = [sys.executable, "-m", "clusterguide", "export", str(run_dir), "--out", str(out)]
    args += ["-n", "3000", "--shard-size", "25", "-q"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = out / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len([p for p in shards.iterdir() if not p.name.startswith(".")]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists() and not (out / "manifest.parquet").exists()
    done = [p for p in shards.iterdir() if not p.name.startswith(".")]
    for shard in done:  # every visible shard is whole
        rows = pq.read_table(shard / "manifest.parquet").to_pylist()
        assert len(rows) == 25 and all((out / r["file"]).is_file() for r in rows)
    stdout, _ = export(capsys, run_dir, out, "-n", 3000, "--shard-size", 25)
    assert f"{len(done)} already done" in stdout
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]
    export(capsys, run_dir, tmp_path / "fresh", "-n", 3000, "--shard-size", 25)
    assert png_hashes(out) == png_hashes(tmp_path / "fresh")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--cluster", "7"], "no cluster '7'"),
        (["--cluster", "no such name"], "no cluster 'no such name'"),
        (["--mix", "0:abc"], "not a number"),
        (["--mix", "0"], "not CLUSTER:WEIGHT"),
        (["--mix", "0:-1,1:2"], "≥ 0"),
        (["--mix", "0:0,1:0"], "sum to zero"),
        (["--mix", "0:1", "--cluster", "1"], "not both"),
        (["-n", "0"], "-n must be at least 1"),
        (["--shard-size", "0"], "--shard-size"),
        (["--workers", "0"], "--workers"),
        (["--ray", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(tiny_run, tmp_path, capsys, args, match):
    run_dir, _ = tiny_run
    out = tmp_path / "e"
    full = ["export", run_dir, "--out", out, *args]
    if "-n" not in args:
        full += ["-n", "5"]
    code, _, err = run_cli(capsys, *full)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert not out.exists()


def test_out_that_is_a_file_or_under_a_file(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, match in ((blocker, "is a file"), (blocker / "sub", "not writable")):
        code, _, err = run_cli(capsys, "export", run_dir, "--out", out, "-n", 3)
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_exported_run_folder_is_checked(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tmp_path / "missing", "--out", tmp_path / "e", "-n", 3)
    assert code == 2 and "does not exist" in err and not (tmp_path / "e").exists()


def test_manifest_schema(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    export(capsys, run_dir, tmp_path / "e", "-n", 9, "--seed", 5)
    table = pq.read_table(tmp_path / "e" / "manifest.parquet")
    assert set(table.column_names) >= {"file", "cluster", "cluster_name", "method", "seed", "index", "latent"}
    rows = table.to_pylist()
    assert {r["seed"] for r in rows} == {5} and {r["method"] for r in rows} == {"imle"}
    img = Image.open(io.BytesIO((tmp_path / "e" / rows[0]["file"]).read_bytes()))
    assert img.size == (64, 64)
    info = json.loads((tmp_path / "e" / "dataset.json").read_text())
    run = Run.load(run_dir)
    assert info["generator"]["info"]["weights_id"] == run.generator_info["weights_id"]
    assert info["images"] == 9 and "clusterguide export" in info["command"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "e"
    args = [sys.executable, "-m", "clusterguide", "export", str(run_dir), "--out", str(out)]
    args += ["-n", "3000", "--shard-size", "25", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    # a child inherits an ignored SIGINT (left so by anything earlier in this process, as a
    # background shell job's is): start it with the default, as a terminal would
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    shards = out / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len([p for p in shards.iterdir() if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: clusterguide export" in err and "Traceback" not in err
    assert "Resume with: clusterguide export" in err.strip().splitlines()[-1]  # nothing after the hint
    assert not (out / "dataset.json").exists()
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]  # no staging left behind
    stdout, _ = export(capsys, run_dir, out, "-n", 3000, "--shard-size", 25)
    assert "already done" in stdout and len(png_hashes(out)) == 3000
