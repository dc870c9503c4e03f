"""The live explorer's controls redraw its figures (the browser test belongs to the JupyterLab suite)."""

import pytest

from i2m2kit.widgets import selection_explorer


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
