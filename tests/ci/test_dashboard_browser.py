"""The dashboard as a real browser renders it: headless Chromium, offline, from file://.

Skips (with the install command) when no Chromium is found; CI installs it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from moecheck.ci.results.dashboard import CELL_COLORS, CELL_SIZE, render_dashboard
from moecheck.tests.ci.factories import NEW_FAILURES, populated_store
from moecheck.tests.ci.pngread import color_counts, hex_rgb

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get update && apt-get install -y chromium"
WINDOW = (1280, 2000)
BROWSER_TIMEOUT_S = 120
# a grid cell is at least CELL_SIZE; half of one rules out thin lines, text and legend swatches
MIN_CELL_PIXELS = CELL_SIZE[0] * CELL_SIZE[1] // 2


def find_browser() -> str | None:
    explicit = os.environ.get("MOECHECK_CHROMIUM")
    if explicit:
        return explicit
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium binary found ({', '.join(BROWSERS)} or $MOECHECK_CHROMIUM); install: {INSTALL}")
    tmp = tmp_path_factory.mktemp("browser")
    store, _ = populated_store(tmp / "s.sqlite")
    html = render_dashboard(store, tmp / "dashboard.html")
    return browser, tmp, html.resolve().as_uri()


def chromium(browser: str, tmp, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=BROWSER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


class Cells(HTMLParser):
    """Collects grid cells (class, backend, format, text) and all repro commands."""

    def __init__(self):
        super().__init__()
        self.cells, self.repros, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            self._in = [classes[-1], a.get("data-backend"), a.get("data-format"), ""]
        elif tag == "code" and "repro" in classes:
            self._in = ["repro", None, None, ""]

    def handle_data(self, data):
        if self._in is not None:
            self._in[3] += data

    def handle_endtag(self, tag):
        if self._in is not None and tag in ("td", "code"):
            (self.repros if self._in[0] == "repro" else self.cells).append(tuple(self._in))
            self._in = None


def test_dom_has_grid_and_repros(page):
    browser, tmp, url = page
    dom = Cells()
    dom.feed(chromium(browser, tmp, "--dump-dom", url).stdout.decode())
    cells = {(b, f): (cls, text) for cls, b, f, text in dom.cells}
    assert cells[("flashinfer", "fp8")] == ("pass", "1 pass")
    assert cells[("flashinfer", "nvfp4")][0] == "fail" and "matches_reference" in cells[("flashinfer", "nvfp4")][1]
    assert cells[("triton", "fp8")][0] == "fail" and cells[("vllm", "mxfp4")][0] == "skip"
    repros = [text for *_, text in dom.repros]
    for backend, fmt, prop in NEW_FAILURES:
        assert f"moecheck repro {backend}-{fmt}-{prop}.json" in repros


def test_screenshot_shows_pass_and_fail_cells(page):
    browser, tmp, url = page
    shot = tmp / "dashboard.png"
    chromium(browser, tmp, f"--screenshot={shot}", url)
    counts = color_counts(shot.read_bytes())
    for verdict in ("pass", "fail", "skip"):
        assert counts[hex_rgb(CELL_COLORS[verdict])] >= MIN_CELL_PIXELS, f"no {verdict} cell in the screenshot"
