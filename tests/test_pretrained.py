"""Pretrained transformers backbones, by path, with no network: tiny checkpoints written with
save_pretrained (tiny_checkpoints.py) through the text and image towers, every regime of the
VQA and NLVR (v1, NLVR2) models, and the frozen backbone's feature cache."""

import numpy as np
import pytest
import torch
from tiny_checkpoints import WORDS, write_bert, write_clip, write_vit

import i2m2kit as ik
from i2m2kit import features, pretrained, vision_language as vl
from i2m2kit.tasks import nlvr, vqa


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {"bert": str(write_bert(root / "bert")), "vit": str(write_vit(root / "vit")),
            "clip": str(write_clip(root / "clip")), "other_bert": str(write_bert(root / "other_bert", seed=1))}


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


def tokens(checkpoint: str, n: int = 48):
    ids, spec = vl.tokenize({"train": sentences(n), "valid": sentences(16, 1), "test": sentences(16, 2)}, checkpoint)
    return ids, spec


def nlvr_data(ids, pairs: bool = False, seed: int = 0) -> dict[str, ik.TensorData]:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 24, 24) if pairs else (3, 20, 80)
    return {s: ik.TensorData({"image": torch.randint(0, 256, (len(t), *shape), generator=g, dtype=torch.uint8),
                              "text": t}, torch.randint(0, 2, (len(t),), generator=g)) for s, t in ids.items()}


def test_a_checkpoint_folder_gives_its_tokenizer_and_text_tower(checkpoints):
    ids, spec = tokens(checkpoints["bert"])
    assert spec.checkpoint == checkpoints["bert"] and spec.model == checkpoints["bert"]
    assert ids["train"].dtype == torch.int64 and (ids["train"][:, 0] == 2).all()  # [CLS] first, the tokenizer's own
    tower = vl.text_encoder(spec)
    assert isinstance(tower, pretrained.TextTower) and tower.width == 16
    out, mask = tower(ids["train"][:4])
    assert out.shape == (4, spec.max_len, 16) and torch.equal(mask, ids["train"][:4] != spec.pad_id)


def test_the_image_tower_preprocesses_as_the_checkpoints_own_processor(checkpoints):
    tower = pretrained.ImageTower(checkpoints["vit"])
    pictures = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    processor = pretrained.load("image_processor", checkpoints["vit"])
    expected = processor(images=[p.permute(1, 2, 0).numpy() for p in pictures], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(tower.preprocess(pictures), expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tower.preprocess(pictures.float() / 255), expected.float(), atol=1e-5, rtol=1e-5)
    regions, mask = tower(torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8))  # resized to 32 x 32 first
    assert regions.shape == (2, 1 + 16, 16) and mask.all()  # [CLS] and 4 x 4 patches


def test_a_dual_encoder_gives_both_towers_from_one_checkpoint(checkpoints):
    ids, spec = tokens(checkpoints["clip"])
    text, image = vl.text_encoder(spec), vl.image_encoder(checkpoints["clip"])
    assert type(text.model).__name__ == "CLIPTextModel" and type(image.model).__name__ == "CLIPVisionModel"
    assert text(ids["train"][:2])[0].shape[-1] == 16 and image(torch.zeros(2, 3, 32, 32))[0].shape[-1] == 16


def test_a_name_that_cannot_be_found_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="save_pretrained.*HF_HUB_OFFLINE=1"):
        pretrained.load("model", "no-such-owner/no-such-model")
    with pytest.raises(OSError, match="the folder holds no such files"):
        pretrained.load("tokenizer", str(tmp_path))
    with pytest.raises(ValueError, match="image_model must be 'scratch' or a transformers checkpoint"):
        vl.image_encoder("")
    assert pretrained.offline(str(tmp_path)) and not pretrained.offline("x/y", local_files_only=False)


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("regime", ["joint", "pretrain_finetune", "frozen_backbone"])
@pytest.mark.parametrize("task", ["vqa", "nlvr", "nlvr2"])
def test_every_regime_trains_on_pretrained_text_and_image_towers(checkpoints, task, regime):
    ids, spec = tokens(checkpoints["bert"])
    shared = regime == "frozen_backbone"
    torch.manual_seed(0)
    if task == "vqa":
        g = torch.Generator().manual_seed(0)
        data = {s: ik.TensorData({"image": torch.randint(0, 256, (len(t), 3, 16, 16), generator=g, dtype=torch.uint8),
                                  "text": t}, torch.rand(len(t), 5, generator=g).round()) for s, t in ids.items()}
        model = vqa.build_model(text=spec, n_answers=5, image_model=checkpoints["vit"], fusion="concat", hidden=8,
                                shared_backbone=shared)
    else:
        data = nlvr_data(ids, pairs=task == "nlvr2")
        model = nlvr.build_model(text=spec, dataset=task, image_model=checkpoints["vit"], hidden=8,
                                 shared_backbone=shared)
    towers = [m for m in model.modules() if isinstance(m, (pretrained.TextTower, pretrained.ImageTower))]
    assert {type(m) for m in towers} == {pretrained.TextTower, pretrained.ImageTower}
    before = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in [*towers, model.experts["joint"]]}
    result = ik.fit(model, data["train"], data["valid"], regime=regime, epochs=1, batch_size=16, progress=False,
                    device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.5), restore_best=False)
    assert all(np.isfinite(r["train_loss"]) for r in result.history if r["train_loss"] is not None)
    assert changed(before[id(model.experts["joint"])], model.experts["joint"])  # the heads learn
    # frozen: the pretrained towers stay as loaded; else they are fine-tuned
    assert all(changed(before[id(m)], m) != shared for m in towers)
    assert np.isfinite(ik.evaluate(model, data["test"], device="cpu")["loss"])


