"""Notebook 01 (AV-MNIST) run headless with papermill on the real raw files at test size, then
re-checked with nbval."""

import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook, notebook_errors, notebook_figures

from i2m2kit.runner import data_parameters, run_notebook
from i2m2kit.tasks import avmnist_spectrum as spectrum

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_avmnist.ipynb"
MODELS = {"uni:image", "uni:audio", "intra", "inter", "i2m2"}
TINY = {"n_train": 400, "n_test": 200, "valid_size": 100, "epochs": 1, "seeds": [0]}


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    """The published recipe (pretrain, then fine-tune) on pairs built from the raw files."""
    out = tmp_path_factory.mktemp("notebook01")
    return run_notebook(NOTEBOOK, out, {"raw_dir": str(shared_data), **TINY}, progress=False)


def executed(result):
    return nbformat.read(result["notebook"], as_version=4)


def test_committed_notebook_has_its_parameters_and_says_its_defaults_are_a_subset():
    nb, _, _ = committed_notebook(NOTEBOOK, (
        "raw_dir", "download", "prepared_dir", "n_train", "n_test", "valid_size", "regime", "epochs",
        "seeds", "inter_shares", "contribution_share", "device", "output_dir"))
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "not the published setting" in text and "72.38" in text
    assert nb.metadata["i2m2kit"]["data_requires"] == ["mnist", "fsdd", "esc50"]


def test_tiny_run_builds_the_pairs_trains_the_five_models_and_reports_them(tiny):
    assert not notebook_errors(tiny["notebook"])
    m = tiny["metrics"]
    assert m["splits"] == {"train": 300, "valid": 100, "test": 200}
    assert set(m["models"]) == MODELS and m["regime"] == "pretrain_finetune"
    assert all(0 <= v["accuracy"] <= 1 for v in m["models"].values())
    # I2M2's training time includes the pretraining of its three experts (their own runs)
    t = {k: v["train_seconds"] for k, v in m["models"].items()}
    assert t["i2m2"] > t["uni:image"] + t["uni:audio"] + t["inter"]
    assert {e["expert"] for e in m["experts"]} == {"image", "audio", "joint"}
    assert set(m["missing_modality"]) == {"i2m2, audio + image", "i2m2, image", "i2m2, audio",
                                          "uni:image (trained alone)", "uni:audio (trained alone)"}
    assert m["missing_modality"]["i2m2, audio + image"] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    noised = {(r["model"], r["noise"]): r["accuracy"] for r in m["noised"]}
    assert len(noised) == 3 * 2 * 4  # intra, inter, i2m2; noisy image or audio; four levels
    assert noised["i2m2, noisy audio", 0.0] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    assert 0 <= m["joint_overrules"]["fraction"] <= 1
    # image and recording are paired at random within a digit: no inter-modality dependency to find
    assert_dependency_report(m, verdicts=("intra-dominated", "undetermined"))
    prepared = Path(tiny["notebook"]).parent / "prepared_400_200"
    labels = np.load(prepared / "train_labels.npy")
    assert len(labels) == 400 and np.load(prepared / "audio" / "test_data.npy").shape == (200, 112, 112)
    assert notebook_figures(tiny["notebook"]) >= 10
    assert Path(tiny["notebook"]).stat().st_size < 1_000_000  # pictures stored as PNG, not as numbers
    html = Path(tiny["html"]).read_text()
    assert html.count("plotly.js v") == 1 and html.count("Plotly.newPlot(") >= notebook_figures(tiny["notebook"])


def test_the_spectrum_section_trains_every_share_and_shows_who_decides(tiny):
    m = tiny["metrics"]
    rows = {(r["share"], r["model"]): r for r in m["spectrum"]}
    assert set(rows) == {(s, model) for s in (0.0, 0.5, 1.0) for model in MODELS | {spectrum.REFERENCE}}
    for (share, model), r in rows.items():
        assert 0 <= r["accuracy"] <= 1 and r["regime"] == "pretrain_finetune" and r["seed"] == 0
        # each kind of pair scored where there is one; NaN where there is none
        assert math.isnan(r["accuracy_inter"]) == (share == 0) and math.isnan(r["accuracy_published"]) == (share == 1)
        assert (r["shuffle_drop"] is None) == (model.startswith("uni:") or model == spectrum.REFERENCE)
        if share == 0.5:
            assert r["accuracy"] == pytest.approx((r["accuracy_published"] + r["accuracy_inter"]) / 2)
    # share 0 is the benchmark of section 2, not a new run
    assert rows[0.0, "i2m2"]["accuracy"] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    out = Path(tiny["notebook"]).parent
    for share in (0.5, 1.0):
        meta = json.loads((out / f"prepared_400_200_inter{share:g}" / "metadata.json").read_text())
        assert meta["inter_share"] == share and meta["inter_pairs"]["counts"] == {"train": 400 * share, "test": 200 * share}
    deciders = m["spectrum_deciders"]
    assert deciders["share"] == 0.5
    assert {(r["pairs"], r["expert"]) for r in deciders["rows"]} == {
        (kind, e) for kind in ("published pairs", "inter-modality pairs") for e in ("image", "audio", "joint")}
    for kind in ("published pairs", "inter-modality pairs"):
        assert sum(r["decides"] for r in deciders["rows"] if r["pairs"] == kind) == pytest.approx(1)
        assert {r["count"] for r in deciders["rows"] if r["pairs"] == kind} == {100}


def test_a_prepared_folder_is_used_as_is_and_the_joint_regime_runs(tiny, tmp_path):
    prepared = Path(tiny["notebook"]).parent / "prepared_400_200"
    # without the raw files only share 0, the prepared folder itself, can be in the spectrum
    result = run_notebook(NOTEBOOK, tmp_path, {**TINY, "raw_dir": "/nonexistent", "prepared_dir": str(prepared),
                                               "regime": "joint", "seeds": [0, 1], "inter_shares": [0.0],
                                               "contribution_share": 0.0}, progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["regime"] == "joint" and m["seeds"] == [0, 1] and set(m["models"]) == MODELS
    outputs = json.dumps([c.get("outputs", []) for c in executed(result).cells])
    assert "wrote " not in outputs  # nothing rebuilt
    assert {r["share"] for r in m["spectrum"]} == {0.0} and m["spectrum_deciders"]["rows"][0]["pairs"] == "published pairs"


def test_tiny_run_reproduces_under_nbval(tiny):
    assert_reproduces_under_nbval(tiny["notebook"])


def test_without_the_raw_files_the_notebook_is_skipped_with_the_reason(tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)  # a data root without FSDD and ESC-50
    proc = subprocess.run([sys.executable, "-m", "i2m2kit", "run", "--only", "01", "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "skipping 01_avmnist.ipynb:" in proc.stdout and "lacks fsdd, esc50" in proc.stdout
    assert "-p download true" in proc.stdout
    assert "skipped" in json.loads((tmp_path / "out" / "summary.json").read_text())["01_avmnist"]
    # told to download, it runs (and fetches into that folder)
    params, skipped = data_parameters(NOTEBOOK, tmp_path / "data", {"download": True})
    assert skipped is None and params == {"raw_dir": str((tmp_path / "data").resolve())}


def test_the_raw_data_root_is_passed_as_is(shared_data):
    params, skipped = data_parameters(NOTEBOOK, shared_data, {})
    assert skipped is None and params == {"raw_dir": str(shared_data.resolve())}
