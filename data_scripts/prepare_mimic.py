#!/usr/bin/env python
"""Build the MIMIC-III benchmark of MultiBench (and I2M2) from the database's own CSV tables.

MultiBench hands its MIMIC-III file (``im.pk``) out by e-mail only; it was made by the
pipeline of Purushotham et al. (2018, "Benchmarking deep learning models on large healthcare
datasets", github.com/USC-Melady/Benchmarking_DL_MIMICIII) from a PostgreSQL copy of the
database. This script rebuilds the same content from the CSV tables a credentialed user
downloads from PhysioNet (or from the open 100-patient demo), without a database, and writes
it as plain arrays instead of a pickle.

Cohort (one row per patient):
  * the patient's first hospital admission (by admit time), if it has an ICU stay; a later
    admission never stands in for it (one patient can then not sit in train and test);
  * aged 15 or more at admission;
  * with measurements of the twelve variables below spanning more than 24 hours (from 6 hours
    before ICU admission on);
  * rows ordered by HADM_ID, as in the published pipeline, so MultiBench's shuffle with seed
    10 splits them the same way.
Time 0 is the first ICU stay's INTIME.

Static features ``adm_features_all`` (N, 5), SAPS-II's admission variables:
  age in days at ICU admission; AIDS; hematologic malignancy; metastatic cancer (ICD-9 ranges
  of mimic-code's SAPS-II query, see COMORBIDITIES); admission type 0 medical, 1 scheduled
  surgical (ELECTIVE admission with a surgical first service), 2 unscheduled surgical.
  MIMIC shifts the birth date of patients older than 89 so that they appear about 300 years
  old; their age is set to 91.4 years, the median age of that group in MIMIC's documentation
  (the published pipeline kept the 300 years).

Series ``ep_tdata`` (N, 24, 12): hourly values over the first 24 hours of the ICU stay of
SAPS-II's physiological variables, in the published column order (SERIES). Each hour holds
the mean of the measurements taken in it (urine output: the sum, in mL). The ITEMIDs, unit
conversions and plausible ranges are in ITEMS; GCS is summed from its three components
(intubated: 15, as SAPS-II scores sedated patients; a component missing at a charting time
is carried from the last one within 6 hours, else taken as normal); PaO2/FiO2 (mmHg) pairs
each arterial PaO2 with the FiO2 of the same blood gas, or else the last charted FiO2 of the
4 hours before it. ``ep_tdata_masking`` (N, 24, 12) marks the hours actually measured.

Imputation, per stay and variable, using nothing after hour 24: carry the last value forward
(lab values of the 6 hours before ICU admission seed it), then the first value backward;
urine output: hours without a measurement get the stay's mean hourly output; a variable never
measured in the window gets the normal value of NORMAL (SAPS-II's convention that a missing
measurement counts as normal). The published pipeline imputed with values from the whole
stay (after hour 24 as well) and left never-measured variables as NaN, which MultiBench's
loader then set to 0 in raw units.

Labels ``adm_labels_all`` (N, 6): in-hospital death (DEATHTIME given; equals
HOSPITAL_EXPIRE_FLAG), death within 24 h, 48 h, 72 h of ICU admission, and death within 30
days and 1 year of discharge (DOD). ``y_icd9`` (N, 20): the admission has a diagnosis in each
ICD-9 group of ICD9_GROUPS (the 21 groups of the published pipeline without perinatal
conditions 760-779, which it dropped as too rare in adults: column 1 is 140-239, column 7
460-519, the two I2M2 tasks).

Input (``--raw``): PATIENTS, ADMISSIONS, ICUSTAYS, SERVICES, DIAGNOSES_ICD, CHARTEVENTS,
LABEVENTS, OUTPUTEVENTS as ``NAME.csv.gz`` or ``NAME.csv``, with the full database's
upper-case quoted headers or the demo's lower-case ones. The event tables are streamed
(memory grows with the cohort, not the tables); the full CHARTEVENTS (330 million rows) takes
about half an hour on one core.

Output (``--out``, a folder written atomically; an existing one only with ``--overwrite``):
  mimic.npz       adm_features_all, ep_tdata, ep_tdata_masking, adm_labels_all, y_icd9,
                  subject_id, hadm_id, icustay_id
  metadata.json   variables, ITEMIDs, conversions, imputation, label definitions, counts

    python data_scripts/prepare_mimic.py --raw ../shared/data/mimic3_demo --out data/mimic
    python data_scripts/prepare_mimic.py --raw ~/physionet/mimiciii/1.4 --out data/mimic
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import re
import sys
import zlib
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from i2m2kit.io import (PrepareError, atomic_folder, check_free_space, check_output, prepare_output, script_main,
                        script_parser)

FORMAT_VERSION = 1
OUTPUTS = ("metadata.json", "mimic.npz")  # all --overwrite may replace
HOURS = 24  # length of the series
LOOKBACK_HOURS = 6  # measurements this long before ICU admission count (labs drawn in the ED)
FIO2_WINDOW_HOURS = 4  # a charted FiO2 this recent pairs with a blood gas without its own
GCS_CARRY_HOURS = 6  # a GCS component this recent stands in for a missing one
MIN_AGE_YEARS = 15
SHIFTED_AGE_YEARS = 91.4  # ages of shifted patients (> 89) are replaced by this median
IMPLAUSIBLE_AGE_YEARS = 120  # older than this: a shifted birth date
DAYS_PER_YEAR = 365.242  # as in the published pipeline's SQL
PROGRESS_EVERY = 1 << 16  # rows between progress-bar updates

SERIES = ("gcs", "systolic_bp", "heart_rate", "temperature", "pao2_fio2", "urine_output",
          "bun", "wbc", "bicarbonate", "sodium", "potassium", "bilirubin")
UNITS = {"gcs": "points (3-15)", "systolic_bp": "mmHg", "heart_rate": "beats/min",
         "temperature": "degC", "pao2_fio2": "mmHg (PaO2 / FiO2 as a fraction)",
         "urine_output": "mL in the hour", "bun": "mg/dL", "wbc": "K/uL", "bicarbonate": "mEq/L",
         "sodium": "mEq/L", "potassium": "mEq/L", "bilirubin": "mg/dL"}
# For a variable never measured in a stay's first 24 hours: adult normal values (vital signs
# from mimic3-benchmarks' imputation defaults, labs mid reference range).
NORMAL = {"gcs": 15.0, "systolic_bp": 118.0, "heart_rate": 86.0, "temperature": 36.6,
          "pao2_fio2": 450.0, "urine_output": 70.0, "bun": 14.0, "wbc": 7.5, "bicarbonate": 25.0,
          "sodium": 140.0, "potassium": 4.2, "bilirubin": 0.7}
STATIC = ("age_days", "aids", "hematologic_malignancy", "metastatic_cancer", "admission_type")
ADMISSION_TYPES = {"medical": 0, "scheduled_surgical": 1, "unscheduled_surgical": 2}
LABELS = ("in_hospital", "within_24h", "within_48h", "within_72h", "within_30d_of_discharge",
          "within_1y_of_discharge")

# ICD-9 groups of the published pipeline (chapters, with 780-799 split in three), without
# perinatal conditions 760-779. Pregnancy is 630-679 (the pipeline stopped at 677).
ICD9_GROUPS = ("001-139", "140-239", "240-279", "280-289", "290-319", "320-389", "390-459",
               "460-519", "520-579", "580-629", "630-679", "680-709", "710-739", "740-759",
               "780-789", "790-796", "797-799", "800-999", "V", "E")
# SAPS-II comorbidities, ICD-9 codes padded to 5 characters (mimic-code's sapsii.sql).
COMORBIDITIES = {
    "aids": [("042  ", "0449 ")],
    "hematologic_malignancy": [("20000", "20238"), ("20240", "20248"), ("20250", "20302"),
                               ("20310", "20312"), ("20302", "20382"), ("20400", "20522"),
                               ("20580", "20702"), ("20720", "20892"), ("2386 ", "2386 "),
                               ("2733 ", "2733 ")],
    "metastatic_cancer": [("1960 ", "1991 "), ("20970", "20975"), ("20979", "20979"),
                          ("78951", "78951")],
}
VENTILATED_VERBAL = ("1.0 ET/TRACH", "NO RESPONSE-ETT")  # GCS verbal text of an intubated patient
# GCS scores written as text (MetaVision's VALUE; CareVue's starts with the score, "4 Spontaneously"),
# read when VALUENUM is empty.
GCS_TEXT = {
    "gcs_eyes": {"SPONTANEOUSLY": 4, "TO SPEECH": 3, "TO PAIN": 2, "NONE": 1, "NO RESPONSE": 1},
    "gcs_verbal": {"ORIENTED": 5, "CONFUSED": 4, "INAPPROPRIATE WORDS": 3, "INCOMPREHENSIBLE SOUNDS": 2,
                   "NO RESPONSE": 1},
    "gcs_motor": {"OBEYS COMMANDS": 6, "LOCALIZES PAIN": 5, "FLEX-WITHDRAWS": 4, "ABNORMAL FLEXION": 3,
                  "ABNORMAL EXTENSION": 2, "NO RESPONSE": 1},
}
LEADING_SCORE = re.compile(r"(\d+)(\.0)?\s")


def _f2c(f: float) -> float:
    return (f - 32) / 1.8


CONVERSIONS: dict[str, Callable[[float], float]] = {
    "fahrenheit_to_celsius": _f2c,
    "fraction_to_percent": lambda v: v * 100 if v <= 1 else v,  # FiO2 charted as 0.4 or as 40
    "negate": lambda v: -v,  # GU irrigant put in: subtracted from the urine it comes out with
}


@dataclass(frozen=True)
class Item:
    """One ITEMID and what it measures; values outside (low, high] after conversion are dropped."""

    table: str
    itemid: int
    label: str
    measures: str  # a series variable, or an ingredient of GCS or PaO2/FiO2
    low: float = -math.inf
    high: float = math.inf
    convert: str | None = None


def _items(table: str, measures: str, ids: dict[int, str], low=-math.inf, high=math.inf, convert=None):
    return [Item(table, i, label, measures, low, high, convert) for i, label in ids.items()]


URINE = {40055: "Urine Out Foley", 43175: "Urine .", 40069: "Urine Out Void",
         40094: "Urine Out Condom Cath", 40715: "Urine Out Suprapubic", 40473: "Urine Out IleoConduit",
         40085: "Urine Out Incontinent", 40057: "Urine Out Rt Nephrostomy",
         40056: "Urine Out Lt Nephrostomy", 40405: "Urine Out Other", 40428: "Urine Out Straight Cath",
         40086: "Urine Out Incontinent", 40096: "Urine Out Ureteral Stent #1",
         40651: "Urine Out Ureteral Stent #2", 226559: "Foley", 226560: "Void", 226561: "Condom Cath",
         226584: "Ileoconduit", 226563: "Suprapubic", 226564: "R Nephrostomy", 226565: "L Nephrostomy",
         226567: "Straight Cath", 226557: "R Ureteral Stent", 226558: "L Ureteral Stent",
         227489: "GU Irrigant/Urine Volume Out"}

# CareVue and MetaVision ITEMIDs of mimic-code's first-day concepts, which the published
# pipeline used (vitals, labs, blood gases, GCS, urine output).
ITEMS: list[Item] = [
    *_items("CHARTEVENTS", "heart_rate", {211: "Heart Rate", 220045: "Heart Rate"}, 0, 300),
    *_items("CHARTEVENTS", "systolic_bp", {51: "Arterial BP [Systolic]", 442: "Manual BP [Systolic]",
                                            455: "NBP [Systolic]", 6701: "Arterial BP #2 [Systolic]",
                                            220179: "Non Invasive Blood Pressure systolic",
                                            220050: "Arterial Blood Pressure systolic"}, 0, 400),
    *_items("CHARTEVENTS", "temperature", {676: "Temperature C", 223762: "Temperature Celsius"}, 10, 50),
    *_items("CHARTEVENTS", "temperature", {678: "Temperature F", 223761: "Temperature Fahrenheit"},
            _f2c(70), _f2c(120), "fahrenheit_to_celsius"),
    *_items("CHARTEVENTS", "gcs_verbal", {723: "GCSVerbal", 223900: "GCS - Verbal Response"}, 0, 5),
    *_items("CHARTEVENTS", "gcs_motor", {454: "GCSMotor", 223901: "GCS - Motor Response"}, 0, 6),
    *_items("CHARTEVENTS", "gcs_eyes", {184: "GCSEyes", 220739: "GCS - Eye Opening"}, 0, 4),
    *_items("CHARTEVENTS", "fio2_charted", {223835: "Inspired O2 Fraction", 3420: "FiO2",
                                             3422: "FiO2 [measured]", 190: "FiO2 set"},
            20, 100, "fraction_to_percent"),
    *_items("LABEVENTS", "pao2", {50821: "PO2 (blood gas)"}, 0, 800),
    *_items("LABEVENTS", "fio2_blood_gas", {50816: "Oxygen (blood gas FiO2)"}, 20, 100, "fraction_to_percent"),
    *_items("LABEVENTS", "specimen", {50800: "Specimen type (blood gas)"}),
    *_items("LABEVENTS", "bun", {51006: "Urea Nitrogen"}, 0, 300),
    *_items("LABEVENTS", "wbc", {51300: "WBC Count", 51301: "White Blood Cells"}, 0, 1000),
    *_items("LABEVENTS", "bicarbonate", {50882: "Bicarbonate"}, 0, 10000),
    *_items("LABEVENTS", "sodium", {50983: "Sodium", 50824: "Sodium, Whole Blood"}, 0, 200),
    *_items("LABEVENTS", "potassium", {50971: "Potassium", 50822: "Potassium, Whole Blood"}, 0, 30),
    *_items("LABEVENTS", "bilirubin", {50885: "Bilirubin, Total"}, 0, 150),
    *_items("OUTPUTEVENTS", "urine_output", URINE),
    *_items("OUTPUTEVENTS", "urine_output", {227488: "GU Irrigant Volume In"}, convert="negate"),
]
INGREDIENTS = ("gcs_verbal", "gcs_motor", "gcs_eyes", "fio2_charted", "pao2", "fio2_blood_gas", "specimen")
CODES = {name: code for code, name in enumerate(SERIES + INGREDIENTS)}  # event kind -> small int


# ---------------------------------------------------------------------- reading tables


def parse_seconds(text: str) -> float:
    """'2101-10-20 19:08:00' -> seconds since 0001-01-01, exact for any year (no time zone)."""
    t = datetime.fromisoformat(text)
    return t.toordinal() * 86400.0 + t.hour * 3600 + t.minute * 60 + t.second


class Table:
    """One MIMIC-III table, streamed row by row with its header checked.

    Finds ``NAME.csv.gz`` or ``NAME.csv`` in either case; header names are compared in lower
    case, so the full database's quoted upper-case headers and the demo's both work.
    """

    def __init__(self, raw: Path, name: str, required: Sequence[str], optional: Sequence[str] = ()):
        self.name = name
        candidates = [raw / f"{stem}{ext}" for stem in (name, name.lower()) for ext in (".csv.gz", ".csv")]
        self.path = next((p for p in candidates if p.is_file()), None)
        if self.path is None:
            raise PrepareError(f"table {name} not found in {raw} (looked for {name}.csv.gz or {name}.csv)")
        with self._open() as (f, _):
            reader = csv.reader(f)
            header = next(reader, None)
            has_rows = any(reader)  # stops at the first data row (blank lines are empty lists)
        if header is None:
            raise PrepareError(f"{self.path.name}: table {name} is empty (no header)")
        if not has_rows:  # its every value would be imputed, or its every admission left out, unsaid
            raise PrepareError(f"{self.path.name}: table {name} holds its header but no rows")
        self.header = [h.strip().lower() for h in header]
        missing = [c for c in required if c not in self.header]
        if missing:
            raise PrepareError(f"{self.path.name}: table {name} has no column "
                               f"{', '.join(map(repr, missing))} (columns: {', '.join(self.header)})")
        self.col = {c: self.header.index(c) for c in (*required, *optional) if c in self.header}
        self.rows_read = 0

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[io.TextIOWrapper, BinaryIO]]:
        """The table as text, and the file underneath (its position drives the progress bar)."""
        try:
            with open(self.path, "rb") as raw:
                stream = gzip.open(raw) if self.path.name.endswith(".gz") else raw
                with io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="") as text:
                    yield text, raw
        except (OSError, EOFError, zlib.error, csv.Error) as e:  # unreadable, not gzip, cut short, garbage
            raise PrepareError(f"{self.path.name}: cannot read table {self.name} "
                               f"({getattr(e, 'strerror', None) or e})") from None

    def rows(self, progress: bool = False) -> Iterator[tuple[int, list[str]]]:
        """(line number, fields) for every data row; a progress bar over the file's bytes."""
        width = len(self.header)
        size = self.path.stat().st_size
        with self._open() as (f, raw), tqdm(total=size, unit="B", unit_scale=True, desc=self.name,
                                            disable=not progress, leave=False) as bar:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                line = reader.line_num
                if len(row) != width:
                    if not row:
                        continue
                    raise PrepareError(f"{self.path.name} line {line}: {len(row)} fields, the "
                                       f"header of table {self.name} has {width}")
                self.rows_read += 1
                if self.rows_read % PROGRESS_EVERY == 0:
                    bar.update(raw.tell() - bar.n)
                yield line, row
            bar.update(size - bar.n)

    def _fail(self, line: int, column: str, what: str, text: str) -> PrepareError:
        return PrepareError(f"{self.path.name} line {line}: table {self.name}, column {column!r}: "
                            f"{what} {text!r}")

    def _parse(self, row: list[str], column: str, line: int, parse: Callable, what: str):
        """A column's value read by ``parse`` (None when empty); text it cannot read is named."""
        text = row[self.col[column]]
        if not text:
            return None
        try:
            return parse(text)
        except ValueError:
            raise self._fail(line, column, what, text) from None

    def time(self, row: list[str], column: str, line: int) -> float | None:
        """Seconds of a time column (None when empty)."""
        return self._parse(row, column, line, parse_seconds, "cannot parse the time")

    def number(self, row: list[str], column: str, line: int) -> float | None:
        value = self._parse(row, column, line, float, "not a number:")
        if value is not None and not math.isfinite(value):  # "nan" and "inf" parse, but would poison the series
            raise self._fail(line, column, "not a finite number:", row[self.col[column]])
        return value

    def integer(self, row: list[str], column: str, line: int) -> int | None:
        return self._parse(row, column, line, int, "not an integer:")

    def info(self) -> dict:
        return {"file": self.path.name, "bytes": self.path.stat().st_size, "rows": self.rows_read}


