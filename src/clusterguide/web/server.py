"""The gallery's HTTP layer: a small JSON API and three static files, on the standard library.

Routes (everything else is 404; a known path with another method is 405)::

    GET  /                      the page (static/index.html)
    GET  /static/<file>         a file of the static folder, nothing else
    GET  /api/run               the run: generator, settings, every cluster with its stats
    POST /api/sample            {cluster, method, seed, n} -> grid as a PNG data URL + metadata
    GET  /api/grid.png?...      the same grid as a PNG download   (cluster, method, seed, n)
    GET  /api/samples.npz?...   images (N,H,W,3) uint8 and latents (N,D) float32 of that draw
    POST /api/name              {cluster, name} -> renames through clusterguide.run.set_name

Sampling is deterministic per (cluster, method, seed, n), so the downloads re-create what the page
shows; recent draws are cached so they cost nothing. One generator call runs at a time (torch on a
few cores gains nothing from two), while the server keeps answering other requests.

Safety: files are served only from the static folder by exact name; the run folder is read through
:class:`~clusterguide.run.Run` and written only through ``set_name`` (file-locked, atomic). Every
field is checked; malformed input (an unknown method, a URI over 64 KiB included) gets a 4xx/5xx
with a JSON ``{"error": ...}`` and a warning in the ``clusterguide.web`` log; a client that hangs up
costs a debug line, never a traceback. As local notebook servers do, the server makes a random
access token, printed with its address (``/?token=...``): every POST needs it (an
``Authorization: token ...`` header, or the cookie the page's address sets plus the page's CSRF
token in ``X-CSRF-Token``), and on a non-loopback address every request does. Bound to a loopback
address, requests whose ``Host`` is not a loopback name are refused (DNS rebinding), and POSTs must
be JSON from the page's own origin.
"""

from __future__ import annotations

import base64
import errno
import hmac
import http.cookies
import io
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from clusterguide import artifacts, seeding
from clusterguide.checks import CONTROL
from clusterguide.errors import NameTakenError, UserError
from clusterguide.imaging import grid_image
from clusterguide.metrics import FIDELITY_GOAL, RECALL_SHARE_GOAL, meets_goal
from clusterguide.run import Run, read_names, set_name
from clusterguide.sampler import METHODS

if TYPE_CHECKING:
    from clusterguide.sampler import ClusterSampler

