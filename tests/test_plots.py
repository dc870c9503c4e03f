"""Figures that draw data themselves: the picture grid and the metric curves."""

import base64
import io

import numpy as np
import torch
from PIL import Image

from i2m2kit import plots


def decode(source: str) -> np.ndarray:
    assert source.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))


def test_examples_draws_every_picture_as_a_small_png_the_right_way_up():
    torch.manual_seed(0)
    images = torch.rand(3, 28, 28)
    spectrograms = torch.rand(3, 1, 112, 112)  # a channel dimension is fine
    fig = plots.examples({"image": images, "spectrogram": spectrograms}, ["a", "b", "c"],
                         flip_vertical=["spectrogram"])
    assert len(fig.data) == 6 and all(t.type == "image" for t in fig.data)
    first_image, first_spectrogram = decode(fig.data[0].source), decode(fig.data[3].source)
    scaled = (images[0] - images[0].min()) / (images[0].max() - images[0].min()) * 255
    assert first_image.shape == (28, 28)
    assert np.abs(first_image.astype(float) - scaled.numpy()).max() <= 0.5 + 1e-6  # min-max to 0-255, rounded
    s = spectrograms[0, 0]
    expected = ((s - s.min()) / (s.max() - s.min()) * 255).round().numpy()[::-1]  # row 0 at the bottom
    assert np.abs(first_spectrogram.astype(float) - expected).max() <= 1
    assert [a.text for a in fig.layout.annotations][:3] == ["a", "b", "c"]
    assert len(fig.to_json()) < 100_000  # 6 pictures, 38k pixels: kB, not MB


def test_metric_curves_draws_one_sorted_line_per_group():
    rows = [{"model": m, "noise": x, "accuracy": a}
            for m, pts in {"i2m2": [(1.0, 0.6), (0.0, 0.9)], "intra": [(0.0, 0.8), (1.0, 0.4)]}.items()
            for x, a in pts]
    fig = plots.metric_curves(rows, x="noise", group="model")
    assert [t.name for t in fig.data] == ["i2m2", "intra"]
    assert list(fig.data[0].x) == [0.0, 1.0] and list(fig.data[0].y) == [0.9, 0.6]


def test_examples_draws_colour_pictures_in_colour():
    colour = torch.zeros(2, 3, 10, 40)
    colour[:, 2] = 1.0  # blue
    colour[1, :, :, :5] = 1.0  # white strip
    fig = plots.examples({"picture": colour}, ["a", "b"])
    pixels = decode(fig.data[1].source)
    assert pixels.shape == (10, 40, 3)
    assert (pixels[:, 5:] == [0, 0, 255]).all() and (pixels[:, :5] == 255).all()


def test_grouped_bars_put_each_group_side_by_side_with_gaps_where_a_value_is_missing():
    rows = [{"model": "uni:text", "type": "yes/no", "score": 0.8}, {"model": "uni:text", "type": "color", "score": 0.1},
            {"model": "i2m2", "type": "yes/no", "score": 0.9}, {"model": "i2m2", "type": "shape", "score": 0.7}]
    fig = plots.grouped_bars(rows, "type", "model", "score")
    assert fig.layout.barmode == "group" and [t.name for t in fig.data] == ["uni:text", "i2m2"]
    assert list(fig.data[0].x) == ["yes/no", "color", "shape"] == list(fig.data[1].x)
    assert list(fig.data[0].y) == [0.8, 0.1, None] and list(fig.data[1].y) == [0.9, None, 0.7]
