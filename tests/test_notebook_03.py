"""Notebook 03 (fastMRI knee) run headless with papermill on miniature files in the published
layout and the real fastMRI+ annotations, then re-checked with nbval; without the k-space
files the main job skips it."""

from pathlib import Path

import nbformat
import papermill
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook
from fastmri_files import miniature_raw

from i2m2kit.runner import data_parameters, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_fastmri.ipynb"
MODELS = {"uni:magnitude", "uni:phase", "intra", "inter", "i2m2"}
# Tiny experts on 40 x 40 images; split seed 27 puts a volume with findings in valid and in test.
SMALL = {"split_seed": 27, "epochs": 1, "patience": 1, "width": 4, "downsample": 8, "batch_size": 32}


@pytest.fixture(scope="module")
def run03(shared_data, tmp_path_factory):
    raw, _ = miniature_raw(tmp_path_factory, shared_data / "fastmri_plus" / "knee.csv")
    out = tmp_path_factory.mktemp("notebook03")
    return run_notebook(NOTEBOOK, out, {"data_dir": str(raw), "annotations_dir": str(shared_data / "fastmri_plus"),
                                        **SMALL}, progress=False)


def test_committed_notebook_has_no_outputs_and_declares_its_data():
    nb, _, parameters = committed_notebook(NOTEBOOK, (
        "data_dir", "annotations_dir", "label", "epochs", "seeds", "device", "output_dir"))
    # the defaults are the published setting: PreAct-ResNet18 on 320 x 320 images
    assert "\nwidth: Param(int, low=1) = 64 " in parameters.source
    assert "\ndownsample: Param(int, low=1, high=80) = 1 " in parameters.source
    need = nb.metadata["i2m2kit"]
    assert need["data_parameter"] == "data_dir" and need["data_subdir"] == "fastmri/knee_singlecoil"
    assert "https://fastmri.med.nyu.edu/" in need["data_hint"]


def test_run_reports_five_models_contributions_and_missing_modalities(run03):
    nb = nbformat.read(run03["notebook"], as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    m = run03["metrics"]
    assert_dependency_report(m)
    assert m["label"] == "abnormal" and m["selection_metric"] == "auroc"
    assert m["splits"] == {"train": {"volumes": 5, "slices": 55}, "valid": {"volumes": 1, "slices": 18},
                           "test": {"volumes": 1, "slices": 13}}
    assert set(m["models"]) == MODELS
    for values in m["models"].values():
        for metric in ("auroc", "balanced_accuracy", "sensitivity", "specificity"):
            assert 0 <= values[metric] <= 1 and 0 <= values[f"{metric}/abnormal"] <= 1
    assert [e["expert"] for e in m["experts"]] == ["magnitude", "phase", "joint"]
    assert "joint_expert_auroc_gain" in m
    assert set(m["missing_modality"]) == {"i2m2, magnitude + phase", "i2m2, magnitude", "i2m2, phase",
                                          "uni:magnitude (trained alone)", "uni:phase (trained alone)"}
    assert (Path(run03["notebook"]).parent / "prepared" / "metadata.json").exists()
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures == 9  # 8, and the dependency report
    assert Path(run03["notebook"]).stat().st_size < 1_000_000


def test_notebook_03_reproduces_under_nbval(run03):
    """nbval re-executes the copy papermill wrote (the prepared data is reused) and compares
    the cells tagged nbval-check-output."""
    assert_reproduces_under_nbval(run03["notebook"])


def test_without_the_kspace_files_the_main_job_skips_it(tmp_path):
    """The data root has no fastmri/knee_singlecoil (as ../shared/data): skipped, with the reason."""
    params, skipped = data_parameters(NOTEBOOK, tmp_path, {})
    assert params == {} and skipped.startswith("its data is not at") and "-p data_dir PATH" in skipped
    assert "https://fastmri.med.nyu.edu/" in skipped  # how to obtain the files
    (tmp_path / "fastmri" / "knee_singlecoil").mkdir(parents=True)
    params, skipped = data_parameters(NOTEBOOK, tmp_path, {})
    assert skipped is None and params == {"data_dir": str((tmp_path / "fastmri" / "knee_singlecoil").resolve())}


def test_run_by_hand_without_the_files_says_how_to_get_them(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match=r"data-use agreement.*https://fastmri\.med\.nyu\.edu/"):
        run_notebook(NOTEBOOK, tmp_path, {"data_dir": str(tmp_path / "none")}, progress=False)
