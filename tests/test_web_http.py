"""The gallery's HTTP layer alone: routes, what they return, input checks, safety, concurrency."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clusterguide.cli import main
from clusterguide.errors import UserError
from clusterguide.fitting import fit_run, sample_prior, split_cluster
from clusterguide.generators.registry import GeneratorSpec
from clusterguide.mapping import MappingConfig
from clusterguide.metrics import meets_goal
from clusterguide.run import FitConfig, Run, set_name
from clusterguide.sampler import ClusterSampler
from clusterguide.web import make_server
from clusterguide.web.server import MAX_BODY

_TEMPLATE: list[Path] = []  # the run is fitted once per session and copied for each user


def make_tree_run(out: Path) -> Path:
    """A tiny run with a refined cluster: leaves 0, 1/0, 1/1, 2; 1/1 has no mapping."""
    if _TEMPLATE and _TEMPLATE[0].is_dir():
        shutil.copytree(_TEMPLATE[0], out)
        return out
    run, G = fit_run(
        GeneratorSpec("tiny-dcgan"),
        FitConfig(layer="block1", clusters=3, samples=400, seed=0, eval_samples=128, min_cluster_size=16),
        MappingConfig.preset("fast", epochs=1, seed=0),
        log=lambda _: None,
    )
    z = sample_prior(G, 400, 0)
    inside = z[torch.from_numpy(run.tree.membership(G, z, "1"))]
    split_cluster(G, run, "1", inside, "block2", 2, seed=0, log=lambda _: None)
    run.mappings.pop("1/1")
    run.skipped["1/1"] = "dropped for the test"
    for row in run.metrics["clusters"]:
        if row["id"] == "1/1":
            row.update(fidelity=None, norm_ratio=None, precision=None, recall=None)
    template = out.parent / "template-run"  # in pytest's temporary folder, which pytest cleans up
    run.save(template)
    _TEMPLATE[:] = [template]
    return make_tree_run(out)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tree_run(tmp_path_factory.mktemp("web") / "run")


@pytest.fixture(scope="module")
def server(run_dir):
    srv = make_server(run_dir, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_names(run_dir):
    """Every test starts with no names."""
    (run_dir / "names.json").write_text("{}\n")
    yield


def request(
    server,
    method: str,
    target: str,
    body=None,
    headers: dict | None = None,
    raw: bytes | None = None,
    ctype: str | None = None,
    auth: bool = True,
):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    hdrs = dict(headers or {})
    if auth:  # a script's way to give the access token
        hdrs.setdefault("Authorization", f"token {server.token}")
    if ctype:
        hdrs["Content-Type"] = ctype
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, target, body=data, headers=hdrs)
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    return res.status, dict(res.getheaders()), payload


def get_json(server, target: str):
    status, _, payload = request(server, "GET", target)
    return status, json.loads(payload)


def post(server, target: str, body):
    status, _, payload = request(server, "POST", target, body=body)
    return status, json.loads(payload)


def decode_data_url(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix) :])


def folder_digest(run_dir: Path) -> dict[str, str]:
    files = sorted(p for p in run_dir.iterdir() if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ---- pages and static files ---------------------------------------------------------------------
def test_index_and_static_files(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name, ctype in [("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/")]:
        status, headers, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body
    status, headers, body = request(server, "HEAD", "/static/app.js")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_run_lists_every_cluster_with_its_stats(server, run_dir):
    status, data = get_json(server, "/api/run")
    assert status == 200
    run = Run.load(run_dir)
    assert [c["path"] for c in data["clusters"]] == run.clusters()
    assert [c["path"] for c in data["clusters"] if c["leaf"]] == run.leaves() == ["0", "1/0", "1/1", "2"]
    by_path = {c["path"]: c for c in data["clusters"]}
    for path in run.clusters():
        assert by_path[path]["size"] == run.tree.stats[path]["size"]
        assert by_path[path]["share"] == pytest.approx(run.tree.stats[path]["share"])
        assert by_path[path]["fidelity"] == run.cluster_metrics(path).get("fidelity")
    assert by_path["1/0"]["depth"] == 2 and by_path["1/0"]["layer"] == "block2"
    assert by_path["1/1"]["mapping"] is False and by_path["1/1"]["fidelity"] is None
    # the verdict on issue 12's bars, per sampler, as the fit printed it; none without figures
    for path in run.clusters():
        m = run.cluster_metrics(path)
        assert by_path[path]["meets_goal"] == {
            "imle": meets_goal(m),
            "corrected": meets_goal(m, "corrected_"),
        }
    assert by_path["1/1"]["meets_goal"]["imle"] is None  # no mapping, no figures
    assert any(c["meets_goal"]["imle"] is not None for c in data["clusters"])
    assert data["goal"] == {"fidelity": 0.95, "recall_share": 0.9}
    assert data["generator"] == "tiny-dcgan" and data["limits"]["n_max"] == 64


# ---- sampling -----------------------------------------------------------------------------------
def test_sample_matches_the_library_and_the_downloads(server, run_dir):
    status, data = post(server, "/api/sample", {"cluster": "0", "method": "imle", "seed": 3, "n": 9})
    assert status == 200
    assert (data["cluster"], data["method"], data["seed"], data["n"]) == ("0", "imle", 3, 9)
    png = decode_data_url(data["image"])
    assert Image.open(io.BytesIO(png)).size == (data["width"], data["height"])

    status, headers, grid = request(server, "GET", data["grid_url"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert 'filename="cluster-0_imle_seed3_n9.png"' in headers["Content-Disposition"]
    assert grid == png  # the download is the grid shown

    status, headers, npz = request(server, "GET", data["npz_url"])
    assert status == 200 and headers["Content-Disposition"].endswith('.npz"')
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        images, latents = f["images"], f["latents"]
        assert str(f["cluster"]) == "0" and str(f["method"]) == "imle" and int(f["seed"]) == 3
    direct = ClusterSampler.load(run_dir)("0", 9, seed=3, method="imle")
    assert images.dtype == np.uint8 and images.shape == (9, 64, 64, 3)
    np.testing.assert_array_equal(images, direct.images)
    np.testing.assert_array_equal(latents, direct.latents)


def test_corrected_sampling_is_the_librarys(server, run_dir):
    status, data = post(server, "/api/sample", {"cluster": "0", "method": "corrected", "seed": 2, "n": 4})
    assert status == 200 and data["method"] == "corrected"
    status, _, npz = request(server, "GET", data["npz_url"])
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        direct = ClusterSampler.load(run_dir)("0", 4, seed=2, method="corrected")
        np.testing.assert_array_equal(f["latents"], direct.latents)
        np.testing.assert_array_equal(f["images"], direct.images)


def test_sampling_is_deterministic_per_seed(server):
    a = post(server, "/api/sample", {"cluster": "2", "seed": 5, "n": 4})[1]
    b = post(server, "/api/sample", {"cluster": "2", "seed": 5, "n": 4})[1]
    c = post(server, "/api/sample", {"cluster": "2", "seed": 6, "n": 4})[1]
    assert a["image"] == b["image"] and b["cached"] is True
    assert a["image"] != c["image"]


def test_exact_sampling_and_clusters_without_mapping(server):
    status, data = post(server, "/api/sample", {"cluster": "1/1", "method": "exact", "seed": 0, "n": 4})
    assert status == 200 and 0 < data["acceptance_rate"] <= 1 and data["tried"] >= 4
    status, data = post(server, "/api/sample", {"cluster": "1/1", "method": "imle", "n": 4})
    assert status == 422 and "no mapping" in data["error"]


def test_sampling_does_not_touch_the_run_folder(server, run_dir):
    before = folder_digest(run_dir)
    post(server, "/api/sample", {"cluster": "1/0", "seed": 11, "n": 4})
    request(server, "GET", "/api/samples.npz?cluster=1%2F0&seed=11&n=4")
    assert folder_digest(run_dir) == before


# ---- names --------------------------------------------------------------------------------------
def test_rename_is_stored_and_seen_by_the_cli(server, run_dir):
    status, data = post(server, "/api/name", {"cluster": "1/0", "name": "  wide   faces "})
    assert status == 200 and data == {"cluster": "1/0", "name": "wide faces", "names": {"1/0": "wide faces"}}
    assert json.loads((run_dir / "names.json").read_text()) == {"1/0": "wide faces"}
    assert Run.load(run_dir).resolve("wide faces") == "1/0"
    assert {c["path"]: c["name"] for c in get_json(server, "/api/run")[1]["clusters"]}["1/0"] == "wide faces"
    # the new name works wherever a cluster is asked for
    status, data = post(server, "/api/sample", {"cluster": "wide faces", "n": 2})
    assert status == 200 and data["cluster"] == "1/0"
    # an empty name clears it
    assert post(server, "/api/name", {"cluster": "1/0", "name": ""})[1]["names"] == {}
    assert json.loads((run_dir / "names.json").read_text()) == {}


def test_names_set_elsewhere_show_up_without_a_restart(server, run_dir):
    set_name(run_dir, "2", "from the cli")
    names = {c["path"]: c["name"] for c in get_json(server, "/api/run")[1]["clusters"]}
    assert names["2"] == "from the cli"


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"cluster": "0", "name": "1/0"}, 400, "looks like a cluster path"),
        ({"cluster": "0", "name": "x" * 101}, 400, "longer than 100"),
        ({"cluster": "0", "name": "tab\there"}, 400, "control characters"),
        ({"cluster": "7", "name": "seven"}, 404, "no cluster"),
        ({"cluster": "0"}, 400, "missing field 'name'"),
        ({"cluster": "0", "name": 3.5}, 400, "must be a string"),
        ({"cluster": "0", "name": "ok", "extra": 1}, 400, "unknown field"),
    ],
)
def test_rename_refusals(server, run_dir, body, status, words):
    got, data = post(server, "/api/name", body)
    assert got == status and words in data["error"]
    assert json.loads((run_dir / "names.json").read_text()) == {}


def test_rename_to_a_taken_name_is_a_conflict(server):
    assert post(server, "/api/name", {"cluster": "0", "name": "smile"})[0] == 200
    status, data = post(server, "/api/name", {"cluster": "2", "name": "Smile"})
    assert status == 409 and "already used by cluster 0" in data["error"]


def test_concurrent_renames_and_draws_leave_a_consistent_folder(server, run_dir):
    leaves = ["0", "1/0", "1/1", "2"]

    def job(i: int):
        if i % 3 == 0:
            cluster = leaves[i % 4]
            method = "exact" if cluster == "1/1" else "imle"
            return post(server, "/api/sample", {"cluster": cluster, "method": method, "seed": i, "n": 2})[0]
        return post(server, "/api/name", {"cluster": leaves[i % 4], "name": f"name {i}"})[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(job, range(48)))
    assert set(statuses) == {200}
    names = json.loads((run_dir / "names.json").read_text())  # whole, valid JSON
    assert set(names) == set(leaves) and all(v.startswith("name ") for v in names.values())
    assert Run.load(run_dir).names == names
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# ---- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, words",
    [
        ({"cluster": "0", "n": 0}, "n must be"),
        ({"cluster": "0", "n": 65}, "n must be"),
        ({"cluster": "0", "n": "4"}, "n must be"),
        ({"cluster": "0", "n": 2.0}, "n must be"),
        ({"cluster": "0", "seed": -1}, "seed must be"),
        ({"cluster": "0", "seed": True}, "seed must be"),
        ({"cluster": "0", "seed": 2**63}, "seed must be"),
        ({"cluster": "0", "method": "gan"}, "method must be"),
        ({"cluster": "0", "method": None}, "method must be"),
        ({"cluster": ["0"]}, "cluster must be a string"),
        ({"cluster": ""}, "cluster is empty"),
        ({"cluster": "0" * 201}, "longer than 200"),
        ({"n": 4}, "missing field 'cluster'"),
        ({"cluster": "0", "size": 4}, "unknown field 'size'"),
    ],
)
def test_sample_refuses_malformed_fields(server, body, words):
    status, data = post(server, "/api/sample", body)
    assert status == 400 and words in data["error"]


def test_unknown_cluster_is_404(server):
    status, data = post(server, "/api/sample", {"cluster": "9"})
    assert status == 404 and "no cluster '9'" in data["error"]


@pytest.mark.parametrize(
    "query, words",
    [
        ("cluster=0&n=x", "n must be"),
        ("cluster=0&n=-1", "n must be"),
        ("cluster=0&cluster=1", "given twice"),
        ("cluster=0&evil=1", "unknown field"),
        ("cluster=0&n", "malformed query"),
        ("cluster=%ff", "malformed query"),
        ("", "missing field 'cluster'"),
    ],
)
def test_download_refuses_malformed_queries(server, query, words):
    for route in ("/api/grid.png", "/api/samples.npz"):
        status, _, payload = request(server, "GET", f"{route}?{query}" if query else route)
        assert status == 400 and words in json.loads(payload)["error"]


@pytest.mark.parametrize(
    "target, status",
    [
        ("/static/../server.py", 400),
        ("/static/%2e%2e/server.py", 400),
        ("/static/..%2fserver.py", 400),
        ("/static/%2e%2e%2f%2e%2e%2frun.py", 400),
        ("/static/..%5cserver.py", 400),
        ("/static/app.js%00.png", 400),
        ("/static//etc/passwd", 400),
        ("//etc/passwd", 404),  # http.server folds leading slashes: /etc/passwd, not a route
        ("/static/%c0%ae%c0%ae/server.py", 400),
        ("/../config.json", 400),
        ("/static/server.py", 404),
        ("/static/__init__.py", 404),
        ("/static/.hidden", 400),
        ("/static/", 404),
        ("/config.json", 404),
        ("/names.json", 404),
        ("/api/unknown", 404),
        ("http://127.0.0.1/", 400),
    ],
)
def test_only_static_files_are_served(server, target, status):
    got, _, payload = request(server, "GET", target, headers={"Host": "127.0.0.1"})
    assert got == status, payload
    assert b"clusterguide-run" not in payload and b"import" not in payload


def test_wrong_methods_are_405(server):
    status, headers, _ = request(server, "GET", "/api/name")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = request(server, "POST", "/api/run", body={})
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, _ = request(server, "DELETE", "/api/name")
    assert status == 405
    status, _, _ = request(server, "PUT", "/static/app.js", raw=b"x", headers={"Content-Length": "1"})
    assert status == 405


def test_bodies_are_checked_before_they_are_read(server):
    big = json.dumps({"cluster": "0", "name": "x" * MAX_BODY}).encode()
    status, _, payload = request(server, "POST", "/api/name", raw=big, ctype="application/json")
    assert status == 413 and "over" in json.loads(payload)["error"]
    status, _, _ = request(
        server, "POST", "/api/name", raw=b'{"cluster": "0", "name": "a"}', ctype="text/plain"
    )
    assert status == 415
    status, _, _ = request(server, "POST", "/api/name", raw=b"{not json", ctype="application/json")
    assert status == 400
    status, _, _ = request(server, "POST", "/api/name", raw=b"[1, 2]", ctype="application/json")
    assert status == 400
    status, _, _ = request(server, "POST", "/api/name", raw=b"\xff\xfe", ctype="application/json")
    assert status == 400
    status, _, _ = request(server, "POST", "/api/sample?n=3", body={"cluster": "0"})
    assert status == 400


def test_missing_content_length_is_411(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        auth = f"Authorization: token {server.token}\r\n".encode()
        s.sendall(
            b"POST /api/name HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            + auth
            + b"Content-Type: application/json\r\n\r\n"
        )
        reply = s.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.0 411")


def test_other_hosts_and_origins_are_refused(server, run_dir):
    # DNS rebinding: a page on another name that resolves to 127.0.0.1
    status, _, _ = request(server, "GET", "/api/run", headers={"Host": f"evil.example:{server.port}"})
    assert status == 403
    assert request(server, "GET", "/api/run", headers={"Host": f"localhost:{server.port}"})[0] == 200
    # CSRF: a POST from another origin
    status, _, _ = request(
        server,
        "POST",
        "/api/name",
        body={"cluster": "0", "name": "pwned"},
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403
    assert json.loads((run_dir / "names.json").read_text()) == {}
    status, _, _ = request(
        server,
        "POST",
        "/api/name",
        body={"cluster": "0", "name": "mine"},
        headers={"Origin": f"http://127.0.0.1:{server.port}"},
    )
    assert status == 200


def test_refusals_are_logged(server, caplog):
    with caplog.at_level(logging.WARNING, logger="clusterguide.web"):
        request(server, "GET", "/static/%2e%2e/server.py")
        post(server, "/api/sample", {"cluster": "0", "n": 99})
    messages = [r.getMessage() for r in caplog.records if r.name == "clusterguide.web"]
    assert any("-> 400: path traversal" in m for m in messages)
    assert any("-> 400: n must be" in m for m in messages)


def test_a_replaced_run_is_reloaded(tmp_path):
    run_dir = make_tree_run(tmp_path / "run")
    srv = make_server(run_dir, port=0, preload=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert len(get_json(srv, "/api/run")[1]["clusters"]) == 5
        run = Run.load(run_dir)
        run.tree.splits.pop("1")
        for path in ("1/0", "1/1"):
            run.tree.stats.pop(path)
            run.mappings.pop(path, None)
            run.skipped.pop(path, None)
        run.save(run_dir, overwrite=True)
        assert [c["path"] for c in get_json(srv, "/api/run")[1]["clusters"]] == ["0", "1", "2"]
        assert post(srv, "/api/sample", {"cluster": "1", "n": 2})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


# ---- the server and the command ----------------------------------------------------------------
def test_make_server_errors_are_user_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_server(tmp_path / "nothing", port=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="in use"):
            make_server(run_dir, port=taken.getsockname()[1], preload=False)


def test_cli_serve_prints_the_address_and_serves(run_dir, tmp_path, monkeypatch, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith("does not exist")

    import clusterguide.web.server as web_server

    made = []
    real = web_server.make_server
    monkeypatch.setattr(web_server, "make_server", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    thread = threading.Thread(target=main, args=(["serve", str(run_dir), "--port", "0"],), daemon=True)
    thread.start()
    out = ""
    for _ in range(600):
        out += capsys.readouterr().out
        if "http://" in out:
            break
        thread.join(0.05)
    try:
        assert f"serving {run_dir} at http://127.0.0.1:{made[0].port}/?token={made[0].token}" in out
        assert get_json(made[0], "/api/run")[0] == 200
    finally:
        made[0].shutdown()
        thread.join(10)
    assert not thread.is_alive()


# ---- reliability and access (issue 14) ---------------------------------------------------------
def raw_exchange(port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        return s.makefile("rb").read()


def no_tracebacks(caplog, capsys) -> None:
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_an_over_long_uri_is_414_json(server, caplog, capsys):
    with caplog.at_level(logging.DEBUG, logger="clusterguide.web"):
        reply = raw_exchange(server.port, b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 414") and b"application/json" in head, reply[:300]
    assert "error" in json.loads(body)
    no_tracebacks(caplog, capsys)


@pytest.mark.parametrize("method, status", [("TRACE", 404), ("CONNECT", 404), ("FROB", 501)])
def test_other_methods_get_json_errors(server, method, status):
    got, headers, payload = request(server, method, "/x")
    assert got == status and headers["Content-Type"] == "application/json"
    assert "error" in json.loads(payload)
    assert request(server, method, "/api/run")[0] == (405 if method != "FROB" else 501)


def test_clients_that_hang_up_cost_no_traceback(server, caplog, capsys):
    auth = f"Authorization: token {server.token}\r\n".encode()
    short = b"POST /api/name HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with caplog.at_level(logging.DEBUG, logger="clusterguide.web"):
        for _ in range(10):  # less than its Content-Length, then gone
            raw_exchange(server.port, short + auth + b"Content-Length: 1000\r\n\r\n" + b'{"a"', read=False)
        for _ in range(10):  # asks for a grid and leaves before the answer
            raw_exchange(server.port, b"GET /api/grid.png?cluster=0&n=64 HTTP/1.0\r\n\r\n", read=False)
        for _ in range(5):  # a refused body, and no one left to read the refusal
            raw_exchange(server.port, short + b"Content-Length: 50000\r\n\r\n" + b"x" * 50000, read=False)
        assert get_json(server, "/api/run")[0] == 200  # still serving
        threading.Event().wait(1.0)  # let the handler threads of the gone clients finish
    no_tracebacks(caplog, capsys)


def test_writes_need_the_access_token(server, run_dir):
    status, _, body = request(server, "POST", "/api/name", body={"cluster": "0", "name": "x"}, auth=False)
    assert status == 403 and "token" in json.loads(body)["error"]
    status, _, _ = request(server, "POST", "/api/sample", body={"cluster": "0", "n": 1}, auth=False)
    assert status == 403
    wrong = {"Authorization": "token not-the-token"}
    assert request(server, "POST", "/api/name", body={"cluster": "0", "name": "x"}, headers=wrong)[0] == 403
    assert json.loads((run_dir / "names.json").read_text()) == {}
    # reading stays open on a loopback address, for scripts
    assert request(server, "GET", "/api/run", auth=False)[0] == 200


def test_the_page_address_sets_a_cookie_and_a_csrf_token(server, run_dir):
    status, headers, page = request(server, "GET", f"/?token={server.token}", auth=False)
    assert status == 200 and f'<meta name="csrf-token" content="{server.csrf}">' in page.decode()
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{server.cookie_name}={server.token};") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    jar = {"Cookie": f"{server.cookie_name}={server.token}"}
    # the cookie alone is not enough for a POST (a cross-site form would carry it): the CSRF token is
    body = {"cluster": "0", "name": "by cookie"}
    assert request(server, "POST", "/api/name", body=body, headers=jar, auth=False)[0] == 403
    with_csrf = {**jar, "X-CSRF-Token": server.csrf}
    assert request(server, "POST", "/api/name", body=body, headers=with_csrf, auth=False)[0] == 200
    assert json.loads((run_dir / "names.json").read_text()) == {"0": "by cookie"}
    # a page opened without the token gets no CSRF token, and a wrong token is refused
    _, _, bare = request(server, "GET", "/", auth=False)
    assert '<meta name="csrf-token" content="">' in bare.decode()
    assert request(server, "GET", "/?token=guess", auth=False)[0] == 403


def test_a_non_loopback_bind_needs_the_token_for_everything(run_dir):
    srv = make_server(run_dir, host="0.0.0.0", port=0, preload=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert not srv.loopback
        for target in ("/", "/api/run", "/static/app.js", "/api/grid.png?cluster=0&n=1"):
            assert request(srv, "GET", target, auth=False)[0] == 403, target
        # DNS rebinding: the attacker's page names its own domain in Host and Origin
        evil = {"Host": f"evil.example:{srv.port}", "Origin": f"http://evil.example:{srv.port}"}
        status, _, _ = request(
            srv, "POST", "/api/name", body={"cluster": "0", "name": "pwned"}, headers=evil, auth=False
        )
        assert status == 403
        assert json.loads((run_dir / "names.json").read_text()) == {}
        assert request(srv, "GET", "/api/run")[0] == 200
        assert request(srv, "GET", f"/api/run?token={srv.token}", auth=False)[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_cli_serve_open_opens_the_page_with_its_token(run_dir, monkeypatch, capsys):
    import webbrowser

    import clusterguide.web.server as web_server

    made, opened = [], []
    real = web_server.make_server
    monkeypatch.setattr(web_server, "make_server", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    thread = threading.Thread(
        target=main, args=(["serve", str(run_dir), "--port", "0", "--open"],), daemon=True
    )
    thread.start()
    for _ in range(600):
        if opened:
            break
        thread.join(0.05)
    try:
        assert opened == [made[0].page_url] and "?token=" in opened[0]
        status, _, page = request(made[0], "GET", "/?" + opened[0].split("?", 1)[1], auth=False)
        assert status == 200 and made[0].csrf in page.decode()
    finally:
        made[0].shutdown()
        thread.join(10)


def test_the_token_stays_out_of_the_log(server, caplog):
    with caplog.at_level(logging.DEBUG, logger="clusterguide.web"):
        request(server, "GET", f"/?token={server.token}", auth=False)
        request(server, "GET", f"/api/nothing?token={server.token}", auth=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/nothing?token=..." in text and server.token not in text
