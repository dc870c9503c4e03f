"""The selection-variable simulator: sampling and its exact posterior."""

import pytest
import torch

import i2m2kit as ik


def test_sampling_is_reproducible_and_reports_acceptance():
    a = ik.SelectionModel(seed=4).sample(3000)
    b = ik.SelectionModel(seed=4).sample(3000)
    assert torch.equal(a.inputs["x"], b.inputs["x"]) and torch.equal(a.y, b.y)
    assert a.inputs["x"].shape == (3000, 16) and a.inputs["x2"].shape == (3000, 16)
    assert 0.3 < a.acceptance < 0.7  # bias 0: about half the draws are kept


def test_the_posterior_is_the_renormalised_sum_of_its_three_terms():
    sim = ik.SelectionModel(n_classes=3, dims=(5, 7), intra=(1.0, 0.5), inter=2.0, seed=1)
    batch = sim.sample(500)
    terms = sim.terms(batch.inputs)
    assert set(terms) == {"x", "x2", "selection"}
    logp = sim.log_posterior(batch.inputs)
    torch.testing.assert_close(logp, torch.log_softmax(terms["x"] + terms["x2"] + terms["selection"], 1))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(500))


def test_with_no_inter_strength_the_posterior_is_naive_bayes():
    sim = ik.SelectionModel(inter=0.0, seed=2)
    batch = sim.sample(1000)
    t = sim.terms(batch.inputs)
    naive = torch.log_softmax(t["x"] + t["x2"] - sim.log_prior, 1)
    torch.testing.assert_close(sim.log_posterior(batch.inputs), naive)


def test_bad_parameters_and_inputs_are_named():
    with pytest.raises(ValueError, match="dims"):
        ik.SelectionModel(n_classes=4, dims=(4, 8))
    with pytest.raises(ValueError, match="prior"):
        ik.SelectionModel(prior=(0.5, 0.6))
    sim = ik.SelectionModel()
    with pytest.raises(ValueError, match="'x2' must have shape"):
        sim.log_posterior({"x": torch.zeros(2, 16), "x2": torch.zeros(2, 15)})


def brute_force_sample(sim, n_draws, seed):
    """The definition, literally: draw y, x, x' from the class-conditionals, keep v = 1."""
    g = torch.Generator().manual_seed(seed)
    k = sim.n_classes
    y = torch.multinomial(sim.log_prior.exp(), n_draws, replacement=True, generator=g)
    x, x2 = torch.randn(n_draws, sim.dims[0], generator=g), torch.randn(n_draws, sim.dims[1], generator=g)
    x[:, :k] += sim.means[0][y]
    x2[:, :k] += sim.means[1][y]
    p = torch.sigmoid(sim.selection_logits(x, x2)).gather(1, y[:, None]).squeeze(1)
    v = torch.rand(n_draws, generator=g) < p
    return ik.SelectionBatch({"x": x[v], "x2": x2[v]}, y[v], v.float().mean().item())


@pytest.mark.parametrize("kwargs", [
    dict(n_classes=2, dims=(6, 6), intra=(1.0, 1.0), inter=3.0),
    dict(n_classes=3, dims=(7, 9), intra=(1.0, 0.5), inter=2.0, interaction_dims=3, bias=-1.0,
         prior=(0.2, 0.3, 0.5)),
])
def test_the_sampler_draws_from_the_selection_model_as_defined(kwargs):
    """The fast sampler against rejection of full draws: acceptance rate, class balance,
    the selected interaction scores and the Bayes accuracy agree within sampling error."""
    sim = ik.SelectionModel(seed=0, **kwargs)
    fast = sim.sample(200_000)
    slow = brute_force_sample(sim, int(200_000 / fast.acceptance), seed=1)
    assert fast.acceptance == pytest.approx(slow.acceptance, abs=0.005)
    counts = torch.bincount(fast.y, minlength=sim.n_classes) / len(fast.y)
    torch.testing.assert_close(counts, torch.bincount(slow.y, minlength=sim.n_classes) / len(slow.y), atol=0.006, rtol=0)

    def selected_scores(b):
        return sim.interaction_scores(b.inputs["x"], b.inputs["x2"]).gather(1, b.y[:, None]).squeeze(1)

    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(selected_scores(fast).quantile(q), selected_scores(slow).quantile(q), atol=0.02, rtol=0)
    assert sim.bayes_accuracy(fast) == pytest.approx(sim.bayes_accuracy(slow), abs=0.006)
    for name in ("x", "x2"):  # every coordinate past the signal block is standard normal
        rest = fast.inputs[name][:, sim.n_classes + sim.m:]
        if rest.numel():
            torch.testing.assert_close(rest.var(0), torch.ones(rest.shape[1]), atol=0.02, rtol=0)


