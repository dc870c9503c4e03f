"""The notebooks, run headless with papermill at test size, then re-checked with nbval."""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval

from i2m2kit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
SMALL_00 = dict(n_train=1000, n_valid=500, n_test=2000, epochs=2, patience=1, hidden=8,
                grid_intra=[0.0, 1.0], grid_inter=[0.0, 2.0], hard_sizes=[300], hard_inter=[2.0])


@pytest.fixture(scope="module")
def run00(tmp_path_factory):
    out = tmp_path_factory.mktemp("notebooks")
    return run_notebook(ROOT / "notebooks" / "00_selection_variable.ipynb", out, SMALL_00, progress=False)


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs for c in code), f"{path.name} is committed with outputs"
        assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{path.name} has no parameters cell"


def test_every_notebook_declares_each_parameter_once_with_its_check_and_is_lean():
    """The parameters cell declares each parameter with its type, range or choices beside it
    (``name: Param(...) = value``; output_dir needs none), the notebook checks them in one
    call, and no notebook holds more than 90 lines of code (its library does the work)."""
    import ast

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        cell = next(c for c in code if "parameters" in c.metadata.get("tags", []))
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign):
                assert [t.id for t in node.targets] == ["output_dir"], f"{path.name}: {ast.unparse(node)} has no Param"
            elif isinstance(node, ast.AnnAssign):
                assert ast.unparse(node.annotation).startswith("Param("), f"{path.name}: {node.target.id}"
        source = "\n".join(c.source for c in code)
        assert source.count("check_parameters(globals())") == 1 and "check_parameter(" not in source, path.name
        lines = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(lines) < 90 if not path.name.startswith("00") else len(lines) < 120, (path.name, len(lines))


def test_a_declared_parameter_is_checked_with_its_bounds_and_none_means_not_set():
    from i2m2kit.runner import Param, check_parameters

    def namespace(**values):
        return {"__annotations__": {"n_train": Param((int, type(None)), low=2), "valid_size": Param(
            int, low=1, high=lambda p: p["n_train"] and p["n_train"] - 1), "split": Param(choices=(None, "b"))}, **values}

    check_parameters(namespace(n_train=None, valid_size=1, split=None))  # None: not set, so no bound applies
    check_parameters(namespace(n_train=10, valid_size=9, split="b"))
    for values, message in (({"n_train": 1, "valid_size": 1, "split": None}, "n_train=1: must be at least 2"),
                            ({"n_train": 10, "valid_size": 10, "split": None}, "valid_size=10: must be at most 9"),
                            ({"n_train": 10, "valid_size": 2, "split": "c"}, "split='c': must be one of"),
                            ({"n_train": "10", "valid_size": 2, "split": None}, "n_train='10': expected int or NoneType")):
        with pytest.raises(ValueError, match=re.escape(message)):
            check_parameters(namespace(**values))


