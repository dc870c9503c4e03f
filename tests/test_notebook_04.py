"""Notebook 04 (VQA) run headless with papermill at test size: on the real easy-VQA data (the
installed package) and on a miniature VQA-VS folder in the published layout (its JSON lists,
out-of-distribution sets and COCO pictures); then re-checked with nbval."""

from pathlib import Path

import pytest
from conftest import assert_dependency_report, assert_reproduces_under_nbval, committed_notebook, notebook_errors, notebook_figures
from test_prepare_vqa import make_vs

from i2m2kit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_vqa.ipynb"
MODELS = {"uni:image", "uni:text", "intra", "inter", "i2m2"}
TINY = {"image_size": 8, "epochs": 1, "seeds": [0], "n_train": 300, "n_test": 300, "text_model": "scratch"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default path (easy-VQA from its package, joint training) at test size; the notebook
    prepares the data itself."""
    out = tmp_path_factory.mktemp("notebook04")
    return run_notebook(NOTEBOOK, out, TINY, progress=False)


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb, code, parameters = committed_notebook(NOTEBOOK, (
        "dataset", "data_dir", "text_model", "image_model", "regime", "epochs", "seeds", "device", "output_dir"))
    assert "check_parameters(globals())" in code[code.index(parameters) + 1].source
    assert "i2m2kit" not in nb.metadata  # easy-VQA installs with the package: no data location to find
    assert sum("nbval-check-output" in c.metadata.get("tags", []) for c in code) == 3  # the data, the five models, the dependency report


def test_default_run_reports_five_models_question_types_experts_and_a_modality_removed(default_run):
    assert not notebook_errors(default_run["notebook"])
    m = default_run["metrics"]
    assert_dependency_report(m)
    assert m["dataset"] == "easy-vqa" and m["text_model"] == "scratch" and m["image_model"] == "scratch" and m["regime"] == "joint"
    assert m["splits"] == {"train": 300, "valid": 3888, "test": 300}
    assert set(m["models"]) == MODELS
    assert all(0 <= v["vqa_score"] <= 1 for v in m["models"].values())
    assert 0.3 < m["prior_baseline"]["test"] < 0.45  # always "yes"
    assert set(m["by_question_type"]["uni:text"]) <= set(m["by_question_type"]["i2m2"])
    assert len(m["by_question_type"]["i2m2"]) == 24  # easy-VQA's question templates
    assert {k.split(", ")[1] for k in m["by_answer_type"]} == {"yes/no", "shape", "color"}
    assert {e["expert"] for e in m["experts"]} == {"image", "text", "joint"}
    assert set(m["missing_modality"]) == {"i2m2, image + text", "i2m2, image", "i2m2, text",
                                          "uni:image (trained alone)", "uni:text (trained alone)"}
    assert m["missing_modality"]["i2m2, image + text"] == pytest.approx(m["models"]["i2m2"]["vqa_score"])
    assert (Path(default_run["notebook"]).parent / "prepared" / "metadata.json").exists()
    # examples, models, by answer type, by question type, scatter, experts, Shapley, modality
    # removed; the two sets of chosen questions when there are any
    chosen = (m["question_decides"]["count"] > 0) + (m["joint_overrules"]["count"] > 0)
    assert notebook_figures(default_run["notebook"]) == 9 + chosen  # with the dependency report
    assert Path(default_run["notebook"]).stat().st_size < 2_000_000


def test_vqa_vs_runs_the_published_setting_and_scores_the_ood_sets(tmp_path):
    """The paper's setting on VQA-VS files (a miniature in the published layout, pictures in a
    separate COCO folder): one frozen backbone, three trained heads; the in-distribution and
    out-of-distribution VQA scores of every model."""
    raw, coco = make_vs(tmp_path / "vqa-vs", tmp_path / "coco")
    result = run_notebook(NOTEBOOK, tmp_path / "out", {
        **TINY, "dataset": "vqa-vs", "data_dir": str(raw), "images_dir": str(coco), "min_answer_count": 1,
        "regime": "frozen_backbone", "fusion": "concat", "n_train": None, "n_test": None}, progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["dataset"] == "vqa-vs" and m["regime"] == "frozen_backbone" and set(m["models"]) == MODELS
    assert m["splits"] == {"train": 6, "valid": 2, "test": 5}
    assert set(m["ood"]) == MODELS
    for model, scores in m["ood"].items():
        assert list(scores) == ["IID", "QT", "KO", "KW+KO", "OOD mean"]
        assert scores["IID"] == pytest.approx(m["models"][model]["vqa_score"])
        assert scores["OOD mean"] == pytest.approx((scores["QT"] + scores["KO"] + scores["KW+KO"]) / 3)


def test_a_dual_encoder_checkpoint_by_path_is_both_towers_frozen(default_run, tmp_path):
    """A tiny CLIP-like checkpoint written with save_pretrained, given by folder as the text
    and the image model: one frozen backbone, its features computed once, three heads."""
    from tiny_checkpoints import write_clip

    clip = str(write_clip(tmp_path / "clip"))
    prepared = Path(default_run["notebook"]).parent / "prepared"
    result = run_notebook(NOTEBOOK, tmp_path / "run", {**TINY, "prepared_dir": str(prepared), "text_model": clip,
                                                       "image_model": clip, "regime": "frozen_backbone"},
                          progress=False)
    assert not notebook_errors(result["notebook"])
    m = result["metrics"]
    assert m["text_model"] == clip and m["image_model"] == clip and m["regime"] == "frozen_backbone"
    assert set(m["models"]) == MODELS and all(0 <= v["vqa_score"] <= 1 for v in m["models"].values())


def test_bad_parameter_is_named(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="parameter dataset='coco'"):
        run_notebook(NOTEBOOK, tmp_path, {"dataset": "coco"}, progress=False)
    with pytest.raises(papermill.PapermillExecutionError, match="parameter data_dir=None: dataset='vqa-v2'"):
        run_notebook(NOTEBOOK, tmp_path, {"dataset": "vqa-v2"}, progress=False)
    with pytest.raises(papermill.PapermillExecutionError, match="parameter images_dir=3"):
        run_notebook(NOTEBOOK, tmp_path, {"dataset": "vqa-vs", "images_dir": 3}, progress=False)


def test_run_reproduces_under_nbval(default_run):
    """nbval re-executes the copy with the same parameters and compares the checked cells:
    the splits, the prior and the five models' test VQA scores."""
    assert_reproduces_under_nbval(default_run["notebook"])
