"""The main job's index.html, and every exported page drawing its plots offline in Chromium."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from i2m2kit.report import measured_numbers, write_index
from test_browser import browser  # noqa: F401 - the headless Chromium fixture (skips or fails as there)
from test_notebooks import SMALL_00

ROOT = Path(__file__).resolve().parents[1]
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def test_measured_numbers_flatten_a_notebooks_metrics():
    metrics = {"bayes_accuracy": 0.912345, "models": {"i2m2": 0.9, "intra": 0.85}, "seeds": [0, 1],
               "experts": [{"expert": "x", "decides": 0.25}, {"expert": "joint", "decides": 0.75}],
               "regime_map": [{"label": "i2m2", "of_bayes": 0.99}] * 20}
    assert list(measured_numbers(metrics)) == [
        ("bayes_accuracy", "0.9123"), ("models / i2m2", "0.9"), ("models / intra", "0.85"), ("seeds", "0, 1"),
        ("experts / x / decides", "0.25"), ("experts / joint / decides", "0.75"),
        ("regime_map", "20 rows (see the notebook's page)")]


def test_the_index_links_each_report_and_tabulates_its_numbers(tmp_path):
    run = tmp_path / "out" / "00_demo"
    run.mkdir(parents=True)
    summary = {"00_demo": {"notebook": str(run / "00_demo.ipynb"), "html": str(run / "00_demo.html"),
                           "metrics": {"accuracy": 0.5, "note": "<b>"}},
               "02_mimic": {"skipped": "its data is not at 'x' & y"}}
    page = write_index(summary, tmp_path / "out").read_text()
    assert 'href="00_demo/00_demo.html"' in page and 'href="00_demo/00_demo.ipynb"' in page
    assert "accuracy" in page and "0.5" in page and "&lt;b&gt;" in page  # values are escaped
    assert "skipped: its data is not at &#x27;x&#x27; &amp; y" in page
    assert "http" not in page  # nothing to fetch


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """``i2m2kit run`` as ``make run`` calls it, on notebook 00 at test size."""
    out = tmp_path_factory.mktemp("main_job")
    args = [sys.executable, "-m", "i2m2kit", "run", "--only", "00", "--out", str(out), "--no-progress"]
    for name, value in SMALL_00.items():
        args += ["-p", name, json.dumps(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reports of every notebook:  {out / 'index.html'}" in proc.stdout
    return out


def plots_drawn(page) -> list[dict]:
    """For each plotly figure on the page: its SVG's size, its drawn traces and their marks
    (points, bars, heatmap and picture images)."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el => {
        const svg = el.querySelector('svg.main-svg');
        const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
        const count = selector => el.querySelectorAll(selector).length;
        return {width: box.width, height: box.height, traces: count('.cartesianlayer .trace, .cartesianlayer .hm'),
                marks: count('.cartesianlayer .point, .cartesianlayer .hm image, .cartesianlayer .im image')};
    })""")


def test_index_and_every_export_draw_their_plots_offline(browser, main_job, tmp_path):  # noqa: F811
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.route("http*://**", lambda route: route.abort())  # offline, as for a user without the CDN
    page.goto((main_job / "index.html").as_uri())
    page.screenshot(path=shots / "index.png", full_page=True)
    links = page.locator("#notebooks a", has_text="report").evaluate_all("links => links.map(a => a.href)")
    assert len(links) == 1
    assert "bayes_accuracy" in page.inner_text("#numbers")
    for link in links:
        executed = nbformat.read(Path(unquote(urlparse(link).path)).with_suffix(".ipynb"), as_version=4)
        expected = sum(PLOTLY_MIME in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
        page.goto(link)
        page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= {expected}",
                               timeout=60_000)
        drawn = plots_drawn(page)
        assert len(drawn) == expected >= 10
        assert all(p["width"] > 100 and p["height"] > 100 and p["traces"] > 0 and p["marks"] > 0 for p in drawn), drawn
        page.screenshot(path=shots / f"{Path(link).stem}.png", full_page=True)
