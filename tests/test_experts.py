"""The product of experts: its arithmetic, its baselines, and its guards."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import i2m2kit as ik


class Linear2(nn.Module):
    """A joint network taking two modalities positionally."""

    def __init__(self, d1, d2, k):
        super().__init__()
        self.a, self.b = nn.Linear(d1, k), nn.Linear(d2, k, bias=False)

    def forward(self, x1, x2):
        return self.a(x1) * torch.tanh(self.b(x2))


def three_experts(k=5, likelihood="categorical"):
    torch.manual_seed(0)
    return ik.I2M2({
        "image": ik.Expert(nn.Linear(4, k), reads="image"),
        "audio": ik.Expert(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, k)), reads=("audio",)),
        "joint": ik.Expert(Linear2(4, 3, k), reads=("image", "audio")),
    }, likelihood=likelihood)


def batch(n=7):
    torch.manual_seed(1)
    return {"image": torch.randn(n, 4), "audio": torch.randn(n, 3)}


def test_logits_are_the_sum_of_expert_logits_and_log_probs_match_the_published_form():
    model, inputs = three_experts(), batch()
    out = model(inputs)
    assert set(out.expert_logits) == {"image", "audio", "joint"}
    total = sum(out.expert_logits.values())
    torch.testing.assert_close(out.logits, total)
    torch.testing.assert_close(out.log_probs, F.log_softmax(total, dim=1))
    # published: sum of per-expert log_softmax, renormalised with logsumexp
    summed = sum(F.log_softmax(z, dim=1) for z in out.expert_logits.values())
    published = summed - torch.logsumexp(summed, dim=1, keepdim=True)
    torch.testing.assert_close(out.log_probs, published)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(7))


def test_expert_calls_its_network_with_the_modalities_in_the_order_of_reads():
    net = Linear2(3, 4, 2)  # first argument audio (3), second image (4)
    expert = ik.Expert(net, reads=("audio", "image"))
    inputs = batch()
    torch.testing.assert_close(expert(inputs), net(inputs["audio"], inputs["image"]))


def test_every_parameter_of_every_expert_receives_a_gradient():
    model = three_experts()
    out = model(batch())
    model.loss(out.logits, torch.tensor([0, 1, 2, 3, 4, 0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_unregistered_trainable_tensors_are_refused():
    class LowRankFusionAsPublished(nn.Module):
        def __init__(self):
            super().__init__()
            self.factors = [torch.randn(4, 2, requires_grad=True), torch.randn(3, 2, requires_grad=True)]

        def forward(self, x1, x2):
            return (x1 @ self.factors[0]) * (x2 @ self.factors[1])

    with pytest.raises(TypeError, match="factors"):
        ik.Expert(LowRankFusionAsPublished(), reads=("image", "audio"))


def test_subsets_equal_models_built_with_only_those_experts():
    model, inputs = three_experts(), batch()
    experts = model.experts
    cases = {
        "uni:image": (model.uni("image"), ["image"]),
        "intra": (model.intra(), ["image", "audio"]),
        "inter": (model.inter(), ["joint"]),
        "subset": (model.subset("audio", "joint"), ["audio", "joint"]),
    }
    for label, (sub, names) in cases.items():
        alone = ik.I2M2({n: experts[n] for n in names}, modalities=model.modalities)
        got, want = sub(inputs), alone(inputs)
        assert list(got.expert_logits) == names, label
        torch.testing.assert_close(got.logits, want.logits)
        torch.testing.assert_close(got.logits, sum(experts[n](inputs) for n in names))
    assert list(model.baselines()) == ["uni:audio", "uni:image", "intra", "inter", "i2m2"]
    # subsets share parameters with the model they came from
    assert model.intra().experts["image"].net.weight is model.experts["image"].net.weight


def test_an_absent_modality_drops_the_experts_that_read_it():
    model, inputs = three_experts(), batch()
    out = model({"image": inputs["image"]})
    assert list(out.expert_logits) == ["image"]
    torch.testing.assert_close(out.logits, model.experts["image"](inputs))
    with pytest.raises(ValueError, match="no expert can run"):
        model.inter()({"image": inputs["image"]})


def test_bad_inputs_name_the_culprit():
    model, inputs = three_experts(), batch()
    with pytest.raises(KeyError, match="'imgae'"):
        model({"imgae": inputs["image"], "audio": inputs["audio"]})
    with pytest.raises(KeyError, match="no expert named"):
        model.subset("video")
    with pytest.raises(KeyError, match="reads 'video' alone|no expert reads 'video'"):
        model.uni("video")
    with pytest.raises(ValueError, match=r"expert reading image failed on inputs of shape image \(8, 7\)"):
        model({"image": torch.randn(8, 7), "audio": inputs["audio"]})  # a modality of the wrong width
    bad = ik.I2M2({"a": ik.Expert(nn.Linear(4, 5), "image"), "b": ik.Expert(nn.Linear(3, 4), "audio")})
    with pytest.raises(ValueError, match="expert 'b' returned logits of shape"):
        bad(inputs)
    with pytest.raises(ValueError, match="likelihood must be ik.Categorical"):
        ik.I2M2({"a": ik.Expert(nn.Linear(4, 5), "image")}, likelihood="softmax")


@pytest.mark.parametrize("likelihood, target, message", [
    ("multiclass", torch.tensor([0, 1, 2, 3, 4, 5, 1]), r"target class 5 is outside 0\.\.4: the model has 5 classes"),
    ("multiclass", torch.tensor([0, 1, 2, 3, 4, -1, 1]), r"target class -1 is outside 0\.\.4"),
    ("multiclass", torch.zeros(7), r"class indices .* got \(7,\) float32"),  # float labels
    ("multiclass", torch.zeros(7, 1, dtype=torch.long), r"got \(7, 1\) int64"),
    ("multiclass", torch.zeros(6, dtype=torch.long), r"got \(6,\) int64"),
    (ik.Bernoulli(), torch.zeros(7), r"bernoulli targets must have the logits' shape \(7, 5\), got \(7,\) float32"),
    (ik.SoftScores(), torch.zeros(7, 4), r"soft_scores targets must have the logits' shape \(7, 5\)"),
])
def test_bad_targets_are_named_by_the_loss(likelihood, target, message):
    model = three_experts(likelihood=likelihood)
    with pytest.raises(ValueError, match=message):
        model.loss(model(batch()).logits, target)


def test_inputs_of_the_wrong_type_or_dtype_are_named():
    model, inputs = three_experts(), batch()
    with pytest.raises(TypeError, match="takes a dict"):
        model(inputs["image"])
    with pytest.raises(TypeError, match="on inputs of shape image ndarray"):
        model({**inputs, "image": inputs["image"].numpy()})
    with pytest.raises(ValueError, match=r"image \(7, 4\) int64"):  # int images: torch only says Long vs Float
        model({**inputs, "image": inputs["image"].long()})


def test_the_bernoulli_likelihood_is_the_renormalised_product_of_bernoulli_experts():
    model, inputs = three_experts(k=4, likelihood=ik.Bernoulli()), batch()
    out = model(inputs)
    zs = torch.stack(list(out.expert_logits.values()))  # (experts, B, L)
    yes, no = torch.sigmoid(zs).prod(0), torch.sigmoid(-zs).prod(0)
    torch.testing.assert_close(out.probs, yes / (yes + no))
    labels = torch.rand(7, 4).round()
    torch.testing.assert_close(model.loss(out.logits, labels), F.binary_cross_entropy_with_logits(out.logits, labels))
    pos_weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(
        model.loss(out.logits, labels, pos_weight),
        F.binary_cross_entropy_with_logits(out.logits, labels, pos_weight=pos_weight))


def test_soft_answer_scores_get_one_loss_on_the_summed_logits_for_every_model():
    """VQA: each answer a Bernoulli whose experts multiply; binary cross-entropy of each
    model's own summed logits against the scores, summed over answers, for I2M2 and every
    baseline alike (the published code gave I2M2 renormalised log-probabilities instead)."""
    model, inputs = three_experts(k=5, likelihood="soft_scores"), batch()
    scores = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0]).repeat(7, 1)
    for name, baseline in model.baselines().items():
        out = baseline(inputs)
        summed = sum(out.expert_logits.values())
        torch.testing.assert_close(out.logits, summed)
        expected = F.binary_cross_entropy_with_logits(summed, scores, reduction="none").sum(1).mean()
        torch.testing.assert_close(baseline.loss(out.logits, scores), expected, msg=name)
        torch.testing.assert_close(out.log_probs, F.logsigmoid(summed))
    # the answer is the most probable one; the score is that answer's soft score
    out = model(inputs)
    metrics = ik.evaluate_probs(out.probs.detach().numpy(), scores.numpy(), "soft_scores")
    chosen = out.logits.argmax(1)
    assert metrics["vqa_score"] == pytest.approx(float(scores[torch.arange(7), chosen].mean()))


def test_shared_backbone_runs_once_and_feeds_the_experts():
    calls = []

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)

        def forward(self, inputs):
            calls.append(1)
            return {"image": self.proj(inputs["image"]), "audio": inputs["audio"]}

    model = ik.I2M2({
        "image": ik.Expert(nn.Linear(6, 2), "image"),
        "joint": ik.Expert(Linear2(6, 3, 2), ("image", "audio")),
    }, backbone=Backbone())
    out = model(batch())
    assert len(calls) == 1 and out.logits.shape == (7, 2)
    assert model.inter().backbone is model.backbone


def test_an_expert_with_nothing_to_read_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"expert 'a' reads 'audio', not among the model's modalities \['image'\]"):
        ik.I2M2({"a": ik.Expert(nn.Linear(3, 5), "audio")}, modalities=("image",))
    expert = ik.Expert(nn.Linear(3, 5), "audio")
    expert.reads = ()  # Expert itself refuses empty reads; changed since
    with pytest.raises(ValueError, match="expert 'b' reads no modality: it has nothing to read"):
        ik.I2M2({"b": expert})


def test_strict_inputs_must_let_every_expert_run():
    """Training and validation pass strict=True: an absent modality names the experts it drops
    instead of dropping them (without strict it is a missing modality at test time)."""
    model, inputs = three_experts(), batch()
    with pytest.raises(ik.experts.MissingModalityError,
                       match=r"^the batch lacks modality 'audio', which experts 'audio', 'joint' read \(it holds \['image'\]\)"):
        model({"image": inputs["image"]}, strict=True)
    torch.testing.assert_close(model(inputs, strict=True).logits, model(inputs).logits)
    model.uni("image")({"image": inputs["image"]}, strict=True)  # a subset needs only what its experts read


def test_each_likelihood_is_an_object_and_its_names_are_shorthands_for_it():
    for names, likelihood in ((("categorical", "multiclass"), ik.Categorical()),
                              (("bernoulli", "multilabel"), ik.Bernoulli()),
                              (("soft_scores", "answers"), ik.SoftScores())):
        for name in names:
            assert three_experts(likelihood=name).likelihood == likelihood
    model = three_experts(likelihood=ik.Bernoulli())
    assert all(m.likelihood == ik.Bernoulli() for m in model.baselines().values())  # baselines share it
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 4.0]])
    assert ik.Categorical().predicted(logits).tolist() == [0, 2]
    assert ik.Bernoulli().predicted(logits).tolist() == [[1, 0, 1], [0, 1, 1]]
    assert ik.SoftScores().predicted(logits).tolist() == [0, 2]
    torch.testing.assert_close(ik.Bernoulli().log_probs(logits), F.logsigmoid(logits))
    y = torch.tensor([0, 2])
    assert ik.Categorical().score(logits, y, "accuracy") == 1.0
    assert ik.Categorical().metrics(F.softmax(logits, 1).numpy(), y.numpy())["accuracy"] == 1.0
