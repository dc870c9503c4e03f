"""data_scripts/prepare_mimic.py on the real MIMIC-III demo, checked against the tables themselves."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from faults import refuse_open, script_fixture

TABLES = ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "SERVICES", "DIAGNOSES_ICD", "CHARTEVENTS", "LABEVENTS",
          "OUTPUTEVENTS")


prep = script_fixture("prepare_mimic")


@pytest.fixture(scope="module")
def demo(shared_data) -> Path:
    return shared_data / "mimic3_demo"


@pytest.fixture(scope="module")
def built(prep, demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("mimic") / "prepared"
    meta = prep.prepare(demo, out, progress=False)
    with np.load(out / "mimic.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return out, meta, arrays


def read_table(path: Path, limit: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows (the first ``limit`` rows only, if given) of a table."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(itertools.islice(reader, limit))


def write_table(path: Path, header: list[str], rows: list[list[str]], full_database_style: bool = False) -> None:
    """Write a table; ``full_database_style``: upper-case headers, every field quoted (as PhysioNet's)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL if full_database_style else csv.QUOTE_MINIMAL)
        writer.writerow([h.upper() for h in header] if full_database_style else header)
        writer.writerows(rows)


def raw_copy(demo: Path, root: Path, skip: tuple[str, ...] = ()) -> Path:
    """A raw folder of links to the demo tables, so that single tables can be replaced."""
    root.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        if name not in skip:
            (root / f"{name}.csv.gz").symlink_to(demo / f"{name}.csv.gz")
    return root


def by_hadm(arrays: dict, hadm_id: int) -> int:
    index = np.flatnonzero(arrays["hadm_id"] == hadm_id)
    assert len(index) == 1, f"admission {hadm_id} is not in the cohort"
    return int(index[0])


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ---------------------------------------------------------------------- the output


def test_arrays_have_the_multibench_layout(built):
    _, meta, a = built
    n = len(a["hadm_id"])
    assert n == meta["cohort"]["measurements_spanning_more_than_24h"] == 92
    assert a["adm_features_all"].shape == (n, 5)
    assert a["ep_tdata"].shape == (n, 24, 12) and a["ep_tdata_masking"].shape == (n, 24, 12)
    assert a["adm_labels_all"].shape == (n, 6) and a["y_icd9"].shape == (n, 20)
    assert list(a["hadm_id"]) == sorted(a["hadm_id"])  # the published order, which the split relies on
    assert len(set(a["subject_id"])) == n == len(set(a["icustay_id"]))  # one admission per patient
    for name in ("adm_features_all", "ep_tdata"):
        assert np.isfinite(a[name]).all(), f"{name} holds NaN or inf"
    assert set(np.unique(a["adm_labels_all"])) <= {0, 1} and set(np.unique(a["y_icd9"])) <= {0, 1}


def test_cohort_is_each_patients_first_admission(built, demo):
    _, _, a = built
    header, rows = read_table(demo / "ADMISSIONS.csv.gz")
    col = {h: i for i, h in enumerate(header)}
    first = {}
    for r in rows:
        subject, when = int(r[col["subject_id"]]), seconds(r[col["admittime"]])
        if subject not in first or when < first[subject][0]:
            first[subject] = (when, int(r[col["hadm_id"]]))
    for subject, hadm in zip(a["subject_id"], a["hadm_id"]):
        assert first[int(subject)][1] == hadm


def test_in_hospital_mortality_is_hospital_expire_flag(built, demo):
    _, _, a = built
    header, rows = read_table(demo / "ADMISSIONS.csv.gz")
    col = {h: i for i, h in enumerate(header)}
    flag = {int(r[col["hadm_id"]]): int(r[col["hospital_expire_flag"]]) for r in rows}
    expected = np.array([flag[int(h)] for h in a["hadm_id"]])
    assert (a["adm_labels_all"][:, 0] == expected).all()
    assert 0 < expected.sum() < len(expected)


def test_mortality_windows_by_hand(built):
    _, _, a = built
    labels = a["adm_labels_all"]
    # ICU admission 2131-07-27 17:01, died 2131-07-28 16:02: within 24 h (so within every window)
    assert labels[by_hadm(a, 154156)].tolist() == [1, 1, 1, 1, 1, 1]
    # ICU admission 2185-03-24 16:57, died 2185-03-26 09:15 (40 h)
    assert labels[by_hadm(a, 189483)].tolist() == [1, 0, 1, 1, 1, 1]
    # died in hospital on day 14
    assert labels[by_hadm(a, 105331)].tolist() == [1, 0, 0, 0, 1, 1]
    # discharged alive 2159-11-22, died 2159-11-25
    assert labels[by_hadm(a, 104697)].tolist() == [0, 0, 0, 0, 1, 1]
    # discharged 2164-11-01, died 2165-08-12 (284 days later)
    assert labels[by_hadm(a, 142345)].tolist() == [0, 0, 0, 0, 0, 1]


def test_icd9_groups_and_comorbidities_by_hand(built, prep):
    _, _, a = built
    groups = prep.ICD9_GROUPS
    assert groups[1] == "140-239" and groups[7] == "460-519"  # the two I2M2 tasks

    def has(hadm):
        return {groups[j] for j in np.flatnonzero(a["y_icd9"][by_hadm(a, hadm)])}

    # 1510 stomach cancer, 5185 pulmonary insufficiency, 4019 hypertension, 2724 hyperlipidemia
    assert has(125157) == {"140-239", "240-279", "390-459", "460-519"}
    # 1983 secondary neoplasm of the brain (metastatic), 78039 convulsions, V1042 history of cancer
    assert has(133110) == {"140-239", "780-789", "V"}
    # 5290, 7907, 2762, 20300 multiple myeloma (hematologic malignancy), 2875
    assert has(187023) == {"140-239", "240-279", "280-289", "520-579", "790-796"}
    # 99591 sepsis ... E8791, V090: no neoplasm, no respiratory disease
    assert has(142345) == {"001-139", "240-279", "280-289", "290-319", "390-459", "520-579", "780-789",
                           "800-999", "V", "E"}
    static = a["adm_features_all"]  # age, AIDS, hematologic malignancy, metastatic cancer, admission type
    assert static[by_hadm(a, 133110), 1:4].tolist() == [0, 0, 1]
    assert static[by_hadm(a, 187023), 1:4].tolist() == [0, 1, 0]
    assert static[by_hadm(a, 125157), 1:4].tolist() == [0, 0, 0]


def test_ages_are_plausible_and_shifted_ones_replaced(built, prep):
    _, meta, a = built
    years = a["adm_features_all"][:, 0] / prep.DAYS_PER_YEAR
    assert years.min() >= 15 and years.max() <= prep.SHIFTED_AGE_YEARS + 1e-3
    # born 2094-03-05, ICU admission 2164-10-23 21:10:15
    expected = (seconds("2164-10-23 21:10:15") - seconds("2094-03-05 00:00:00")) / 86400 / prep.DAYS_PER_YEAR
    assert years[by_hadm(a, 142345)] == pytest.approx(expected, abs=1e-3)
    # subject 10026 was born "1895-05-17": over 89, shifted by MIMIC
    assert years[by_hadm(a, 103770)] == pytest.approx(prep.SHIFTED_AGE_YEARS, abs=1e-3)
    assert meta["cohort"]["ages_shifted_past_89"] == int(np.isclose(years, prep.SHIFTED_AGE_YEARS).sum()) > 0


def test_series_values_are_physiological(built, prep):
    _, meta, a = built
    series, measured = a["ep_tdata"], a["ep_tdata_masking"].astype(bool)
    low = {"gcs": 3, "systolic_bp": 20, "heart_rate": 20, "temperature": 25, "pao2_fio2": 20,
           "urine_output": -500, "bun": 1, "wbc": 0.05, "bicarbonate": 3, "sodium": 100, "potassium": 1,
           "bilirubin": 0.05}
    high = {"gcs": 15, "systolic_bp": 300, "heart_rate": 250, "temperature": 43, "pao2_fio2": 800,
            "urine_output": 3000, "bun": 300, "wbc": 200, "bicarbonate": 60, "sodium": 190, "potassium": 12,
            "bilirubin": 60}
    for j, name in enumerate(prep.SERIES):
        values = series[:, :, j]
        assert low[name] <= values.min() and values.max() <= high[name], name
        assert measured[:, :, j].any(), f"{name} is never measured in the demo"
    assert [v["name"] for v in meta["series"]] == list(prep.SERIES)
    assert {i["itemid"] for i in meta["items"]} >= {211, 220045, 50821, 51006, 226559}


def test_a_variable_not_measured_in_the_window_is_constant(built, prep):
    """Unmeasured in the 24 hours: a lab value from the 6 hours before ICU admission carried
    through, or else the variable's normal value."""
    _, _, a = built
    never = ~a["ep_tdata_masking"].astype(bool).any(1)  # (N, 12)
    rows, cols = np.nonzero(never)
    values = a["ep_tdata"][rows, :, cols]  # (stays x variables never measured, 24)
    assert len(rows) > 0 and (values == values[:, :1]).all()
    normal = np.array([prep.NORMAL[v] for v in prep.SERIES], dtype=np.float32)[cols]
    assert np.isclose(values[:, 0], normal).mean() > 0.5
    charted = [prep.SERIES.index(v) for v in ("heart_rate", "systolic_bp", "urine_output")]  # no lookback
    in_chart = np.isin(cols, charted)
    assert in_chart.any() and np.allclose(values[in_chart, 0], normal[in_chart])


# ---------------------------------------------------------------------- the input


def test_full_database_headers_and_plain_csv_read_the_same(built, prep, demo, tmp_path):
    """Upper-case quoted headers and quoted fields, .csv and .csv.gz: the same output."""
    raw = raw_copy(demo, tmp_path / "raw", skip=("PATIENTS", "ADMISSIONS", "ICUSTAYS", "SERVICES",
                                                  "DIAGNOSES_ICD", "LABEVENTS"))
    for name in ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "SERVICES", "DIAGNOSES_ICD", "LABEVENTS"):
        header, rows = read_table(demo / f"{name}.csv.gz")
        target = raw / (f"{name}.csv" if name in ("ADMISSIONS", "LABEVENTS") else f"{name}.csv.gz")
        write_table(target, header, rows, full_database_style=True)
    out = tmp_path / "prepared"
    prep.prepare(raw, out, progress=False)
    with np.load(out / "mimic.npz") as npz:
        for name, expected in built[2].items():
            np.testing.assert_array_equal(npz[name], expected, err_msg=name)


