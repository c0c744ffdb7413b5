"""Published checkpoints by name: where they live, how to check them, and a cached download.

Each family lists the checkpoints its authors publish (``PUBLISHED``). ``fetch`` downloads one into
``$CLUSTERGUIDE_CACHE`` (default ``~/.cache/clusterguide``) under ``<family>/``, with a progress
bar, to a temporary name that is moved into place only once its checksum is verified. Without a
connection it fails at once with one line that says what to download by hand.

Checksums: where the publisher pins one (the PGAN hub files carry the first digits of their sha256
in their names, the torch.hub convention) it is checked on every download. Where nothing is pinned
the sha256 of the first download is recorded beside the file and every later use is checked
against it, so a truncated or replaced file is caught.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clusterguide.errors import UserError
from clusterguide.generators.checkpoints import read_recorded_sha256, record_sha256, sha256_file

TIMEOUT_S = 15.0  # per connection attempt and per read; failures without a network are immediate
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Published:
    """One downloadable file of a published checkpoint."""

    family: str  # registry name of the generator family
    name: str  # what users type after --checkpoint
    url: str
    filename: str  # name in the cache folder
    sha256: str | None = None  # full pinned digest, when the publisher gives one
    sha256_prefix: str | None = None  # pinned leading digits (torch.hub file-name convention)
    description: str = ""


def _pgan(name: str, file: str, description: str) -> Published:
    # torch.hub names files <stem>-<first digits of sha256>.pth
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return Published(
        "pgan", name, f"https://dl.fbaipublicfiles.com/gan_zoo/PGAN/{file}", file, None, prefix, description
    )


_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files"
_NGC3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files"
_HF_BIGGAN = "https://s3.amazonaws.com/models.huggingface.co/biggan"

PUBLISHED: dict[str, dict[str, Published]] = {
    "pgan": {
        p.name: p
        for p in [
            _pgan("celebAHQ-256", "celebaHQ_s6_i80000-6196db68.pth", "CelebA-HQ faces, 256x256"),
            _pgan("celebAHQ-512", "celebaHQ16_december_s7_i96000-9c72988c.pth", "CelebA-HQ faces, 512x512"),
            _pgan("DTD", "testDTD_s5_i96000-04efa39f.pth", "Describable Textures, 128x128"),
            _pgan("celeba", "celebaCropped_s5_i83000-2b0acc76.pth", "CelebA cropped faces, 128x128"),
        ]
    },
    # NVIDIA publishes pickles (StyleGAN2 and StyleGAN3 alike, served by the stylegan2 family): they
    # are downloaded here, then converted once by `clusterguide convert stylegan2 NAME --trust-pickle`.
    "stylegan2": {
        p.name: p
        for p in [
            Published(
                "stylegan2", "ffhq", f"{_ADA}/ffhq.pkl", "ffhq.pkl", description="FFHQ faces, 1024x1024"
            ),
            Published(
                "stylegan2",
                "metfaces",
                f"{_ADA}/metfaces.pkl",
                "metfaces.pkl",
                description="MetFaces portraits, 1024x1024",
            ),
            Published(
                "stylegan2", "afhqcat", f"{_ADA}/afhqcat.pkl", "afhqcat.pkl", description="AFHQ cats, 512x512"
            ),
            Published(
                "stylegan2", "afhqdog", f"{_ADA}/afhqdog.pkl", "afhqdog.pkl", description="AFHQ dogs, 512x512"
            ),
            Published(
                "stylegan2",
                "afhqwild",
                f"{_ADA}/afhqwild.pkl",
                "afhqwild.pkl",
                description="AFHQ wild animals, 512x512",
            ),
            Published(
                "stylegan2",
                "brecahad",
                f"{_ADA}/brecahad.pkl",
                "brecahad.pkl",
                description="BreCaHAD histology, 512x512",
            ),
            Published(
                "stylegan2",
                "cifar10",
                f"{_ADA}/cifar10.pkl",
                "cifar10.pkl",
                description="CIFAR-10, 32x32, class-conditional",
            ),
        ]
        + [
            Published(
                "stylegan2",
                stem,
                f"{_NGC}/{stem}.pkl",
                f"{stem}.pkl",
                description=f"{stem.split('-')[1]} at {stem.rsplit('-', 1)[1]} (stylegan3 repository)",
            )
            for stem in (
                "stylegan2-ffhq-1024x1024",
                "stylegan2-ffhq-512x512",
                "stylegan2-ffhq-256x256",
                "stylegan2-ffhqu-1024x1024",
                "stylegan2-ffhqu-256x256",
                "stylegan2-metfaces-1024x1024",
                "stylegan2-metfacesu-1024x1024",
                "stylegan2-afhqv2-512x512",
                "stylegan2-afhqcat-512x512",
                "stylegan2-afhqdog-512x512",
                "stylegan2-afhqwild-512x512",
                "stylegan2-brecahad-512x512",
                "stylegan2-cifar10-32x32",
                "stylegan2-celebahq-256x256",
                "stylegan2-lsundog-256x256",
            )
        ]
        + [
            Published(
                "stylegan2",
                stem,
                f"{_NGC3}/{stem}.pkl",
                f"{stem}.pkl",
                description=f"StyleGAN3-{stem[10].upper()} {stem.split('-')[2]} at {stem.rsplit('-', 1)[1]}",
            )
            for config in ("t", "r")
            for stem in (
                f"stylegan3-{config}-ffhq-1024x1024",
                f"stylegan3-{config}-ffhqu-1024x1024",
                f"stylegan3-{config}-ffhqu-256x256",
                f"stylegan3-{config}-metfaces-1024x1024",
                f"stylegan3-{config}-metfacesu-1024x1024",
                f"stylegan3-{config}-afhqv2-512x512",
            )
        ]
    },
    # BigGAN-deep comes as two files per size; the config is fetched under "<name>:config".
    "biggan": {
        key: entry
        for size in (128, 256, 512)
        for key, entry in [
            (
                f"biggan-deep-{size}",
                Published(
                    "biggan",
                    f"biggan-deep-{size}",
                    f"{_HF_BIGGAN}/biggan-deep-{size}-pytorch_model.bin",
                    f"biggan-deep-{size}/pytorch_model.bin",
                    description=f"BigGAN-deep ImageNet {size}x{size}",
                ),
            ),
            (
                f"biggan-deep-{size}:config",
                Published(
                    "biggan",
                    f"biggan-deep-{size}",
                    f"{_HF_BIGGAN}/biggan-deep-{size}-config.json",
                    f"biggan-deep-{size}/config.json",
                ),
            ),
        ]
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("CLUSTERGUIDE_CACHE") or Path.home() / ".cache" / "clusterguide")


def published(family: str) -> dict[str, Published]:
    """Checkpoints users can name (internal entries such as ``...:config`` left out)."""
    return {k: v for k, v in PUBLISHED.get(family, {}).items() if ":" not in k}


def lookup(family: str, name: str) -> Published | None:
    return PUBLISHED.get(family, {}).get(name)


def cached_path(entry: Published, root: Path | None = None) -> Path:
    return (root or cache_dir()) / entry.family / entry.filename


def fetch(entry: Published, root: Path | None = None, timeout: float = TIMEOUT_S) -> Path:
    """The local path of ``entry``, downloading and verifying it first if needed."""
    path = cached_path(entry, root)
    if path.is_file():
        digest = sha256_file(path)
        recorded = read_recorded_sha256(path)
        _verify(entry, str(path), digest, recorded)
        if recorded is None and entry.sha256 is None:
            record_sha256(path, digest)  # a file copied in by hand: trust it from now on
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the download cache {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        digest = _download(entry, tmp, timeout, path)
        _verify(entry, f"the download of {entry.url}", digest, None)
        if entry.sha256 is None:
            record_sha256(path, digest)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_MANUAL = {
    "pgan": "download it on a machine with internet and pass the .pth file with --checkpoint",
    "stylegan2": "download it on a machine with internet, then run "
    "`clusterguide convert stylegan2 FILE.pkl --trust-pickle --out DIR` and pass DIR with --checkpoint",
    "biggan": "download pytorch_model.bin and config.json on a machine with internet into one folder "
    "and pass the folder with --checkpoint",
}


def _download(entry: Published, dest: Path, timeout: float, final: Path) -> str:
    import hashlib

    from clusterguide.progress import bar

    hint = f"{_MANUAL.get(entry.family, 'download it by hand')} (or copy it to {final}); URL: {entry.url}"
    try:
        response = urllib.request.urlopen(entry.url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise UserError(
            f"cannot download {entry.family} checkpoint {entry.name!r}: HTTP {exc.code}; {hint}"
        ) from None
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot download {entry.family} checkpoint {entry.name!r} (no connection: {reason}); {hint}"
        ) from None
    h = hashlib.sha256()
    total = int(response.headers.get("Content-Length") or 0)
    try:
        with response, open(dest, "wb") as out, bar(total or None, desc=entry.name, unit="B") as b:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                b.update(len(chunk))
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"download of {entry.family} checkpoint {entry.name!r} broke off ({exc}); {hint}"
        ) from None
    if total and dest.stat().st_size != total:
        raise UserError(
            f"download of {entry.name!r} is incomplete ({dest.stat().st_size} of {total} bytes); retry"
        )
    return h.hexdigest()


def _verify(entry: Published, what: str, digest: str, recorded: str | None) -> None:
    ok = digest == (entry.sha256 or recorded or digest)
    if entry.sha256_prefix is not None:
        ok = ok and digest.startswith(entry.sha256_prefix)
    if not ok:
        raise UserError(f"{what} failed its checksum (sha256 {digest[:12]}...); delete it and download again")