# ---------------------------------------------------------------------- the cohort


@dataclass
class Admission:
    subject_id: int
    hadm_id: int
    admittime: float
    dischtime: float | None
    deathtime: float | None
    admission_type: str
    expire_flag: int
    icustay_id: int = 0
    intime: float = math.inf
    dob: float = 0.0
    dod: float | None = None
    first_service: tuple[float, str] | None = None  # (transfer time, service)
    codes: list[str] = field(default_factory=list)  # ICD-9 diagnoses


# Columns each table must have (header names in lower case) and optional ones it may have.
TABLES = {
    "PATIENTS": ("subject_id", "dob", "dod"),
    "ADMISSIONS": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                   "hospital_expire_flag"),
    "ICUSTAYS": ("hadm_id", "icustay_id", "intime"),
    "SERVICES": ("hadm_id", "transfertime", "curr_service"),
    "DIAGNOSES_ICD": ("hadm_id", "icd9_code"),
    "CHARTEVENTS": ("hadm_id", "itemid", "charttime", "value", "valuenum"),
    "LABEVENTS": ("hadm_id", "itemid", "charttime", "value", "valuenum"),
    "OUTPUTEVENTS": ("hadm_id", "itemid", "charttime", "value"),
}
OPTIONAL = {"CHARTEVENTS": ("error",), "OUTPUTEVENTS": ("iserror",)}  # rows flagged 1 are errors