def test_notebook_00_runs_and_reports_its_numbers(run00):
    m = run00["metrics"]
    assert {"bayes_accuracy", "models", "experts", "term_correlation", "regime_map", "hard_regime_map"} <= set(m)
    assert_dependency_report(m)
    assert m["dependency_exact"]["verdict"] == "both"  # intra 1, inter 3: the simulator holds both
    assert {v["expected_verdict"] for v in m["verdict_map"]} == {"undetermined", "intra-dominated", "inter-dominated", "both"}
    assert m["pid_without_selection"]["pid"]["synergy"] > 0.05 and m["pid_without_selection"]["verdict"] == "intra-dominated"
    assert set(m["models"]) == {"uni:x", "uni:x2", "intra", "inter", "i2m2"}
    assert 0.5 < m["bayes_accuracy"] < 1
    assert len(m["regime_map"]) == 4 * (5 + 2 + 2)  # 2x2 grid: five models joint, weighted and selected, two pretrained
    assert {r["label"] for r in m["hard_regime_map"]} >= {"i2m2", "i2m2 (weighted)", "i2m2 (selected)"}
    nb = nbformat.read(run00["notebook"], as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert "widgets" not in nb.metadata  # no stored widget state
    assert Path(run00["notebook"]).stat().st_size < 1_500_000  # figures, but no widget state (~5 MB each)


def test_notebook_00_html_draws_its_plots_offline(run00):
    html = Path(run00["html"]).read_text()
    nb = nbformat.read(run00["notebook"], as_version=4)
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 12  # with the dependency report and its verdict map
    assert html.count("Plotly.newPlot(") >= figures  # every figure is drawn by the page itself
    assert not re.search(r"<script[^>]+src=\"https?://[^\"]*plot", html)  # nothing fetched
    assert html.count("plotly.js v") == 1  # the library inlined once


def test_notebook_00_reproduces_under_nbval(run00):
    """nbval re-executes the copy papermill wrote (small parameters injected) and compares the
    outputs of the cells tagged nbval-check-output."""
    assert_reproduces_under_nbval(run00["notebook"])


def test_a_notebook_whose_data_is_missing_is_skipped_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "i2m2kit", "run", "--only", "02", "--data", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "skipping 02_icu.ipynb: its data is not at" in proc.stdout and "-p data_dir PATH" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "skipped" in summary["02_icu"]


def test_the_data_parameter_points_at_the_data_root(shared_data):
    from i2m2kit.runner import data_parameters

    params, skipped = data_parameters(ROOT / "notebooks" / "02_icu.ipynb", shared_data, {})
    assert skipped is None and params == {"data_dir": str((shared_data / "physionet2012").resolve())}
    # an explicit parameter wins over the data root
    params, _ = data_parameters(ROOT / "notebooks" / "02_icu.ipynb", "/nowhere", {"data_dir": str(shared_data / "mimic3_demo")})
    assert params["data_dir"].endswith("mimic3_demo")


@pytest.mark.parametrize("notebook, parameters, named", [
    ("01_avmnist.ipynb", {"epochs": 0}, "epochs=0: must be at least 1"),
    ("01_avmnist.ipynb", {"regime": "staged"}, "regime='staged': must be one of"),
    ("01_avmnist.ipynb", {"seeds": "0"}, "seeds='0': expected a non-empty list of int"),
    ("01_avmnist.ipynb", {"inter_shares": [0, 1.5]}, "inter_shares[1]=1.5: must be at most 1"),
    ("01_avmnist.ipynb", {"inter_shares": [0.0, "half"]}, "inter_shares=[0.0, 'half']: every element must be int or float"),
    ("01_avmnist.ipynb", {"contribution_share": 0.25}, "contribution_share=0.25: must be one of [0.0, 0.5, 1.0]"),
    ("02_icu.ipynb", {"task": "mortalty"}, "task='mortalty': must be one of"),
    ("02_icu.ipynb", {"dataset": "eicu"}, "dataset='eicu': must be one of"),
    ("02_icu.ipynb", {"stays": 10}, "stays=10: must be at least 50"),
    ("02_icu.ipynb", {"test_set": "a"}, "test_set='a': must be one of"),
    ("02_icu.ipynb", {"n_train": 10}, "unknown parameter n_train"),
    ("02_icu.ipynb", {"device": "cuda:7"}, "device='cuda:7': "),
    ("00_selection_variable.ipynb", {"epochs": -1}, "epochs=-1: must be at least 1"),
    ("00_selection_variable.ipynb", {"n_train": "abc"}, "n_train='abc': expected int, got str"),
    ("00_selection_variable.ipynb", {"hidden": 0}, "hidden=0: must be at least 1"),
    ("00_selection_variable.ipynb", {"inter": float("nan")}, "inter=nan: must be a finite number"),
    ("00_selection_variable.ipynb", {"intra": float("inf")}, "intra=inf: must be a finite number"),
    ("00_selection_variable.ipynb", {"grid_inter": []}, "grid_inter=[]: expected a non-empty list"),
    ("00_selection_variable.ipynb", {"grid_intra": [0.0, -1.0]}, "grid_intra[1]=-1.0: must be at least 0"),
    ("00_selection_variable.ipynb", {"regimes": ["staged"]}, "regimes[0]='staged': must be one of"),
    ("00_selection_variable.ipynb", {"device": "gpu"}, "device='gpu': "),
    ("01_avmnist.ipynb", {"n_train": 100, "valid_size": 100}, "valid_size=100: must be at most 99"),
    ("03_fastmri.ipynb", {"patience": 0}, "patience=0: must be at least 1"),
    ("04_vqa.ipynb", {"seeds": []}, "seeds=[]: expected a non-empty list"),
    ("05_nlvr.ipynb", {"lr": float("nan")}, "lr=nan: must be a finite number"),
])
def test_a_bad_parameter_fails_at_once_naming_it(tmp_path, notebook, parameters, named):
    started = time.perf_counter()
    with pytest.raises(Exception) as failure:
        run_notebook(ROOT / "notebooks" / notebook, tmp_path, {"output_dir": str(tmp_path), **parameters},
                     progress=False)
    assert named in str(failure.value)
    assert time.perf_counter() - started < 60  # in the first cell, before any data or training
    if "unknown" not in named:  # it ran, and failed in the cell right after the parameters
        stem = notebook.removesuffix(".ipynb")  # the failed run's cells are kept beside the earlier results
        nb = nbformat.read(tmp_path / stem / f"{stem}.failed.ipynb", as_version=4)
        failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and any(o.output_type == "error" for o in c.outputs)]
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        assert failed == [code[2]]  # parameters, injected parameters, then the first cell of the notebook's own


