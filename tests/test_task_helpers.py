"""Fast unit tests of the helpers the notebooks print with: split sizes, the dependency
report's summary, the metric a small validation split can select on, the per-seed callback,
and the small helpers of the AV-MNIST, fastMRI, MIMIC-III and vision-language tasks."""

import pytest
import torch

import i2m2kit as ik
from i2m2kit import diagnostics as D
from i2m2kit import vision_language as vl
from i2m2kit.data import split_sizes
from i2m2kit.protocol import compare_across_seeds, defined_metric
from i2m2kit.tasks import avmnist, fastmri, mimic, synthetic


def labelled(targets, dims=(3, 3), seed=0):
    """A TensorData of the given class targets, inputs "x" and "x2" of random noise."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    inputs = {"x": torch.randn(len(targets), dims[0], generator=g), "x2": torch.randn(len(targets), dims[1], generator=g)}
    return ik.TensorData(inputs, targets)


def tiny_synthetic(n_train=64, n_valid=32, n_test=32):
    sim = ik.SelectionModel(n_classes=2, dims=(3, 3), intra=(1.0, 1.0), inter=2.0, seed=0)
    return sim, {k: synthetic.dataset(sim.sample(n)) for k, n in (("train", n_train), ("valid", n_valid), ("test", n_test))}


# ---------------------------------------------------------------------- data.split_sizes


def test_split_sizes_prints_per_class_counts_in_split_order_and_returns_the_sizes(capsys):
    data = {"test": labelled([2, 2, 2, 0]), "train": labelled([0, 0, 1, 2, 1, 0]), "valid": labelled([1, 1])}
    sizes = split_sizes(data, ["a", "b", "c"], unit="pairs")
    assert sizes == {"train": 6, "valid": 2, "test": 4}
    assert list(sizes) == ["train", "valid", "test"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [line.split()[0] for line in lines] == ["train", "valid", "test"]
    assert lines[0].split()[1] == "6" and "pairs" in lines[0]
    assert "{'a': 3, 'b': 2, 'c': 1}" in lines[0]
    assert "{'a': 0, 'b': 2, 'c': 0}" in lines[1]  # classes absent from a split count 0
    assert "{'a': 1, 'b': 0, 'c': 3}" in lines[2]


def test_split_sizes_skips_missing_splits(capsys):
    sizes = split_sizes({"test": labelled([1, 0, 1]), "train": labelled([0])}, ["no", "yes"])
    assert sizes == {"train": 1, "test": 3}
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["train", "test"]
    assert "examples" in out[0] and "{'no': 1, 'yes': 2}" in out[1]


# ---------------------------------------------------------------------- DependencyReport.summary


@pytest.fixture(scope="module")
def tiny_report():
    sim, data = tiny_synthetic(n_test=120)
    torch.manual_seed(0)
    models = synthetic.build_model(sim.dims, 2, hidden=4).baselines()
    return D.dependency_report(models, data["test"], repeats=2, references=2, emap_examples=40, clusters=2,
                               device="cpu")


def test_dependency_report_summary_lists_the_sentence_each_model_and_the_pid(tiny_report):
    report = tiny_report
    lines = report.summary().splitlines()
    assert lines[0] == report.sentence()
    assert lines[0].startswith(f"Verdict: {report.verdict}.")
    rows = lines[1:-1]
    assert len(rows) == len(report.rows) >= 5
    for line, r in zip(rows, report.rows):
        assert line.split()[0] == r["model"]
        assert f"{report.metric} {r['score']:.3f}" in line
        assert f"re-paired within labels {r['shuffled']:.3f}" in line
        assert f"EMAP gap {r['emap_gap']:+.3f}" in line
    assert lines[-1].startswith("PID of the data (bits): ")
    for term, value in report.pid["data"].items():
        assert f"{term} {value:.3f}" in lines[-1]


# ---------------------------------------------------------------------- protocol


def test_defined_metric_keeps_the_preferred_metric_when_it_is_defined():
    valid = labelled([0, 1, 0, 1])
    assert defined_metric(valid, "categorical", 2, "accuracy") == "accuracy"
    assert defined_metric(valid, "categorical", 2, "auroc") == "auroc"


def test_defined_metric_falls_back_to_loss():
    empty = labelled([])
    assert defined_metric(empty, "categorical", 2, "accuracy") == "loss"
    one_class = labelled([1, 1, 1])
    assert defined_metric(one_class, "categorical", 2, "auroc") == "loss"
    assert defined_metric(one_class, "categorical", 2, "accuracy") == "accuracy"  # accuracy needs one class only
    assert defined_metric(labelled([0, 1]), "categorical", 2, "no such metric") == "loss"


def test_compare_across_seeds_calls_after_seed_once_per_seed_with_its_rows():
    sim, data = tiny_synthetic()
    calls = []

    def build():
        return synthetic.build_model(sim.dims, 2, hidden=4)

    rows, trained = compare_across_seeds(build, data["train"], data["valid"], data["test"], seeds=[3, 1],
                                         after_seed=lambda seed, r: calls.append((seed, r)),
                                         names=["uni:x", "i2m2"], epochs=1, progress=False, device="cpu")
    assert [seed for seed, _ in calls] == [3, 1]
    for i, (_, seed_rows) in enumerate(calls):
        assert [r["model"] for r in seed_rows] == ["uni:x", "i2m2"]
        for summary, r in zip(rows, seed_rows):
            assert summary["accuracy_runs"][i] == r["accuracy"]  # the rows of that seed, in order
    assert len(trained) == 2 and rows[0]["seeds"] == [3, 1]


# ---------------------------------------------------------------------- AV-MNIST


def avmnist_data(targets, seed=0):
    targets = torch.as_tensor(targets, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    return ik.TensorData({"image": torch.rand(n, 1, 28, 28, generator=g), "audio": torch.rand(n, 1, 112, 112, generator=g)},
                         targets)


def test_first_of_each_digit_gives_the_first_index_of_each_digit():
    data = ik.TensorData({"x": torch.zeros(8, 1)}, torch.tensor([3, 1, 0, 1, 2, 0, 4, 3]))
    assert avmnist.first_of_each_digit(data) == [2, 1, 4, 0, 6]
    assert avmnist.first_of_each_digit(data, digits=3) == [2, 1, 4]


def test_joint_overrules_counts_are_consistent_with_the_predictions(capsys):
    torch.manual_seed(0)
    model = avmnist.build_model(channels=1, joint_channels=1, hidden=8)
    with torch.no_grad():  # a strong joint expert, so that it changes some calls
        for p in model.experts["joint"].parameters():
            p.mul_(5)
    data = avmnist_data(torch.arange(12) % 10)
    pred = ik.predict(model, data, device="cpu")
    counts, figure = avmnist.joint_overrules(pred, data)
    z = pred.expert_logits
    intra_says = (z["image"] + z["audio"]).argmax(1)
    i2m2_says = (z["image"] + z["audio"] + z["joint"]).argmax(1)
    overruled = intra_says != i2m2_says
    assert counts["fraction"] == pytest.approx(overruled.float().mean().item())
    assert counts["rightly"] == int((overruled & (i2m2_says == data.targets)).sum())
    assert counts["wrongly"] == int((overruled & (intra_says == data.targets)).sum())
    assert 0 < counts["rightly"] + counts["wrongly"] <= int(overruled.sum())
    out = capsys.readouterr().out
    assert f"{counts['rightly']} times to the true digit, {counts['wrongly']} times away from it" in out
    assert f"{counts['fraction']:.1%}" in out
    assert (figure is None) == (counts["rightly"] + counts["wrongly"] == 0)


def test_joint_overrules_counts_nothing_without_a_change():
    # hand-made predictions: the joint expert agrees with the others everywhere
    targets = torch.tensor([0, 1, 2])
    logits = torch.eye(3)
    pred = ik.Predictions(logits=3 * logits, expert_logits={"image": logits, "audio": logits, "joint": logits},
                           targets=targets, likelihood=ik.Categorical())
    counts, figure = avmnist.joint_overrules(pred, avmnist_data(targets))
    assert counts == {"fraction": 0.0, "rightly": 0, "wrongly": 0} and figure is None


def test_describe_without_metadata_prints_the_split_sizes_and_returns_them(tmp_path, capsys):
    data = {"train": avmnist_data([0, 1, 1, 9]), "valid": avmnist_data([5]), "test": avmnist_data([9, 9])}
    assert avmnist.describe(tmp_path, data) == {"train": 4, "valid": 1, "test": 2}
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["train", "valid", "test"]
    assert lines[0].split()[1] == "4" and "[1, 2, 0, 0, 0, 0, 0, 0, 0, 1]" in lines[0]
    assert "[0, 0, 0, 0, 0, 0, 0, 0, 0, 2]" in lines[2]
    assert not any("image:" in line or "audio:" in line for line in lines)


# ---------------------------------------------------------------------- vision-language


ROWS = [
    {"model": "intra", "seeds": [0, 1], "accuracy": 0.6, "accuracy_std": 0.01, "accuracy_runs": [0.59, 0.61], "loss": 0.9},
    {"model": "i2m2", "seeds": [0, 1], "accuracy": 0.7, "accuracy_std": 0.02, "accuracy_runs": [0.68, 0.72],
     "train_seconds": 3.5},
]


def test_model_scores_keys_the_rows_by_model():
    scores = vl.model_scores(ROWS, "accuracy")
    assert scores == {"intra": {"accuracy": 0.6, "accuracy_std": 0.01, "accuracy_runs": [0.59, 0.61]},
                      "i2m2": {"accuracy": 0.7, "accuracy_std": 0.02, "accuracy_runs": [0.68, 0.72]}}
    extra = vl.model_scores(ROWS, "accuracy", "train_seconds")
    assert extra["i2m2"]["train_seconds"] == 3.5 and extra["intra"]["train_seconds"] is None
    with pytest.raises(KeyError):
        vl.model_scores(ROWS, "auroc")


def test_print_model_scores_prints_header_baseline_and_each_model(capsys):
    vl.print_model_scores(vl.model_scores(ROWS, "accuracy"), "accuracy", ("majority", 0.5), "test accuracy")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "test accuracy"
    assert lines[1].split() == ["majority", "0.500"]
    assert lines[2].split() == ["intra", "0.600", "+-", "0.010"]
    assert lines[3].split() == ["i2m2", "0.700", "+-", "0.020"]
    assert len(lines) == 4


# ---------------------------------------------------------------------- fastMRI


EXPERTS = [{"expert": "slices", "decides": 0.5, "flip_rate_if_dropped": 0.1},
           {"expert": "joint", "decides": 0.25, "flip_rate_if_dropped": 0.125}]


def test_joint_expert_gain_is_i2m2_auroc_minus_intra_auroc(capsys):
    scores = [{"model": "intra", "auroc": 0.7}, {"model": "i2m2", "auroc": 0.75}, {"model": "inter", "auroc": 0.1}]
    gain = fastmri.joint_expert_gain(scores, EXPERTS, "acl")
    assert gain == pytest.approx(0.05)
    out = capsys.readouterr().out
    assert "I2M2 0.750" in out and "intra-modality model 0.700" in out and "+0.050" in out
    assert "decides 25% of the acl calls" in out and "flips 12%" in out


def test_joint_expert_gain_is_none_when_auroc_is_undefined(capsys):
    scores = [{"model": "intra", "accuracy": 0.7}, {"model": "i2m2", "accuracy": 0.75}]
    assert fastmri.joint_expert_gain(scores, EXPERTS, "acl") is None
    assert "undefined" in capsys.readouterr().out
    half = [{"model": "intra", "auroc": 0.7}, {"model": "i2m2"}]
    assert fastmri.joint_expert_gain(half, EXPERTS, "acl") is None


def test_label_logits_softmax_is_the_labels_sigmoid():
    g = torch.Generator().manual_seed(0)
    z = {"a": torch.randn(5, len(fastmri.LABELS), generator=g), "b": torch.randn(5, len(fastmri.LABELS), generator=g)}
    for label in ("abnormal", "acl"):
        j = fastmri.LABELS.index(label)
        two = fastmri.label_logits(z, label)
        assert set(two) == {"a", "b"}
        for name, logits in two.items():
            assert logits.shape == (5, 2)
            p = logits.softmax(1)
            s = torch.sigmoid(z[name][:, j])
            assert torch.allclose(p, torch.stack([1 - s, s], 1), atol=1e-6)
    with pytest.raises(ValueError):
        fastmri.label_logits(z, "no such label")


# ---------------------------------------------------------------------- MIMIC-III


def test_class_names():
    assert mimic.class_names("mortality") == list(mimic.MORTALITY_CLASSES)
    assert len(mimic.class_names("mortality")) == len(mimic.MORTALITY_CLASSES) > 2
    assert mimic.class_names("icd9_10") == ["no", "yes"]


def test_prepare_refuses_a_folder_without_the_tables(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ADMISSIONS.csv").write_text("x\n")
    with pytest.raises(FileNotFoundError, match="holds no MIMIC-III tables") as e:
        mimic.prepare(tmp_path / "prepared", raw)
    assert str(raw) in str(e.value)
    assert not (tmp_path / "prepared").exists()


def test_prepare_names_a_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no such folder") as e:
        mimic.prepare(tmp_path / "prepared", missing)
    assert f"data_dir={str(missing)!r}" in str(e.value)
