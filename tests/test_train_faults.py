"""fit trains what it is asked to or says why not, in one line: missing modalities, empty sets,
pretrain_epochs out of range, checkpoints of another run, unreadable or foreign files, full disks."""

import collections
import errno
import functools
import re
import shutil

import pytest
import torch
from conftest import MapStyle
from torch.utils.data import DataLoader, IterableDataset

import i2m2kit as ik
from i2m2kit.experts import MissingModalityError
from i2m2kit.tasks import synthetic
from i2m2kit.checkpoints import CheckpointError

KW = dict(epochs=1, batch_size=16, progress=False)


def build(hidden=4):
    torch.manual_seed(0)
    return synthetic.build_model((3, 3), 2, hidden=hidden)  # experts x, x2 and joint (reads x and x2)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return ik.TensorData({"x": torch.randn(32, 3, generator=g), "x2": torch.randn(32, 3, generator=g)},
                         torch.randint(0, 2, (32,), generator=g))


def without_x2(data):
    return ik.TensorData({"x": data.inputs["x"]}, data.targets)


def empty(data):
    return ik.TensorData({k: v[:0] for k, v in data.inputs.items()}, data.targets[:0])


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Nothing(IterableDataset):
    def __iter__(self):
        return iter(())


# ----------------------------------------------------------------------- modalities


def test_a_modality_missing_from_the_data_names_the_set_the_modality_and_its_experts(data):
    lacking = r"lacks modality 'x2', which experts 'x2', 'joint' read \(it holds \['x'\]\)"
    cases = [  # (train, valid, message): known before training, or from the first batch
        (without_x2(data), None, "^train set " + lacking),
        (data, without_x2(data), "^valid set " + lacking),
        (data, MapStyle(without_x2(data)), "^valid set " + lacking),
        (DataLoader(without_x2(data), batch_size=8), None, "^train set: the batch " + lacking),
        (data, DataLoader(without_x2(data), batch_size=8), "^valid set: the batch " + lacking),
    ]
    for train, valid, message in cases:
        model = build()
        before = state(model)
        with pytest.raises(MissingModalityError, match=message):
            ik.fit(model, train, valid, **KW)
        if "batch" not in message:  # refused before any training
            assert unchanged(model, before)
    # a subset of the experts that can run on the data trains; evaluation may still drop experts
    ik.fit(build().uni("x"), without_x2(data), without_x2(data), **KW)
    assert "accuracy" in ik.evaluate(build(), without_x2(data))


# ----------------------------------------------------------------------- empty sets


def test_an_empty_set_is_refused_naming_it(data):
    for kwargs, message in [
        (dict(train=DataLoader(empty(data), batch_size=4)), r"^train holds no examples \(an empty DataLoader\)$"),
        (dict(valid=DataLoader(empty(data), batch_size=4)), r"^valid holds no examples \(an empty DataLoader\)$"),
        (dict(train=DataLoader(Nothing(), batch_size=4)), r"^train holds no examples \(its loader gave no batch in phase 'joint', epoch 1\)$"),
        (dict(valid=DataLoader(Nothing(), batch_size=4)), r"^valid holds no examples \(its loader gave no batch\)$"),
    ]:
        with pytest.raises(ValueError, match=message):
            ik.fit(build(), **{"train": data, "valid": data, **kwargs}, **KW)
    with pytest.raises(ValueError, match=r"^test holds no examples \(an empty data set\)$"):
        ik.evaluate(build(), empty(data), name="test")
    with pytest.raises(ValueError, match=r"^data holds no examples \(an empty DataLoader\)$"):
        ik.predict(build(), DataLoader(empty(data), batch_size=4))


# ----------------------------------------------------------------------- pretrain_epochs


def test_pretrain_epochs_below_one_is_refused_and_none_means_as_many_as_epochs(data):
    for bad in (-1, 0, 1.5, True):
        model = build()
        before = state(model)
        with pytest.raises(ValueError, match=rf"^pretrain_epochs must be a whole number of at least 1, .* got {bad!r}"):
            ik.fit(model, data, regime="pretrain_finetune", pretrain_epochs=bad, **{**KW, "epochs": 2})
        assert unchanged(model, before)
    with pytest.raises(ValueError, match="pretrain_epochs must be"):  # compare_models too, before training
        ik.compare_models(build, data, None, data, regime="pretrain_finetune", pretrain_epochs=0, **KW)
    result = ik.fit(build(), data, regime="pretrain_finetune", pretrain_epochs=None, **{**KW, "epochs": 2})
    counts = collections.Counter(row["phase"] for row in result.history)
    assert counts == {"pretrain:x": 2, "pretrain:x2": 2, "pretrain:joint": 2, "finetune": 2}