def test_a_parameter_no_notebook_takes_is_refused_by_the_main_job(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "i2m2kit", "run", "--only", "00", "02", "-p", "epochz", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "epochz" in proc.stderr


def test_a_nan_parameter_is_refused_where_bounds_are_asked():
    from i2m2kit.runner import check_parameter

    for bounds in ({"low": 0}, {"high": 1}, {"low": 0, "high": 1}, {}):
        for value in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match=f"share={value}: must be a finite number"):
                check_parameter("share", value, kind=float, **bounds)
    check_parameter("share", 0.5, kind=float, low=0, high=1)  # a number in range passes
    with pytest.raises(ValueError, match=r"shares\[1\]=nan: must be a finite number"):
        check_parameter("shares", [0.5, float("nan")], items=float, low=0)


def test_a_device_the_machine_lacks_is_refused_in_one_line():
    import torch

    from i2m2kit.runner import check_device

    check_device("device", "cpu")
    check_device("device", "auto")
    with pytest.raises(ValueError, match="device='gpu': device='gpu' is not a device name"):
        check_device("device", "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU on this machine"):
            check_device("device", "cuda")
    with pytest.raises(ValueError, match="expected str"):
        check_device("device", 0)


@pytest.mark.parametrize("arguments, named", [
    (["--inter", "nan"], "inter and bias must be finite numbers"),
    (["--intra", "1", "inf"], "inter and bias must be finite numbers"),
    (["--hidden", "0"], "--hidden=0: must be at least 1"),
    (["--n-train", "0"], "--n-train=0: must be at least 1"),
    (["--device", "gpu"], "device='gpu' is not a device name"),
])
def test_compare_refuses_a_bad_setting_before_sampling(tmp_path, arguments, named):
    proc = subprocess.run([sys.executable, "-m", "i2m2kit", "compare", *arguments, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and named in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_kernels_talk_over_ipc_so_the_console_has_no_tcp_warning(tmp_path):
    """The kernel of every notebook run listens on IPC sockets in a private temporary folder,
    removed afterwards; ipykernel's warning about unencrypted TCP is then never printed."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("output_dir = '.'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import ipykernel.kernelapp as k\nprint(k.IPKernelApp.instance().transport)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, tmp_path / "transport.ipynb")
    code = ("import sys; from i2m2kit.runner import run_notebook; "
            f"run_notebook({str(tmp_path / 'transport.ipynb')!r}, {str(tmp_path / 'out')!r}, progress=False)")
    before = {p.name for p in Path(tempfile.gettempdir()).glob("i2m2kit-kernel-*")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "without encryption" not in proc.stderr + proc.stdout
    out = nbformat.read(tmp_path / "out" / "transport" / "transport.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"].strip() == "ipc"
    assert not {p.name for p in Path(tempfile.gettempdir()).glob("i2m2kit-kernel-*")} - before  # none left