def test_missing_table_is_named(prep, demo, tmp_path, capsys):
    raw = raw_copy(demo, tmp_path / "raw", skip=("OUTPUTEVENTS",))
    with pytest.raises(prep.PrepareError, match="table OUTPUTEVENTS not found"):
        prep.prepare(raw, tmp_path / "out", progress=False)
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "table OUTPUTEVENTS not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_column_is_named_with_its_table(prep, demo, tmp_path):
    raw = raw_copy(demo, tmp_path / "raw", skip=("SERVICES",))
    header, rows = read_table(demo / "SERVICES.csv.gz")
    write_table(raw / "SERVICES.csv.gz", ["curr_serv" if h == "curr_service" else h for h in header], rows)
    with pytest.raises(prep.PrepareError, match=r"table SERVICES has no column 'curr_service'"):
        prep.prepare(raw, tmp_path / "out", progress=False)


def test_unparseable_time_is_named_with_table_column_and_line(prep, demo, tmp_path):
    raw = raw_copy(demo, tmp_path / "raw", skip=("ICUSTAYS",))
    header, rows = read_table(demo / "ICUSTAYS.csv.gz")
    rows[2][header.index("intime")] = "2101-13-45 25:00:00"
    write_table(raw / "ICUSTAYS.csv.gz", header, rows)
    with pytest.raises(prep.PrepareError, match=r"line 4: table ICUSTAYS, column 'intime'.*2101-13-45"):
        prep.prepare(raw, tmp_path / "out", progress=False)