def open_tables(raw: Path) -> dict[str, Table]:
    """Every table this script reads, headers (and that rows follow) checked before the long reads start."""
    return {name: Table(raw, name, columns, OPTIONAL.get(name, ())) for name, columns in TABLES.items()}


def read_cohort(tables: dict[str, Table], progress: bool) -> tuple[list[Admission], dict]:
    """First admissions with an ICU stay, of patients aged 15 or more, by HADM_ID."""
    patients, admissions, icustays, services, diagnoses = (
        tables[n] for n in ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "SERVICES", "DIAGNOSES_ICD"))
    first: dict[int, Admission] = {}  # subject -> earliest admission
    n_admissions = 0
    for line, row in admissions.rows(progress):
        n_admissions += 1
        adm = Admission(
            subject_id=admissions.integer(row, "subject_id", line), hadm_id=admissions.integer(row, "hadm_id", line),
            admittime=admissions.time(row, "admittime", line), dischtime=admissions.time(row, "dischtime", line),
            deathtime=admissions.time(row, "deathtime", line),
            admission_type=row[admissions.col["admission_type"]].strip().upper(),
            expire_flag=admissions.integer(row, "hospital_expire_flag", line) or 0)
        if adm.admittime is None:
            raise admissions._fail(line, "admittime", "no admission time:", "")
        known = first.get(adm.subject_id)
        if known is None or adm.admittime < known.admittime:
            first[adm.subject_id] = adm
    by_hadm = {a.hadm_id: a for a in first.values()}

    for line, row in icustays.rows(progress):
        adm = by_hadm.get(icustays.integer(row, "hadm_id", line))
        if adm is None:
            continue
        intime = icustays.time(row, "intime", line)
        if intime is not None and intime < adm.intime:
            adm.intime, adm.icustay_id = intime, icustays.integer(row, "icustay_id", line)
    with_icu = {h: a for h, a in by_hadm.items() if a.icustay_id}

    for line, row in patients.rows(progress):
        subject = patients.integer(row, "subject_id", line)
        adm = first.get(subject)
        if adm is not None:
            dob = patients.time(row, "dob", line)
            if dob is None:
                raise patients._fail(line, "dob", "no date of birth:", "")
            adm.dob, adm.dod = dob, patients.time(row, "dod", line)
    no_patient = [a.subject_id for a in with_icu.values() if a.dob == 0.0]
    if no_patient:
        raise PrepareError(f"{patients.path.name}: table PATIENTS has no row for SUBJECT_ID {no_patient[0]} "
                           f"(and {len(no_patient) - 1} more) of table ADMISSIONS")
    adults = {h: a for h, a in with_icu.items()
              if (a.admittime - a.dob) / 86400 >= MIN_AGE_YEARS * 365.25}

    for line, row in services.rows(progress):
        adm = adults.get(services.integer(row, "hadm_id", line))
        if adm is not None:
            when = services.time(row, "transfertime", line)
            service = row[services.col["curr_service"]].strip().upper()
            if adm.first_service is None or (when is not None and when < adm.first_service[0]):
                adm.first_service = (when if when is not None else math.inf, service)

    for line, row in diagnoses.rows(progress):
        adm = adults.get(diagnoses.integer(row, "hadm_id", line))
        code = row[diagnoses.col["icd9_code"]].strip().upper()
        if adm is not None and code:
            if not (code[:3].isdigit() or code[0] in "VE"):
                raise diagnoses._fail(line, "icd9_code", "not an ICD-9 code:", code)
            adm.codes.append(code)

    counts = {"patients_with_admissions": len(first), "admissions": n_admissions,
              "first_admissions_with_icu_stay": len(with_icu), "aged_15_or_more": len(adults)}
    return sorted(adults.values(), key=lambda a: a.hadm_id), counts


