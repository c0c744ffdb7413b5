"""Reliability (issue 14): nothing a user points clusterguide at is lost, a killed save is cleaned up
by the next one, and every mistake is one line with exit code 2 -- in the processes that make them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clusterguide import artifacts
from clusterguide.cli import main
from clusterguide.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src")
FIT = ["fit", "--generator", "tiny-dcgan", "--layer", "block1", "--samples", "300", "--epochs", "1", "-q"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *args, match: str) -> str:
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    return lines[0]


def cli_process(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """The real command in its own process (signals and crashes are a process's behaviour)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "clusterguide", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


# ---- 1. --force replaces a run folder and nothing else -------------------------------------------
def test_force_refuses_a_folder_of_other_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "notes.txt").write_text("hi")
    assert_user_error(
        capsys, *FIT, "--clusters", "2", "--out", mine, "--force", match="not a clusterguide run"
    )
    assert (mine / "sub" / "notes.txt").read_text() == "hi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_force_refuses_a_file_and_the_current_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "file.txt").write_text("keep")
    assert_user_error(
        capsys, *FIT, "--clusters", "2", "--out", tmp_path / "file.txt", "--force", match="not a folder"
    )
    assert (tmp_path / "file.txt").read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    assert_user_error(capsys, *FIT, "--clusters", "2", "--out", ".", "--force", match="refusing to replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no .file.txt.old-* either


def test_force_replaces_a_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, *FIT, "--clusters", "2", "--out", run_dir)
    assert code == 0, err
    (run_dir / "overview.png").write_text("made by the user")
    code, _, err = run_cli(capsys, *FIT, "--clusters", "3", "--out", run_dir, "--force")
    assert code == 0, err
    assert artifacts.read_json(run_dir / "config.json")["fit"]["clusters"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_python_save_names_the_python_argument(tiny_run, tmp_path):
    _, run = tiny_run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(UserError, match="overwrite=True") as info:
        run.save(tmp_path / "taken")
    assert "--force" not in str(info.value)
    with pytest.raises(UserError, match="not a clusterguide run folder"):
        run.save(tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "x").read_text() == "x"


# ---- 5. fail fast, clean up after yourself -------------------------------------------------------
def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import clusterguide.fitting

    def no_work(*args, **kwargs):
        raise AssertionError("fit started before --out was checked")

    monkeypatch.setattr(clusterguide.fitting, "fit_run", no_work)
    (tmp_path / "file").write_text("x")
    assert_user_error(
        capsys, *FIT, "--clusters", "2", "--out", tmp_path / "file" / "run", match="not a folder"
    )
    # /sys refuses new folders even to root, where permission bits would say "writable"
    assert_user_error(capsys, *FIT, "--clusters", "2", "--out", "/sys/clusterguide-run", match="not writable")


KILLED_SAVE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import fit_tiny
from clusterguide import artifacts

real = artifacts.write_json

def slow_write(path, data):
    if Path(path).name == "config.json":  # the last file of the folder: the save is almost done
        Path({marker!r}).write_text("saving")
        time.sleep(60)
    return real(path, data)

artifacts.write_json = slow_write
fit_tiny({out!r}, k=2, samples=300, epochs=1)
"""


def test_a_save_killed_midway_is_cleaned_up_by_the_next(tmp_path, tiny_run):
    _, run = tiny_run
    marker = tmp_path / "marker"
    parent = tmp_path / "runs"
    parent.mkdir()
    script = KILLED_SAVE.format(tests=str(Path(__file__).parent), marker=str(marker), out=str(parent / "a"))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the writer ended before its save"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p.name for p in parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".a.tmp-"), left  # what SIGKILL leaves behind
    run.save(parent / "b")
    assert sorted(p.name for p in parent.iterdir()) == ["b"]


def test_a_living_writers_stage_is_left_alone(tmp_path, tiny_run):
    _, run = tiny_run
    busy = artifacts._leftover_name(tmp_path / "a", "tmp")  # this process: alive
    busy.mkdir()
    run.save(tmp_path / "b")
    assert busy.is_dir()


def test_a_replaced_folder_whose_target_vanished_is_moved_back(tmp_path):
    target = tmp_path / "run"
    old = artifacts._leftover_name(target, "old")
    old.mkdir()
    (old / "config.json").write_text("{}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = old.with_name(old.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    old.rename(stale)
    artifacts.remove_stale_stages(tmp_path)
    assert (target / "config.json").is_file() and not stale.exists()


# ---- 7. files respect the umask ------------------------------------------------------------------
def test_files_and_folders_follow_the_umask(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    old = os.umask(0o022)
    try:
        run.save(tmp_path / "shared")
        artifacts.write_json(tmp_path / "x.json", {"a": 1})
        code, _, err = run_cli(
            capsys, "grid", tmp_path / "shared", "--out", tmp_path / "g.png", "--per-cluster", "1"
        )
        assert code == 0, err
    finally:
        os.umask(old)
    for path in [*(tmp_path / "shared").iterdir(), tmp_path / "x.json", tmp_path / "g.png"]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755


# ---- 2. every number is checked where it enters --------------------------------------------------
def test_pool_zero_is_one_line_not_a_crash_in_faiss(tmp_path):
    # before: SIGFPE inside FAISS (exit 136, no message) -- only a real process shows that
    done = cli_process(*FIT, "--clusters", "2", "--pool", "0", "--out", tmp_path / "run")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().splitlines() == ["error: --pool must be at least 1 (got 0)"]
    assert list(tmp_path.iterdir()) == []


def test_pool_larger_than_the_maps_is_refused(tmp_path, capsys):
    # tiny-dcgan's block1 maps are 4x4: a larger --pool used to be ignored without a word
    assert_user_error(capsys, *FIT, "--clusters", "2", "--pool", "64", "--out", tmp_path / "r", match="4x4")


@pytest.mark.parametrize(
    "args, match",
    [
        ([*FIT, "--clusters", "2", "--pool", "-1"], "--pool must be at least 1 (got -1)"),
        ([*FIT, "--clusters", "2", "--epochs", "0"], "--epochs must be at least 1"),
        ([*FIT, "--clusters", "2", "--samples", str(10**12)], "--samples must be at most"),
        ([*FIT, "--clusters", "2", "--class", "-1"], "--class must be at least 0"),
        ([*FIT, "--clusters", "2", "--truncation", "nan"], "--truncation must be a finite number"),
        ([*FIT, "--clusters", "2", "--seed", str(2**70)], "--seed must be at most 9223372036854775807"),
        ([*FIT, "--clusters", "2", "--seed", "-1"], "--seed must be at least 0"),
        ([*FIT, "--clusters", "2", "--device", "tpu"], "--device must be cpu, cuda, cuda:N or mps"),
        ([*FIT, "--clusters", "2", "--device", "cpu:1"], "--device must be cpu, cuda, cuda:N or mps"),
        ([*FIT, "--clusters", "2", "--device", "mps"], "--device mps: no Apple GPU"),  # was a RuntimeError
        (
            ["choose-k", "--generator", "tiny-dcgan", "--layer", "block1", "--k-range", "2..99999999999999"],
            "--k-range",
        ),
        (["choose-k", "--generator", "tiny-dcgan", "--layer", "block1", "--pool", "0"], "--pool must be"),
        (
            [
                "choose-k",
                "--generator",
                "tiny-dcgan",
                "--layer",
                "block1",
                "--silhouette-samples",
                "10000000",
            ],
            "--silhouette-samples must be at most",
        ),
    ],
)
def test_bad_numbers_before_any_work(tmp_path, capsys, args, match):
    assert_user_error(
        capsys, *args, "--out", tmp_path / "out.png" if "choose-k" in args else tmp_path / "r", match=match
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ["sample", "{run}", "--cluster", "0", "--seed", str(2**64 - 1), "--out", "{tmp}/x"],
            "--seed must be at most",
        ),
        (
            ["sample", "{run}", "--cluster", "0", "--batch-size", "0", "--out", "{tmp}/x"],
            "--batch-size must be at least 1",
        ),
        (["sample", "{run}", "--cluster", "0", "-n", str(10**9), "--out", "{tmp}/x"], "-n must be at most"),
        (["grid", "{run}", "--per-cluster", "0", "--out", "{tmp}/g.png"], "--per-cluster must be at least 1"),
        (["grid", "{run}", "--seed", "-5", "--out", "{tmp}/g.png"], "--seed must be at least 0"),
        (
            ["refine", "{run}", "--cluster", "0", "--layer", "block2", "--clusters", "2", "--max-draws", "0"],
            "--max-draws must be at least 1",
        ),
        (
            [
                "refine",
                "{run}",
                "--cluster",
                "0",
                "--layer",
                "block2",
                "--clusters",
                "2",
                "--seed",
                str(2**63),
            ],
            "--seed must be at most",
        ),
        (
            ["evaluate", "{run}", "--probe", "image", "--steps", "2,nan"],
            "--steps takes 1 to 100 finite numbers",
        ),
        (["evaluate", "{run}", "--probe", "image", "--components", "0"], "--components must be at least 1"),
        (
            ["report", "{run}", "--probe", "image", "--per-row", "0", "--out", "{tmp}/r.html"],
            "--per-row must be at least 1",
        ),
        (["serve", "{run}", "--port", "70000"], "70000"),
    ],
)
def test_bad_numbers_of_run_commands(tiny_run, tmp_path, capsys, args, match):
    run_dir, _ = tiny_run
    before = sorted(p.name for p in run_dir.iterdir())
    filled = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    assert_user_error(capsys, *filled, match=match)
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in run_dir.iterdir()) == before


# ---- 6. one seed range for the CLI, the API and the gallery --------------------------------------
def test_layers_checks_its_numbers(capsys):
    assert_user_error(capsys, "layers", "--generator", "tiny-dcgan", "--truncation", "inf", match="finite")


def test_seeds_outside_the_range_are_refused_not_aliased(tiny_run):
    import clusterguide as cg
    from clusterguide.sampler import ClusterSampler
    from clusterguide.seeding import MAX_SEED
    from clusterguide.web.server import MAX_SEED as GALLERY_MAX_SEED

    assert GALLERY_MAX_SEED == MAX_SEED == 2**63 - 1
    run_dir, _ = tiny_run
    sampler = ClusterSampler.load(run_dir)
    for seed in (-1, 2**64 - 1, 2**70, 1.5, True):
        with pytest.raises(UserError, match="seed must be"):
            sampler.sample("0", n=1, seed=seed)
    with pytest.raises(UserError, match="seed must be"):
        cg.fit("tiny-dcgan", layer="block1", clusters=2, samples=100, seed=2**64, verbose=False)
    assert sampler.sample("0", n=1, seed=MAX_SEED).images.shape[0] == 1


# ---- 3. run files are checked field by field on load ---------------------------------------------
def _copy_run(tiny_run, tmp_path) -> Path:
    import shutil

    run_dir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _edit_config(run_dir: Path, edit) -> None:
    config = artifacts.read_json(run_dir / "config.json")
    edit(config)
    (run_dir / "config.json").write_text(__import__("json").dumps(config))


@pytest.mark.parametrize(
    "file, content, match",
    [
        ("names.json", "[]", "names.json must be a JSON object (got a list)"),
        ("names.json", '{"0": 5}', "names.json: name of cluster 0 must be a string"),
        ("names.json", '{"0": "a\\nb"}', "control characters"),
        ("names.json", '{"../x": "a"}', "not a cluster path"),
        ("metrics.json", "[]", "metrics.json must be a JSON object"),
        ("metrics.json", '{"clusters": {}}', "metrics.json: clusters must be a JSON list"),
        ("metrics.json", '{"clusters": [{"fidelity": 1}]}', "clusters.0.id"),
    ],
)
def test_wrong_shaped_side_files_are_one_line(tiny_run, tmp_path, capsys, file, content, match):
    copy = _copy_run(tiny_run, tmp_path)
    (copy / file).write_text(content)
    line = assert_user_error(capsys, "info", copy, match=match)
    assert str(copy) in line
    assert_user_error(
        capsys, "sample", copy, "--cluster", "0", "-n", "1", "--out", tmp_path / "s", match=match
    )
    assert_user_error(capsys, "grid", copy, "--out", tmp_path / "g.png", match=match)
    assert_user_error(capsys, "serve", copy, "--port", "0", match=match)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["tree"].__setitem__("splits", []), "config.json: tree.splits must be a JSON object"),
        (lambda c: c["tree"]["stats"].pop("1"), "config.json: tree.stats.1 must be a JSON object"),
        (
            lambda c: c["mappings"]["0"].__setitem__("width", 10**12),
            "config.json: mappings.0.width must be at most",
        ),
        (
            lambda c: c["mappings"]["0"].__setitem__("width", 32),
            "fc1.weight is 64x16, config.json says 32x16",
        ),
        (
            lambda c: c["fit"].__setitem__("samples", "many"),
            "config.json: fit.samples must be a whole number",
        ),
        (
            lambda c: c["mapping"].__setitem__("residual", "yes"),
            "config.json: mapping.residual must be true or false",
        ),
        (lambda c: c.__setitem__("history", [{"event": "refine"}]), "config.json: history.0.cluster"),
        (lambda c: c.__setitem__("generator", None), "config.json: generator must be a JSON object"),
        (lambda c: c["tree"]["splits"].__setitem__("7", c["tree"]["splits"][""]), "not a child of any split"),
    ],
)
def test_wrong_shaped_config_is_one_line(tiny_run, tmp_path, capsys, edit, match):
    copy = _copy_run(tiny_run, tmp_path)
    _edit_config(copy, edit)
    assert_user_error(capsys, "info", copy, match=match)


def test_a_config_from_a_newer_version_says_so(tiny_run, tmp_path, capsys):
    import clusterguide

    copy = _copy_run(tiny_run, tmp_path)

    def newer(config):
        config["version"] = "99.0.0"
        config["fit"]["shiny_new_option"] = 1

    _edit_config(copy, newer)
    line = assert_user_error(capsys, "info", copy, match="written by clusterguide 99.0.0")
    assert f"this is {clusterguide.__version__}" in line and "damaged" not in line
    _edit_config(copy, lambda c: c.__setitem__("version", clusterguide.__version__))
    assert "damaged" in assert_user_error(capsys, "info", copy, match="shiny_new_option")


# ---- 8. names without control characters ---------------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["two\nlines", "tab\there", "\x1b[31mred", "bell\x07", "c1\x9bcode", "nul\x00"]
)
def test_control_characters_in_names_are_refused(tiny_run, tmp_path, capsys, bad):
    copy = _copy_run(tiny_run, tmp_path)
    assert_user_error(capsys, "name", copy, "0", bad, match="control characters")
    assert artifacts.read_json(copy / "names.json") == {}
    code, _, _ = run_cli(capsys, "name", copy, "0", "plain name")
    assert code == 0 and artifacts.read_json(copy / "names.json") == {"0": "plain name"}


# ---- progress without a terminal -------------------------------------------------------------------
def test_stages_report_start_and_end_when_stderr_is_not_a_terminal(tmp_path):
    env_free = {k: v for k, v in os.environ.items() if k != "CLUSTERGUIDE_PROGRESS"}
    run_dir = tmp_path / "run"
    fit = [a for a in FIT if a != "-q"]
    env = {**env_free, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "clusterguide", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    done = cli(*fit, "--clusters", "2", "--out", run_dir)
    lines = done.stderr.splitlines()
    assert "features @ block1: started (1 batch)" in lines, done.stderr
    assert any(line.startswith("features @ block1: done in ") for line in lines), done.stderr
    assert "s (features " in done.stdout and "evaluation and the rest" in done.stdout  # the time's split
    sample = cli("sample", run_dir, "--cluster", "0", "-n", "1000", "--out", tmp_path / "s")
    assert "images: started (16 batch)" in sample.stderr and "images: done in" in sample.stderr
    quiet = cli("sample", run_dir, "--cluster", "0", "-n", "1000", "-q", "--out", tmp_path / "q")
    assert quiet.stderr == ""


def test_outputs_in_unwritable_folders_are_refused_before_any_work(tiny_run, capsys):
    run_dir, _ = tiny_run
    assert_user_error(capsys, "grid", run_dir, "--out", "/sys/g.png", match="not writable")
    assert_user_error(capsys, "sample", run_dir, "--cluster", "0", "--out", "/proc/s", match="not writable")


def test_tensors_a_newer_version_changed_are_blamed_on_the_version(tiny_run, tmp_path, capsys):
    copy = _copy_run(tiny_run, tmp_path)
    (copy / "clusters.safetensors").write_bytes(b"a format of the future")
    _edit_config(copy, lambda c: c.__setitem__("version", "7.0"))
    assert_user_error(capsys, "info", copy, match="written by clusterguide 7.0")


def test_unreadable_side_files_name_their_path_once(tiny_run, tmp_path, capsys):
    copy = _copy_run(tiny_run, tmp_path)
    (copy / "names.json").write_text("{not json")
    line = assert_user_error(capsys, "info", copy, match="names.json is damaged")
    assert line.count(str(copy)) == 1, line
