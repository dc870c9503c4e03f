"""The regime map and the sentences drawn from it."""

import pytest

from i2m2kit import regimes as rg


def test_regime_map_rows_cover_every_point_size_regime_and_model():
    rows = rg.regime_map({"intra": [0.0, 1.5], "inter": [3.0]}, sizes=[300, 600], n_valid=300, n_test=2000,
                         hidden=8, epochs=2, progress=False)
    assert len(rows) == 2 * 2 * (5 + 2)
    labels = {r["label"] for r in rows}
    assert labels == {"uni:x", "uni:x2", "intra", "inter", "i2m2", "intra (pretrained)", "i2m2 (pretrained)"}
    for r in rows:
        assert r["of_bayes"] == pytest.approx(r["accuracy"] / r["bayes_accuracy"])
    # the same point has the same Bayes accuracy whatever the training size
    assert len({(r["intra"], r["bayes_accuracy"]) for r in rows}) == 2


def row(label, accuracy, bayes=0.9, **point):
    return {"intra": 0.0, "inter": 2.0, "n_train": 100, **point, "regime": "joint", "label": label,
            "model": label, "accuracy": accuracy, "bayes_accuracy": bayes, "of_bayes": accuracy / bayes,
            "train_seconds": 0.0}


def test_findings_name_what_the_numbers_show():
    rows = [row("uni:x", 0.5), row("uni:x2", 0.5), row("intra", 0.5), row("inter", 0.85), row("i2m2", 0.88),
            row("uni:x", 0.8, inter=0.0), row("uni:x2", 0.5, inter=0.0), row("intra", 0.8, inter=0.0),
            row("inter", 0.7, inter=0.0), row("i2m2", 0.75, inter=0.0)]
    text = " ".join(rg.findings(rows, n_test=20_000))
    assert "between 0.833 and 0.978" in text
    assert "falls behind the better of the intra- and inter-modality models at intra=0.0, inter=0.0, n_train=100 (by 0.050)" in text
    assert "worse than the best uni-modal model at intra=0.0, inter=0.0" in text
    assert "intra-modality model is at chance" in text and "inter=2.0" in text
