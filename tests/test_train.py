"""The one training loop: it learns, resumes exactly, and loses nothing."""

import functools

import pytest
import torch
from torch import nn

import i2m2kit as ik
from i2m2kit.blocks import LateFusion
from i2m2kit.tasks import synthetic

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


def test_i2m2_learns_and_beats_the_intra_modality_model(sim, sim_data, build):
    rows = ik.compare_models(build, sim_data["train"], sim_data["valid"], sim_data["test"],
                             epochs=6, batch_size=64, monitor="accuracy", progress=False)
    acc = {r["model"]: r["accuracy"] for r in rows}
    assert list(acc) == ["uni:x", "uni:x2", "intra", "inter", "i2m2"]
    bayes = sim.bayes_accuracy(sim.sample(20_000))
    assert acc["i2m2"] > 0.8 > 0.5  # chance is 0.5
    assert acc["i2m2"] > acc["intra"] + 0.05  # the selection term carries signal the intra model cannot see
    assert acc["i2m2"] <= bayes + 0.02  # nothing beats Bayes beyond sampling error
    for r in rows:  # every model is scored from probabilities alike
        assert {"accuracy", "auroc", "auprc", "ece", "nll", "loss"} <= set(r)


def test_pretrain_finetune_starts_the_products_from_the_experts_trained_alone(sim_data, build, monkeypatch):
    """As published: the uni-modal and inter runs are the pretraining; intra and I2M2 load
    their experts and are only fine-tuned (no second pretraining of the same experts). A model
    may get its own arguments (``per_model``: the published runs differ in learning rate)."""
    from i2m2kit.train import training_phases

    calls = []
    real_fit = ik.protocol.fit

    def recording_fit(model, *args, **kwargs):  # the phases fit runs, and the weights it starts from
        phases = training_phases(model, kwargs["regime"], kwargs["epochs"], kwargs.get("pretrain_epochs"),
                                 kwargs.get("pretrained", ()))
        calls.append((sorted(model.experts), [(p.name, p.epochs) for p in phases],
                      {n: [p.detach().clone() for p in e.parameters()] for n, e in model.experts.items()}))
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(ik.protocol, "fit", recording_fit)
    trained = {}
    rows = ik.compare_models(build, sim_data["train"], sim_data["valid"], sim_data["test"], regime="pretrain_finetune",
                             epochs=1, pretrain_epochs=2, batch_size=256, progress=False, trained=trained,
                             per_model={"inter": {"pretrain_epochs": 3}, "intra": {"epochs": 2}})
    assert [r["model"] for r in rows] == ["uni:x", "uni:x2", "intra", "inter", "i2m2"]
    by_experts = {tuple(experts): (phases, start) for experts, phases, start in calls}
    assert len(calls) == 5
    for alone, epochs in ((("x",), 2), (("x2",), 2), (("joint",), 3)):
        assert by_experts[alone][0] == [(f"pretrain:{alone[0]}", epochs)]  # pretraining: pretrain_epochs, alone
    for product, finetune_epochs in ((("x", "x2"), 2), (("joint", "x", "x2"), 1)):
        phases, start = by_experts[product]
        assert phases == [("finetune", finetune_epochs)]  # no second pretraining of the same experts
        for n in product:  # it starts where the expert's own run ended
            source = {"x": "uni:x", "x2": "uni:x2", "joint": "inter"}[n]
            for p, q in zip(start[n], trained[source].experts[n].parameters()):
                assert torch.equal(p, q)
    i2m2 = next(r for r in rows if r["model"] == "i2m2")
    assert i2m2["train_seconds"] > sum(r["train_seconds"] for r in rows if r["model"] in ("uni:x", "uni:x2", "inter"))
    with pytest.raises(ValueError, match=r"per_model names \['late'\], not among the models"):
        ik.compare_models(build, sim_data["train"], None, sim_data["test"], per_model={"late": {"epochs": 1}})
    with pytest.raises(ValueError, match=r"names \['uni:y'\], not among the models"):
        ik.compare_models(build, sim_data["train"], None, sim_data["test"], names=["i2m2", "uni:y"])


class Crash(Exception):
    pass


class CrashingData(ik.TensorData):
    """Raises after a number of batches: a crash in the middle of an epoch."""

    def __init__(self, data, crash_after):
        super().__init__(data.inputs, data.targets)
        self.calls, self.crash_after = 0, crash_after

    def __getitem__(self, index):
        self.calls += 1
        if self.calls > self.crash_after:
            raise Crash
        return super().__getitem__(index)