@pytest.mark.parametrize("kwargs", [
    dict(n_classes=2, dims=(8, 8), intra=(1.0, 1.0), inter=3.0),
    dict(n_classes=4, dims=(8, 12), intra=(1.5, 0.5), inter=2.0, class_conditional=("mixture", "gaussian")),
])
def test_the_exact_posterior_is_calibrated(kwargs):
    sim = ik.SelectionModel(seed=3, **kwargs)
    batch = sim.sample(200_000)
    probs = sim.log_posterior(batch.inputs).exp().numpy()
    assert ik.expected_calibration_error(probs, batch.y.numpy()) < 0.005


def test_without_intra_signal_one_modality_alone_is_at_chance_while_bayes_is_not():
    from i2m2kit.tasks import synthetic

    sim = ik.SelectionModel(dims=(6, 6), intra=(0.0, 0.0), inter=4.0, seed=0)
    train, valid, test = (synthetic.dataset(sim.sample(n)) for n in (5000, 2000, 20_000))
    torch.manual_seed(0)
    uni = synthetic.build_model(sim.dims, 2, hidden=32).uni("x")
    ik.fit(uni, train, valid, epochs=8, monitor="accuracy", progress=False)
    accuracy = ik.evaluate(uni, test)["accuracy"]
    se = (0.25 / 20_000) ** 0.5
    assert abs(accuracy - 0.5) < 3 * se
    bayes = sim.bayes_accuracy(ik.SelectionBatch(test.inputs, test.targets, 0.0))
    assert bayes > 0.7


@pytest.mark.parametrize("kwargs", [
    dict(dims=(6, 6), intra=(1.0, 1.0), inter=3.0),
    dict(dims=(6, 6), intra=(2.0, 0.0), inter=0.0, class_conditional=("mixture", "gaussian")),
])
def test_no_trained_model_beats_the_bayes_accuracy(kwargs):
    from i2m2kit.tasks import synthetic

    sim = ik.SelectionModel(seed=1, **kwargs)
    train, valid, test = (synthetic.dataset(sim.sample(n)) for n in (10_000, 2000, 20_000))
    bayes = sim.bayes_accuracy(ik.SelectionBatch(test.inputs, test.targets, 0.0))
    rows = ik.compare_models(lambda: synthetic.build_model(sim.dims, 2, hidden=32), train, valid, test,
                             epochs=8, monitor="accuracy", progress=False)
    se = (bayes * (1 - bayes) / 20_000) ** 0.5
    for r in rows:
        assert r["accuracy"] <= bayes + 3 * se, r["model"]
    best = max(r["accuracy"] for r in rows)
    assert best > bayes - 0.05  # and the best of them gets close: the limit is a real one


@pytest.mark.parametrize("setting", [{"inter": float("nan")}, {"intra": (1.0, float("nan"))}, {"inter": float("inf")},
                                     {"bias": float("nan")}])
def test_non_finite_strengths_are_refused_rather_than_hanging_the_sampler(setting):
    with pytest.raises(ValueError, match="must be finite numbers"):
        ik.SelectionModel(n_classes=2, dims=(6, 6), **setting)
