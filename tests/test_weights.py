"""The weighted product of experts: exponents fitted on validation, the published product untouched."""

import pytest
import torch
from torch import nn

import i2m2kit as ik
from i2m2kit.simulate import SelectionModel
from i2m2kit.tasks import synthetic


class Loud(nn.Module):
    """An expert whose logits are confident noise (a fixed random projection, scaled up)."""

    def __init__(self, d: int):
        super().__init__()
        self.net = nn.Linear(d, 2)
        nn.init.normal_(self.net.weight, std=5.0)

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def sim_data():
    sim = SelectionModel(n_classes=2, dims=(8, 8), intra=(2.0, 0.0), inter=0.0, seed=0)
    return sim, {k: synthetic.dataset(sim.sample(n)) for k, n in (("train", 2000), ("valid", 1000), ("test", 2000))}


def test_the_published_product_has_every_weight_one_and_old_state_dicts_load(sim_data):
    sim, data = sim_data
    torch.manual_seed(0)
    model = synthetic.build_model(sim.dims, 2, 8)
    assert all(float(e.weight) == 1.0 for e in model.experts.values())
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(".weight") or ".net." in k}
    assert len(state) < len(model.state_dict())  # a state dict from before expert weights
    other = synthetic.build_model(sim.dims, 2, 8)
    other.load_state_dict(state)
    x = {k: v[:5] for k, v in data["test"].inputs.items()}
    assert torch.equal(other(x).logits, model(x).logits)


def test_weighing_drops_an_expert_of_confident_noise_and_never_raises_the_validation_loss(sim_data):
    sim, data = sim_data
    torch.manual_seed(0)
    good = synthetic.build_model(sim.dims, 2, 16).uni("x")
    ik.fit(good, data["train"], data["valid"], epochs=3, batch_size=128, progress=False, device="cpu")
    model = ik.I2M2({"x": good.experts["x"], "noise": ik.Expert(Loud(8), reads="x2")})
    before = ik.evaluate(model, data["valid"], device="cpu")["loss"]
    weights = ik.weigh_experts(model, data["valid"], device="cpu")
    after = ik.evaluate(model, data["valid"], device="cpu")
    assert set(weights) == {"x", "noise"} and weights["noise"] < 0.05 < weights["x"]
    assert after["loss"] < before and float(model.experts["noise"].weight) == pytest.approx(weights["noise"])
    alone = ik.evaluate(good, data["test"], device="cpu")["accuracy"]
    assert ik.evaluate(model, data["test"], device="cpu")["accuracy"] >= alone - 0.01


def test_compare_models_weighs_the_experts_trained_alone(sim_data):
    sim, data = sim_data
    kw = dict(epochs=2, batch_size=128, progress=False, device="cpu")
    trained = {}
    rows = ik.compare_models(lambda: synthetic.build_model(sim.dims, 2, 8), data["train"], data["valid"],
                             data["test"], weigh=True, trained=trained, **kw)
    by = {r["model"]: r for r in rows}
    assert list(by) == ["uni:x", "uni:x2", "intra", "inter", "i2m2", "i2m2 (weighted)", "i2m2 (selected)"]
    chosen = by["i2m2 (selected)"]["selected"]  # the better product on validation (the loss: the default monitor)
    losses = {n: ik.evaluate(trained[n], data["valid"], device="cpu")["loss"] for n in ("i2m2", "i2m2 (weighted)")}
    assert chosen == min(losses, key=losses.get) and trained["i2m2 (selected)"] is trained[chosen]
    assert by["i2m2 (selected)"]["accuracy"] == by[chosen]["accuracy"]
    weighted = trained["i2m2 (weighted)"]
    for name, source in (("x", "uni:x"), ("x2", "uni:x2"), ("joint", "inter")):  # the experts as trained alone
        for a, b in zip(weighted.experts[name].net.parameters(), trained[source].experts[name].net.parameters()):
            assert torch.equal(a.cpu(), b.cpu())
        assert float(weighted.experts[name].weight) == pytest.approx(by["i2m2 (weighted)"]["weights"][name])
    assert by["i2m2 (weighted)"]["train_seconds"] == pytest.approx(
        sum(by[n]["train_seconds"] for n in ("uni:x", "uni:x2", "inter")))
    with pytest.raises(ValueError, match="weigh=True weighs the experts as trained alone"):
        ik.compare_models(lambda: synthetic.build_model(sim.dims, 2, 8), data["train"], data["valid"],
                          data["test"], names=("intra", "i2m2"), weigh=True, **kw)
