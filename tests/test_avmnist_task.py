"""The AV-MNIST task: the prepared-data loader and the experts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import i2m2kit as ik
from i2m2kit.tasks import avmnist


def write_layout(root: Path, n_train: int = 30, n_test: int = 12, dtype=np.uint8, image_shape=(784,)) -> dict:
    """Random arrays in the prepared (MultiBench) layout; returns them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"image/{split}_data.npy"] = rng.integers(0, 256, (n, *image_shape)).astype(dtype)
        arrays[f"audio/{split}_data.npy"] = rng.integers(0, 256, (n, 112, 112)).astype(dtype)
        arrays[f"{split}_labels.npy"] = np.arange(n) % 10  # every digit in any 10 consecutive rows
    for name, a in arrays.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / name, a)
    return arrays


@pytest.mark.parametrize("dtype, image_shape", [(np.uint8, (784,)), (np.float64, (28, 28))])
def test_load_splits_shapes_and_scale(tmp_path, dtype, image_shape):
    arrays = write_layout(tmp_path, dtype=dtype, image_shape=image_shape)
    data = avmnist.load(tmp_path, valid_size=10)
    assert {k: len(v) for k, v in data.items()} == {"train": 20, "valid": 10, "test": 12}
    for split in data.values():
        assert split.inputs["image"].shape[1:] == (1, 28, 28)
        assert split.inputs["audio"].shape[1:] == (1, 112, 112)
        assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in split.inputs.values())
        assert split.targets.dtype == torch.int64
    # valid is the last rows of the training arrays, train the rest, in order
    audio = arrays["audio/train_data.npy"]
    assert torch.allclose(data["valid"].inputs["audio"][:, 0], torch.from_numpy(audio[-10:] / 255).float())
    assert torch.allclose(data["train"].inputs["audio"][:, 0], torch.from_numpy(audio[:-10] / 255).float())
    image = arrays["image/test_data.npy"].reshape(12, 28, 28)
    assert torch.allclose(data["test"].inputs["image"][:, 0], torch.from_numpy(image / 255).float())
    assert data["valid"].targets.tolist() == arrays["train_labels.npy"][-10:].tolist()
    assert [len(v) for v in avmnist.load(tmp_path, valid_size=10, limit=5).values()] == [5, 5, 5]


def test_load_names_the_missing_or_inconsistent_file(tmp_path):
    write_layout(tmp_path)
    (tmp_path / "audio" / "test_data.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"audio[/\\]test_data\.npy"):
        avmnist.load(tmp_path, valid_size=10)
    write_layout(tmp_path)
    np.save(tmp_path / "image" / "train_data.npy", np.zeros((29, 784), np.uint8))
    with pytest.raises(ValueError, match=r"image[/\\]train_data\.npy: 29 examples"):
        avmnist.load(tmp_path, valid_size=10)
    with pytest.raises(ValueError, match="valid_size"):
        write_layout(tmp_path)
        avmnist.load(tmp_path)  # 30 training pairs cannot give 5,000 to validation
    write_layout(tmp_path, dtype=np.float64)  # the release stores floats: they may hold NaN
    audio = np.load(tmp_path / "audio" / "train_data.npy")
    audio[17, 3, 4] = np.nan
    np.save(tmp_path / "audio" / "train_data.npy", audio)
    with pytest.raises(ValueError, match=r"audio[/\\]train_data\.npy: example 17 holds NaN"):
        avmnist.load(tmp_path, valid_size=10)


@pytest.mark.parametrize("name, array, message", [
    ("train_labels.npy", np.arange(30) % 11, r"train_labels\.npy: label 10 of example 10 is not a class in 0\.\.9"),
    ("test_labels.npy", np.arange(12) % 10 - 1, r"test_labels\.npy: label -1 of example 0 "),
    ("train_labels.npy", np.arange(30) % 10 + 0.5, r"train_labels\.npy: label 0\.5 of example 0 "),
    ("train_labels.npy", np.zeros((30, 2), np.int64), r"train_labels\.npy: int64 labels of shape \(30, 2\)"),
    ("image/train_data.npy", np.full((30, 784), 300, np.int16), r"train_data\.npy: example 0 holds values outside 0-255"),
    ("image/train_data.npy", np.ones((30, 784), bool), r"train_data\.npy: bool values"),
    ("test_labels.npy", np.zeros(0, np.int64), r"test_labels\.npy: no examples"),
    ("audio/test_data.npy", None, r"audio[/\\]test_data\.npy: not a readable \.npy array"),  # cut short
])
def test_load_refuses_a_bad_array_naming_its_file(tmp_path, name, array, message):
    write_layout(tmp_path)
    if array is None:
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:5000])
    else:
        np.save(tmp_path / name, array)
    with pytest.raises(ValueError, match=message):
        avmnist.load(tmp_path, valid_size=10)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        avmnist.load(tmp_path, valid_size=10, limit=0)


