"""i2m2kit.tasks.vqa: the prepared-data reader, soft answer scores, and the experts, on a
slice of the real easy-VQA data (the installed package)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_data_script

import i2m2kit as ik
from i2m2kit.tasks import vqa


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The first 3,000 questions of each published split (a few hundred pictures each)."""
    out = tmp_path_factory.mktemp("vqa") / "prepared"
    load_data_script("prepare_vqa").prepare(vqa.easy_vqa_dir(), out, limit=3000, progress=False)
    return out


@pytest.fixture(scope="module")
def data(prepared):
    return vqa.load(prepared, text_model="scratch", image_size=32)


def test_load_gives_uint8_pictures_token_ids_and_soft_scores(prepared, data):
    lines = [json.loads(line) for line in (prepared / "valid.jsonl").read_text().splitlines()]
    valid = data.splits["valid"]
    assert len(valid) == len(lines) and len(data.answers) == 13
    image, text, scores = valid.inputs["image"], valid.inputs["text"], valid.targets
    assert image.dtype == torch.uint8 and image.shape[1:] == (3, 32, 32)
    assert text.dtype == torch.int64 and text.shape == (len(lines), data.text.max_len)
    assert scores.shape == (len(lines), 13) and scores.dtype == torch.float32
    for i in (0, len(lines) // 2, len(lines) - 1):  # each row holds the scores of its JSON line
        expected = torch.zeros(13)
        for answer, score in lines[i]["answers"].items():
            expected[data.answers.index(answer)] = score
        assert torch.equal(scores[i], expected)
        assert data.answers[int(data.best_answer("valid")[i])] == lines[i]["answer"]
    # pictures are the prepared ones averaged over 2 x 2 blocks
    full = np.load(prepared / "valid_images.npy")[lines[0]["image"]].astype(np.float32)
    blocks = full.reshape(32, 2, 32, 2, 3).mean((1, 3)).round().transpose(2, 0, 1)
    assert np.abs(image[0].numpy().astype(np.float32) - blocks).max() <= 1
    assert data.question_types["valid"][0] == lines[0]["question_type"]


def test_limit_and_image_size_are_checked(prepared):
    small = vqa.load(prepared, "scratch", limit={"train": 50, "test": 20})
    assert len(small.splits["train"]) == 50 and len(small.splits["test"]) == 20
    assert small.splits["test"].inputs["image"].shape[-1] == 64
    with pytest.raises(ValueError, match="image_size=24: must divide the prepared size 64"):
        vqa.load(prepared, "scratch", image_size=24)
    with pytest.raises(FileNotFoundError, match="prepare_vqa.py"):
        vqa.load(prepared.parent / "nowhere")


def test_scores_by_group_average_to_the_whole(data):
    torch.manual_seed(0)
    scores = data.splits["test"].targets
    probs = torch.rand(scores.shape)
    groups = data.answer_types["test"]
    per = vqa.score_by_group(probs, scores, groups)
    assert set(per) == {"yes/no", "shape", "color"}
    weights = {g: groups.count(g) / len(groups) for g in per}
    assert sum(per[g] * weights[g] for g in per) == pytest.approx(ik.vqa_score(probs, scores))
    assert vqa.prior_baseline(data)["test"] == pytest.approx(float(scores[:, data.answers.index("yes")].mean()))


def test_experts_give_one_log_odds_per_answer_and_drop_out_without_their_modality(data):
    torch.manual_seed(0)
    model = vqa.build_model(data)
    assert model.likelihood == ik.SoftScores() and set(model.experts) == {"image", "text", "joint"}
    batch, _ = data.splits["test"][list(range(6))]
    out = model(batch)
    assert out.logits.shape == (6, 13) and set(out.expert_logits) == {"image", "text", "joint"}
    torch.testing.assert_close(out.logits, sum(out.expert_logits.values()))
    assert set(model({"text": batch["text"]}).expert_logits) == {"text"}
    shared = vqa.build_model(data, fusion="concat", shared_backbone=True)
    assert shared.backbone is not None and shared({"image": batch["image"]}).logits.shape == (6, 13)
    product = vqa.build_model(data, fusion="product")
    assert product(batch).expert_logits["joint"].shape == (6, 13)
    with pytest.raises(ValueError, match="fusion must be one of"):
        vqa.build_model(data, fusion="sum")
    with pytest.raises(ValueError, match="needs the data"):
        vqa.build_model()
    torch.manual_seed(0)
    again = vqa.build_model(text=data.text, n_answers=len(data.answers))
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vqa.build_model(data).state_dict().values()))


def test_task_contract_recipe_and_selection_metric(data):
    recipe = vqa.recipe()
    assert isinstance(recipe, ik.Recipe) and recipe.epochs == 10 and recipe.monitor == "vqa_score"
    assert recipe.fit_arguments()["clip_grad_norm"] == 1.0 and vqa.recipe(2).epochs == 2
    assert vqa.selection_metric(data) == "vqa_score"
    assert vqa.selection_metric(data, "accuracy") == "loss"  # soft scores have no accuracy of their own
    empty = vqa.VQAData(**{**data.__dict__, "splits": {**data.splits, "valid": ik.TensorData(
        {k: v[:0] for k, v in data.splits["valid"].inputs.items()}, data.splits["valid"].targets[:0])}})
    assert vqa.selection_metric(empty) == "loss"


def test_i2m2_learns_easy_vqa_well_above_the_prior_and_the_question_alone(data):
    """Two epochs on 3,000 questions: the picture adds to what the question alone knows."""
    torch.manual_seed(0)
    fit_args = {**vqa.recipe(epochs=2).fit_arguments(), "progress": False}
    model = vqa.build_model(data)
    ik.fit(model, data.splits["train"], data.splits["valid"], **fit_args)
    i2m2 = ik.evaluate(model, data.splits["test"])["vqa_score"]
    prior = vqa.prior_baseline(data)["test"]
    question_only = ik.evaluate(model, ik.TensorData({"text": data.splits["test"].inputs["text"]},
                                                     data.splits["test"].targets))["vqa_score"]
    assert i2m2 > prior + 0.15
    assert i2m2 > question_only + 0.02  # the question alone knows much (see notebook 04)


def test_vqa_vs_ood_sets_are_scored_on_their_own_questions(tmp_path):
    """VQA-VS: each out-of-distribution set scored on the test questions it holds, and their mean."""
    from test_prepare_vqa import make_vs

    raw, coco = make_vs(tmp_path / "vqa-vs", tmp_path / "coco")
    load_data_script("prepare_vqa").prepare(raw, tmp_path / "out", images=coco, image_size=8, min_answer_count=1,
                                            progress=False)
    data = vqa.load(tmp_path / "out", text_model="scratch")
    assert data.ood == [["QT"], ["QT", "KW+KO"], [], ["KO"], []]  # test questions 21, 22, 23, 24, 25
    scores = data.splits["test"].targets
    probs = torch.zeros_like(scores)
    probs[:, data.answers.index("2")] = 1  # always "2": right on question 22 only
    assert vqa.score_by_group(probs, scores, data.ood) == {"QT": 0.5, "KW+KO": 1.0, "KO": 0.0}
    assert vqa.ood_scores(probs, data) == {"IID": pytest.approx(0.2), "QT": 0.5, "KO": 0.0, "KW+KO": 1.0,
                                           "OOD mean": pytest.approx(0.5)}
    easy_like = vqa.VQAData(**{**data.__dict__, "metadata": {**data.metadata, "ood_sets": {}}})
    assert vqa.ood_scores(probs, easy_like) == {}
