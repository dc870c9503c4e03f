"""i2m2kit.tasks.fastmri: the prepared-data reader, the PreAct-ResNet18 experts, the published
operating point."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

import i2m2kit as ik
from i2m2kit import contributions
from i2m2kit.tasks import fastmri

SIZES = {"train": 12, "valid": 6, "test": 6}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared folder in the layout prepare_fastmri.py writes, with random contents."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("fastmri")
    rows = []
    for split, n in SIZES.items():
        (out / split).mkdir()
        np.save(out / split / "magnitude.npy", rng.random((n, 320, 320)).astype(np.float16))
        np.save(out / split / "phase.npy", rng.uniform(-np.pi, np.pi, (n, 320, 320)).astype(np.float16))
        labels = (rng.random((n, 4)) < 0.4).astype(np.uint8)
        labels[0], labels[1] = 1, 0  # every label has both classes
        np.save(out / split / "labels.npy", labels)
        rows += [{"split": split, "index": i, "file": f"file100{i // 3:04d}", "slice": i % 3, "scale": 1.0,
                  **dict(zip(fastmri.LABELS, map(int, labels[i])))} for i in range(n)]
    with open(out / "slices.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    weights = {name: {"pos_weight": 2.0 + j, "balanced": [0.75, 1.5]} for j, name in enumerate(fastmri.LABELS)}
    (out / "metadata.json").write_text(json.dumps({"class_weights": weights}))
    return out


def test_load_keeps_full_size_slices_memory_mapped(prepared):
    data = fastmri.load(prepared)
    assert {k: len(v) for k, v in data.items()} == SIZES
    x = data["train"].inputs["magnitude"]
    assert x.shape == (12, 1, 320, 320) and x.dtype == torch.float16
    assert data["train"].targets.shape == (12, 4) and data["train"].targets.dtype == torch.float32
    expected = np.load(prepared / "train" / "phase.npy")
    inputs, targets = data["train"][[3, 7]]
    np.testing.assert_array_equal(inputs["phase"][:, 0].numpy(), expected[[3, 7]])
    assert fastmri.slices(prepared, "valid")[2]["index"] == "2"


def test_downsampling_pools_the_complex_image(tmp_path, prepared):
    """Phase just below +pi and just above -pi is the same direction: pooled, it stays near pi
    (averaging the phase values would give 0)."""
    magnitude = np.ones((1, 4, 4), dtype=np.float16)
    phase = np.tile(np.array([[3.1, -3.1], [-3.1, 3.1]], dtype=np.float16), (1, 2, 2))
    mag, ph = fastmri._downsample(magnitude, phase, 2)
    assert mag.shape == (1, 2, 2)
    np.testing.assert_allclose(np.abs(ph), np.pi, atol=1e-3)
    np.testing.assert_allclose(mag, np.cos(np.pi - 3.1), atol=1e-3)
    data = fastmri.load(prepared, downsample=8, splits=("valid",))
    assert data["valid"].inputs["phase"].shape == (6, 1, 40, 40)


def test_load_names_a_folder_that_is_not_prepared(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_fastmri.py"):
        fastmri.load(tmp_path)


def test_default_experts_are_preact_resnet18_with_group_norm():
    model = fastmri.build_model()
    assert model.likelihood == ik.Bernoulli()
    assert {n: e.reads for n, e in model.experts.items()} == {
        "magnitude": ("magnitude",), "phase": ("phase",), "joint": ("magnitude", "phase")}
    for name, expert in model.experts.items():
        net = expert.net
        assert net.stem.in_channels == (2 if name == "joint" else 1)
        blocks = [m for m in net.modules() if isinstance(m, fastmri.PreActBlock)]
        assert len(blocks) == 8  # 2 + 2 + 2 + 2
        assert [b.conv2.out_channels for b in blocks[1::2]] == [64, 128, 256, 512]
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == 17
        assert net.head.out_features == 4
        assert 11.1e6 < sum(p.numel() for p in net.parameters()) < 11.2e6


def test_experts_read_float16_slices_and_sum_to_the_logits():
    torch.manual_seed(0)
    model = fastmri.build_model(width=4).eval()
    x = {"magnitude": torch.rand(3, 1, 32, 32).half(), "phase": torch.rand(3, 1, 32, 32).half()}
    out = model(x)
    assert out.logits.shape == (3, 4) and set(out.expert_logits) == {"magnitude", "phase", "joint"}
    torch.testing.assert_close(out.logits, sum(out.expert_logits.values()))
    torch.testing.assert_close(out.probs, torch.sigmoid(out.logits))
    assert set(model({"magnitude": x["magnitude"]}).expert_logits) == {"magnitude"}


def test_published_recipe(prepared):
    recipe = fastmri.recipe(7, prepared=prepared)
    assert isinstance(recipe, ik.Recipe) and fastmri.recipe().epochs == 50 and fastmri.recipe().loss_weight is None
    assert recipe.regime == "joint" and recipe.epochs == 7 and recipe.monitor == "auroc"
    assert isinstance(recipe.optimizer, functools.partial) and recipe.optimizer.func is torch.optim.AdamW
    torch.testing.assert_close(recipe.loss_weight, torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert recipe.patience is not None


def test_selection_metric_falls_back_to_loss_without_both_classes():
    x = {"magnitude": torch.zeros(4, 1, 8, 8), "phase": torch.zeros(4, 1, 8, 8)}
    assert fastmri.selection_metric({"valid": ik.TensorData(x, torch.zeros(4, 4))}) == "loss"
    y = torch.zeros(4, 4)
    y[0, 2] = 1
    assert fastmri.selection_metric({"valid": ik.TensorData(x, y)}) == "auroc"


def test_operating_threshold_is_the_highest_with_sensitivity_above_90_percent():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.3).astype(int)
    probs = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    threshold = fastmri.operating_threshold(probs, y)
    candidates = [t for t in np.unique(probs) if (probs[y == 1] >= t).mean() > 0.9]
    assert threshold == pytest.approx(max(candidates))
    scores = fastmri.scores_at(probs, y, threshold)
    assert scores["sensitivity"] > 0.9
    assert scores["specificity"] == pytest.approx((probs[y == 0] < threshold).mean())
    assert fastmri.operating_threshold(probs, np.zeros(200, dtype=int)) is None


def test_training_and_operating_point_scores_for_every_model(prepared):
    data = fastmri.load(prepared, downsample=8)
    rows, trained = ik.compare_across_seeds(lambda: fastmri.build_model(width=4), data["train"], data["valid"],
                                            data["test"], seeds=[0], progress=False,
                                            recipe=fastmri.recipe(1, prepared=prepared, batch_size=6))
    assert [r["model"] for r in rows] == ["uni:magnitude", "uni:phase", "intra", "inter", "i2m2"]
    table = fastmri.operating_point_table(trained, data["valid"], data["test"])
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    for r in table:
        for metric in ("auroc", "balanced_accuracy", "sensitivity", "specificity"):
            assert 0 <= r[metric] <= 1 and f"{metric}/cartilage" in r
    model = trained[0]["intra"]
    probs = ik.predict(model, data["test"]).probs.numpy()[:, 0]  # from probabilities, as for every model
    valid_probs = ik.predict(model, data["valid"]).probs.numpy()[:, 0]
    threshold = fastmri.operating_threshold(valid_probs, data["valid"].targets[:, 0].numpy().astype(int))
    expected = fastmri.scores_at(probs, data["test"].targets[:, 0].numpy().astype(int), threshold)
    assert table[2]["auroc/abnormal"] == pytest.approx(expected["auroc"])
    assert table[2]["specificity/abnormal"] == pytest.approx(expected["specificity"])


def test_label_logits_make_the_contribution_analysis_exact():
    z = {"magnitude": torch.randn(5, 4), "phase": torch.randn(5, 4), "joint": torch.randn(5, 4)}
    two_class = fastmri.label_logits(z, "acl")
    total = sum(two_class.values())
    torch.testing.assert_close(total.softmax(1)[:, 1], torch.sigmoid(sum(z.values())[:, 2]))
    shares = contributions.margin_contributions(two_class)
    torch.testing.assert_close(sum(shares.values()), sum(z.values())[:, 2].abs())
    assert len(contributions.summary(two_class, torch.tensor([0, 1, 1, 0, 1]))) == 3
