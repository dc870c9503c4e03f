"""Notebook 00 in a real JupyterLab, driven by Debian's Chromium through Playwright.

A person opens the notebook, runs every cell, moves a slider of the contribution explorer and
clicks a point: the figures must change and no cell may raise. The browser is the system's
Chromium (Playwright's own browser download cannot work offline). Where Chromium or
Playwright is missing the tests skip with the reason, except in CI, where they fail.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_notebooks import SMALL_00

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_selection_variable.ipynb"
EXPLORER = ".i2m2kit-contribution-explorer"
RUN_ALL_SECONDS = 240  # every cell of notebook 00 at test size, on a busy 2-core machine


def unavailable(reason: str):
    """A missing browser skips the test here but fails it in CI, where it must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the browser tests must run in CI (make test installs Chromium and Playwright)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The system's Chromium: $I2M2KIT_CHROMIUM, else the first on PATH."""
    return os.environ.get("I2M2KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module (Playwright's sync API owns an event loop while
    it runs, so it is not left running under other modules' notebook kernels)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except Exception as error:  # noqa: BLE001 - any launch failure means no browser
            unavailable(f"Chromium at {path} did not start: {error}")
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab on loopback serving a copy of notebook 00 with the test-size parameters
    injected (as papermill does), with its own settings, workspace and runtime folders."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    work = tmp_path / "work"
    work.mkdir()
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK)),
                               {**SMALL_00, "output_dir": str(work / "outputs")})
    nbformat.write(nb, work / NOTEBOOK.name)
    settings = {  # every cell attached to the page, so the checks see every output; no news pop-up
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        file = tmp_path / "lab-settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    token, port = secrets.token_hex(16), free_port()
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.token={token}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={work}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": f"{url}/lab/tree/{NOTEBOOK.name}?token={token}", "notebook": work / NOTEBOOK.name}
    finally:
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# what a plotly figure draws (x and y of each trace, or its picture), read from its div
TRACES = "el => JSON.stringify((el.data || []).map(t => [t.x, t.y, t.source || null]))"


def plot_data(page, selector: str, nth: int = 0) -> str:
    return page.locator(selector).nth(nth).evaluate(TRACES)


def test_notebook_00_in_jupyterlab_runs_and_its_explorer_responds(browser, jupyterlab, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.set_default_timeout(60_000)
    page.goto(jupyterlab["url"])
    # the notebook is loaded (every cell on the page) and its kernel has started and is idle
    cells = len(nbformat.read(jupyterlab["notebook"], as_version=4).cells)
    page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length === {cells}",
                           timeout=120_000)
    page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=120_000)
    page.screenshot(path=shots / "0_opened.png")

    # Run > Run All Cells, as a person would
    page.locator(".jp-NotebookPanel .jp-Cell").first.click()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.locator(".jp-CodeCell .jp-InputPrompt", has_text="[1]").wait_for(timeout=60_000)  # it started
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            const status = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p))
                && status && status.dataset.status === 'idle';
        }""", timeout=RUN_ALL_SECONDS * 1000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, tracebacks[0][-3000:]
    assert page.locator(".jp-OutputArea-output", has_text="Error displaying widget").count() == 0

    explorer = page.locator(EXPLORER)
    explorer.wait_for()
    explorer.scroll_into_view_if_needed()
    scatter = f"{EXPLORER} .js-plotly-plot"
    page.wait_for_function(f"() => document.querySelectorAll('{scatter}').length >= 3 && "
                           f"document.querySelector('{scatter}').data.length > 0")
    page.screenshot(path=shots / "1_ran_all_cells.png", full_page=True)
    explorer.screenshot(path=shots / "2_explorer.png")

    # move the intra slider one step: the explorer resamples the data and redraws
    before = plot_data(page, scatter)
    status = page.locator(f"{EXPLORER} .widget-html").first.inner_text()
    handle = explorer.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function(f"before => ({TRACES})(document.querySelector('{scatter}')) !== before",
                           arg=before, timeout=30_000)
    assert page.locator(f"{EXPLORER} .widget-html").first.inner_text() != status
    explorer.screenshot(path=shots / "3_after_slider.png")

    # click the point farthest out (no other point on it): the sample view shows that sample
    target = page.locator(scatter).first.evaluate("""el => {
        let best = null;
        el.data.forEach((trace, t) => trace.x.forEach((x, i) => {
            const score = Math.abs(x) + Math.abs(trace.y[i]);
            if (!best || score > best.score) best = {score, t, i, sample: trace.customdata[i]};
        }));
        const point = el.querySelectorAll('.scatterlayer .trace')[best.t].querySelectorAll('.point')[best.i];
        const box = point.getBoundingClientRect();
        return {x: box.x + box.width / 2, y: box.y + box.height / 2, sample: best.sample};
    }""")
    experts_before = plot_data(page, scatter, 2)
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    selected = page.locator(f"{EXPLORER} .widget-html").nth(1)
    selected.filter(has_text=f"sample {target['sample']}:").wait_for(timeout=30_000)
    assert plot_data(page, scatter, 2) != experts_before
    explorer.screenshot(path=shots / "4_after_click.png")

    # nothing raised, in the page or in the kernel's saved record of the run
    path = Path(jupyterlab["notebook"])
    written = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    assert not errors.filter(has_text="Traceback").count()
    saved, deadline = None, time.time() + 60
    while saved is None:  # the server writes the file after the keypress: wait for a whole new one
        assert time.time() < deadline, "the notebook was not saved within 60 s"
        page.wait_for_timeout(500)
        if path.stat().st_mtime_ns != written:
            try:
                saved = nbformat.read(path, as_version=4)
            except (nbformat.reader.NotJSONError, ValueError):
                saved = None  # caught mid-write
    raised = [o for c in saved.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not raised, raised[0].get("traceback", [""])[-1]
