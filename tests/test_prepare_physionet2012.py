"""data_scripts/prepare_physionet2012.py on the real set A, checked against its text files."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from faults import script_fixture


prep = script_fixture("prepare_physionet2012")


@pytest.fixture(scope="module")
def source(shared_data) -> Path:
    return shared_data / "physionet2012"


@pytest.fixture(scope="module")
def texts(source) -> dict[str, str]:
    """Every record of set A as text, by file name."""
    with tarfile.open(source / "set-a.tar.gz") as tar:
        return {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def built(physionet_prepared):
    out, meta = physionet_prepared
    with np.load(out / "set-a.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return out, meta, arrays


def measurements(text: str) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """The test's own reading of a record: descriptors (first of each at 00:00) and the
    (minute, value) measurements of each series variable, unfiltered."""
    descriptors, series = {}, defaultdict(list)
    for line in text.splitlines()[1:]:
        time, name, value = line.split(",")
        minute = int(time[:2]) * 60 + int(time[3:])
        if minute == 0 and name in ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight") and name not in descriptors:
            descriptors[name] = float(value)
        else:
            series[name].append((minute, float(value)))
    return descriptors, series


def test_layout_counts_and_the_published_set(built, prep):
    _, meta, arrays = built
    n = 4000
    assert arrays["series"].shape == arrays["series_mask"].shape == arrays["series_delta"].shape == (n, 48, 37)
    assert arrays["static"].shape == (n, 8) and arrays["outcomes"].shape == (n, 5)
    assert (np.diff(arrays["record_id"]) > 0).all()
    a = meta["sets"]["a"]
    assert a["records"] == n and a["in_hospital_deaths"] == 554 and a["published"] is True
    assert meta["series"] == list(prep.SERIES) and len(meta["series"]) == 37
    assert all(r["low"] < r["high"] for r in meta["series_ranges"].values())
    # masks say exactly where values are
    assert np.array_equal(arrays["series_mask"] == 1, np.isfinite(arrays["series"]))
    assert np.array_equal(arrays["static_mask"] == 1, np.isfinite(arrays["static"]))


def test_outcomes_are_the_file_line_by_line(built, source):
    _, _, arrays = built
    lines = (source / "Outcomes-a.txt").read_text().splitlines()[1:]
    table = {int(l.split(",")[0]): [int(v) for v in l.split(",")[1:]] for l in lines}
    assert np.array_equal(arrays["outcomes"], np.array([table[i] for i in arrays["record_id"]]))


def test_static_record_against_the_text_files(built, texts, prep):
    _, _, arrays = built
    for row in np.random.default_rng(0).choice(4000, 200, replace=False):
        d, _ = measurements(texts[f"{arrays['record_id'][row]}.txt"])
        static = dict(zip(prep.STATIC, arrays["static"][row]))
        assert static["age"] == d["Age"]
        assert np.isnan(static["gender"]) if d["Gender"] == -1 else static["gender"] == d["Gender"]
        height_ok = d["Height"] != -1 and 100 <= d["Height"] <= 230
        assert static["height"] == np.float32(d["Height"]) if height_ok else np.isnan(static["height"])
        weight_ok = d["Weight"] != -1 and 20 <= d["Weight"] <= 300
        assert static["weight"] == np.float32(d["Weight"]) if weight_ok else np.isnan(static["weight"])
        one_hot = [static[f"icu_{t}"] for t in prep.ICU_TYPES]
        assert one_hot == [float(k == d["ICUType"]) for k in (1, 2, 3, 4)]


def test_series_values_masks_and_gaps_against_the_text_files(built, texts, prep):
    _, _, arrays = built
    for row in np.random.default_rng(1).choice(4000, 100, replace=False):
        _, series = measurements(texts[f"{arrays['record_id'][row]}.txt"])
        for j, variable in enumerate(prep.SERIES):
            _, low, high = prep.SERIES[variable]
            kept = [(m, v) for m, v in series.get(variable, []) if low <= v <= high and v != -1]
            for hour in range(48):
                in_hour = [v for m, v in kept if min(m // 60, 47) == hour]
                if not in_hour:
                    assert arrays["series_mask"][row, hour, j] == 0 and np.isnan(arrays["series"][row, hour, j])
                else:
                    expected = sum(in_hour) if variable == "Urine" else np.mean(in_hour)
                    assert arrays["series_mask"][row, hour, j] == 1
                    assert arrays["series"][row, hour, j] == pytest.approx(expected, rel=1e-5)
                before = [m for m, _ in kept if min(m // 60, 47) <= hour]
                gap = hour + 1 - (max(before) / 60 if before else 0)
                assert arrays["series_delta"][row, hour, j] == pytest.approx(gap, abs=1e-4)


def test_implausible_values_are_counted_and_dropped(built, texts, prep):
    _, meta, arrays = built
    counts = meta["sets"]["a"]["measurements"]
    expected = defaultdict(int)
    for text in texts.values():
        _, series = measurements(text)
        for variable, values in series.items():
            _, low, high = prep.SERIES[variable]
            expected[variable] += sum(1 for _, v in values if v != -1 and not low <= v <= high)
    assert {v: c["implausible"] for v, c in counts.items() if v in prep.SERIES} == {v: expected[v] for v in prep.SERIES}
    assert counts["pH"]["implausible"] >= 1 and counts["Temp"]["implausible"] >= 1
    series = arrays["series"]
    for j, (variable, (_, low, high)) in enumerate(prep.SERIES.items()):
        kept = series[..., j][np.isfinite(series[..., j])]
        if variable != "Urine":  # hourly sums may exceed one measurement's limit
            assert kept.min() >= low - 1e-4 and kept.max() <= high + 1e-4, variable


# ---------------------------------------------------------------------- other layouts, other sets


def small_raw(texts: dict[str, str], source: Path, root: Path, n: int = 30, set_name: str = "a",
              id_offset: int = 0, archive: bool = False) -> Path:
    """A raw folder with the first ``n`` records of set A (IDs shifted by ``id_offset``) as set ``set_name``."""
    names = sorted(texts)[:n]
    outcomes = {l.split(",")[0]: l for l in (source / "Outcomes-a.txt").read_text().splitlines()}
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    lines = [outcomes["RecordID"]]
    for name in names:
        old = name.removesuffix(".txt")
        new = str(int(old) + id_offset)
        files[f"set-{set_name}/{new}.txt"] = texts[name].replace(f"00:00,RecordID,{old}", f"00:00,RecordID,{new}")
        lines.append(outcomes[old].replace(old, new, 1))
    if archive:
        with tarfile.open(root / f"set-{set_name}.tar.gz", "w:gz") as tar:
            for name, text in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
    else:
        for name, text in files.items():
            (root / name).parent.mkdir(exist_ok=True)
            (root / name).write_text(text)
    (root / f"Outcomes-{set_name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_folder_and_archive_read_the_same(prep, texts, source, tmp_path):
    folder = small_raw(texts, source, tmp_path / "folder")
    archive = small_raw(texts, source, tmp_path / "archive", archive=True)
    prep.prepare(folder, tmp_path / "from_folder", progress=False)
    prep.prepare(archive, tmp_path / "from_archive", progress=False)
    with np.load(tmp_path / "from_folder" / "set-a.npz") as a, np.load(tmp_path / "from_archive" / "set-a.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_every_set_present_is_prepared_and_a_separate_test_set_loads(prep, texts, source, tmp_path):
    from i2m2kit.tasks import physionet2012

    raw = small_raw(texts, source, tmp_path / "raw", n=200)
    small_raw(texts, source, raw, n=60, set_name="b", id_offset=100000, archive=True)
    meta = prep.prepare(raw, tmp_path / "out", progress=False)
    assert sorted(meta["sets"]) == ["a", "b"] and meta["sets"]["b"]["records"] == 60
    assert meta["sets"]["a"]["published"] is False and meta["sets"]["b"]["published"] is None
    data = physionet2012.load(tmp_path / "out", test_set="b")
    assert len(data["test"]) == 60 and len(data["train"]) + len(data["valid"]) == 200
    with np.load(tmp_path / "out" / "set-b.npz") as b:
        assert np.array_equal(data["test"].targets.numpy(), b["outcomes"][:, 4])


# ---------------------------------------------------------------------- bad input


def damaged(texts, source, tmp_path, record: str | None = None, edit=None, outcomes_edit=None) -> Path:
    raw = small_raw(texts, source, tmp_path / "raw")
    if record is not None:
        file = raw / "set-a" / record
        file.write_text(edit(file.read_text()))
    if outcomes_edit is not None:
        file = raw / "Outcomes-a.txt"
        file.write_text(outcomes_edit(file.read_text()))
    return raw


FIRST = "132539.txt"  # the first record of set A: RecordID, Age, Gender, Height, ICUType, Weight, then GCS at 00:07


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("00:00,RecordID,132539\n", ""), "set-a/132539.txt:2: the record has no RecordID"),
    (lambda t: t.replace("00:07,GCS,15", "0:7x,GCS,15"), "set-a/132539.txt:8: time '0:7x'"),
    (lambda t: t.replace("00:07,GCS,15", "49:10,GCS,15"), "set-a/132539.txt:8: time '49:10' is not hh:mm within"),
    (lambda t: t.replace("00:07,GCS,15", "00:07,GCS,fifteen"), "set-a/132539.txt:8: GCS 'fifteen' is not a number"),
    (lambda t: t.replace("00:07,GCS,15", "00:07,GCS,inf"), "set-a/132539.txt:8: GCS 'inf' is not finite"),
    (lambda t: t.replace("00:07,GCS,15", "00:07,GSC,15"), "set-a/132539.txt:8: unknown parameter 'GSC'"),
    (lambda t: t.replace("00:07,GCS,15", "00:07,Age,54"), "set-a/132539.txt:8: descriptor Age again"),
    (lambda t: t.replace("00:07,GCS,15", "00:07,GCS"), "set-a/132539.txt:8: expected Time,Parameter,Value"),
    (lambda t: t.replace("00:00,RecordID,132539", "00:00,RecordID,132540"), "RecordID 132540 is not the file's name"),
    (lambda t: "", "set-a/132539.txt:1: expected the header"),
])
def test_bad_record_is_named_with_its_line_and_nothing_is_written(prep, texts, source, tmp_path, capsys, edit, expected):
    raw = damaged(texts, source, tmp_path, FIRST, edit)
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("edit, expected", [
    (lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("132540,")), "no line for RecordID 132540"),
    (lambda t: t + "999999,1,1,1,-1,0\n", "Outcomes-a.txt:32: RecordID 999999 has no record"),
    (lambda t: t.replace("132540,16,8,8,-1,0", "132540,16,8,8,-1,2"), "Outcomes-a.txt:3: In-hospital_death 2"),
    (lambda t: t.replace("132540,16,8,8,-1,0", "132540,16,8,eight,-1,0"), "Outcomes-a.txt:3: Length_of_stay 'eight'"),
    (lambda t: t + t.splitlines()[2] + "\n", "Outcomes-a.txt:32: RecordID 132540 again (first on line 3)"),
    (lambda t: t.replace("RecordID,SAPS-I", "Record,SAPS-I"), "Outcomes-a.txt:1: expected the header"),
])
def test_outcomes_that_do_not_match_the_records_are_named(prep, texts, source, tmp_path, capsys, edit, expected):
    raw = damaged(texts, source, tmp_path, outcomes_edit=edit)
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_duplicate_record_ids_across_sets_and_truncated_archives(prep, texts, source, tmp_path, capsys):
    raw = small_raw(texts, source, tmp_path / "raw")
    small_raw(texts, source, raw, n=5, set_name="b", archive=True)  # the same IDs again
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "RecordID 132539 is in set a and set b" in capsys.readouterr().err
    whole = (raw / "set-b.tar.gz").read_bytes()
    (raw / "set-b.tar.gz").write_bytes(whole[: len(whole) // 2])
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--sets", "b", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "set-b.tar.gz: not a readable .tar.gz archive" in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_and_replaced_only_whole(prep, texts, source, tmp_path, capsys):
    raw = small_raw(texts, source, tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert prep.main(["--raw", str(raw), "--out", str(out), "--no-progress"]) == 2
    assert "thesis.tex, which this script never writes" in capsys.readouterr().err
    assert prep.main(["--raw", str(raw), "--out", str(out), "--overwrite", "--no-progress"]) == 2
    assert "never writes; not replacing it" in capsys.readouterr().err and (out / "thesis.tex").read_text() == "mine"
    for inside in (raw / "set-a", raw):
        assert prep.main(["--raw", str(raw), "--out", str(inside), "--overwrite", "--no-progress"]) == 2
        assert "is or holds the input" in capsys.readouterr().err and len(list((raw / "set-a").iterdir())) == 30
    # an earlier output is replaced whole, and only with --overwrite
    good = tmp_path / "good"
    assert prep.main(["--raw", str(raw), "--out", str(good), "--no-progress"]) == 0
    assert prep.main(["--raw", str(raw), "--out", str(good), "--no-progress"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    before = (good / "set-a.npz").stat().st_ino
    assert prep.main(["--raw", str(raw), "--out", str(good), "--overwrite", "--no-progress"]) == 0
    assert (good / "set-a.npz").stat().st_ino != before and sorted(p.name for p in good.iterdir()) == ["metadata.json", "set-a.npz"]


# ---------------------------------------------------------------------- download


@pytest.fixture
def mirror(texts, source, tmp_path):
    """A loopback HTTP server in PhysioNet's layout: set A as published, a small set B, SHA256SUMS.txt."""
    root = tmp_path / "mirror"
    root.mkdir()
    shutil.copy(source / "set-a.tar.gz", root)
    shutil.copy(source / "Outcomes-a.txt", root)
    small_raw(texts, source, root, n=20, set_name="b", id_offset=100000, archive=True)
    shutil.rmtree(root / "set-b", ignore_errors=True)

    def write_sums():
        (root / "SHA256SUMS.txt").write_text("".join(
            f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.name}\n" for p in sorted(root.iterdir())
            if p.name != "SHA256SUMS.txt"))
    write_sums()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda self, *args: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", write_sums
    server.shutdown()
    server.server_close()