@pytest.mark.parametrize("value", ["twelve", "nan", "inf", "-Infinity"])
def test_unparseable_or_infinite_number_in_an_event_table_is_named(prep, demo, tmp_path, value):
    raw = raw_copy(demo, tmp_path / "raw", skip=("CHARTEVENTS", "LABEVENTS"))
    write_table(raw / "CHARTEVENTS.csv.gz", *read_table(demo / "CHARTEVENTS.csv.gz", limit=20_000))
    header, rows = read_table(demo / "LABEVENTS.csv.gz")
    bun = next(i for i, r in enumerate(rows) if r[header.index("itemid")] == "51006")
    rows[bun][header.index("valuenum")] = value
    write_table(raw / "LABEVENTS.csv.gz", header, rows)
    with pytest.raises(prep.PrepareError, match=rf"table LABEVENTS, column 'valuenum'.*'{value}'"):
        prep.prepare(raw, tmp_path / "out", progress=False)


@pytest.mark.parametrize("damage", [lambda data: b"not gzip" + data, lambda data: data[: len(data) // 2]],
                         ids=["not-gzip", "truncated"])
def test_unreadable_gzip_table_is_named(prep, demo, tmp_path, damage):
    raw = raw_copy(demo, tmp_path / "raw", skip=("PATIENTS",))
    (raw / "PATIENTS.csv.gz").write_bytes(damage((demo / "PATIENTS.csv.gz").read_bytes()))
    with pytest.raises(prep.PrepareError, match=r"^PATIENTS\.csv\.gz: cannot read table PATIENTS \("):
        prep.prepare(raw, tmp_path / "out", progress=False)


def test_existing_output_is_refused_and_replaced_only_whole(built, prep, demo, tmp_path, monkeypatch, capsys):
    out, _, _ = built
    with pytest.raises(prep.PrepareError, match="already exists; pass --overwrite"):
        prep.prepare(demo, out, progress=False)
    assert prep.main(["--raw", str(demo), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err

    # a run that fails while writing leaves the old folder as it was, and no temporary files
    raw = raw_copy(demo, tmp_path / "raw", skip=("CHARTEVENTS",))
    write_table(raw / "CHARTEVENTS.csv.gz", *read_table(demo / "CHARTEVENTS.csv.gz", limit=20_000))
    old = tmp_path / "old"
    old.mkdir()
    (old / "mimic.npz").write_bytes(b"earlier run")
    (old / "metadata.json").write_text("{}")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(prep.np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prep.prepare(raw, old, overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (old / "mimic.npz").read_bytes() == b"earlier run"
    monkeypatch.undo()
    prep.prepare(raw, old, overwrite=True, progress=False)
    assert sorted(p.name for p in old.iterdir()) == ["metadata.json", "mimic.npz"]


# ---------------------------------------------------------------------- unreadable or empty tables


@pytest.mark.parametrize("name, rows", [("CHARTEVENTS", []), ("DIAGNOSES_ICD", []), ("SERVICES", [[], []])],
                         ids=["chartevents", "diagnoses", "services-blank-lines"])
def test_a_table_holding_only_its_header_is_refused_before_the_long_reads(prep, demo, tmp_path, capsys, monkeypatch,
                                                                         name, rows):
    """Accepted, its every vital sign (or diagnosis, or service) would be imputed, unsaid."""
    raw = raw_copy(demo, tmp_path / "raw", skip=(name,))
    write_table(raw / f"{name}.csv.gz", read_table(demo / f"{name}.csv.gz", limit=0)[0], rows)
    monkeypatch.setattr(prep, "read_cohort", None)  # the first rows read: not reached
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {name}.csv.gz: table {name} holds its header but no rows\n"
    assert not (tmp_path / "out").exists()


def test_an_unreadable_table_is_named_in_one_line(prep, demo, tmp_path, capsys, monkeypatch):
    raw = raw_copy(demo, tmp_path / "raw", skip=("PATIENTS",))
    header, rows = read_table(demo / "PATIENTS.csv.gz")
    (raw / "PATIENTS.csv").write_text(",".join(header) + "\n" + "x" * 200_000 + "\n")  # garbage, not a table
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == ("error: PATIENTS.csv: cannot read table PATIENTS "
                                       "(field larger than field limit (131072))\n")

    write_table(raw / "PATIENTS.csv", header, rows)
    refuse_open(monkeypatch, prep, "LABEVENTS.csv.gz")
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: LABEVENTS.csv.gz: cannot read table LABEVENTS (Permission denied)\n"
    assert not (tmp_path / "out").exists()


def test_a_variable_no_stay_measured_is_said_in_a_warning_and_the_metadata(built, prep, demo, tmp_path, capsys):
    assert built[1]["imputed_throughout"] == {"variables_measured_in_no_stay": [], "stays_measured_in_no_variable": []}
    raw = raw_copy(demo, tmp_path / "raw", skip=("LABEVENTS",))
    header, rows = read_table(demo / "LABEVENTS.csv.gz")
    write_table(raw / "LABEVENTS.csv.gz", header, [r for r in rows if r[header.index("itemid")] != "50885"])
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err == ("warning: no stay has a measurement of bilirubin in its first 24 hours: "
                                       "imputed with the normal value throughout\n")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["imputed_throughout"]["variables_measured_in_no_stay"] == ["bilirubin"]
