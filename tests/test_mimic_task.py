"""i2m2kit.tasks.mimic: MultiBench's tasks and split, training-only normalisation, the experts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import i2m2kit as ik
from i2m2kit.tasks import mimic

N = 103  # not a multiple of 10: the split's integer divisions matter


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared folder in the layout prepare_mimic.py writes, with random contents."""
    rng = np.random.default_rng(0)
    labels = (rng.random((N, 6)) < 0.2).astype(np.int64)
    labels[:, 2:] |= labels[:, 1:-1]  # died within 24 h -> also within 48 h, ... (nested windows)
    static = np.column_stack([rng.normal(60, 15, N) * 365.242, rng.random((N, 3)) < 0.1,
                              rng.integers(0, 3, N)]).astype(np.float32)
    series = (rng.normal(size=(N, 24, 12)) * np.arange(1, 13) + np.arange(12) * 10).astype(np.float32)
    out = tmp_path_factory.mktemp("mimic")
    np.savez_compressed(out / "mimic.npz", adm_features_all=static, ep_tdata=series, adm_labels_all=labels,
                        y_icd9=(rng.random((N, 20)) < 0.4).astype(np.int64), hadm_id=np.arange(100_000, 100_000 + N))
    return out


def multibench_order(n: int) -> list[int]:
    """The order MultiBench's loader puts the admissions in: random.seed(10); random.shuffle."""
    state = random.getstate()
    try:
        random.seed(10)
        order = list(range(n))
        random.shuffle(order)
        return order
    finally:
        random.setstate(state)


def test_split_is_multibenchs(prepared):
    order = multibench_order(N)
    splits = mimic.split_indices(N)
    assert splits["valid"].tolist() == order[: N // 10]
    assert splits["test"].tolist() == order[N // 10: N // 5]
    assert splits["train"].tolist() == order[N // 5:]
    data = mimic.load(prepared, "icd9_460_519")
    assert [len(data[s]) for s in ("train", "valid", "test")] == [N - N // 5, N // 10, N // 5 - N // 10]


def test_targets_are_multibenchs(prepared):
    raw = mimic.read_prepared(prepared)
    expected = []  # MultiBench's chain: the first window with a death, 0 if none
    for row in raw["adm_labels_all"]:
        expected.append(next((j for j in range(1, 6) if row[j] > 0), 0))
    assert mimic.targets(raw, "mortality").tolist() == expected
    assert mimic.targets(raw, "icd9_140_239").tolist() == raw["y_icd9"][:, 1].tolist()
    assert mimic.targets(raw, "icd9_460_519").tolist() == raw["y_icd9"][:, 7].tolist()
    order = np.array(multibench_order(N))
    data = mimic.load(prepared, "mortality")
    assert data["test"].targets.tolist() == [expected[i] for i in order[N // 10: N // 5]]
    assert mimic.n_classes("mortality") == 6 and mimic.n_classes("icd9_140_239") == 2
    with pytest.raises(ValueError, match="task must be one of"):
        mimic.load(prepared, "sepsis")


def test_normalised_with_training_statistics_only(prepared):
    raw = mimic.read_prepared(prepared)
    splits = mimic.split_indices(N)
    train_static = raw["adm_features_all"][splits["train"]].astype(np.float64)
    train_series = raw["ep_tdata"][splits["train"]].astype(np.float64)
    data = mimic.load(prepared, "mortality")
    static = data["train"].inputs["static"].double()
    torch.testing.assert_close(static.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(static.std(0, unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    series = data["train"].inputs["series"].double()
    torch.testing.assert_close(series.mean((0, 1)), torch.zeros(12, dtype=torch.float64), atol=1e-5, rtol=0)
    # validation and test use the training statistics, not their own and not all admissions'
    for split in ("valid", "test"):
        expected = (raw["adm_features_all"][splits[split]] - train_static.mean(0)) / train_static.std(0)
        np.testing.assert_allclose(data[split].inputs["static"].numpy(), expected, rtol=1e-4, atol=1e-4)
        expected = (raw["ep_tdata"][splits[split]] - train_series.mean((0, 1))) / train_series.std((0, 1))
        np.testing.assert_allclose(data[split].inputs["series"].numpy(), expected, rtol=1e-4, atol=1e-4)
    everyone = (raw["adm_features_all"] - raw["adm_features_all"].mean(0)) / raw["adm_features_all"].std(0)
    assert not np.allclose(data["test"].inputs["static"].numpy(), everyone[splits["test"]], atol=1e-3)


def test_a_constant_feature_stays_finite(prepared, tmp_path):
    raw = mimic.read_prepared(prepared)
    raw["adm_features_all"][:, 1] = 0  # no patient with AIDS: standard deviation 0
    np.savez(tmp_path / "mimic.npz", **raw)
    data = mimic.load(tmp_path, "mortality")
    assert all(torch.isfinite(data[s].inputs["static"]).all() for s in ("train", "valid", "test"))


def test_missing_file_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_mimic.py"):
        mimic.load(tmp_path, "mortality")


def test_every_expert_parameter_gets_a_gradient(prepared):
    torch.manual_seed(0)
    model = mimic.build_model(6)
    assert set(model.experts) == {"static", "series", "joint"}
    assert model.experts["joint"].reads == ("static", "series")
    assert set(model.baselines()) == {"uni:static", "uni:series", "intra", "inter", "i2m2"}
    data = mimic.load(prepared, "mortality")["train"]
    inputs, target = data[list(range(32))]
    out = model(inputs)
    assert out.logits.shape == (32, 6) and set(out.expert_logits) == {"static", "series", "joint"}
    model.loss(out.logits, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"
    only_static = model({"static": inputs["static"]})  # a missing series drops series and joint
    assert set(only_static.expert_logits) == {"static"}


def test_a_tiny_fit_with_the_published_recipe(prepared):
    data = mimic.load(prepared, "icd9_140_239")
    k = mimic.n_classes("icd9_140_239")
    recipe = mimic.recipe(epochs=2)
    assert isinstance(recipe, ik.Recipe) and mimic.recipe().epochs == 20
    assert recipe.batch_size == 40 and recipe.monitor == "auprc" and recipe.regime == "joint"
    assert isinstance(recipe.optimizer([torch.nn.Parameter(torch.zeros(1))]), torch.optim.RMSprop)
    monitor = mimic.selection_metric(data, task="icd9_140_239")
    torch.manual_seed(0)
    model = mimic.build_model(k)
    result = ik.fit(model, data["train"], data["valid"], **recipe.replace(monitor=monitor).fit_arguments(),
                    device="cpu", progress=False)
    assert len(result.history) == 2 and all(np.isfinite(r["train_loss"]) for r in result.history)
    metrics = ik.evaluate(model, data["test"], device="cpu")
    assert 0 <= metrics["accuracy"] <= 1


def test_selection_falls_back_to_loss_when_a_class_is_missing():
    full = ik.TensorData({"static": torch.zeros(4, 5)}, torch.tensor([0, 1, 0, 1]))
    assert mimic.selection_metric({"valid": full}, task="icd9_140_239") == "auprc"
    assert mimic.selection_metric({"valid": full}) == "loss"  # mortality: 6 classes, 2 of them present
    assert mimic.selection_metric({"valid": full}, "accuracy", task="mortality") == "accuracy"
    one_class = ik.TensorData({"static": torch.zeros(4, 5)}, torch.tensor([0, 0, 0, 0]))
    assert mimic.selection_metric({"valid": one_class}, task="icd9_460_519") == "loss"
