"""The AV-MNIST dependency spectrum: the reasoned ceilings, the composed posterior, the data
at a share and the five models trained on it (tiny sizes; benchmarks/avmnist_spectrum.py runs
it in full)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_avmnist_task import write_layout

from i2m2kit.tasks import avmnist
from i2m2kit.tasks import avmnist_spectrum as spectrum


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_perfect_recognition_matches_the_reasoning(share):
    c = spectrum.perfect_recognition(share)
    assert c["uni"] == pytest.approx(1 - 0.9 * share)  # right on published pairs, chance on the rest
    # the joint Bayes classifier errs only where both digits agree and the pair may be either kind
    assert c["joint"] == pytest.approx(1 - 0.09 * share if share < 10 / 11 else 1 - 0.9 * (1 - share))
    assert c["intra"] == c["uni"]  # a sum of an image and an audio term holds no relation


def test_relation_posterior_reads_the_relation_of_two_recognisers():
    sure = torch.eye(10) * 30  # recognisers that are certain of the digit
    shown, heard = torch.tensor([2, 3, 4, 0]), torch.tensor([2, 5, 4, 0])
    decide = lambda share: spectrum.relation_posterior(sure[shown], sure[heard], share).argmax(-1).tolist()
    assert decide(0.0) == [2, 3, 4, 0]  # published only: agreeing digits are the label (3 vs 5: a tie)
    assert decide(0.5) == [2, 8, 4, 0]  # disagreeing digits can only be an inter-modality pair
    assert decide(1.0) == [4, 8, 8, 0]  # inter only: always (a + b) mod 10
    # a distribution over the labels; with uninformative recognisers the uniform one
    p = spectrum.relation_posterior(torch.randn(5, 10), torch.randn(5, 10), 0.3).exp()
    assert torch.allclose(p.sum(-1), torch.ones(5, dtype=p.dtype))
    flat = spectrum.relation_posterior(torch.zeros(3, 10), torch.zeros(3, 10), 0.5).exp()
    assert torch.allclose(flat, torch.full((3, 10), 0.1))
    with pytest.raises(ValueError, match="share must be from 0 to 1"):
        spectrum.relation_posterior(sure, sure, 1.5)


def test_inter_pairs_without_a_pairs_file_are_the_published_pairing(tmp_path):
    write_layout(tmp_path)  # MultiBench's release: arrays only
    masks = avmnist.inter_pairs(tmp_path, valid_size=10)
    assert [len(masks[s]) for s in ("train", "valid", "test")] == [20, 10, 12]
    assert not any(m.any() for m in masks.values()) and avmnist.inter_share(tmp_path) == 0.0
    (tmp_path / "train_pairs.csv").write_text("label,inter\n" + "3,x\n" * 30)
    with pytest.raises(ValueError, match="train_pairs.csv: the column inter must hold 0 or 1"):
        avmnist.inter_pairs(tmp_path, valid_size=10)


@pytest.fixture(scope="module")
def half(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spectrum") / "half"
    return spectrum.prepared(shared_data, folder, 0.5, n_train=240, n_test=100)


def test_prepared_builds_reuses_and_refuses_another_build(shared_data, half):
    meta = json.loads((half / "metadata.json").read_text())
    assert meta["inter_share"] == 0.5 and meta["sizes"] == {"train": 240, "test": 100}
    stamp = (half / "metadata.json").stat().st_mtime_ns
    assert spectrum.prepared(shared_data, half, 0.5, n_train=240, n_test=100) == half  # reused, not rebuilt
    assert (half / "metadata.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"half: holds AV-MNIST built with .*'inter_share': 0.5.*not .*'inter_share': 0.25"):
        spectrum.prepared(shared_data, half, 0.25, n_train=240, n_test=100)
    with pytest.raises(RuntimeError, match="prepare_avmnist.py failed: .*inter_share must be a number from 0 to 1"):
        spectrum.prepared(shared_data, half.parent / "bad", 2.0, n_train=240, n_test=100)


def test_train_share_trains_each_regime_and_shares_the_single_expert_runs(half):
    rows, trained = spectrum.train_share(half, valid_size=40, epochs=1, seeds=[0],
                                         regimes=["pretrain_finetune", "joint"], shuffle_repeats=2, progress=False)
    by = {(r["regime"], r["model"]): r for r in rows}
    models = {"uni:image", "uni:audio", "intra", "inter", "i2m2"}
    assert set(by) == {(g, m) for g in ("pretrain_finetune", "joint") for m in models}
    for name in ("uni:image", "uni:audio", "inter"):  # no fine-tuning stage: one run serves both regimes
        assert trained["pretrain_finetune", 0][name] is trained["joint", 0][name]
        assert by["pretrain_finetune", name]["accuracy"] == by["joint", name]["accuracy"]
    for name in ("intra", "i2m2"):
        assert trained["pretrain_finetune", 0][name] is not trained["joint", 0][name]
    inter = avmnist.inter_pairs(half, valid_size=40)["test"]
    assert inter.sum() == 50
    for r in rows:
        assert r["share"] == 0.5 and r["accuracy"] == pytest.approx((r["accuracy_published"] + r["accuracy_inter"]) / 2)
        assert (r["shuffle_drop"] is None) == r["model"].startswith("uni:")
        assert r["shuffle_drop"] is None or math.isfinite(r["shuffle_drop"])
    reference = spectrum.reference_rows({0: trained["pretrain_finetune", 0]}, half, valid_size=40, regimes=["joint"])
    assert [r["model"] for r in reference] == [spectrum.REFERENCE] and 0 <= reference[0]["accuracy"] <= 1
    summary = spectrum.over_seeds(rows + [{**r, "seed": 1, "accuracy": 1.0} for r in rows])
    i2m2 = next(r for r in summary if r["model"] == "i2m2" and r["regime"] == "joint")
    assert i2m2["seeds"] == [0, 1] and i2m2["accuracy"] == pytest.approx((by["joint", "i2m2"]["accuracy"] + 1) / 2)
    deciders = spectrum.deciding_experts(trained["joint", 0]["i2m2"], avmnist.load(half, valid_size=40)["test"], inter)
    assert {r["count"] for r in deciders} == {50}
    assert np.isclose(sum(r["decides"] for r in deciders), 2.0)  # one share per kind of pair
