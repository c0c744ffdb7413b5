"""``--checkpoint hf:OWNER/REPO/FILE[@REVISION]`` through huggingface_hub, with no network: a cache
written in the library's layout (offline, ``HF_HUB_OFFLINE=1``) and a local server that answers as
the Hub does (``HF_ENDPOINT``). Failures are one line and leave nothing in the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hf_cache import FakeHub, add_to_hf_cache

from clusterguide.cli import main
from clusterguide.errors import UserError
from clusterguide.generators import hub, load_generator

REF = Path(__file__).parent / "fixtures" / "reference"
COMMIT = "c" * 40


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    set_offline(monkeypatch, True)
    return home


def set_offline(monkeypatch, offline: bool) -> None:
    """HF_HUB_OFFLINE as if the process had started with it (huggingface_hub reads it on import)."""
    import huggingface_hub.constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def same_images(a, b, latent_dim: int) -> None:
    z = torch.randn(2, latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.synthesize(z), b.synthesize(z))


def assert_one_line_error(capsys, *args, match: str) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0], (code, out, err)
    return lines[0]


def test_parse():
    assert hub.parse("hf:me/gans/ckpt/g.pt@v1") == hub.HubFile("me/gans", "ckpt/g.pt", "v1")
    assert hub.parse("hf:me/gans/g.pt") == hub.HubFile("me/gans", "g.pt", None)
    assert hub.parse("hf:me/gans").filename == ""
    assert str(hub.parse("hf:me/gans/ckpt/g.pt@v1")) == "hf:me/gans/ckpt/g.pt@v1"
    for bad in ("hf:me", "hf:me//g.pt", "hf:me/gans/g.pt@", "hf:-x/gans/g.pt"):
        with pytest.raises(UserError):
            hub.parse(bad)


def test_every_family_loads_from_a_cache_offline(hf_home):
    cache = hf_home / "hub"
    add_to_hf_cache(cache, "me/pgan", {"pgan.pth": (REF / "pgan" / "pgan.pth").read_bytes()}, COMMIT)
    add_to_hf_cache(cache, "me/sg2", {"ckpt/550000.pt": (REF / "rosinality" / "rosinality.pt").read_bytes()})
    add_to_hf_cache(
        cache, "me/biggan", {f"tiny/{k}": v for k, v in files(REF / "biggan-deep" / "biggan").items()}
    )
    same_images(
        load_generator("pgan", "hf:me/pgan/pgan.pth"),
        load_generator("pgan", str(REF / "pgan" / "pgan.pth")),
        32,
    )
    assert load_generator("pgan", f"hf:me/pgan/pgan.pth@{COMMIT}").weights_id  # a pinned commit
    same_images(
        load_generator("stylegan2", "hf:me/sg2/ckpt/550000.pt", truncation=0.5),
        load_generator("stylegan2", str(REF / "rosinality" / "rosinality.pt"), truncation=0.5),
        32,
    )
    local = load_generator("biggan", str(REF / "biggan-deep" / "biggan")).conditioned(3)
    for name in ("tiny/pytorch_model.bin", "tiny/config.json"):  # either file names the folder
        same_images(load_generator("biggan", f"hf:me/biggan/{name}").conditioned(3), local, 16)
    # weights are identified by content, wherever they came from
    assert (
        load_generator("pgan", "hf:me/pgan/pgan.pth").weights_id
        == load_generator("pgan", str(REF / "pgan" / "pgan.pth")).weights_id
    )


def test_offline_and_not_cached_is_one_line_and_leaves_nothing(hf_home, capsys):
    line = assert_one_line_error(
        capsys,
        "layers",
        "--generator",
        "pgan",
        "--checkpoint",
        "hf:me/nothing/g.pth",
        match="is not in the Hugging Face cache",
    )
    assert "HF_HUB_OFFLINE" in line
    assert not hf_home.exists()  # no empty folders left behind
    add_to_hf_cache(hf_home / "hub", "me/pgan", {"pgan.pth": (REF / "pgan" / "pgan.pth").read_bytes()})
    before = sorted(p.relative_to(hf_home) for p in hf_home.rglob("*"))
    assert_one_line_error(
        capsys, "layers", "--generator", "pgan", "--checkpoint", "hf:me/pgan/other.pth", match="not in"
    )
    assert_one_line_error(
        capsys, "layers", "--generator", "pgan", "--checkpoint", "hf:me/pgan/pgan.pth@v9", match="not in"
    )
    assert sorted(p.relative_to(hf_home) for p in hf_home.rglob("*")) == before


def test_a_damaged_cached_file_is_caught_by_its_content_address(hf_home, capsys):
    snapshot = add_to_hf_cache(
        hf_home / "hub", "me/pgan", {"pgan.pth": (REF / "pgan" / "pgan.pth").read_bytes()}
    )
    blob = (snapshot / "pgan.pth").resolve()
    blob.write_bytes(blob.read_bytes()[:-10])
    assert_one_line_error(
        capsys,
        "layers",
        "--generator",
        "pgan",
        "--checkpoint",
        "hf:me/pgan/pgan.pth",
        match="cache is damaged",
    )


def test_download_through_the_library_from_a_hub_like_server(hf_home, monkeypatch, capsys):
    set_offline(monkeypatch, False)
    rosinality = (REF / "rosinality" / "rosinality.pt").read_bytes()
    with FakeHub({"me/sg2": {"ckpt/g.pt": rosinality}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        G = load_generator("stylegan2", "hf:me/sg2/ckpt/g.pt")
        assert ("GET", "/me/sg2/resolve/main/ckpt/g.pt") in server.requests
        cached = list((hf_home / "hub" / "models--me--sg2" / "snapshots").glob("*/ckpt/g.pt"))
        assert len(cached) == 1 and cached[0].read_bytes() == rosinality
        same_images(G, load_generator("stylegan2", str(REF / "rosinality" / "rosinality.pt")), 32)
        for spec, match in [
            ("hf:nobody/there/g.pt", "no such Hugging Face repository"),
            ("hf:me/sg2/ckpt/missing.pt", "no such file in the repository"),
            ("hf:me/sg2/ckpt/g.pt@v9", "no such revision"),
        ]:
            assert_one_line_error(
                capsys, "layers", "--generator", "stylegan2", "--checkpoint", spec, match=match
            )
        assert not (hf_home / "hub" / "models--nobody--there").exists()
        assert not (hf_home / "hub" / ".locks" / "models--nobody--there").exists()
    # later runs work offline from the cache
    set_offline(monkeypatch, True)
    same_images(load_generator("stylegan2", "hf:me/sg2/ckpt/g.pt"), G, 32)


def test_unknown_repository_on_a_fresh_cache_leaves_no_cache(hf_home, monkeypatch, capsys):
    set_offline(monkeypatch, False)
    with FakeHub({}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert_one_line_error(
            capsys,
            "layers",
            "--generator",
            "biggan",
            "--checkpoint",
            "hf:nobody/there",
            match="no such Hugging Face",
        )
    assert not hf_home.exists()


def test_nvidia_pickle_from_the_hub_is_converted_once(hf_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLUSTERGUIDE_CACHE", str(tmp_path / "cg"))
    pkl = (REF / "stylegan2-ada" / "network-snapshot.pkl").read_bytes()
    add_to_hf_cache(hf_home / "hub", "me/nv", {"network-snapshot.pkl": pkl})
    spec = "hf:me/nv/network-snapshot.pkl"
    assert_one_line_error(
        capsys, "layers", "--generator", "stylegan2", "--checkpoint", spec, match="not converted yet"
    )
    assert_one_line_error(capsys, "convert", "stylegan2", spec, match="--trust-pickle")
    assert main(["convert", "stylegan2", spec, "--trust-pickle"]) == 0
    assert f"--checkpoint {spec}" in capsys.readouterr().out
    ref = np.load(REF / "stylegan2-ada" / "reference.npz")
    G = load_generator("stylegan2", spec)
    with torch.no_grad():
        images = G.synthesize(torch.from_numpy(ref["z"])).numpy()
    assert np.abs(images - np.clip(ref["images"], -1, 1)).max() <= 1e-5