# ----------------------------------------------------------------------- resume


@pytest.mark.parametrize("change, said", [
    (dict(epochs=2), "epochs: 1 -> 2"),
    (dict(regime="pretrain_finetune"), "regime: 'joint' -> 'pretrain_finetune'"),
    (dict(batch_size=8), "batch_size: 16 -> 8"),
    (dict(optimizer=functools.partial(torch.optim.Adam, lr=0.01)), r"optimizer\.lr: 0\.001 -> 0\.01"),
    (dict(optimizer=functools.partial(torch.optim.SGD, lr=0.01)), r"optimizer\.type: 'Adam' -> 'SGD'"),
    (dict(seed=1), "seed: 0 -> 1"),
    (dict(hidden=8), r"parameter shapes: experts\.x\.net\.0\.weight \(4, 3\) -> \(8, 3\), "
                     r"experts\.x\.net\.0\.bias \(4,\) -> \(8,\), .* and \d+ more"),
])
def test_resume_refuses_a_checkpoint_of_another_run_in_one_line(data, tmp_path, change, said):
    ik.fit(build(), data, checkpoint_dir=tmp_path, **KW)
    stored = torch.load(tmp_path / "last.pt", weights_only=True)["fingerprint"]
    assert stored["version"] == ik.__version__ and stored["phases"] == [["joint", 1]]
    assert stored["parameters"]["experts.x.net.0.weight"] == [4, 3]
    change = dict(change)
    model = build(change.pop("hidden", 4))
    before = state(model)
    with pytest.raises(CheckpointError) as error:
        ik.fit(model, data, checkpoint_dir=tmp_path, resume=True, **{**KW, **change})
    message = str(error.value)
    assert "\n" not in message and len(message) < 500, message
    assert message.startswith(f"{tmp_path / 'last.pt'} was made by another run, not resuming it")
    assert message.endswith(f"delete {tmp_path} or pass another checkpoint_dir to start afresh")
    assert re.search(said, message), message
    assert unchanged(model, before)
    ik.fit(build(), data, checkpoint_dir=tmp_path, resume=True, **KW)  # the same run resumes (to its end)


@pytest.mark.parametrize("content, said", [
    (b"", "an empty file"),
    ("half", "OSError|RuntimeError"),
    (b"not a checkpoint at all", "UnpicklingError"),
])
def test_an_unreadable_last_pt_is_named_with_how_to_start_afresh(data, tmp_path, content, said):
    ik.fit(build(), data, checkpoint_dir=tmp_path / "run", **KW)
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2] if content == "half" else content)
    with pytest.raises(CheckpointError, match=rf"^{last} is unreadable or truncated \(({said})[^\n]*\); "
                                              rf"delete {tmp_path / 'run'} or pass another checkpoint_dir"):
        ik.fit(build(), data, checkpoint_dir=tmp_path / "run", resume=True, **KW)