def dropout_model(sim):
    torch.manual_seed(0)
    model = synthetic.build_model(sim.dims, sim.n_classes, hidden=16)
    model.experts["joint"].net.head.insert(1, nn.Dropout(0.3))  # RNG use inside training
    return model


@pytest.mark.parametrize("regime, crash_at_epoch", [
    ("joint", 2.5),  # mid-epoch
    ("pretrain_finetune", 1.5),  # inside the second expert's pretraining
    ("pretrain_finetune", 4.5),  # inside the joint fine-tuning
])
def test_resume_after_a_crash_gives_the_same_result_to_the_last_digit(sim, sim_data, tmp_path, regime, crash_at_epoch):
    kwargs = dict(epochs=4, pretrain_epochs=1, regime=regime, batch_size=256, optimizer=SGD,
                  monitor="accuracy", patience=3, seed=3, progress=False)
    train = sim_data["train"]
    steps_per_epoch = -(-len(train) // 256)

    reference = dropout_model(sim)
    expected = ik.fit(reference, train, sim_data["valid"], checkpoint_dir=tmp_path / "a", **kwargs)

    crashed = dropout_model(sim)
    with pytest.raises(Crash):
        ik.fit(crashed, CrashingData(train, int(crash_at_epoch * steps_per_epoch)), sim_data["valid"],
               checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = dropout_model(sim)  # a fresh process: fresh weights, then resume
    got = ik.fit(resumed, train, sim_data["valid"], checkpoint_dir=tmp_path / "b", resume=True, **kwargs)

    assert got.history == expected.history
    assert got.best == expected.best and got.best_epoch == expected.best_epoch
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    final = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in reference.state_dict().items())


def test_an_existing_run_is_never_overwritten(sim_data, build, tmp_path):
    ik.fit(build(), sim_data["train"], epochs=1, checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        ik.fit(build(), sim_data["train"], epochs=1, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_an_unwritable_checkpoint_dir_fails_before_training(sim_data, build, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(OSError, match="cannot write checkpoints to .*a-file"):
        ik.fit(model, sim_data["train"], epochs=1, checkpoint_dir=blocker / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pretrain_then_finetune_trains_each_expert_alone_first(sim_data, build):
    model = build()
    result = ik.fit(model, sim_data["train"], sim_data["valid"], regime="pretrain_finetune",
                    epochs=2, pretrain_epochs=1, progress=False)
    assert [(r["phase"], r["epoch"]) for r in result.history] == [
        ("pretrain:x", 1), ("pretrain:x2", 1), ("pretrain:joint", 1), ("finetune", 0), ("finetune", 1), ("finetune", 2)]


def test_early_stopping_stops_and_keeps_the_best_weights(sim_data, build):
    model = build()
    # a learning rate so large that validation gets worse after the first epochs
    result = ik.fit(model, sim_data["train"], sim_data["valid"], epochs=30, patience=2,
                    optimizer=functools.partial(torch.optim.SGD, lr=5.0), monitor="loss", progress=False)
    losses = [r["valid_loss"] for r in result.history]
    assert len(losses) < 30
    assert result.best["loss"] == min(losses)
    assert ik.evaluate(model, sim_data["valid"])["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_frozen_backbone_trains_only_the_heads():
    torch.manual_seed(0)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.x, self.x2 = nn.Linear(6, 8), nn.Linear(6, 8)

        def forward(self, inputs):
            return {k: torch.relu(getattr(self, k)(v)) for k, v in inputs.items()}

    model = ik.I2M2({
        "x": ik.Expert(nn.Linear(8, 2), "x"),
        "x2": ik.Expert(nn.Linear(8, 2), "x2"),
        "joint": ik.Expert(LateFusion({"x": nn.Identity(), "x2": nn.Identity()}, head=nn.Linear(16, 2)), ("x", "x2")),
    }, backbone=Backbone(), modalities=("x", "x2"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    data = ik.TensorData({"x": torch.randn(256, 6, generator=g), "x2": torch.randn(256, 6, generator=g)},
                         torch.randint(0, 2, (256,), generator=g))
    ik.fit(model, data, epochs=2, regime="frozen_backbone", progress=False)
    after = dict(model.named_parameters())
    for k in before:
        assert torch.equal(before[k], after[k]) == k.startswith("backbone."), k


def test_non_finite_inputs_stop_training_with_a_clear_error(sim_data, build):
    bad = ik.TensorData(dict(sim_data["train"].inputs), sim_data["train"].targets)
    bad.inputs["x"] = bad.inputs["x"].clone()
    bad.inputs["x"][5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1, step"):
        ik.fit(build(), bad, epochs=1, batch_size=len(bad), progress=False)


def test_arguments_are_checked(sim_data, build):
    with pytest.raises(KeyError, match="monitor='acc'"):
        ik.fit(build(), sim_data["train"], sim_data["valid"], epochs=1, monitor="acc", progress=False)
    with pytest.raises(ValueError, match="regime"):
        ik.fit(build(), sim_data["train"], epochs=1, regime="staged", progress=False)
    with pytest.raises(ValueError, match="patience"):
        ik.fit(build(), sim_data["train"], epochs=1, patience=3, progress=False)
    with pytest.raises(ValueError, match="modality 'x2' has 3 examples"):
        ik.TensorData({"x": torch.zeros(4, 2), "x2": torch.zeros(3, 2)}, torch.zeros(4))


def test_settings_that_would_train_nothing_and_empty_data_are_refused(sim_data, build):
    train, valid = sim_data["train"], sim_data["valid"]
    empty = ik.TensorData({k: v[:0] for k, v in valid.inputs.items()}, valid.targets[:0])
    for kwargs, message in [(dict(patience=0), "patience must be at least 1"),
                            (dict(clip_grad_norm=0.0), "clip_grad_norm must be positive"),
                            (dict(train=empty), "train holds no examples"),
                            (dict(valid=empty), "valid holds no examples")]:
        with pytest.raises(ValueError, match=message):
            ik.fit(build(), **{"train": train, "valid": valid, **kwargs}, epochs=1, progress=False)
    with pytest.raises(TypeError, match="'x' must be a torch.Tensor"):
        ik.TensorData({"x": train.inputs["x"].numpy()}, train.targets)


def test_device_auto_is_the_cpu_without_a_gpu():
    assert ik.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_compare_across_seeds_reports_mean_and_spread(sim_data, build):
    rows, trained = ik.compare_across_seeds(build, sim_data["train"], sim_data["valid"], sim_data["test"],
                                            seeds=[0, 1], names=["uni:x", "i2m2"], epochs=1, progress=False)
    assert [r["model"] for r in rows] == ["uni:x", "i2m2"] and len(trained) == 2
    for r in rows:
        assert r["accuracy"] == pytest.approx(sum(r["accuracy_runs"]) / 2)
        assert r["accuracy_std"] == pytest.approx(abs(r["accuracy_runs"][0] - r["accuracy_runs"][1]) / 2)
    assert trained[0]["i2m2"] is not trained[1]["i2m2"]


def test_evaluate_missing_drops_the_experts_of_the_absent_modality(sim_data, build):
    model = build()
    ik.fit(model, sim_data["train"], epochs=1, progress=False)
    rows = {r["modalities"]: r for r in ik.evaluate_missing(model, sim_data["test"])}
    assert list(rows) == ["x + x2", "x", "x2"]
    assert rows["x + x2"]["accuracy"] == ik.evaluate(model, sim_data["test"])["accuracy"]
    assert rows["x"]["accuracy"] == ik.evaluate(model.uni("x"), sim_data["test"])["accuracy"]


def test_evaluate_noised_degrades_the_noised_modality_only(sim_data, build):
    model = build()
    ik.fit(model, sim_data["train"], epochs=2, progress=False)
    clean = ik.evaluate(model, sim_data["test"])["accuracy"]
    rows = ik.evaluate_noised(model, sim_data["test"], "x", [0.0, 1.0, 10.0])
    assert [r["noise"] for r in rows] == [0.0, 1.0, 10.0] and all(r["noised"] == "x" for r in rows)
    assert rows[0]["accuracy"] == clean  # no noise, no change
    assert rows[2]["accuracy"] < rows[0]["accuracy"] - 0.05  # drowned in noise, it loses its evidence
    # an expert that does not read x is untouched by noise on x
    assert ik.evaluate_noised(model.uni("x2"), sim_data["test"], "x", [10.0])[0]["accuracy"] == \
        ik.evaluate(model.uni("x2"), sim_data["test"])["accuracy"]
    # the same seed draws the same noise
    assert ik.evaluate_noised(model, sim_data["test"], "x", [1.0])[0]["accuracy"] == rows[1]["accuracy"]
    with pytest.raises(KeyError, match="'audio'"):
        ik.evaluate_noised(model, sim_data["test"], "audio", [1.0])


def test_tensor_data_refuses_non_finite_inputs_and_mismatched_counts():
    x = torch.zeros(5, 3)
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match="modality 'x': example 3 holds NaN or infinite"):
        ik.TensorData({"x": x}, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="modality 'x' has 5 examples but there are 4 targets"):
        ik.TensorData({"x": torch.zeros(5, 3)}, torch.zeros(4, dtype=torch.long))


def test_train_step_is_one_plain_pytorch_step(sim_data, build):
    """The public step fit takes: the same loss and the same weights as forward, loss,
    backward and step written out in PyTorch."""
    inputs, target = sim_data["train"][list(range(32))]
    ours, theirs = build(), build()
    opt_ours, opt_theirs = SGD(ours.parameters()), SGD(theirs.parameters())
    loss = ik.train_step(ours, inputs, target, opt_ours, clip_grad_norm=1.0)
    expected = nn.functional.cross_entropy(sum(theirs(inputs).expert_logits.values()), target)
    opt_theirs.zero_grad()
    expected.backward()
    torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 1.0)
    opt_theirs.step()
    assert not loss.requires_grad and torch.equal(loss, expected.detach())
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_the_loss_is_read_once_per_logging_interval_and_a_non_finite_one_is_still_named(sim_data, build,
                                                                                        monkeypatch):
    from i2m2kit import train

    reads = []
    real_check = train._Run.check_finite
    monkeypatch.setattr(train, "LOG_EVERY", 4)
    monkeypatch.setattr(train._Run, "check_finite", staticmethod(lambda *a: reads.append(1) or real_check(*a)))
    data = ik.TensorData({k: v[:320] for k, v in sim_data["train"].inputs.items()}, sim_data["train"].targets[:320])
    ik.fit(build(), data, epochs=1, batch_size=32, progress=False)  # 10 steps
    assert len(reads) == 3  # after steps 4 and 8, and at the end of the epoch: not one host read per step
    bad = ik.TensorData({k: v.clone() for k, v in data.inputs.items()}, data.targets)
    bad.inputs["x"][6 * 32 + 5, 0] = float("inf")  # in the 7th batch (the epoch's order is shuffled)
    model = build()
    with pytest.raises(FloatingPointError, match=r"phase 'joint', epoch 1, step \d+: check the inputs"):
        ik.fit(model, bad, epochs=1, batch_size=32, progress=False)


def test_a_recipe_is_the_fit_arguments_and_the_overrides_of_each_model(sim_data, build):
    recipe = ik.Recipe(epochs=1, batch_size=256, optimizer=SGD, monitor="accuracy",
                       per_model={"inter": {"epochs": 2}})
    assert recipe.fit_arguments("inter")["epochs"] == 2 and recipe.fit_arguments()["epochs"] == 1
    assert recipe.replace(epochs=3).fit_arguments("intra")["epochs"] == 3
    args = (build, sim_data["train"], sim_data["valid"], sim_data["test"])
    by_recipe = ik.compare_models(*args, recipe=recipe, progress=False)
    by_arguments = ik.compare_models(*args, epochs=1, batch_size=256, optimizer=SGD, monitor="accuracy",
                                     per_model={"inter": {"epochs": 2}}, progress=False)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]  # noqa: E731
    assert drop(by_recipe) == drop(by_arguments)
    assert next(r for r in by_recipe if r["model"] == "inter")["best_epoch"] == 2


def test_validation_does_not_move_the_model_again():
    """fit puts the model on its device once; each epoch's validation finds it there."""
    torch.manual_seed(0)
    data = ik.TensorData({"x": torch.randn(64, 3)}, torch.randint(0, 2, (64,)))
    model = ik.I2M2({"x": ik.Expert(torch.nn.Linear(3, 2), reads="x")})
    moves = []
    original = model.to
    model.to = lambda *a, **k: moves.append(a) or original(*a, **k)
    ik.fit(model, data, data, epochs=3, batch_size=16, device="cpu", progress=False)
    assert len(moves) == 1
    ik.predict(model, data, device="cpu")
    assert len(moves) == 1