LOG = logging.getLogger("clusterguide.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
MAX_N = 64  # images per draw
DEFAULT_N = 16
MAX_SEED = seeding.MAX_SEED  # one range for the CLI, the API and the gallery (the page: up to 2**53 - 1)
MAX_BODY = 16 * 1024  # bytes of a POST body
MAX_DRAIN = 1024 * 1024  # a refused body up to this size is read and dropped, so the client gets its 4xx
MAX_CLUSTER_CHARS = 200
MAX_NAME_CHARS = 100
MAX_URI = 65_536  # bytes of a request line (http.server's own limit): longer gets a 414
CSRF_META = '<meta name="csrf-token" content="">'  # filled in when index.html is served
CACHE_BYTES = 256 * 2**20  # recent draws kept for the downloads

_STATIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")  # no leading dot
_INT = re.compile(r"\d{1,19}")
_TOKEN_IN_QUERY = re.compile(r"([?&])token=[^&#]*")
_CONTROL = CONTROL  # the same characters names refuse everywhere
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class HTTPError(Exception):
    """A request the server refuses; ``status`` is a 4xx, ``message`` goes to the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class SampleRequest:
    cluster: str  # path or name, as the client sent it
    method: str = "imle"
    seed: int = 0
    n: int = DEFAULT_N


@dataclass(frozen=True)
class Draw:
    """One drawn grid: what was asked, what came out, and how long it took."""

    path: str  # resolved cluster path
    method: str
    seed: int
    n: int
    images: np.ndarray  # (N, H, W, 3) uint8
    latents: np.ndarray  # (N, D) float32
    acceptance_rate: float | None
    tried: int | None
    seconds: float

    @property
    def query(self) -> str:
        fields = {"cluster": self.path, "method": self.method, "seed": self.seed, "n": self.n}
        return urllib.parse.urlencode(fields)

    @property
    def stem(self) -> str:
        return f"cluster-{self.path.replace('/', '-')}_{self.method}_seed{self.seed}_n{self.n}"

    def png(self) -> tuple[bytes, tuple[int, int]]:
        """The grid as PNG bytes, and its (width, height)."""
        # small images are doubled so a grid is legible at its natural size; what the page shows
        # is exactly what is downloaded
        image = grid_image(self.images, scale=2 if self.images.shape[1] <= 64 else 1)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), image.size

    def npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            images=self.images,
            latents=self.latents,
            cluster=np.array(self.path),
            method=np.array(self.method),
            seed=np.array(self.seed, dtype=np.int64),
        )
        return buf.getvalue()


# ---- the shared state ---------------------------------------------------------------------------
class Gallery:
    """What the request handlers share: the run folder, its sampler, and recent draws.

    The run is reloaded when its ``config.json`` changes (a refine replaced the folder); names are
    re-read on every request, so renames from the CLI show up on the next page load.
    """

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        self.run_dir = Path(run_dir)
        self.device = device
        self._lock = threading.Lock()  # guards the fields below; never held while sampling
        self._generator_lock = threading.Lock()  # one generator call at a time
        self._load_lock = threading.Lock()  # one sampler load at a time
        self._run = Run.load(self.run_dir)
        self._stamp = self._config_stamp()
        self._sampler: ClusterSampler | None = None
        self._cache: OrderedDict[tuple, Draw] = OrderedDict()
        self._cache_bytes = 0

    # ---- run and names ----------------------------------------------------------------------
    def _config_stamp(self) -> tuple:
        try:
            st = os.stat(self.run_dir / artifacts.CONFIG)
        except OSError:
            return ()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def run(self) -> Run:
        """The run as it is now on disk, with current names (a copy; callers may keep it)."""
        with self._lock:
            stamp = self._config_stamp()
            if stamp and stamp != self._stamp:
                try:
                    self._run = Run.load(self.run_dir)
                except UserError as exc:  # mid-replacement or damaged: keep serving the last good one
                    LOG.warning("run folder changed but does not load (%s); keeping the loaded run", exc)
                else:
                    LOG.info("run folder %s changed on disk; reloaded", self.run_dir)
                    self._stamp, self._sampler = stamp, None
                    self._cache.clear()
                    self._cache_bytes = 0
            run = self._run
        return replace(run, names=self._read_names(run.names))

    def _read_names(self, fallback: dict[str, str]) -> dict[str, str]:
        try:
            return read_names(self.run_dir)
        except UserError as exc:
            LOG.warning("%s; showing the names last read", exc)
            return dict(fallback)

    def run_json(self) -> dict:
        run = self.run()
        clusters = []
        for path in run.clusters():
            stats = run.tree.stats.get(path, {})
            m = run.cluster_metrics(path)
            clusters.append(
                {
                    "path": path,
                    "name": run.names.get(path, ""),
                    "leaf": path not in run.tree.splits,
                    "depth": path.count("/") + 1,
                    "layer": run.tree.layer_of(path),
                    "size": stats.get("size"),
                    "share": _finite(stats.get("share")),
                    "fidelity": _finite(m.get("fidelity")),
                    "norm_ratio": _finite(m.get("norm_ratio")),
                    "precision": _finite(m.get("precision")),
                    "recall": _finite(m.get("recall")),
                    # issue 12's bars (metrics.meets_goal) for each sampler; null without the figures
                    "meets_goal": {"imle": meets_goal(m), "corrected": meets_goal(m, "corrected_")},
                    "mapping": path in run.mappings,
                    "skipped": run.skipped.get(path),
                }
            )
        return {
            "run": self.run_dir.resolve().name,
            "generator": run.generator.name,
            "layer": run.fit.layer,
            "k": run.fit.clusters,
            "samples": run.fit.samples,
            "seed": run.fit.seed,
            "recipe": run.mapping.recipe,
            "methods": list(METHODS),
            # the bars each cluster's meets_goal is judged against, for the page to say
            "goal": {"fidelity": FIDELITY_GOAL, "recall_share": RECALL_SHARE_GOAL},
            "limits": {
                "n_max": MAX_N,
                "n_default": DEFAULT_N,
                "seed_max": MAX_SEED,
                "name_max": MAX_NAME_CHARS,
            },
            "clusters": clusters,
        }

    def resolve(self, cluster: str) -> str:
        try:
            return self.run().resolve(cluster)
        except UserError as exc:
            raise HTTPError(404, str(exc)) from None

    def rename(self, cluster: str, name: str) -> dict:
        path = self.resolve(cluster)
        try:
            path, names = set_name(self.run_dir, path, name)
        except NameTakenError as exc:
            raise HTTPError(409, str(exc)) from None
        except UserError as exc:
            raise HTTPError(400, str(exc)) from None
        LOG.info("cluster %s renamed to %r", path, names.get(path, ""))
        return {"cluster": path, "name": names.get(path, ""), "names": names}

    # ---- sampling -----------------------------------------------------------------------------
    def sampler(self):
        """The sampler, loaded on first use (the generator's weights can take a moment)."""
        from clusterguide.sampler import ClusterSampler

        self.run()  # reload first if the folder changed
        with self._load_lock:
            with self._lock:
                sampler, stamp = self._sampler, self._stamp
            if sampler is None:  # loaded outside self._lock, so the page stays responsive
                sampler = ClusterSampler.load(self.run_dir, device=self.device)
                with self._lock:
                    if self._stamp == stamp:
                        self._sampler = sampler
            return sampler

    def draw(self, req: SampleRequest) -> tuple[Draw, bool]:
        """Sample (or fetch from the cache) one grid; returns it and whether it was cached."""
        path = self.resolve(req.cluster)
        with self._lock:
            key = (self._stamp, path, req.method, req.seed, req.n)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit, True
        sampler = self.sampler()
        with self._generator_lock:
            with self._lock:  # drawn by another request while this one waited
                hit = self._cache.get(key)
            if hit is not None:
                return hit, True
            start = time.perf_counter()
            try:
                out = sampler(path, req.n, seed=req.seed, method=req.method)
            except UserError as exc:  # no mapping, or exact sampling found too few
                raise HTTPError(422, str(exc).replace("--method ", "method ")) from None
            draw = Draw(
                path,
                req.method,
                req.seed,
                req.n,
                out.images,
                out.latents,
                out.acceptance_rate,
                out.tried,
                time.perf_counter() - start,
            )
        with self._lock:
            self._cache[key] = draw
            self._cache_bytes += draw.images.nbytes + draw.latents.nbytes
            while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.images.nbytes + old.latents.nbytes
        return draw, False


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


# ---- input checks -------------------------------------------------------------------------------
def _text(value, field: str, max_chars: int, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise HTTPError(400, f"{field} must be a string")
    text = str(value)
    if len(text) > max_chars:
        raise HTTPError(400, f"{field} is longer than {max_chars} characters")
    if _CONTROL.search(text):
        raise HTTPError(400, f"{field} contains control characters")
    if not text.strip() and not allow_empty:
        raise HTTPError(400, f"{field} is empty")
    return text


def _int(value, field: str, lo: int, hi: int, from_text: bool = False) -> int:
    if from_text and isinstance(value, str) and _INT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HTTPError(400, f"{field} must be a whole number from {lo} to {hi}")
    return value


def _check_fields(fields: dict, allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise HTTPError(400, f"unknown field {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
    missing = sorted(required - set(fields))
    if missing:
        raise HTTPError(400, f"missing field {missing[0]!r}")


def parse_sample_request(fields: dict, from_query: bool = False) -> SampleRequest:
    """Check a JSON body (numbers must be JSON integers) or a query string's fields (decimal
    digits) of a draw; raises :class:`HTTPError` (400) on anything off."""
    _check_fields(fields, {"cluster", "method", "seed", "n"}, {"cluster"})
    method = fields.get("method", "imle")
    if method not in METHODS:
        raise HTTPError(400, f"method must be one of {', '.join(METHODS)}")
    return SampleRequest(
        cluster=_text(fields["cluster"], "cluster", MAX_CLUSTER_CHARS),
        method=method,
        seed=_int(fields.get("seed", 0), "seed", 0, MAX_SEED, from_query),
        n=_int(fields.get("n", DEFAULT_N), "n", 1, MAX_N, from_query),
    )


def parse_name_request(fields: dict) -> tuple[str, str]:
    _check_fields(fields, {"cluster", "name"}, {"cluster", "name"})
    return (
        _text(fields["cluster"], "cluster", MAX_CLUSTER_CHARS),
        _text(fields["name"], "name", MAX_NAME_CHARS, allow_empty=True),
    )


def parse_query(query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=16, errors="strict"
        )
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "malformed query string") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise HTTPError(400, f"field {key!r} given twice")
        fields[key] = value
    return fields


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the request handler ------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server: GalleryServer
    server_version = "clusterguide-gallery"
    protocol_version = "HTTP/1.0"  # one request per connection: a refused body can't leak into the next
    timeout = 60  # seconds a silent client may hold a thread

    def version_string(self) -> str:  # no Python version in the Server header
        return self.server_version

    # ---- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _other_method(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _other_method

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as exc:  # the client went away: nothing to answer
            LOG.debug("%s: connection lost (%s)", self.client_address[0], type(exc).__name__)
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, URI too long) as JSON."""
        self._unread = 0
        if not hasattr(self, "path"):  # refused before the request line was parsed
            self.path = ""
        self.command = self.command or "-"
        if code == 414:
            self._drain_request_head()
        text = message or self.responses.get(code, ("error",))[0]
        if code == 501:
            text = f"method {self.command[:20]!r} is not supported; use GET, HEAD or POST"
        self.log_error("code %d: %s", code, text)
        self.close_connection = True
        try:
            self._send_json(code, {"error": text})
        except (ConnectionError, TimeoutError):
            pass

    def _drain_request_head(self) -> None:
        """Read the rest of an over-long request line and its headers, so the client reads our 414
        instead of a reset (closing a socket with unread input sends one)."""
        line: bytes = getattr(self, "raw_requestline", b"")
        budget = MAX_DRAIN
        while not line.endswith(b"\n") and budget > 0:
            line = self.rfile.readline(min(budget, 65536))
            if not line:
                return
            budget -= len(line)
        while budget > 0:
            line = self.rfile.readline(65536)
            budget -= len(line)
            if line in (b"\r\n", b"\n", b""):
                return

    _GET: ClassVar[dict[str, str]] = {
        "/": "_index",
        "/index.html": "_index",
        "/api/run": "_api_run",
        "/api/grid.png": "_api_grid",
        "/api/samples.npz": "_api_npz",
    }
    _POST: ClassVar[dict[str, str]] = {"/api/sample": "_api_sample", "/api/name": "_api_name"}

    def _dispatch(self, method: str) -> None:
        length = self.headers.get("Content-Length", "").strip()
        self._unread = int(length) if _INT.fullmatch(length) else 0  # body bytes not read (yet)
        self._set_cookie = self._authorized = False
        try:
            self._check_host()
            path, query = self._target()
            query = self._check_access(method, query)
            if method in ("GET", "HEAD") and path in self._GET:
                getattr(self, self._GET[path])(query)
            elif method in ("GET", "HEAD") and path.startswith("/static/"):
                self._static(path[len("/static/") :], query)
            elif method == "POST" and path in self._POST:
                if query:
                    raise HTTPError(400, "a POST takes its fields in a JSON body, not the query")
                getattr(self, self._POST[path])(self._json_body())
            elif path in self._GET or path in self._POST or path.startswith("/static/"):
                allow = "GET, HEAD" if path in self._GET or path.startswith("/static/") else "POST"
                raise HTTPError(405, f"{method} is not allowed here; use {allow}", {"Allow": allow})
            else:
                raise HTTPError(404, "not found")
            return
        except HTTPError as exc:
            status, reply, headers = exc.status, {"error": exc.message}, exc.headers
            self._log_refusal(status, exc.message)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except UserError as exc:  # the server's side: e.g. the generator's weights went missing
            LOG.error("%s %s failed: %s", self.command, self._logged_path(), exc)
            status, reply, headers = 500, {"error": str(exc)}, {}
        except Exception:  # a bug: log the traceback, tell the client only that it failed
            LOG.exception("%s %s failed", self.command, self._logged_path())
            status, reply, headers = 500, {"error": "internal error; see the server's log"}, {}
        try:  # the client may have hung up (or sent less than its Content-Length) meanwhile
            self._drain_unread()
            self._send_json(status, reply, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _check_access(self, method: str, query: str) -> str:
        """Enforce the access token; returns the query without its ``token`` field."""
        server = self.server
        given = None
        if "token=" in query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            given = next((v for k, v in pairs if k == "token"), None)
            query = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "token"])
        header = self.headers.get("Authorization", "")
        by_header = header[:6].lower() == "token " and _same(header[6:].strip(), server.token)
        by_query = given is not None and _same(given, server.token)
        by_cookie = _same(self._cookie(server.cookie_name), server.token)
        if given is not None and not by_query:
            raise HTTPError(403, "wrong access token; use the address `clusterguide serve` printed")
        self._set_cookie = by_query  # the page's address carries the token once; the cookie after
        self._authorized = by_header or by_query or by_cookie
        if not self._authorized and not server.loopback:
            raise HTTPError(
                403, "this gallery needs its access token: open the address `clusterguide serve` printed"
            )
        if method not in ("GET", "HEAD") and not by_header:
            if not by_cookie:
                raise HTTPError(
                    403, "writing needs the access token: open the address `clusterguide serve` printed"
                )
            if not _same(self.headers.get("X-CSRF-Token"), server.csrf):
                raise HTTPError(403, "missing or wrong CSRF token; reload the page")
        return query

    def _cookie(self, name: str) -> str | None:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = self.headers.get("Host")
        if host is None:  # HTTP/1.0 clients may omit it; browsers (rebinding) never do
            return
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not _is_loopback_host(name):
            raise HTTPError(403, f"host {host[:100]!r} is not served; use {self.server.url}")

    def _target(self) -> tuple[str, str]:
        raw = self.path
        if not raw.startswith("/") or raw.startswith("//"):
            raise HTTPError(400, "malformed request target")
        raw_path, _, query = raw.partition("?")
        raw_path = raw_path.partition("#")[0]
        try:
            path = urllib.parse.unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "malformed path") from None
        dots = any(part in (".", "..") for part in path.split("/")[1:])
        if dots or "\\" in path or "\x00" in path or "//" in path:
            raise HTTPError(400, "path traversal is not allowed")
        return path, query

    def _json_body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "send a Content-Length, not a Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "Content-Length is required")
        if not _INT.fullmatch(length.strip()):
            raise HTTPError(400, "malformed Content-Length")
        if int(length) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPError(415, "Content-Type must be application/json")
        origin = self.headers.get("Origin")  # browsers send it with every POST
        if origin is not None:
            netloc = urllib.parse.urlsplit(origin).netloc
            if origin == "null" or netloc != self.headers.get("Host", netloc):
                raise HTTPError(403, "cross-origin requests are not accepted")
        body = self.rfile.read(int(length))
        self._unread = 0
        if len(body) != int(length):
            raise HTTPError(400, "request body shorter than its Content-Length")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data

    # ---- routes -----------------------------------------------------------------------------
    def _index(self, query: str) -> None:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        # the CSRF token goes only into pages of a client that holds the access token
        csrf = self.server.csrf if self._authorized else ""
        page = page.replace(CSRF_META, f'<meta name="csrf-token" content="{csrf}">')
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"}
        self._send(200, page.encode("utf-8"), CONTENT_TYPES[".html"], headers)

    def _static(self, name: str, query: str) -> None:
        if not name or "/" in name:
            raise HTTPError(404, "not found")
        if not _STATIC_NAME.fullmatch(name) or ".." in name:
            raise HTTPError(400, "malformed file name")
        ctype = CONTENT_TYPES.get(Path(name).suffix.lower())
        file = (STATIC_DIR / name).resolve()
        if ctype is None or file.parent != STATIC_DIR or not file.is_file():
            raise HTTPError(404, "not found")
        headers = {"Cache-Control": "no-cache"}
        if ctype.startswith("text/html"):
            headers |= {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"}
        self._send(200, file.read_bytes(), ctype, headers)

    def _api_run(self, query: str) -> None:
        if query:
            raise HTTPError(400, "/api/run takes no query")
        self._send_json(200, self.server.gallery.run_json())

    def _api_sample(self, body: dict) -> None:
        draw, cached = self.server.gallery.draw(parse_sample_request(body))
        png, (width, height) = draw.png()
        self._send_json(
            200,
            {
                "cluster": draw.path,
                "method": draw.method,
                "seed": draw.seed,
                "n": draw.n,
                "acceptance_rate": draw.acceptance_rate,
                "tried": draw.tried,
                "seconds": round(draw.seconds, 3),
                "cached": cached,
                "width": width,
                "height": height,
                "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                "grid_url": f"/api/grid.png?{draw.query}",
                "npz_url": f"/api/samples.npz?{draw.query}",
            },
        )

    def _api_grid(self, query: str) -> None:
        draw, _ = self.server.gallery.draw(parse_sample_request(parse_query(query), from_query=True))
        self._send(200, draw.png()[0], "image/png", _attachment(f"{draw.stem}.png"))

    def _api_npz(self, query: str) -> None:
        draw, _ = self.server.gallery.draw(parse_sample_request(parse_query(query), from_query=True))
        self._send(200, draw.npz(), "application/octet-stream", _attachment(f"{draw.stem}.npz"))

    def _api_name(self, body: dict) -> None:
        cluster, name = parse_name_request(body)
        self._send_json(200, self.server.gallery.rename(cluster, name))

    # ---- responses and logs -----------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        headers = headers or {}
        headers.setdefault("Cache-Control", "no-store")
        if getattr(self, "_set_cookie", False) and status < 400:
            server = self.server
            headers["Set-Cookie"] = f"{server.cookie_name}={server.token}; Path=/; HttpOnly; SameSite=Strict"
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _logged_path(self) -> str:
        """The request target for the log, with any access token blanked out."""
        return ascii(_TOKEN_IN_QUERY.sub(r"\1token=...", getattr(self, "path", ""))[:200])

    def _log_refusal(self, status: int, message: str) -> None:
        LOG.warning(
            "%s %s from %s -> %d: %s",
            self.command,
            self._logged_path(),
            self.client_address[0],
            status,
            message,
        )

    def _drain_unread(self) -> None:
        if 0 < self._unread <= MAX_DRAIN:
            # read a refused body before answering: closing a socket with unread input sends a
            # reset, and the client would never see the answer
            self.rfile.read(self._unread)
        self._unread = 0

    def log_request(self, code="-", size="-") -> None:  # refusals are logged by _log_refusal
        LOG.debug("%s %s -> %s", self.command, self._logged_path(), code)

    def log_error(self, format: str, *args) -> None:  # http.server's own: bad request line, ...
        LOG.warning("%s: %s", self.client_address[0], format % args)

    def log_message(self, format: str, *args) -> None:
        LOG.debug("%s: %s", self.client_address[0], format % args)


def _same(given: str | None, secret: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


def _attachment(filename: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


# ---- the server ---------------------------------------------------------------------------------
class GalleryServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 32

    def __init__(self, gallery: Gallery, host: str = "127.0.0.1", port: int = 0) -> None:
        self.gallery = gallery
        self.token = secrets.token_urlsafe(24)  # printed with the address; needed to write
        self.csrf = secrets.token_urlsafe(24)  # put into the page; sent back with its POSTs
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.loopback = _is_loopback_host(host)
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = f"port {port} on {host} is in use; choose another with --port (0: any free)"
                raise UserError(why) from None
            if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
                raise UserError(f"cannot listen on {host!r}: {exc.strerror or exc}") from None
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        return f"http://[{host}]:{self.port}/" if ":" in host else f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The address to open: the page with the access token."""
        return f"{self.url}?token={self.token}"

    @property
    def cookie_name(self) -> str:
        return f"clusterguide-token-{self.port}"  # cookies ignore ports: one per server

    def handle_error(self, request, client_address) -> None:
        """A client that hung up is no error; anything else is logged (not printed to stderr)."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            LOG.debug("%s: connection lost (%s)", client_address[0], type(exc).__name__)
        else:
            LOG.exception("request from %s failed", client_address[0])


def make_server(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 0, device: str = "cpu", preload: bool = True
) -> GalleryServer:
    """A gallery server for ``run_dir`` (not yet serving: call ``serve_forever``).

    ``preload`` loads the generator now, so a bad run or missing weights fail before the address is
    printed rather than on the first draw.
    """
    gallery = Gallery(run_dir, device=device)
    if preload:
        gallery.sampler()
    return GalleryServer(gallery, host, port)
