"""The gallery end to end in headless Chromium: load, resample, rename (and reload), download."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clusterguide.metrics import meets_goal
from clusterguide.run import Run
from clusterguide.web import make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright not installed: pip install -e '.[test]'"),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="chromium not found: apt-get install chromium chromium-driver"
    ),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from test_web_http import make_tree_run  # the same tiny refined run, fitted once per session

    return make_tree_run(tmp_path_factory.mktemp("browser") / "run")


class Gate:
    """Holds draws until the test lets them through, so the progress indicator can be seen."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()


@pytest.fixture(scope="module")
def gallery(run_dir):
    srv = make_server(run_dir, port=0)
    gate = Gate()
    draw = srv.gallery.draw

    def gated_draw(req):
        assert gate.open.wait(30), "the test never opened the gate"
        return draw(req)

    srv.gallery.draw = gated_draw
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, gate
    gate.open.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Script errors and failed requests the page logged; a test that expects one removes it."""
    return []


@pytest.fixture
def page(browser, gallery, run_dir, console_errors):
    (run_dir / "names.json").write_text("{}\n")
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    pg.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    assert console_errors == [], console_errors


def open_gallery(page, gallery):
    srv, _ = gallery
    page.goto(srv.page_url)  # the address `clusterguide serve` prints, with the access token
    expect(page.locator(".card")).to_have_count(4)
    wait_idle(page)


def wait_idle(page):
    expect(page.locator("#progress")).to_be_hidden()
    shown = "() => [...document.querySelectorAll('.card img.grid')].every(i => i.complete && i.src)"
    page.wait_for_function(shown)


def card(page, path: str):
    return page.locator(f'.card[data-cluster="{path}"]')


def test_page_shows_every_leaf_with_its_grid_and_stats(page, gallery, run_dir):
    open_gallery(page, gallery)
    run = Run.load(run_dir)
    assert page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.cluster)") == run.leaves()
    for path in run.leaves():
        c = card(page, path)
        expect(c.locator(".size")).to_have_text(f"{run.tree.stats[path]['size']:,}")
        expect(c.locator(".meta")).to_contain_text("seed 0 · 16 images")
        assert c.locator("img.grid").evaluate("i => i.naturalWidth") > 0
        # the fidelity box's tooltip gives the verdict on issue 12's bars, as `fit` printed it
        verdict = meets_goal(run.cluster_metrics(path))
        title = c.locator(".fid").get_attribute("title")
        if verdict is None:
            assert "0.9 × ceiling" not in title
        else:
            assert ("meets fidelity" if verdict else "short of fidelity") in title, title
    expect(card(page, "1/0").locator(".crumbs")).to_contain_text("refined from 1 at layer block2")
    # a cluster without a mapping says so and is drawn exactly
    expect(card(page, "1/1").locator(".message")).to_contain_text("no mapping")
    expect(card(page, "1/1").locator(".meta")).to_contain_text("exact")
    expect(page.locator("#run-name")).to_have_text(run_dir.name)


def test_resample_draws_the_next_seed_with_a_progress_indicator(page, gallery):
    open_gallery(page, gallery)
    _, gate = gallery
    c = card(page, "0")
    before = c.locator("img.grid").get_attribute("src")
    gate.open.clear()
    try:
        c.locator("button.resample").click()
        expect(page.locator("#progress")).to_be_visible()
        expect(page.locator("#progress-text")).to_contain_text("Drawing 0")
        expect(c.locator(".overlay")).to_be_visible()
        expect(c.locator("button.resample")).to_be_disabled()
    finally:
        gate.open.set()
    wait_idle(page)
    expect(c.locator(".overlay")).to_be_hidden()
    expect(c.locator(".meta")).to_contain_text("imle · seed 1 · 16 images")
    assert c.locator("img.grid").get_attribute("src") != before


def test_resample_all_with_the_toolbar_settings(page, gallery):
    open_gallery(page, gallery)
    page.select_option("#method", "exact")
    page.fill("#seed", "7")
    page.fill("#count", "4")
    page.press("#count", "Enter")
    wait_idle(page)
    for path in ("0", "1/0", "1/1", "2"):
        expect(card(page, path).locator(".meta")).to_contain_text("exact · seed 7 · 4 images · accepted")
    # out of range: refused on the page, nothing drawn
    page.fill("#count", "65")
    page.click("#resample-all")
    expect(page.locator("#toast")).to_contain_text("count must be")
    expect(card(page, "0").locator(".meta")).to_contain_text("seed 7 · 4 images")
    # the dice: a random seed, drawn for every card
    page.fill("#count", "2")
    page.click("#seed-random")
    wait_idle(page)
    seed = page.input_value("#seed")
    expect(card(page, "2").locator(".meta")).to_contain_text(f"seed {seed} · 2 images")


def test_rename_persists_across_a_reload(page, gallery, run_dir, console_errors):
    open_gallery(page, gallery)
    name_input = card(page, "2").locator(".name-input")
    name_input.fill("dark   hair")
    name_input.press("Enter")
    expect(page.locator("#toast")).to_contain_text("Cluster 2 is now “dark hair”")
    assert json.loads((run_dir / "names.json").read_text()) == {"2": "dark hair"}
    assert Run.load(run_dir).resolve("dark hair") == "2"  # the CLI sees it
    page.reload()
    open_gallery(page, gallery)
    expect(card(page, "2").locator(".name-input")).to_have_value("dark hair")
    # Escape gives up an edit
    name_input = card(page, "2").locator(".name-input")
    name_input.fill("something else")
    name_input.press("Escape")
    expect(name_input).to_have_value("dark hair")
    # the Save button does the same as Enter; a taken name is refused in the card
    other = card(page, "0")
    other.locator(".name-input").fill("Dark hair")
    other.locator("button.save").click()
    expect(other.locator(".message")).to_contain_text("already used by cluster 2")
    assert [e for e in console_errors if "409" in e], console_errors
    console_errors[:] = [e for e in console_errors if "409" not in e]
    assert json.loads((run_dir / "names.json").read_text()) == {"2": "dark hair"}


def test_download_the_grid_and_the_samples(page, gallery):
    open_gallery(page, gallery)
    c = card(page, "1/0")
    with page.expect_download() as info:
        c.locator("a.dl-png").click()
    download = info.value
    assert download.suggested_filename == "cluster-1-0_imle_seed0_n16.png"
    png = Path(download.path()).read_bytes()
    shown = c.locator("img.grid").get_attribute("src")
    assert shown == "data:image/png;base64," + base64.b64encode(png).decode()
    assert Image.open(io.BytesIO(png)).format == "PNG"

    with page.expect_download() as info:
        c.locator("a.dl-npz").click()
    assert info.value.suggested_filename == "cluster-1-0_imle_seed0_n16.npz"
    with np.load(info.value.path(), allow_pickle=False) as f:
        assert f["images"].shape == (16, 64, 64, 3) and str(f["cluster"]) == "1/0"


def test_without_the_token_the_page_only_shows_the_run(page, gallery, run_dir):
    srv, _ = gallery
    page.goto(srv.url)  # the bare address: no token, no cookie
    expect(page.locator(".card")).to_have_count(4)
    expect(page.locator("#run-meta")).to_contain_text("needs its access token")
    expect(page.locator("#resample-all")).to_be_disabled()
    expect(card(page, "0").locator(".name-input")).to_be_disabled()
    assert card(page, "0").locator("img.grid").get_attribute("src") in (None, "")
    # once opened with the token, the cookie keeps the bare address working
    page.goto(srv.page_url)
    wait_idle(page)
    page.goto(srv.url)
    expect(page.locator(".card")).to_have_count(4)
    wait_idle(page)
    expect(page.locator("#resample-all")).to_be_enabled()
    assert json.loads((run_dir / "names.json").read_text()) == {}
