"""What every data script shares: --overwrite replaces only a folder the script itself wrote."""

from __future__ import annotations

import pytest
from conftest import load_data_script

SCRIPTS = {  # script -> (its arguments given the real data folder, a file name of its output)
    "prepare_avmnist": (lambda data: ["--raw", str(data)], "train_labels.npy"),
    "prepare_mimic": (lambda data: ["--raw", str(data / "mimic3_demo")], "mimic.npz"),
    "prepare_nlvr": (lambda data: ["--raw", str(data / "nlvr")], "train.jsonl"),
    "prepare_vqa": (lambda data: [], "train_images.npy"),
    "prepare_physionet2012": (lambda data: ["--raw", str(data / "physionet2012")], "set-a.npz"),
    "prepare_fastmri": (lambda data: ["--raw", str(data / "fastmri_plus"), "--annotations",
                                      str(data / "fastmri_plus")], "slices.csv"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_overwrite_never_replaces_a_folder_the_script_did_not_write(script, shared_data, tmp_path, capsys):
    prep = load_data_script(script)
    arguments, own = SCRIPTS[script]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    (mine / "metadata.json").write_text("{}")  # even beside a metadata file
    assert prep.main([*arguments(shared_data), "--out", str(mine), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "thesis.tex, which this script never writes; not replacing it" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in mine.iterdir()) == ["metadata.json", "thesis.tex"]
    # a folder of the script's own file names but without its metadata.json is not taken for one either
    (mine / "thesis.tex").unlink()
    (mine / "metadata.json").unlink()
    (mine / own).write_text("mine")
    assert prep.main([*arguments(shared_data), "--out", str(mine), "--overwrite", "--no-progress"]) == 2
    assert "has no metadata.json, so it is not an output of this script" in capsys.readouterr().err
    assert len(list(mine.iterdir())) == 1