def test_lenet_pools_each_modality_to_one_feature_vector():
    image, audio = avmnist.image_encoder(6), avmnist.audio_encoder(6)
    assert image(torch.rand(2, 1, 28, 28)).shape == (2, image.out_features) == (2, 48)
    assert audio(torch.rand(2, 1, 112, 112)).shape == (2, audio.out_features) == (2, 192)


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return ({"image": torch.rand(n, 1, 28, 28, generator=g), "audio": torch.rand(n, 1, 112, 112, generator=g)},
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("fusion", avmnist.FUSIONS)
def test_every_parameter_of_every_expert_gets_a_gradient(fusion):
    torch.manual_seed(0)
    model = avmnist.build_model(channels=2, joint_channels=2, hidden=8, fusion=fusion, rank=3, fused_features=6)
    assert list(model.experts) == ["image", "audio", "joint"]
    assert model.experts["joint"].reads == ("image", "audio")
    inputs, y = batch()
    out = model(inputs)
    assert out.logits.shape == (8, 10) and set(out.expert_logits) == {"image", "audio", "joint"}
    model.loss(out.logits, y).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_low_rank_fusion_factors_are_registered_and_move_with_the_model():
    fusion = avmnist.LowRankTensorFusion([4, 5], out_features=3, rank=2)
    names = {n for n, _ in fusion.named_parameters()}
    assert names == {"factors.0", "factors.1", "rank_weights", "bias"}
    assert set(fusion.state_dict()) == names
    fusion.double()
    assert all(p.dtype == torch.float64 for p in fusion.parameters())
    out = fusion([torch.rand(7, 4, dtype=torch.float64), torch.rand(7, 5, dtype=torch.float64)])
    assert out.shape == (7, 3)


def test_low_rank_fusion_is_the_factorised_tensor_product():
    torch.manual_seed(0)
    fusion = avmnist.LowRankTensorFusion([2, 3], out_features=4, rank=5)
    a, b = torch.rand(6, 2), torch.rand(6, 3)
    a1, b1 = torch.cat([torch.ones(6, 1), a], 1), torch.cat([torch.ones(6, 1), b], 1)
    # the full weight tensor the factors stand for: W[i, j, o] = sum_r w_r A_r[i, o] B_r[j, o]
    weight = torch.einsum("r,rio,rjo->ijo", fusion.rank_weights[0], fusion.factors[0], fusion.factors[1])
    expected = torch.einsum("bi,bj,ijo->bo", a1, b1, weight) + fusion.bias
    assert torch.allclose(fusion([a, b]), expected, atol=1e-5)


def test_a_tiny_training_runs(tmp_path):
    write_layout(tmp_path, n_train=26, n_test=10)
    data = avmnist.load(tmp_path, valid_size=10)  # one training batch of 16 per phase
    torch.manual_seed(0)
    model = avmnist.build_model(channels=2, joint_channels=2, hidden=8)
    result = ik.fit(model, data["train"], data["valid"], epochs=1, batch_size=16, regime="pretrain_finetune",
                    device="cpu", progress=False)
    phases = list(dict.fromkeys(row["phase"] for row in result.history))
    assert phases == ["pretrain:image", "pretrain:audio", "pretrain:joint", "finetune"]
    assert all(np.isfinite(row["train_loss"]) for row in result.history if row["train_loss"] is not None)
    assert 0 <= ik.evaluate(model, data["test"], device="cpu")["accuracy"] <= 1
    only_image = model({"image": data["test"].inputs["image"]})  # the experts reading audio drop out
    assert set(only_image.expert_logits) == {"image"}
