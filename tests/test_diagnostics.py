"""The dependency diagnostics, checked against exact answers: textbook PID values, the
simulator's exact posterior, and brute force."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MapStyle
from torch import nn

import i2m2kit as ik
from i2m2kit import diagnostics as D
from i2m2kit import plots
from i2m2kit.blocks import LateFusion
from i2m2kit.tasks import synthetic

ROOT = Path(__file__).resolve().parents[1]


def table(f, n1=2, n2=2):
    """p[x1, x2, y] for y = f(x1, x2) with x1, x2 independent fair bits."""
    ys = {f(a, b) for a in range(n1) for b in range(n2)}
    p = np.zeros((n1, n2, max(ys) + 1))
    for a, b in itertools.product(range(n1), range(n2)):
        p[a, b, f(a, b)] += 1 / (n1 * n2)
    return p


@pytest.mark.parametrize("name, p, expected", [
    ("xor", table(lambda a, b: a ^ b), dict(redundancy=0, unique_1=0, unique_2=0, synergy=1)),
    ("copied bit", np.array([[[0.5, 0], [0, 0]], [[0, 0], [0, 0.5]]]), dict(redundancy=1, unique_1=0, unique_2=0, synergy=0)),
    ("two copied bits", table(lambda a, b: 2 * a + b), dict(redundancy=0, unique_1=1, unique_2=1, synergy=0)),
    ("and", table(lambda a, b: a & b), dict(redundancy=0.311278, unique_1=0, unique_2=0, synergy=0.5)),
])
def test_pid_gives_the_textbook_values(name, p, expected):
    got = D.pid_from_distribution(p)
    for term, value in expected.items():
        assert got[term] == pytest.approx(value, abs=1e-4), (name, term, got)
    assert sum(got[t] for t in ("redundancy", "unique_1", "unique_2", "synergy")) == pytest.approx(got["total"], abs=1e-5)


def test_pid_reports_synergy_for_modalities_independent_given_the_label():
    # Y a fair bit, X1 and X2 independent noisy copies (80% right): conditionally independent,
    # yet BROJA's synergy is positive (dit 2.3: redundancy 0.278, synergy 0.183, uniqueness 0)
    p = np.zeros((2, 2, 2))
    for a, b, y in itertools.product(range(2), repeat=3):
        p[a, b, y] = 0.5 * (0.8 if a == y else 0.2) * (0.8 if b == y else 0.2)
    got = D.pid_from_distribution(p)
    assert got["redundancy"] == pytest.approx(0.2781, abs=1e-3)
    assert got["synergy"] == pytest.approx(0.1825, abs=1e-3)
    assert got["unique_1"] == pytest.approx(0, abs=1e-4) and got["unique_2"] == pytest.approx(0, abs=1e-4)


def test_pid_of_samples_counts_them():
    rng = np.random.default_rng(0)
    x1, x2 = rng.integers(0, 2, 20_000), rng.integers(0, 2, 20_000)
    got = D.pid(x1, x2, x1 ^ x2)
    assert got["synergy"] == pytest.approx(1, abs=0.01) and got["redundancy"] < 0.01
    with pytest.raises(ValueError, match="one code per sample"):
        D.pid(x1, x2[:10], x1)
    with pytest.raises(ValueError, match="non-negative"):
        D.pid_from_distribution(-np.ones((2, 2, 2)))


def test_the_label_preserving_permutation_keeps_every_label():
    labels = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(0))
    order = D.label_preserving_permutation(labels, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(500))
    assert torch.equal(labels[order], labels)
    assert (order != torch.arange(500)).float().mean() > 0.5


def exact(intra, inter, n=8000, seed=0):
    sim = ik.SelectionModel(n_classes=2, dims=(6, 6), intra=(intra, intra), inter=inter, seed=seed)
    return sim, synthetic.bayes_model(sim).baselines(), synthetic.dataset(sim.sample(n))


def test_the_exact_posterior_with_no_selection_effect_loses_nothing_when_repaired():
    sim, models, test = exact(1.0, 0.0)
    rows = {r["model"]: r for r in D.label_preserving_shuffle(models, test, repeats=10, device="cpu")}
    for r in rows.values():
        assert abs(r["drop"]) <= 3 * r["shuffled_std"] + 1e-6, r
    # EMAP of the exact posterior is naive Bayes when there is no interaction: nothing to project
    for r in D.emap(models, test, references=8, device="cpu"):
        assert r["gap"] == pytest.approx(0, abs=1e-6) and r["log_likelihood_gap"] == pytest.approx(0, abs=1e-5)


def test_the_exact_posterior_with_inter_signal_only_falls_to_chance_when_repaired():
    sim, models, test = exact(0.0, 4.0)
    rows = {r["model"]: r for r in D.label_preserving_shuffle(models, test, repeats=5, device="cpu")}
    assert rows["i2m2"]["score"] == pytest.approx(sim.bayes_accuracy(sim.sample(20_000)), abs=0.02)
    assert rows["i2m2"]["shuffled"] == pytest.approx(0.5, abs=0.02)
    assert rows["i2m2"]["p_value"] == pytest.approx(1 / 6) and rows["i2m2"]["z"] > 20
    gaps = {r["model"]: r["gap"] for r in D.emap(models, test, device="cpu")}
    assert gaps["intra"] == 0 and gaps["i2m2"] > 0.3  # all its signal is interaction


def test_the_verdict_is_right_in_every_cell_of_notebook_00s_grid_for_the_exact_posterior():
    """The grid is read from notebook 00's parameters cell; the exact posterior is what a
    model trained on unlimited data converges to."""
    import nbformat

    cell = next(c for c in nbformat.read(ROOT / "notebooks" / "00_selection_variable.ipynb", as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)
    for intra, inter in itertools.product(params["grid_intra"], params["grid_inter"]):
        sim, models, test = exact(intra, inter, n=4000)
        report = D.dependency_report(models, test, repeats=5, device="cpu")
        assert report.verdict == synthetic.expected_verdict(sim), (intra, inter, report.sentence())


def trained_models(intra, inter, n_train=4000, epochs=6):
    sim = ik.SelectionModel(n_classes=2, dims=(6, 6), intra=(intra, intra), inter=inter, seed=0)
    data = {k: synthetic.dataset(sim.sample(n)) for k, n in (("train", n_train), ("valid", 1000), ("test", 4000))}
    trained = {}
    ik.compare_models(lambda: synthetic.build_model(sim.dims, 2, 32), data["train"], data["valid"], data["test"],
                      trained=trained, epochs=epochs, batch_size=128, monitor="accuracy", device="cpu",
                      progress=False)
    return sim, trained, data["test"]


@pytest.fixture(scope="module")
def intra_only():
    return trained_models(1.0, 0.0)


@pytest.fixture(scope="module")
def inter_only():
    return trained_models(0.0, 4.0)


def test_trained_models_on_data_without_selection_effect_lose_nothing_when_repaired(intra_only):
    sim, trained, test = intra_only
    report = D.dependency_report(trained, test, device="cpu")
    for r in report.rows:
        assert abs(r["drop"]) <= max(3 * r["shuffled_std"], 0.01), r
        assert abs(r["emap_gap"]) <= 0.02, r
    assert report.verdict == "intra-dominated" == synthetic.expected_verdict(sim), report.sentence()
    rows = {r["model"]: r for r in report.rows}
    # cross-sample shuffles: a uni-modal model falls to the baseline without its modality, keeps its score otherwise
    assert rows["uni:x"]["x shuffled"] == pytest.approx(report.baseline, abs=0.04)
    assert rows["uni:x"]["x2 shuffled"] == rows["uni:x"]["score"]
    assert rows["i2m2"]["both shuffled"] == pytest.approx(report.baseline, abs=0.04)


def test_label_preserving_shuffle_drops_a_trained_i2m2_to_chance_when_only_the_relation_carries_the_label(inter_only):
    sim, trained, test = inter_only
    report = D.dependency_report(trained, test, device="cpu")
    rows = {r["model"]: r for r in report.rows}
    assert rows["i2m2"]["score"] > 0.6
    assert rows["i2m2"]["shuffled"] == pytest.approx(0.5, abs=0.02)
    assert rows["intra"]["score"] == pytest.approx(0.5, abs=0.03)
    assert report.verdict == "inter-dominated" == synthetic.expected_verdict(sim), report.sentence()
    assert rows["i2m2"]["emap_gap"] > 0.05
    figure = plots.dependency_report(report)
    assert len(figure.data) == 6 + 4
    json.dumps(report.to_dict())  # the notebooks store it in metrics.json


def test_the_cheap_repairing_equals_running_the_whole_model_on_repaired_pairs(inter_only):
    _, trained, test = inter_only
    model = trained["i2m2"]
    base = ik.predict(model, test, device="cpu")
    order = D.label_preserving_permutation(test.targets, torch.Generator().manual_seed(0))
    cheap = D.repaired_logits(model, test, base, {"x2": order}, device="cpu")
    whole = ik.predict(model, D.repaired(test, {"x2": order}), device="cpu").logits
    torch.testing.assert_close(cheap, whole, rtol=1e-5, atol=1e-5)


def test_any_map_style_dataset_gives_the_same_diagnostics(inter_only):
    _, trained, test = inter_only
    small = D.subset(test, torch.arange(600))
    models = {k: trained[k] for k in ("uni:x", "i2m2")}
    for fn, kwargs in ((D.label_preserving_shuffle, dict(repeats=3)), (D.cross_sample_shuffle, {}),
                       (D.emap, dict(references=4))):
        a, b = fn(models, small, device="cpu", **kwargs), fn(models, MapStyle(small), device="cpu", **kwargs)
        for ra, rb in zip(a, b):
            for key, value in ra.items():
                assert rb[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


class Bilinear(nn.Module):
    def __init__(self, additive: bool):
        super().__init__()
        self.a, self.b, self.w = nn.Linear(3, 2), nn.Linear(3, 2), nn.Parameter(torch.randn(3, 3, 2))
        self.additive = additive

    def forward(self, x, x2):
        out = self.a(x) + self.b(x2)
        return out if self.additive else out + torch.einsum("ni,ijk,nj->nk", x, self.w, x2)


def emap_model(additive: bool):
    torch.manual_seed(0)
    return ik.I2M2({"x": ik.Expert(nn.Linear(3, 2), "x"), "joint": ik.Expert(Bilinear(additive), ("x", "x2"))})


def test_emap_is_exact_for_an_additive_joint_expert_and_matches_brute_force_otherwise():
    g = torch.Generator().manual_seed(0)
    data = ik.TensorData({"x": torch.randn(40, 3, generator=g), "x2": torch.randn(40, 3, generator=g)},
                         torch.randint(0, 2, (40,), generator=g))
    [row] = D.emap({"m": emap_model(additive=True)}, data, references=3, device="cpu")
    assert row["gap"] == 0 and abs(row["log_likelihood_gap"]) < 1e-6
    # with every example a reference, the estimate is the EMAP of Hessel and Lee, computed here by brute force
    model = emap_model(additive=False)
    f = model.experts["joint"].net
    with torch.no_grad():
        every = torch.stack([torch.stack([f(data.inputs["x"][i:i + 1], data.inputs["x2"][j:j + 1])[0]
                                          for j in range(40)]) for i in range(40)])  # [i, j] = f(x_i, x'_j)
        projected = every.mean(1) + every.mean(0) - every.mean((0, 1))
        logits = model.experts["x"].net(data.inputs["x"]) + projected
    [row] = D.emap({"m": model}, data, references=40, device="cpu")
    want = D.score(model(data.inputs).logits.detach(), data.targets, ik.Categorical(), "accuracy") - \
        D.score(logits, data.targets, ik.Categorical(), "accuracy")
    assert row["gap"] == pytest.approx(want, abs=1e-9)
    assert row["log_likelihood_gap"] == pytest.approx(
        D.log_likelihood(model, model(data.inputs).logits.detach(), data.targets) - D.log_likelihood(model, logits, data.targets), abs=1e-5)


def test_bad_arguments_are_refused_naming_them(inter_only):
    _, trained, test = inter_only
    with pytest.raises(ValueError, match="repeats must be at least 2"):
        D.label_preserving_shuffle(trained, test, repeats=1)
    with pytest.raises(KeyError, match="modality='audio'"):
        D.label_preserving_shuffle(trained, test, modality="audio")
    with pytest.raises(ValueError, match="references must be an integer"):
        D.dependency_report(trained, test, references=0)
    with pytest.raises(ValueError, match="at least one trained model"):
        D.dependency_report({}, test)
    multilabel = ik.I2M2({"x": ik.Expert(nn.Linear(6, 2), "x"), "x2": ik.Expert(nn.Linear(6, 2), "x2")}, likelihood="bernoulli")
    with pytest.raises(ValueError, match="share one likelihood"):
        D.dependency_report({"a": trained["i2m2"], "b": multilabel}, test)
    with pytest.raises(KeyError, match="metric='auprc_macro'"):
        D.label_preserving_shuffle(trained, test, metric="auprc_macro")


def test_the_report_works_for_bernoulli_and_soft_score_likelihoods():
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    for likelihood, targets in ((ik.Bernoulli(), (torch.stack([x[:, 0], x2[:, 0]], 1) > 0).float()),
                                (ik.SoftScores(), torch.softmax(5 * torch.stack([x[:, 0], x2[:, 0], x[:, 1]], 1), 1).round(decimals=1))):
        k = targets.shape[1]
        torch.manual_seed(0)
        model = ik.I2M2({"x": ik.Expert(nn.Linear(3, k), "x"), "x2": ik.Expert(nn.Linear(3, k), "x2"),
                         "joint": ik.Expert(Bilinear(False) if k == 2 else LateFusion({"x": nn.Identity(), "x2": nn.Identity()}, head=nn.Linear(6, k)), ("x", "x2"))},
                        likelihood=likelihood)
        report = D.dependency_report(model.baselines(), ik.TensorData({"x": x, "x2": x2}, targets), repeats=3,
                                     device="cpu")
        assert report.metric == {"bernoulli": "auroc", "soft_scores": "vqa_score"}[likelihood.name]
        assert report.verdict in D.VERDICTS
        logits = model({"x": x, "x2": x2}).logits.detach()
        assert D.score(logits, targets, likelihood, report.metric) == pytest.approx(  # the quick path, as evaluate's
            ik.evaluate_probs(ik.Predictions(logits, {}, targets, likelihood).probs.numpy(), targets.numpy(),
                              likelihood)[report.metric])
        assert set(report.pid) == {"data", "uni:x", "uni:x2", "intra", "inter", "i2m2"}
