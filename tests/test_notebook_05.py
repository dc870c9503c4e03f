"""Notebook 05 (NLVR v1) run headless with papermill on the real files at test size, then
re-checked with nbval; and once on a miniature NLVR2 folder (``nlvr2_files``)."""

from pathlib import Path

import nbformat
import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook, notebook_errors, notebook_figures
from nlvr2_files import make_nlvr2

from i2m2kit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_nlvr.ipynb"
MODELS = {"uni:image", "uni:text", "intra", "inter", "i2m2"}
TINY = {"downsample": 10, "epochs": 1, "seeds": [0], "n_train": 256}


@pytest.fixture(scope="module")
def default_run(shared_data, tmp_path_factory):
    """The default path (joint training, text encoder from scratch) at test size; the
    notebook prepares the data itself."""
    out = tmp_path_factory.mktemp("notebook05")
    return run_notebook(NOTEBOOK, out, {"data_dir": str(shared_data / "nlvr" / "nlvr1"), "text_model": "scratch", **TINY},
                        progress=False)


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb, code, parameters = committed_notebook(NOTEBOOK, (
        "data_dir", "text_model", "image_model", "regime", "epochs", "seeds", "device", "output_dir", "image_size"))
    assert "check_parameters(globals())" in code[code.index(parameters) + 1].source
    assert "image_size: Param(int, low=8, high=1024)" in parameters.source  # declared with its check
    assert nb.metadata["i2m2kit"] == {"data_parameter": "data_dir", "data_subdir": "nlvr/nlvr1"}
    assert any("nbval-check-output" in c.metadata.get("tags", []) for c in code)


def test_default_run_reports_five_models_experts_and_a_modality_removed(default_run):
    assert not notebook_errors(default_run["notebook"])
    m = default_run["metrics"]
    assert_dependency_report(m)
    assert m["splits"] == {"train": 256, "valid": 989, "test": 990}
    assert m["text_model"] == "scratch" and m["image_model"] == "scratch" and m["regime"] == "joint" and m["dataset"] == "nlvr"
    assert m["renderer_agreement"]["valid"]["pixels_equal"] >= 0.99
    assert m["majority_baseline"]["test"] == pytest.approx(556 / 990)
    assert set(m["models"]) == MODELS
    assert all(0 <= v["accuracy"] <= 1 for v in m["models"].values())
    assert {e["expert"] for e in m["experts"]} == {"image", "text", "joint"}
    assert set(m["missing_modality"]) == {"i2m2, image + text", "i2m2, image", "i2m2, text",
                                          "uni:image (trained alone)", "uni:text (trained alone)"}
    assert m["missing_modality"]["i2m2, image + text"] == pytest.approx(m["models"]["i2m2"]["accuracy"])
    assert (Path(default_run["notebook"]).parent / "prepared" / "metadata.json").exists()
    nb = nbformat.read(default_run["notebook"], as_version=4)
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    # examples, models, scatter, experts, Shapley, modality removed; the overruled examples when there are any
    assert figures == 7 + (m["joint_overrules"]["count"] > 0)  # with the dependency report
    assert Path(default_run["notebook"]).stat().st_size < 2_000_000


def test_frozen_shared_backbone_with_concatenation_runs(default_run, tmp_path):
    prepared = Path(default_run["notebook"]).parent / "prepared"
    result = run_notebook(NOTEBOOK, tmp_path, {"data_dir": "/nonexistent", "prepared_dir": str(prepared),
                                               "regime": "frozen_backbone", "fusion": "concat", "text_model": "auto",
                                               **TINY, "n_train": 64}, progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["regime"] == "frozen_backbone" and set(m["models"]) == MODELS


@pytest.mark.parametrize("regime", ["frozen_backbone", "joint"])
def test_pretrained_checkpoints_by_path_are_the_text_and_image_models(default_run, tmp_path, regime):
    """Tiny checkpoints written with save_pretrained, given by folder: a BERT-like text model
    with its tokenizer and a ViT-like image model with its processor; frozen (features
    computed once) or fine-tuned."""
    from tiny_checkpoints import write_bert, write_vit

    bert, vit = write_bert(tmp_path / "bert"), write_vit(tmp_path / "vit")
    prepared = Path(default_run["notebook"]).parent / "prepared"
    result = run_notebook(NOTEBOOK, tmp_path / "run", {"data_dir": "/nonexistent", "prepared_dir": str(prepared),
                                                       "text_model": str(bert), "image_model": str(vit),
                                                       "regime": regime, "fusion": "concat", **TINY, "n_train": 64,
                                                       "feature_cache_dir": str(tmp_path / "features")},
                          progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["text_model"] == str(bert) and m["image_model"] == str(vit) and m["regime"] == regime
    # frozen: the training and validation features, once, on disk; fine-tuned: none
    assert len(list((tmp_path / "features").glob("*/key.json"))) == (2 if regime == "frozen_backbone" else 0)
    assert set(m["models"]) == MODELS and all(0 <= v["accuracy"] <= 1 for v in m["models"].values())


def test_bad_parameter_is_named(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="parameter regime='pretrained'"):
        run_notebook(NOTEBOOK, tmp_path, {"regime": "pretrained", "data_dir": "/nonexistent"}, progress=False)


def test_run_reproduces_under_nbval(default_run):
    """nbval re-executes the copy with the same parameters and compares the checked cells:
    the renderer check, the splits and the five models' test accuracies."""
    assert_reproduces_under_nbval(default_run["notebook"])


def test_nlvr2_run_on_a_miniature_folder_shows_image_pairs_and_five_models(shared_data, tmp_path):
    """NLVR2: the notebook tells the data set from the folder, prepares it at image_size and
    trains the five models with the pair encoder."""
    root, _ = make_nlvr2(shared_data, tmp_path / "nlvr2")
    result = run_notebook(NOTEBOOK, tmp_path / "run", {"data_dir": str(root), "text_model": "scratch", "image_size": 16,
                                                       "epochs": 1, "seeds": [0], "n_train": 32}, progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["dataset"] == "nlvr2" and m["image_size"] == 16 and "downsample" not in m
    assert m["splits"] == {"train": 32, "valid": 24, "test": 24} and m["renderer_agreement"] == {}
    assert set(m["models"]) == MODELS and all(0 <= v["accuracy"] <= 1 for v in m["models"].values())
    assert {e["expert"] for e in m["experts"]} == {"image", "text", "joint"}
    assert "i2m2, image" in m["missing_modality"]
    nb = nbformat.read(result["notebook"], as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "renderer vs the published" not in printed and "images (2, 3, 16, 16)" in printed
    examples = next(o for c in nb.cells if "nlvr.show_examples(data, range(" in c.source for o in c.outputs)
    rows = examples["data"]["application/vnd.plotly.v1+json"]["layout"]["annotations"]
    assert {"left", "right"} <= {a["text"] for a in rows}  # two panels per example
    assert notebook_figures(result["notebook"]) == 7 + (m["joint_overrules"]["count"] > 0)  # with the dependency report
