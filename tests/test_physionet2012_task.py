"""The PhysioNet/CinC 2012 task: splits, inputs, the three experts, the clinical metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import i2m2kit as ik
from i2m2kit.metrics import event1_threshold, threshold_metrics
from i2m2kit.tasks import physionet2012 as pn


@pytest.fixture(scope="module")
def folder(physionet_prepared):
    return physionet_prepared[0]


@pytest.fixture(scope="module")
def arrays(folder):
    return pn.read_set(folder, "a")


def test_split_is_stratified_disjoint_seeded_and_whole(arrays):
    y = pn.outcome(arrays, pn.LABEL)
    splits = pn.split_indices(y, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2800, "valid": 600, "test": 600}
    rows = np.concatenate(list(splits.values()))
    assert len(np.unique(rows)) == len(rows) == 4000
    for part in splits.values():  # 554 of 4000 died: every split within a death of 13.85%
        assert abs(y[part].sum() - 0.1385 * len(part)) <= 1
    again, other = pn.split_indices(y, seed=0), pn.split_indices(y, seed=1)
    assert all(np.array_equal(again[k], splits[k]) for k in splits)
    assert not np.array_equal(other["test"], splits["test"])
    two = pn.split_indices(y, seed=0, test=False)
    assert set(two) == {"train", "valid"} and len(two["train"]) == 3400
    small = pn.split_indices(y, seed=0, stays=400)
    assert sum(len(v) for v in small.values()) == 400


def test_inputs_are_normalised_with_training_statistics_only(folder, arrays):
    data = pn.load(folder)
    splits = pn.split_indices(pn.outcome(arrays, pn.LABEL), seed=0)
    stats = pn.training_statistics(arrays, splits["train"])
    hr = pn.metadata(folder)["series"].index("HR")
    series = data["train"].inputs["series"].numpy()
    assert series.shape == (2800, 48, 3 * 37) and data["train"].inputs["static"].shape == (2800, 16)
    observed = arrays["series_mask"][splits["train"]].astype(bool)
    values = series[..., :37][observed]
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05  # z-scored where measured
    assert np.array_equal(series[..., 37:74], observed)
    # the statistics are the train rows' alone: changing a test record changes nothing
    changed = {k: v.copy() for k, v in arrays.items()}
    changed["series"][splits["test"]] *= 100
    assert all(np.allclose(stats[k], pn.training_statistics(changed, splits["train"])[k]) for k in stats)
    assert stats["series_mean"][hr] == pytest.approx(np.nanmean(arrays["series"][splits["train"]][..., hr]))
    assert data["test"].targets.tolist() == pn.outcome(arrays, pn.LABEL)[splits["test"]].tolist()


def test_last_observation_is_carried_forward_and_zero_before_the_first():
    values = np.array([[[np.nan], [2.0], [np.nan], [5.0], [np.nan]]])
    observed = np.isfinite(values)
    assert pn.carried_forward(values, observed)[0, :, 0].tolist() == [0.0, 2.0, 2.0, 5.0, 5.0]


def test_a_set_that_is_not_there_and_testing_on_the_training_set_are_refused(folder):
    with pytest.raises(FileNotFoundError, match=r"set-b.npz: not found; the prepared folder holds the sets \['a'\]"):
        pn.load(folder, test_set="b")
    with pytest.raises(ValueError, match="test_set 'a' is the training set"):
        pn.load(folder, test_set="a")
    with pytest.raises(FileNotFoundError, match="prepare_physionet2012.py"):
        pn.load(folder.parent / "nothing")


def test_event1_threshold_and_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.15).astype(int)
    scores = rng.normal(size=500) + 1.5 * y
    threshold = event1_threshold(scores, y)

    def event1(t):
        pred = scores >= t
        return min(skm.recall_score(y, pred), skm.precision_score(y, pred, zero_division=0))
    assert event1(threshold) == pytest.approx(max(event1(t) for t in np.unique(scores)))
    m = threshold_metrics(scores, y, threshold)
    assert m["event1"] == pytest.approx(event1(threshold))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, scores))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, scores >= threshold))


def test_saps_reference_leaves_out_records_without_a_score(folder, arrays):
    ref = pn.reference_scores(folder)
    splits = pn.split_indices(pn.outcome(arrays, pn.LABEL), seed=0)
    saps = pn.outcome(arrays, "SAPS-I")[splits["test"]]
    assert len(ref["test"][0]) == (saps >= 0).sum() < len(saps)
    m = pn.clinical_metrics_of_scores(ref["valid"], ref["test"])
    assert 0.6 < m["auroc"] < 0.8 and m["n"] == len(ref["test"][0])  # SAPS-I on this set: about 0.7


def test_three_experts_train_through_the_one_loop(folder):
    data = pn.load(folder, stays=500)
    torch.manual_seed(0)
    model = pn.build_model(hidden=16, static_hidden=8, head_hidden=16)
    assert list(model.experts) == ["static", "series", "joint"]
    assert model.experts["joint"].reads == ("static", "series")
    rows = ik.compare_models(lambda: pn.build_model(hidden=16, static_hidden=8, head_hidden=16), data["train"],
                             data["valid"], data["test"], progress=False, recipe=pn.recipe(epochs=2))
    assert sorted(r["model"] for r in rows) == ["i2m2", "inter", "intra", "uni:series", "uni:static"]
    assert all(0 <= r["auroc"] <= 1 and np.isfinite(r["auprc"]) for r in rows)
    before = pn.clinical_metrics(model, data["valid"], data["train"])["auroc"]
    assert pn.selection_metric(data) == "auprc" and pn.recipe().epochs == 20
    ik.fit(model, data["train"], data["valid"], progress=False, **pn.recipe(epochs=3).fit_arguments())
    m = pn.clinical_metrics(model, data["valid"], data["train"])  # it learns: the training stays ranked
    assert m["auroc"] > max(0.7, before + 0.1) and set(m) >= {"auroc", "auprc", "event1", "balanced_accuracy"}


def test_a_split_with_one_class_fails_or_leaves_the_rankings_out():
    with pytest.raises(ValueError, match="needs positives and negatives"):
        event1_threshold(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    m = threshold_metrics(np.array([0.1, 0.9]), np.array([0, 0]), 0.5)
    assert "auroc" not in m and m["balanced_accuracy"] == pytest.approx(0.5)


def test_a_prepared_folder_of_another_format_is_refused(folder, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    meta = json.loads((other / "metadata.json").read_text())
    (other / "metadata.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        pn.load(other)


@pytest.mark.parametrize("cut", [0, 0.5, 0.9])  # empty (EOFError), truncated (BadZipFile) or the end lost
def test_an_empty_or_truncated_set_file_is_one_line_naming_it(folder, tmp_path, cut):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    whole = (other / "set-a.npz").read_bytes()
    (other / "set-a.npz").write_bytes(whole[: int(len(whole) * cut)])
    with pytest.raises(ValueError, match=r"set-a.npz: not a readable .npz archive") as e:
        pn.load(other)
    assert "\n" not in str(e.value) and str(other / "set-a.npz") in str(e.value)


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, True])
def test_a_bad_split_seed_is_named(folder, seed):
    with pytest.raises(ValueError, match=r"^split_seed must be an integer in \[0, 2\*\*32 - 1\], got "):
        pn.load(folder, split_seed=seed)