def test_download_fetches_and_checks_every_file(prep, mirror, tmp_path):
    root, url, _ = mirror
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--download", "--sets", "a", "b",
                      "--mirror", url, "--no-progress"]) == 0
    for name in ("set-a.tar.gz", "Outcomes-a.txt", "set-b.tar.gz", "Outcomes-b.txt"):
        assert (raw / name).read_bytes() == (root / name).read_bytes()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["sets"]["a"]["published"] is True and meta["sets"]["b"]["records"] == 20


def test_download_refuses_a_file_whose_checksum_differs(prep, mirror, tmp_path, capsys):
    root, url, write_sums = mirror
    (root / "Outcomes-b.txt").write_text((root / "Outcomes-b.txt").read_text().replace(",0\n", ",1\n", 1))
    raw = tmp_path / "raw"
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--download", "--sets", "b",
                      "--mirror", url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Outcomes-b.txt: sha256" in err and "does not match PhysioNet's" in err
    assert not (raw / "Outcomes-b.txt").exists() and not (tmp_path / "out").exists()
    # a set A whose records differ from the published ones fails even with matching PhysioNet sums
    with tarfile.open(root / "set-a.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("set-a/132539.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"Time\n"))
    write_sums()
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--download", "--sets", "a",
                      "--mirror", url, "--no-progress"]) == 2
    assert "set-a.tar.gz: its records" in capsys.readouterr().err and not (raw / "set-a.tar.gz").exists()


