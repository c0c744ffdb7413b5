"""Choosing k: the three criteria on data with a known number of clusters, their pieces against
direct reference computations, the plot, and the command with its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clusterguide import choose_k as ck
from clusterguide.cli import main
from clusterguide.errors import UserError


def blobs(k: int, dim: int, seed: int, per: int = 200, spread: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (k, dim))
    return np.concatenate([c + rng.normal(0, 1, (per, dim)) for c in centers]).astype(np.float32)


@pytest.mark.parametrize(
    ("true_k", "dim", "seed"), [(5, 10, 0), (5, 10, 1), (5, 32, 2), (3, 64, 3), (8, 16, 4)]
)
def test_recovers_a_known_number_of_clusters(true_k, dim, seed):
    scan = ck.scan_k(
        blobs(true_k, dim, seed), list(range(2, 13)), seed=seed, silhouette_samples=800, eigengap_samples=400
    )
    assert scan.k == true_k, (scan.picks, scan.reason)
    assert scan.picks["eigengap"] == true_k
    assert "silhouette at k=" in scan.reason  # a strong structure: no warning
    assert len(scan.inertia) == len(scan.silhouette) == len(scan.eigengap) == 11
    assert all(a >= b * 0.999 for a, b in zip(scan.inertia, scan.inertia[1:]))  # k-means++ keeps it monotone


def test_no_structure_says_so():
    x = np.random.default_rng(0).normal(size=(1000, 20)).astype(np.float32)
    scan = ck.scan_k(x, [2, 3, 4, 5, 6], silhouette_samples=500, eigengap_samples=300)
    assert max(scan.silhouette) < ck.WEAK_SILHOUETTE
    assert "no strong cluster structure" in scan.reason


def test_elbow_rule():
    ks = list(range(2, 10))
    assert ck.elbow_k(ks, [100, 60, 30, 5, 4, 3, 2, 1]) == 5
    assert ck.elbow_k(ks, [8, 7, 6, 5, 4, 3, 2, 1]) is None  # a straight line has no elbow
    assert ck.elbow_k(ks, [1] * 8) is None


def test_silhouette_matches_the_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    labels = rng.integers(0, 4, 40)
    labels[7] = 9  # a cluster of one scores 0
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    ref = []
    for i in range(40):
        own = labels == labels[i]
        if own.sum() == 1:
            ref.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        ref.append((b - a) / max(a, b))
    assert ck.silhouette_score(ck.pairwise_distances(x), labels) == pytest.approx(np.mean(ref), abs=1e-5)
    np.testing.assert_allclose(ck.pairwise_distances(x), d, atol=1e-4)


def test_laplacian_has_one_zero_eigenvalue_per_separate_group():
    x = blobs(4, 5, 7, per=60, spread=30.0)
    values = ck.laplacian_spectrum(ck.pairwise_distances(x), 8)
    assert values[:4].max() < 1e-3 < 0.05 < values[4]
    assert ck.eigengap_k([2, 3, 4, 5, 6, 7], values)[0] == 4


def test_recommend_explains_itself():
    ks = [2, 3, 4, 5]
    k, reason, picks = ck.recommend(ks, [10, 9, 8, 7], [0.5, 0.6, 0.4, 0.3], [0.1, 0.0, 0.2, 0.0])
    assert picks == {"elbow": None, "silhouette": 3, "eigengap": 4}
    assert k == 3 and reason.startswith("the criteria disagree (elbow none, silhouette 3, eigengap 4)")
    k, reason, _ = ck.recommend(ks, [10, 2, 1.5, 1], [0.5, 0.6, 0.4, 0.3], [0.1, 0.0, 0.2, 0.0])
    assert k == 3 and reason.startswith("elbow and silhouette pick k=3 (eigengap 4)")


@pytest.mark.parametrize(
    ("text", "ks"),
    [("2..5", [2, 3, 4, 5]), ("3-6", [3, 4, 5, 6]), ("8,2,4", [2, 4, 8]), (" 2 .. 4 ", [2, 3, 4])],
)
def test_parse_k_range(text, ks):
    assert ck.parse_k_range(text) == ks


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("12..2", "below the start"),
        ("1..5", "at least 2"),
        ("2..3", "at least 3 values"),
        ("two..9", "must look like"),
    ],
)
def test_parse_k_range_errors(text, match):
    with pytest.raises(UserError, match=match):
        ck.parse_k_range(text)


def test_plot(tmp_path):
    scan = ck.scan_k(blobs(3, 4, 0, per=50), [2, 3, 4, 5], silhouette_samples=150, eigengap_samples=100)
    image = ck.plot_scan(scan, "three blobs")
    assert image.mode == "RGB" and image.width == 3 * 330 + 32 and image.height > 250
    # the recommended k is marked with a red dashed line in every panel
    red = np.all(np.asarray(image) == (200, 30, 30), axis=-1)
    assert red.sum() > 100


def test_choose_k_command(tmp_path, capsys):
    out = tmp_path / "k.png"
    code = main(
        [
            "choose-k",
            "--generator",
            "tiny-dcgan",
            "--layer",
            "block1",
            "--k-range",
            "2..5",
            "--samples",
            "300",
            "--silhouette-samples",
            "200",
            "--eigengap-samples",
            "100",
            "--out",
            str(out),
            "-q",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "recommended k = " in text and f"wrote {out}" in text
    assert len([line for line in text.splitlines() if line.split() and line.split()[0] in "2345"]) == 4
    with Image.open(out) as image:
        assert image.size[0] == 3 * 330 + 32


def test_choose_k_inside_a_cluster_of_a_run(tiny_run, tmp_path, capsys):
    run_dir = tiny_run[0]
    code = main(
        [
            "choose-k",
            "--run",
            str(run_dir),
            "--cluster",
            "1",
            "--layer",
            "block2",
            "--k-range",
            "2..4",
            "--samples",
            "120",
            "--silhouette-samples",
            "100",
            "--eigengap-samples",
            "60",
            "--out",
            str(tmp_path / "k.png"),
            "-q",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "recommended k = " in text
    assert (tmp_path / "k.png").is_file()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--layer", "block1", "--k-range", "2..", "--out", "k.png"], "must look like 2..12"),
        (["--layer", "block1", "--out", "k.jpg"], "must end in .png"),
        (["--layer", "block9", "--out", "k.png"], "unknown layer 'block9'"),
        (["--layer", "block1", "--samples", "10", "--out", "k.png"], "must be larger than the largest k"),
        (
            ["--layer", "block1", "--eigengap-samples", "5", "--out", "k.png"],
            "--eigengap-samples 5 must be larger",
        ),
        (["--layer", "block1", "--run", "somewhere", "--out", "k.png"], "--run and --cluster go together"),
        (
            ["--layer", "block1", "--run", "r", "--cluster", "0", "--generator", "x", "--out", "k.png"],
            "drop --generator",
        ),
        (["--out", "k.png"], "Missing option '--layer'"),
    ],
)
def test_choose_k_errors_are_one_line(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code = main(
        ["choose-k", "--generator", "tiny-dcgan", *args, "-q"]
        if "--generator" not in args
        else ["choose-k", *args, "-q"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "k.png").exists()


def test_choose_k_scans_the_latents_refine_would_split(tiny_run, monkeypatch):
    """choose-k --run and refine draw from one stream, derived by one function."""
    import clusterguide.refine
    from clusterguide.refine import refine_run
    from clusterguide.seeding import refinement_stream

    run_dir = tiny_run[0]
    streams = []

    class Stop(Exception):
        pass

    def record(G, tree, path, n, seed, **kwargs):
        streams.append((path, n, seed))
        raise Stop

    monkeypatch.setattr(clusterguide.refine, "collect_latents", record)
    with pytest.raises(Stop):
        ck.choose_k("block2", [2, 3, 4], run_dir=run_dir, cluster="1", samples=120, seed=7)
    with pytest.raises(Stop):
        refine_run(run_dir, "1", "block2", 2, samples=120, seed=7)
    assert streams[0] == streams[1] == ("1", 120, refinement_stream(7, "1"))
    assert refinement_stream(7, "1") != refinement_stream(7, "2") != refinement_stream(8, "1")


def test_choose_k_is_one_library_call(tmp_path):
    found = ck.choose_k(
        "block1",
        [2, 3, 4],
        generator=__import__("clusterguide").GeneratorSpec("tiny-dcgan"),
        samples=200,
        silhouette_samples=150,
        eigengap_samples=80,
    )
    assert found.scan.ks == [2, 3, 4] and found.scan.k in (2, 3, 4) and found.seed == 0
    assert found.title.startswith("choosing k: tiny-dcgan @ block1, 200 samples")