def counting(monkeypatch) -> list:
    calls = []
    compute = features.compute
    monkeypatch.setattr(features, "compute", lambda *a, **k: calls.append(a[1]) or compute(*a, **k))
    return calls


def test_frozen_features_are_computed_once_and_reused_until_the_data_or_backbone_changes(checkpoints, monkeypatch,
                                                                                           tmp_path):
    features.clear_memory()
    calls = counting(monkeypatch)
    ids, spec = tokens(checkpoints["bert"])
    data = nlvr_data(ids)

    def run(train, cache=True, bert_seed=None):
        torch.manual_seed(0)
        model = nlvr.build_model(text=spec, image_model=checkpoints["vit"], hidden=8, shared_backbone=True)
        if bert_seed is not None:  # the same architecture, other weights: another checkpoint
            model.backbone.text_encoder = pretrained.TextTower(checkpoints["other_bert"], spec.pad_id)
        return model, ik.fit(model, train, data["valid"], regime="frozen_backbone", epochs=2, batch_size=16,
                              progress=False, device="cpu", feature_cache=cache, restore_best=False)

    recomputed, r0 = run(data["train"], cache=False)
    assert calls == []  # the backbone ran in every step instead
    kept, r1 = run(data["train"])
    assert len(calls) == 2  # train and valid, once each for two epochs: a miss
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r0.history]  # the same training
    for k, v in recomputed.state_dict().items():
        assert torch.equal(v, kept.state_dict()[k]), k
    run(data["train"])
    assert len(calls) == 2  # a hit: another model with the same backbone on the same data
    other = ik.TensorData({**data["train"].inputs, "text": data["train"].inputs["text"].flip(0)}, data["train"].targets)
    run(other)
    assert len(calls) == 3  # other data: the training features again (validation's are kept)
    run(data["train"], bert_seed=1)
    assert len(calls) == 5  # another checkpoint: both again

    disk = tmp_path / "features"
    _, r2 = run(data["train"], cache=disk)
    assert len(calls) == 7 and len(list(disk.glob("*/key.json"))) == 2 and not list(disk.glob("*.partial-*"))
    _, r3 = run(data["train"], cache=disk)  # read back memory-mapped: no computing, the same training
    assert len(calls) == 7 and [h["train_loss"] for h in r3.history] == [h["train_loss"] for h in r2.history]
    assert [h["train_loss"] for h in r2.history] == [h["train_loss"] for h in r0.history]
    features.clear_memory()


def test_a_cached_backbone_output_keeps_its_structure():
    outputs = {"image": (torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)), "text": torch.zeros(2, 5)}
    flat = features.flatten(outputs)
    assert sorted(flat) == ["image#0", "image#1", "text"]
    back = features.CachedFeatures()(flat)
    assert back.keys() == outputs.keys() and torch.equal(back["image"][1], outputs["image"][1])
    assert torch.equal(back["text"], outputs["text"])


def test_a_model_built_twice_with_one_seed_is_one_model_whether_or_not_its_checkpoint_was_loaded_before(checkpoints):
    ids, spec = tokens(checkpoints["bert"])
    pretrained._load.cache_clear()  # the first build reads the files, the second copies what was read

    def build():
        torch.manual_seed(0)
        return nlvr.build_model(text=spec, image_model=checkpoints["vit"], hidden=8).state_dict()

    first, second = build(), build()
    assert all(torch.equal(v, second[k]) for k, v in first.items())
