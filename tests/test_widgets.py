"""The live explorers' controls redraw their figures (tests/test_browser.py drives them in JupyterLab)."""

import math

import plotly.graph_objects as go
import pytest
import torch

import i2m2kit as ik
from i2m2kit import contributions, plots
from i2m2kit.tasks import synthetic
from i2m2kit.widgets import contribution_explorer, selection_explorer


def test_moving_the_intra_slider_resamples_and_redraws():
    explorer = selection_explorer(n=4000, intra=1.5, inter=3.0, dims=(6, 6))
    (intra, inter), status, (bars, scatter) = explorer.children[0].children, explorer.children[1], explorer.children[2].children
    before = list(bars.data[0].y)
    scatter_before = list(scatter.data[0].x)
    intra.value = 0.0
    after = dict(zip(bars.data[0].x, bars.data[0].y))
    assert list(bars.data[0].y) != before and list(scatter.data[0].x) != scatter_before
    # without intra-modality signal each modality alone is at chance, the Bayes limit is not
    assert after["x alone"] == pytest.approx(0.5, abs=0.04) and after["x' alone"] == pytest.approx(0.5, abs=0.04)
    assert after["Bayes"] > 0.7
    assert "Bayes accuracy" in status.value
    inter.value = 0.0  # and with no signal at all, everything is at chance
    assert max(bars.data[0].y) == pytest.approx(0.5, abs=0.04)


# -- the expert-contribution explorer

SHOWN = 400  # points drawn; the data has more


@pytest.fixture
def explore(sim, build):
    """An explorer on an untrained (seeded) I2M2: the wiring does not need a good model."""
    model, data = build(), synthetic.dataset(sim.sample(600))
    return model, data, contribution_explorer(model, data, simulator=sim, max_points=SHOWN)


def click(explorer, trace_index: int, point: int) -> None:
    """A click on a scatter point, as JupyterLab's front end reports it to the kernel."""
    trace = explorer.scatter.data[trace_index]
    explorer.scatter._js2py_pointsCallback = {"event_type": "plotly_click", "points": {
        "xs": [trace.x[point]], "ys": [trace.y[point]], "point_indexes": [point], "trace_indexes": [trace_index]}}


def test_the_explorer_places_every_shown_sample_once_and_offers_every_model(explore):
    model, data, explorer = explore
    assert explorer.model_choice.options == ("uni:x", "uni:x2", "intra", "inter", "i2m2")
    assert explorer.model_choice.value == "i2m2"
    assert sorted(i for t in explorer.scatter.data for i in t.customdata) == list(range(SHOWN))
    assert "accuracy" in explorer.status.value and "Bayes accuracy" in explorer.status.value


def test_clicking_a_point_shows_that_sample_its_experts_logits_and_exact_shapley_values(explore):
    model, data, explorer = explore
    biggest = max(range(len(explorer.scatter.data)), key=lambda t: len(explorer.scatter.data[t].x))
    sample = int(explorer.scatter.data[biggest].customdata[3])
    click(explorer, biggest, 3)
    assert explorer.index == sample and f"sample {sample}</b>" in explorer.selected.value
    # the display shows the sample's coordinates
    assert list(explorer.sample_view.data[0].y) == pytest.approx(data.inputs["x"][sample].tolist())
    with torch.no_grad():
        out = model({m: x[sample:sample + 1] for m, x in data.inputs.items()})
    bars = {t.name: list(t.y) for t in explorer.experts_view.data if t.xaxis == "x"}
    for name, z in out.expert_logits.items():
        assert bars[name] == pytest.approx(z[0].tolist(), abs=1e-5)
    # exact Shapley values (empty coalition: uniform) add up to log p(predicted) + log K
    shapley = next(t for t in explorer.experts_view.data if t.xaxis == "x2")
    predicted = int(out.logits.argmax())
    assert sum(shapley.y) == pytest.approx(out.log_probs[0, predicted].item() + math.log(2), abs=1e-5)
    # on the simulator the exact posterior's three terms stand beside the experts
    assert {t.name for t in explorer.experts_view.data if t.xaxis == "x3"} == {"term x", "term x2", "term selection"}


def test_choosing_a_class_splits_that_class_margin_between_the_experts(explore):
    model, data, explorer = explore
    explorer.class_choice.value = 1
    total = ik.predict(model, data).logits
    margin = (total[:, 1] - total[:, 0]).tolist()
    for trace in explorer.scatter.data:  # x: the uni-modal experts' shares, y: the joint's; they add up
        for x, y, i in zip(trace.x, trace.y, trace.customdata):
            assert x + y == pytest.approx(margin[i], abs=1e-4)
    assert "class 1" in explorer.scatter.layout.title.text


def test_dropping_an_expert_rings_exactly_the_predictions_that_flip(explore):
    model, data, explorer = explore
    explorer.drop_choice.value = "joint"
    flipped = contributions.flips(ik.predict(model, data).expert_logits)["joint"]
    ring = next(t for t in explorer.scatter.data if t.name == "flips without joint")
    assert sorted(ring.customdata) == flipped[:SHOWN].nonzero().flatten().tolist()
    assert f"flips {int(flipped.sum())} predictions" in explorer.status.value
    explorer.model_choice.value = "uni:x"  # one expert: nothing to drop
    assert explorer.drop_choice.options == ("none",) and explorer.drop_choice.value == "none"
    assert "uni:x</b>" in explorer.status.value and "uni:x predicts" in explorer.selected.value


def test_the_sliders_resample_the_simulator_and_score_against_its_bayes_posterior(explore):
    model, data, explorer = explore
    before = explorer.data.inputs["x"].clone()
    explorer.intra.value = 0.0
    assert explorer.simulator.intra == (0.0, 0.0) and explorer.simulator.inter == 3.0
    assert not torch.equal(explorer.data.inputs["x"], before) and len(explorer.data) == len(data)
    bayes = explorer.simulator.bayes_accuracy(ik.SelectionBatch(explorer.data.inputs, explorer.data.targets, 1.0))
    assert f"Bayes accuracy {bayes:.3f} (intra 0, inter 3)" in explorer.status.value


def test_a_display_function_shows_each_benchmarks_samples_and_the_views_export_as_figures(sim, build):
    data = synthetic.dataset(sim.sample(100))
    seen = []

    def pictures(i):  # as a benchmark would: a picture and a text per sample
        seen.append(i)
        return plots.sample_view({"image": torch.rand(5, 7), "text": f"sample {i}"})

    explorer = contribution_explorer({"i2m2": build()}, data, display=pictures, class_names=["no", "yes"])
    assert seen == [explorer.index] and explorer.sample_view.data[0].type == "image"
    assert explorer.class_choice.options[1:] == (("no", 0), ("yes", 1))
    figures = explorer.figures()
    assert set(figures) == {"scatter", "sample", "experts"}
    assert all(type(f) is go.Figure and f.data for f in figures.values())
    assert "<" not in explorer.describe() and "i2m2: accuracy" in explorer.describe()
    assert repr(explorer).startswith("<contribution explorer of i2m2 on 100 samples")


def test_the_explorer_refuses_what_it_cannot_show(sim, build):
    model = build()
    with pytest.raises(ValueError, match="data to explore"):
        contribution_explorer(model)
    model.likelihood = ik.Bernoulli()
    with pytest.raises(ValueError, match="categorical"):
        contribution_explorer(model, synthetic.dataset(sim.sample(10)))
