"""Notebook 02 (MIMIC-III) run headless with papermill on the real demo at test size, then
re-checked with nbval."""

from pathlib import Path

import nbformat
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook, notebook_errors

from i2m2kit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_mimic.ipynb"
MODELS = {"uni:static", "uni:series", "intra", "inter", "i2m2"}


@pytest.fixture(scope="module")
def mortality(shared_data, tmp_path_factory):
    """The default task; the notebook prepares the demo tables itself."""
    out = tmp_path_factory.mktemp("notebook02")
    return run_notebook(NOTEBOOK, out, {"data_dir": str(shared_data / "mimic3_demo"), "epochs": 2, "seeds": [0]},
                        progress=False)


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb, _, _ = committed_notebook(NOTEBOOK, (
        "data_dir", "task", "epochs", "seeds", "device", "output_dir"))
    assert "no meaningful accuracy" in " ".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_mortality_run_reports_five_models_and_missing_modalities(mortality):
    assert not notebook_errors(mortality["notebook"])
    m = mortality["metrics"]
    assert_dependency_report(m)
    assert m["task"] == "mortality" and m["splits"] == {"train": 74, "valid": 9, "test": 9}
    assert set(m["models"]) == MODELS
    assert all(0 <= v["accuracy"] <= 1 for v in m["models"].values())
    assert m["selection_metric"] == "loss"  # the demo's validation split lacks some of the 6 classes
    assert {e["expert"] for e in m["experts"]} == {"static", "series", "joint"}
    assert set(m["missing_modality"]) == {"i2m2, series + static", "i2m2, static", "i2m2, series",
                                          "uni:static (trained alone)", "uni:series (trained alone)"}
    assert m["missing_modality"]["i2m2, series + static"] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    assert (Path(mortality["notebook"]).parent / "prepared" / "mimic.npz").exists()
    nb = nbformat.read(mortality["notebook"], as_version=4)
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures == 7  # 6, and the dependency report
    assert Path(mortality["notebook"]).stat().st_size < 1_000_000


def test_binary_task_reuses_the_prepared_data_and_selects_on_auprc(mortality, tmp_path):
    prepared = Path(mortality["notebook"]).parent / "prepared"
    result = run_notebook(NOTEBOOK, tmp_path, {"data_dir": "/nonexistent", "prepared_dir": str(prepared),
                                               "task": "icd9_140_239", "epochs": 1, "seeds": [0, 1]},
                          progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["task"] == "icd9_140_239" and m["selection_metric"] == "auprc"
    assert set(m["models"]) == MODELS and all("auroc" in v for v in m["models"].values())


def test_notebook_02_reproduces_under_nbval(mortality):
    """nbval re-executes the copy papermill wrote and compares the checked cells: the split
    sizes and the five models' test metrics (same seeds, same numbers)."""
    assert_reproduces_under_nbval(mortality["notebook"])