def icd9_group(code: str) -> int | None:
    """Column of ``y_icd9`` for an ICD-9 diagnosis code (MIMIC writes them without the dot)."""
    if code.startswith("V"):
        return ICD9_GROUPS.index("V")
    if code.startswith("E"):
        return ICD9_GROUPS.index("E")
    if not code[:3].isdigit():
        return None
    number = int(code[:3])
    for column, group in enumerate(ICD9_GROUPS[:-2]):
        low, high = map(int, group.split("-"))
        if low <= number <= high:
            return column
    return None  # 760-779 (perinatal), or 000


def comorbid(codes: list[str], ranges: list[tuple[str, str]]) -> int:
    padded = [c[:5].ljust(5) for c in codes]
    return int(any(low <= c <= high for c in padded for low, high in ranges))


# ---------------------------------------------------------------------- the events


class Events:
    """Measurements of the cohort in compact typed arrays: (row, hours since INTIME, kind, value)."""

    def __init__(self):
        self.row, self.hours, self.kind, self.value = array("i"), array("d"), array("b"), array("d")

    def add(self, row: int, hours: float, kind: int, value: float) -> None:
        self.row.append(row)
        self.hours.append(hours)
        self.kind.append(kind)
        self.value.append(value)

    def numpy(self) -> tuple[np.ndarray, ...]:
        return (np.frombuffer(self.row, np.int32), np.frombuffer(self.hours, np.float64),
                np.frombuffer(self.kind, np.int8), np.frombuffer(self.value, np.float64))