def test_lines_end_at_newlines_only_and_numbers_are_plain(prep):
    counts = defaultdict(lambda: {"kept": 0, "not_measured": 0, "implausible": 0})
    with pytest.raises(prep.PrepareError, match=r"^1.txt:3: GCS 'x' is not a number"):
        prep.parse_record("Time,Parameter,Value\n00:00,RecordID,1\x0c\n00:05,GCS,x\n", "1.txt", counts)
    with pytest.raises(prep.PrepareError, match=r"^1.txt:3: GCS '1_0' is not a number"):
        prep.parse_record("Time,Parameter,Value\r\n00:00,RecordID,1\r\n00:05,GCS,1_0\r\n", "1.txt", counts)


# ---------------------------------------------------------------------- unreadable input, what is missing throughout


def _refuse(monkeypatch, method: str, name: str) -> None:
    """Path.<method> fails with "Permission denied" on the file or folder called ``name``."""
    original = getattr(Path, method)

    def refuse(path, *args, **kwargs):
        if path.name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, method, refuse)


@pytest.mark.parametrize("method, where", [("read_bytes", "set-a/132540.txt"), ("iterdir", "set-a"),
                                           ("read_text", "Outcomes-a.txt")])
def test_an_unreadable_record_folder_or_outcomes_file_is_named(prep, texts, source, tmp_path, capsys, monkeypatch,
                                                               method, where):
    raw = small_raw(texts, source, tmp_path / "raw")
    _refuse(monkeypatch, method, Path(where).name)
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {raw / where}: cannot read it (Permission denied)\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, what", [("broken link", "a broken symbolic link"), ("folder", "a folder")])
@pytest.mark.parametrize("name", ["132540.txt", "999999.txt"])  # replacing a record, or an extra one
def test_an_entry_named_like_a_record_that_is_not_a_file_is_named(prep, texts, source, tmp_path, capsys, kind, what,
                                                                  name):
    raw = small_raw(texts, source, tmp_path / "raw")
    entry = raw / "set-a" / name
    entry.unlink(missing_ok=True)
    entry.symlink_to(raw / "nowhere.txt") if kind == "broken link" else entry.mkdir()
    (raw / "set-a" / ".hidden.txt").mkdir()  # dotfiles stay ignored
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {entry}: named like a record, but {what}\n"
    assert not (tmp_path / "out").exists()


def test_what_no_record_measures_is_said_in_a_warning_and_the_metadata(built, prep, texts, source, tmp_path, capsys):
    # set A as published: three records hold their descriptors and nothing else
    assert built[1]["sets"]["a"]["imputed_throughout"] == {"variables_measured_in_no_record": [],
                                                           "records_without_series": [140501, 140936, 141264]}
    raw = small_raw(texts, source, tmp_path / "raw")
    for record in (raw / "set-a").iterdir():
        lines = record.read_text().splitlines(keepends=True)
        if record.name == "132540.txt":  # its descriptors only
            lines = lines[:7]
        record.write_text("".join(line for line in lines if ",Cholesterol," not in line))
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "warning: set a: no record has a measurement of Cholesterol (missing throughout)",
        "warning: set a: 1 record(s) have no time-series measurement (132540), listed in metadata.json"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["sets"]["a"]["imputed_throughout"] == {"variables_measured_in_no_record": ["Cholesterol"],
                                                       "records_without_series": [132540]}
