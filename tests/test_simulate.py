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
