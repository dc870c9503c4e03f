"""Notebook 02 (intensive care) run headless with papermill at test size: on the real
PhysioNet/CinC 2012 set A (the default) and on the real MIMIC-III demo; then re-checked with nbval."""

from pathlib import Path

import nbformat
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook, notebook_errors

from i2m2kit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_icu.ipynb"
MODELS = {"uni:static", "uni:series", "intra", "inter", "i2m2"}


def figures(notebook) -> int:
    nb = nbformat.read(notebook, as_version=4)
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def physionet(shared_data, tmp_path_factory):
    """The default dataset at a tiny size; the notebook prepares set A itself."""
    out = tmp_path_factory.mktemp("notebook02")
    return run_notebook(NOTEBOOK, out, {"data_dir": str(shared_data / "physionet2012"), "stays": 400, "epochs": 1,
                                        "seeds": [0]}, progress=False)


@pytest.fixture(scope="module")
def mortality(shared_data, tmp_path_factory):
    """MIMIC-III, one parameter away; the notebook prepares the demo tables itself."""
    out = tmp_path_factory.mktemp("notebook02_mimic")
    return run_notebook(NOTEBOOK, out, {"dataset": "mimic", "data_dir": str(shared_data / "mimic3_demo"), "epochs": 2,
                                        "seeds": [0]}, progress=False)


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb, _, cell = committed_notebook(NOTEBOOK, (
        "dataset", "data_dir", "stays", "test_set", "task", "epochs", "seeds", "device", "output_dir"))
    assert 'dataset: Param(choices=("physionet2012", "mimic")) = "physionet2012"' in cell.source
    prose = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "SAPS-I" in prose and "no meaningful number" in prose


def test_physionet_run_scores_five_models_against_saps(physionet):
    assert not notebook_errors(physionet["notebook"])
    m = physionet["metrics"]
    assert m["dataset"] == "physionet2012" and m["splits"] == {"train": 279, "valid": 61, "test": 60}
    assert set(m["models"]) == MODELS | {"SAPS-I alone"} and m["selection_metric"] == "auprc"
    for values in m["models"].values():
        assert set(values) == {"auroc", "auprc", "event1", "balanced_accuracy"}
        assert all(0 <= v <= 1 for v in values.values())
    assert {e["expert"] for e in m["experts"]} == {"static", "series", "joint"}
    assert set(m["missing_modality"]) == {"i2m2, series + static", "i2m2, static", "i2m2, series",
                                          "uni:static (trained alone)", "uni:series (trained alone)"}
    assert m["missing_modality"]["i2m2, series + static"] == pytest.approx(m["models"]["i2m2"]["auroc"])
    report = assert_dependency_report(m)
    assert all(r["metric"] == "auroc" for r in report["rows"])
    assert (Path(physionet["notebook"]).parent / "prepared_physionet2012" / "set-a.npz").exists()
    assert figures(physionet["notebook"]) == 7  # 6, and the dependency report
    assert Path(physionet["notebook"]).stat().st_size < 1_000_000


def test_notebook_02_reproduces_under_nbval(physionet):
    """nbval re-executes the copy papermill wrote and compares the checked cells: the split
    sizes, the five models' and SAPS-I's test metrics, the dependency report."""
    assert_reproduces_under_nbval(physionet["notebook"])


def test_mimic_run_reports_five_models_and_missing_modalities(mortality):
    assert not notebook_errors(mortality["notebook"])
    m = mortality["metrics"]
    assert_dependency_report(m)
    assert m["task"] == "mortality" and m["splits"] == {"train": 74, "valid": 9, "test": 9}
    assert set(m["models"]) == MODELS
    assert m["selection_metric"] == "loss"  # the demo's validation split lacks some of the 6 classes
    assert m["missing_modality"]["i2m2, series + static"] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    assert (Path(mortality["notebook"]).parent / "prepared_mimic" / "mimic.npz").exists()
    assert figures(mortality["notebook"]) == 7


def test_binary_mimic_task_reuses_the_prepared_data_and_selects_on_auprc(mortality, tmp_path):
    prepared = Path(mortality["notebook"]).parent / "prepared_mimic"
    result = run_notebook(NOTEBOOK, tmp_path, {"dataset": "mimic", "data_dir": "/nonexistent",
                                               "prepared_dir": str(prepared), "task": "icd9_140_239", "epochs": 1,
                                               "seeds": [0, 1]}, progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["task"] == "icd9_140_239" and m["selection_metric"] == "auprc"
    assert set(m["models"]) == MODELS and all("auroc" in v for v in m["models"].values())


def test_mimic_pointed_at_the_physionet_files_says_what_to_pass(shared_data, tmp_path):
    with pytest.raises(Exception) as failure:
        run_notebook(NOTEBOOK, tmp_path, {"dataset": "mimic", "data_dir": str(shared_data / "physionet2012")},
                     progress=False)
    assert "holds no MIMIC-III tables" in str(failure.value) and "-p data_dir" in str(failure.value)


def test_a_rerun_with_other_raw_files_refuses_the_stale_prepared_data_and_keeps_the_results(physionet, shared_data,
                                                                                            tmp_path):
    """The user's case: a second run into the same folder with -p data_dir OTHER used to train
    on the first data set, exit 0. The prepared folder's fingerprint names what differs."""
    other = tmp_path / "other"
    other.mkdir()
    for f in (shared_data / "physionet2012").iterdir():  # the same files, found elsewhere
        (other / f.name).symlink_to(f)
    run_dir = Path(physionet["notebook"]).parent
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(Exception) as failure:
        run_notebook(NOTEBOOK, run_dir.parent, {"data_dir": str(other), "stays": 400, "epochs": 1}, progress=False)
    assert "prepared from other input or settings (raw:" in str(failure.value) and "delete the folder" in str(failure.value)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after.pop("02_icu.failed.ipynb") and after == before
    (run_dir / "02_icu.failed.ipynb").unlink()