EVENT_TABLES = {  # table: (numeric value column, text value column, error flag column)
    "CHARTEVENTS": ("valuenum", "value", "error"),
    "LABEVENTS": ("valuenum", "value", None),
    "OUTPUTEVENTS": ("value", "value", "iserror"),
}


def gcs_score(item: Item, text: str) -> float | None:
    """A GCS component's score from its text, for tables whose VALUENUM is empty."""
    if item.measures not in GCS_TEXT:
        return None
    leading = LEADING_SCORE.match(text)
    score = int(leading.group(1)) if leading else GCS_TEXT[item.measures].get(text)
    return None if score is None else float(score)


def read_events(tables: dict[str, Table], cohort: list[Admission], progress: bool) -> tuple[Events, np.ndarray, dict]:
    """Every measurement of the cohort from 6 h before ICU admission to hour 24, and the time span
    of the measurements of each stay (all of them, past hour 24 too)."""
    rows = {a.hadm_id: i for i, a in enumerate(cohort)}
    intime = [a.intime for a in cohort]
    first_seen = np.full(len(cohort), math.inf)
    last_seen = np.full(len(cohort), -math.inf)
    events = Events()
    dropped = defaultdict(int)  # values outside their plausible range, by variable
    for name, (number_col, text_col, error_col) in EVENT_TABLES.items():
        table = tables[name]
        items = {str(i.itemid): i for i in ITEMS if i.table == name}
        c_item, c_hadm, c_number, c_text = (table.col[c] for c in ("itemid", "hadm_id", number_col, text_col))
        c_error = table.col.get(error_col)
        for line, row in table.rows(progress):
            item = items.get(row[c_item].strip())
            if item is None:
                continue
            hadm = row[c_hadm]
            r = rows.get(int(hadm)) if hadm.isdigit() else None
            if r is None or (c_error is not None and row[c_error].strip() == "1"):
                continue
            when = table.time(row, "charttime", line)
            if when is None:
                continue
            hours = (when - intime[r]) / 3600
            if hours < -LOOKBACK_HOURS:
                continue
            if item.measures == "specimen":  # blood gas specimen: only non-arterial ones matter
                if hours < HOURS and row[c_text].strip().upper() != "ART":
                    events.add(r, hours, CODES["specimen"], 0.0)
                continue
            text = row[c_text].strip().upper()
            if item.measures == "gcs_verbal" and text in VENTILATED_VERBAL:
                value = 0.0  # intubated: no verbal score (mimic-code's convention)
            else:
                value = table.number(row, number_col, line) if row[c_number] else gcs_score(item, text)
                if value is None:
                    continue
                if item.convert:
                    value = CONVERSIONS[item.convert](value)
                if not item.low < value <= item.high:
                    dropped[item.measures] += 1
                    continue
            first_seen[r] = min(first_seen[r], hours)
            last_seen[r] = max(last_seen[r], hours)
            if hours < HOURS:
                events.add(r, hours, CODES[item.measures], value)
    return events, last_seen - first_seen, dict(dropped)


