"""The expert-contribution analysis against its definitions."""

import itertools
import math

import pytest
import torch

from i2m2kit import contributions as C


def logits(n=200, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, k, generator=g, dtype=torch.float64) * s
            for name, s in (("x", 1.0), ("x2", 0.5), ("joint", 2.0))}


def test_margin_contributions_sum_to_the_margin():
    z = logits()
    total = sum(z.values())
    top2 = total.topk(2, 1).values
    torch.testing.assert_close(sum(C.margin_contributions(z).values()), top2[:, 0] - top2[:, 1])


def test_shapley_values_match_the_permutation_definition_and_are_efficient():
    z = logits(n=50)
    target = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    phi = C.shapley_values(z, target)
    rows = torch.arange(50)

    def v(names):
        if not names:
            return torch.full((50,), -math.log(4), dtype=torch.float64)
        return torch.log_softmax(sum(z[n] for n in names), 1)[rows, target]

    # average marginal gain over all 3! orders of arrival
    for name in z:
        gains = []
        for order in itertools.permutations(z):
            before = list(order[: order.index(name)])
            gains.append(v(before + [name]) - v(before))
        torch.testing.assert_close(phi[name], torch.stack(gains).mean(0))
    torch.testing.assert_close(sum(phi.values()), v(list(z)) - v([]))


def test_flips_agreement_and_the_deciding_expert():
    z = {"a": torch.tensor([[3.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.0, 1.0], [0.0, 0.5]])}
    flipped = C.flips(z)
    assert flipped["a"].tolist() == [True, False]  # without a, row 0 becomes class 1
    assert flipped["b"].tolist() == [False, False]
    assert C.agreement(z) == {("a", "b"): 0.5}
    assert C.deciding_expert(z) == ["a", "a"]


def test_term_correlation_finds_the_term_an_expert_learned():
    g = torch.Generator().manual_seed(0)
    terms = {"t1": torch.randn(500, 3, generator=g), "t2": torch.randn(500, 3, generator=g)}
    learned = {"e": 2 * terms["t1"] + 5.0}  # an affine copy: logits are defined up to a shift
    assert C.term_correlation(learned, terms, {"e": "t1"})["e"] == pytest.approx(1.0)
    assert abs(C.term_correlation(learned, terms, {"e": "t2"})["e"]) < 0.15


def test_summary_has_a_row_per_expert():
    z = logits()
    rows = C.summary(z, torch.zeros(200, dtype=torch.long))
    assert [r["expert"] for r in rows] == ["x", "x2", "joint"]
    assert sum(r["decides"] for r in rows) == pytest.approx(1.0)