def test_a_model_pt_that_fit_did_not_write_is_never_overwritten(data, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    torch.save(build().state_dict(), user / "model.pt")  # the user's own weights, same shapes
    before = (user / "model.pt").read_bytes()
    for resume in (False, True):
        with pytest.raises(FileExistsError, match=rf"^{user / 'model.pt'} was not written by fit .* move it away"):
            ik.fit(build(), data, checkpoint_dir=user, resume=resume, **KW)
    assert (user / "model.pt").read_bytes() == before and sorted(p.name for p in user.iterdir()) == ["model.pt"]
    # in a folder of fit's own, a model.pt put there since is someone's too: last.pt records fit's
    run = tmp_path / "run"
    ik.fit(build(), data, checkpoint_dir=run, **KW)
    ik.fit(build(), data, checkpoint_dir=run, resume=True, **KW)  # fit's own model.pt: resumes
    (run / "model.pt").write_bytes(before)
    with pytest.raises(FileExistsError, match=rf"^{run / 'model.pt'} was not written by this run"):
        ik.fit(build(), data, checkpoint_dir=run, resume=True, **KW)
    assert (run / "model.pt").read_bytes() == before


# ----------------------------------------------------------------------- disk space


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_training(data, tmp_path, monkeypatch):
    model = build(hidden=32)
    need = ik.checkpoints.checkpoint_bytes(model)
    assert need == 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = need - 1
    assert free > 4096  # room for the old 4 KB write probe, not for one checkpoint
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))
    before = state(model)
    with pytest.raises(OSError, match=rf" KiB free, but a checkpoint of this model \({need:,} bytes\) needs"):
        ik.fit(model, data, checkpoint_dir=tmp_path / "run", **KW)
    assert unchanged(model, before) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("failure, said", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch's own words
     r"torch: \[enforce fail at inline_container.cc:672\] . unexpected pos 576 vs 534"),
])
def test_a_checkpoint_write_failing_midway_names_the_file_and_leaves_nothing_half_written(
        data, tmp_path, monkeypatch, failure, said):
    real_save, calls = torch.save, []

    def disk_fills_up(obj, f, *args, **kwargs):  # the second checkpoint (epoch 2) meets a full disk
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 partial")
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    kwargs = {**KW, "epochs": 3}
    with pytest.raises(OSError) as error:
        ik.fit(build(), data, data, checkpoint_dir=tmp_path, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / 'last.pt'} (") and re.search(said, message), message
    assert message.endswith("nothing half-written is left; free some space, then pass resume=True to continue "
                            "from the last checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary leftovers
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1  # epoch 1's, whole
    monkeypatch.setattr(torch, "save", real_save)
    resumed = ik.fit(build(), data, data, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_resume_refuses_other_training_or_validation_data(data, tmp_path):
    ik.fit(build(), data, data, checkpoint_dir=tmp_path, **KW)
    other = ik.TensorData({k: v.flip(0) for k, v in data.inputs.items()}, data.targets.flip(0))
    for train, valid, said in ((other, data, r"train\.sha256"), (data, other, r"valid\.sha256"),
                               (ik.TensorData({k: v[:20] for k, v in data.inputs.items()}, data.targets[:20]), data,
                                r"train\.examples: 32 -> 20")):
        with pytest.raises(CheckpointError, match=said):
            ik.fit(build(), train, valid, checkpoint_dir=tmp_path, resume=True, **KW)
    ik.fit(build(), data, data, checkpoint_dir=tmp_path, resume=True, **KW)  # the same data resumes


def test_a_second_fit_into_the_same_checkpoints_is_refused_while_the_first_runs(data, tmp_path):
    from i2m2kit.checkpoints import run_lock

    with run_lock(tmp_path / "run"):  # as a fit in another process holds it
        with pytest.raises(RuntimeError, match=r"another fit \(pid \d+\) is writing here"):
            ik.fit(build(), data, checkpoint_dir=tmp_path / "run", **KW)
    assert not (tmp_path / "run").exists()
    ik.fit(build(), data, checkpoint_dir=tmp_path / "run", **KW)  # released with its holder
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt", "model.pt"]


@pytest.mark.parametrize("change, error, said", [
    (dict(epochs=2.5), TypeError, "epochs must be a whole number, got 2.5"),
    (dict(seed=1.5), TypeError, "seed must be a whole number"),
    (dict(checkpoint_dir=""), ValueError, "checkpoint_dir is an empty path"),
    (dict(loss_weight=torch.tensor([-1.0, 1.0])), ValueError, "loss_weight must hold finite, non-negative"),
])
def test_a_setting_of_the_wrong_kind_is_refused_before_training(data, change, error, said):
    model = build()
    before = state(model)
    with pytest.raises(error, match=said):
        ik.fit(model, data, **{**KW, **change})
    assert unchanged(model, before)


def test_a_checkpoint_folder_under_home_is_the_users_home(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ik.fit(build(), data, checkpoint_dir="~/runs/a", **KW)
    assert (tmp_path / "runs" / "a" / "model.pt").is_file() and not (tmp_path / "~").exists()


def test_class_targets_of_another_integer_type_train_the_same_and_bools_are_refused(data):
    as_int32 = ik.TensorData(data.inputs, data.targets.int())
    a, b = ik.fit(build(), data, **KW), ik.fit(build(), as_int32, **KW)
    assert a.history == b.history
    with pytest.raises(ValueError, match="categorical targets must be class indices, got .*bool.*pass target.long()"):
        ik.fit(build(), ik.TensorData(data.inputs, data.targets.bool()), **KW)


def test_a_loss_weight_of_the_wrong_length_or_a_monitor_without_validation_is_refused_at_once(data):
    with pytest.raises(ValueError, match=r"loss_weight must hold one weight per class \(2\), got shape \(5,\)"):
        ik.fit(build(), data, loss_weight=torch.ones(5), **KW)
    with pytest.raises(ValueError, match="monitor='accuracy' needs a validation set"):
        ik.fit(build(), data, monitor="accuracy", **KW)