# ---------------------------------------------------------------------- derived variables


def gcs_events(row: np.ndarray, hours: np.ndarray, kind: np.ndarray, value: np.ndarray) -> list[tuple]:
    """Total GCS at each charting time of a component, as mimic-code's GCS query computes it."""
    normal = {"gcs_motor": 6.0, "gcs_verbal": 5.0, "gcs_eyes": 4.0}
    codes = {CODES[c]: c for c in normal}
    pick = np.isin(kind, list(codes))
    order = np.lexsort((hours[pick], row[pick]))
    r_, h_, k_, v_ = (a[pick][order] for a in (row, hours, kind, value))
    out = []
    i = 0
    last: dict[str, tuple[float, float]] = {}
    while i < len(r_):
        if i == 0 or r_[i] != r_[i - 1]:
            last = {}  # a new stay
        j = i
        now = {}
        while j < len(r_) and r_[j] == r_[i] and h_[j] == h_[i]:
            now[codes[int(k_[j])]] = v_[j]
            j += 1
        before = last.get("gcs_verbal")
        intubated_before = before is not None and before[1] == 0 and h_[i] - before[0] <= GCS_CARRY_HOURS
        if now.get("gcs_verbal") == 0 or ("gcs_verbal" not in now and intubated_before):
            total = 15.0  # intubated or sedated: scored as normal
        else:
            total = 0.0
            for c, default in normal.items():
                carried = last.get(c)
                # after extubation, values from the intubated period do not carry over
                usable = carried is not None and h_[i] - carried[0] <= GCS_CARRY_HOURS and not intubated_before
                total += now.get(c, carried[1] if usable else default)
        out.append((int(r_[i]), float(h_[i]), CODES["gcs"], total))
        last.update({c: (float(h_[i]), v) for c, v in now.items()})
        i = j
    return out


def pao2_fio2_events(row: np.ndarray, hours: np.ndarray, kind: np.ndarray, value: np.ndarray) -> list[tuple]:
    """PaO2/FiO2 of each arterial blood gas with a known FiO2 (its own, or one charted <= 4 h before)."""
    def by_stay(name):
        pick = kind == CODES[name]
        out = defaultdict(list)
        for r, h, v in zip(row[pick].tolist(), hours[pick].tolist(), value[pick].tolist()):
            out[r].append((h, v))
        return out

    pao2, fio2_gas, fio2_charted = by_stay("pao2"), by_stay("fio2_blood_gas"), by_stay("fio2_charted")
    venous = {(r, h) for r, hv in by_stay("specimen").items() for h, _ in hv}
    out = []
    for r, gases in pao2.items():
        for h, p in gases:
            if (r, h) in venous:
                continue
            same_draw = [f for t, f in fio2_gas.get(r, ()) if t == h]
            charted = [(t, f) for t, f in fio2_charted.get(r, ()) if h - FIO2_WINDOW_HOURS <= t <= h]
            fio2 = np.mean(same_draw) if same_draw else (max(charted)[1] if charted else None)
            if fio2 is not None:
                out.append((r, h, CODES["pao2_fio2"], 100.0 * p / fio2))
    return out


# ---------------------------------------------------------------------- the hourly series


def fill_forward(x: np.ndarray) -> np.ndarray:
    """Carry the last non-NaN value forward along axis 1 of (N, T, D)."""
    t = np.arange(x.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(np.isnan(x), 0, t), axis=1)
    filled = np.take_along_axis(x, last, axis=1)
    return filled


def hourly_series(events: Events, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24, 12) imputed hourly values and (N, 24, 12) flags of the hours measured."""
    row, hours, kind, value = events.numpy()
    derived = gcs_events(row, hours, kind, value) + pao2_fio2_events(row, hours, kind, value)
    if derived:
        d = np.array(derived, dtype=np.float64)
        row, hours = np.concatenate([row, d[:, 0].astype(np.int32)]), np.concatenate([hours, d[:, 1]])
        kind, value = np.concatenate([kind, d[:, 2].astype(np.int8)]), np.concatenate([value, d[:, 3]])
    keep = kind < len(SERIES)
    bins = np.floor(hours[keep]).astype(np.int64) + LOOKBACK_HOURS  # hour -6 -> bin 0
    index = (row[keep].astype(np.int64), bins, kind[keep].astype(np.int64))
    width = LOOKBACK_HOURS + HOURS
    total = np.zeros((n, width, len(SERIES)))
    count = np.zeros((n, width, len(SERIES)))
    np.add.at(total, index, value[keep])
    np.add.at(count, index, 1)

    urine = SERIES.index("urine_output")
    with np.errstate(invalid="ignore", divide="ignore"):
        hourly = total / count  # NaN where nothing was measured
    hourly[:, :, urine] = np.where(count[:, :, urine] > 0, total[:, :, urine], np.nan)  # mL in the hour
    hourly[:, :LOOKBACK_HOURS, urine] = np.nan  # output before ICU admission is not charted
    measured = ~np.isnan(hourly[:, LOOKBACK_HOURS:])

    series = fill_forward(hourly)[:, LOOKBACK_HOURS:]  # the lookback only seeds hour 0
    series = fill_forward(series[:, ::-1])[:, ::-1]  # then the first value backward
    hours_measured = measured[:, :, urine].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_urine = np.where(measured[:, :, urine], series[:, :, urine], 0).sum(1) / hours_measured
    series[:, :, urine] = np.where(measured[:, :, urine], series[:, :, urine], mean_urine[:, None])
    series = np.where(np.isnan(series), np.array([NORMAL[v] for v in SERIES])[None, None, :], series)
    return series.astype(np.float32), measured


# ---------------------------------------------------------------------- features and labels


def static_features(cohort: list[Admission]) -> tuple[np.ndarray, int]:
    """(N, 5) SAPS-II admission variables, and how many ages were shifted ones."""
    out = np.zeros((len(cohort), len(STATIC)), dtype=np.float32)
    shifted = 0
    for i, a in enumerate(cohort):
        age_days = (a.intime - a.dob) / 86400
        if age_days > IMPLAUSIBLE_AGE_YEARS * DAYS_PER_YEAR:
            age_days, shifted = SHIFTED_AGE_YEARS * DAYS_PER_YEAR, shifted + 1
        codes = a.codes
        surgical = a.first_service is not None and "SURG" in a.first_service[1]
        if not surgical:
            admission_type = ADMISSION_TYPES["medical"]
        elif a.admission_type == "ELECTIVE":
            admission_type = ADMISSION_TYPES["scheduled_surgical"]
        else:
            admission_type = ADMISSION_TYPES["unscheduled_surgical"]
        out[i] = (age_days, comorbid(codes, COMORBIDITIES["aids"]),
                  comorbid(codes, COMORBIDITIES["hematologic_malignancy"]),
                  comorbid(codes, COMORBIDITIES["metastatic_cancer"]), admission_type)
    return out, shifted


def mortality_labels(cohort: list[Admission]) -> np.ndarray:
    """(N, 6): in hospital; within 24/48/72 h of ICU admission; within 30 d / 1 y of discharge."""
    out = np.zeros((len(cohort), len(LABELS)), dtype=np.int64)
    for i, a in enumerate(cohort):
        if a.deathtime is not None:
            since_icu = (a.deathtime - a.intime) / 3600
            out[i, :4] = (1, since_icu <= 24, since_icu <= 48, since_icu <= 72)
        if a.dod is not None and a.dischtime is not None:
            after_discharge = (a.dod - a.dischtime) / 86400  # DOD is a date: negative when died in hospital
            out[i, 4:] = (after_discharge <= 30, after_discharge <= 365.245)
    return out


def icd9_labels(cohort: list[Admission]) -> np.ndarray:
    out = np.zeros((len(cohort), len(ICD9_GROUPS)), dtype=np.int64)
    for i, a in enumerate(cohort):
        for code in a.codes:
            column = icd9_group(code)
            if column is not None:
                out[i, column] = 1
    return out


# ---------------------------------------------------------------------- the whole run


def prepare(raw: str | Path, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Read the tables in ``raw``, write ``mimic.npz`` and ``metadata.json`` to ``out``; return the metadata."""
    raw, out = Path(raw), Path(out)
    prepare_output(out)  # now, not after the work: unwritable, a mount point, a loop; killed runs' leftovers gone
    if not raw.is_dir():  # before the output check resolves it (a looping link would fail there)
        raise PrepareError(f"{raw}: raw MIMIC-III folder not found (or not a folder)")
    check_output(out, overwrite, [raw], OUTPUTS)
    tables = open_tables(raw)
    candidates, counts = read_cohort(tables, progress)
    # before the long read of the event tables: the cohort can only shrink, and the arrays'
    # uncompressed size bounds mimic.npz
    per_stay = 4 * len(STATIC) + 5 * HOURS * len(SERIES) + 8 * (len(LABELS) + len(ICD9_GROUPS) + 3)
    check_free_space(out, len(candidates) * per_stay + 2 ** 20, "the prepared MIMIC-III data")
    events, span, dropped = read_events(tables, candidates, progress)
    keep = np.flatnonzero(span > HOURS)
    cohort = [candidates[i] for i in keep]
    counts["measurements_spanning_more_than_24h"] = len(cohort)
    if not cohort:
        raise PrepareError(f"{raw}: no admission passes the cohort filters ({counts})")

    series, measured = hourly_series(events, len(candidates))
    series, measured = series[keep], measured[keep]
    coverage = {v: {"hours_measured": float(measured[:, :, j].mean()),
                    "stays_not_measured_in_24h": int((~measured[:, :, j].any(1)).sum())}
                for j, v in enumerate(SERIES)}
    # imputed wholesale, said in metadata.json (and by main): a variable no stay measured,
    # a stay with no measurement at all in its 24 hours
    never = [v for v in SERIES if coverage[v]["stays_not_measured_in_24h"] == len(cohort)]
    unmeasured = [int(cohort[i].hadm_id) for i in np.flatnonzero(~measured.any((1, 2)))]
    static, shifted = static_features(cohort)
    labels = mortality_labels(cohort)
    icd9 = icd9_labels(cohort)
    expire = np.array([a.expire_flag for a in cohort])
    arrays = {
        "adm_features_all": static, "ep_tdata": series, "ep_tdata_masking": measured.astype(np.int8),
        "adm_labels_all": labels, "y_icd9": icd9,
        "subject_id": np.array([a.subject_id for a in cohort], dtype=np.int64),
        "hadm_id": np.array([a.hadm_id for a in cohort], dtype=np.int64),
        "icustay_id": np.array([a.icustay_id for a in cohort], dtype=np.int64),
    }
    metadata = {
        "format_version": FORMAT_VERSION,
        "source": {"raw": str(raw.resolve()), "tables": {n: t.info() for n, t in tables.items()}},
        "cohort": {**counts, "ages_shifted_past_89": shifted,
                   "in_hospital_deaths_disagreeing_with_hospital_expire_flag": int((labels[:, 0] != expire).sum())},
        "time_origin": "INTIME of the admission's first ICU stay; hour h holds measurements in [h, h+1)",
        "static_features": list(STATIC),
        "admission_types": ADMISSION_TYPES,
        "series": [{"name": v, "unit": UNITS[v], "normal_value": NORMAL[v], **coverage[v]} for v in SERIES],
        "imputed_throughout": {"variables_measured_in_no_stay": never, "stays_measured_in_no_variable": unmeasured},
        "items": [{"table": i.table, "itemid": i.itemid, "label": i.label, "measures": i.measures,
                   "valid": [i.low, i.high], "conversion": i.convert} for i in ITEMS],
        "values_out_of_range_dropped": dropped,
        "imputation": ("per stay and variable: last value carried forward (measurements from 6 h before "
                       "ICU admission seed it), then first value carried backward; urine output: the "
                       "stay's mean hourly output; never measured in the first 24 h: normal_value"),
        "gcs": "sum of motor, verbal, eyes; intubated -> 15; missing component: last within 6 h, else normal",
        "pao2_fio2": ("arterial PaO2 (LABEVENTS 50821, not a non-ART specimen 50800) x 100 / FiO2 % of the "
                      "same blood gas (50816) or else the last charted FiO2 within 4 h before"),
        "labels": list(LABELS),
        "icd9_groups": list(ICD9_GROUPS),
        "prevalence": {**{f"mortality/{n}": float(labels[:, j].mean()) for j, n in enumerate(LABELS)},
                       **{f"icd9/{g}": float(icd9[:, j].mean()) for j, g in enumerate(ICD9_GROUPS)}},
    }
    with atomic_folder(out) as tmp:  # a full disk meanwhile: one line, nothing left
        np.savez_compressed(tmp / "mimic.npz", **arrays)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, default=float))
    return metadata


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, "folder to write mimic.npz and metadata.json to")
    parser.add_argument("--raw", required=True, type=Path, help="folder of the MIMIC-III CSV tables")
    args = parser.parse_args(argv)
    meta = prepare(args.raw, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    imputed = meta["imputed_throughout"]
    if imputed["variables_measured_in_no_stay"]:
        print(f"warning: no stay has a measurement of {', '.join(imputed['variables_measured_in_no_stay'])} "
              f"in its first {HOURS} hours: imputed with the normal value throughout", file=sys.stderr)
    if imputed["stays_measured_in_no_variable"]:
        print(f"warning: {len(imputed['stays_measured_in_no_variable'])} stay(s) have no measurement in their "
              f"first {HOURS} hours: their series are imputed throughout (HADM_IDs in metadata.json)", file=sys.stderr)
    c, p = meta["cohort"], meta["prevalence"]
    print(f"wrote {args.out}: {c['measurements_spanning_more_than_24h']} admissions (one ICU stay each) of "
          f"{c['admissions']}; in-hospital mortality {p['mortality/in_hospital']:.3f}, "
          f"ICD-9 140-239 {p['icd9/140-239']:.3f}, 460-519 {p['icd9/460-519']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
