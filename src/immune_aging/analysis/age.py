"""Donor metadata: age in years from CELLxGENE ``development_stage`` labels, sex, the donor table.

CELLxGENE stores a donor's age as a HsapDv developmental-stage label. The forms
read here (case, surrounding spaces and the word ``human`` are ignored), with the
name each is counted under:

========================================  ============  ================================
label                                     form          age (years)
========================================  ============  ================================
``63-year-old stage``                     ``years``     63
``63-year-old human stage``               ``years``     63
``63 years``, ``63``                      ``years``     63
``8-month-old stage``                     ``months``    8 / 12
``80 year-old and over stage``            ``and_over``  ``age_80_and_over``
``90 year-old and over stage``            ``and_over``  90 + (``age_80_and_over`` - 80)
``centenarian stage``                     ``and_over``  100 + (``age_80_and_over`` - 80)
``60-79 year-old stage``                  ``range``     70 (middle of ages 60 to 79)
``child stage (1-4 yo)``                  ``range``     3 (middle of ages 1 to 4)
``newborn stage (0-28 days)``             ``range``     middle of 0 to 28 days
``third decade stage``                    ``decade``    25 (middle of ages 20 to 29)
``unknown``, ``NA``, empty, missing       ``unknown``   NaN
``adult stage``, ``human aged stage``...  ``no_age``    NaN (a life stage without an age)
========================================  ============  ================================

Rules:

- **Censored ages.** HsapDv codes donors older than a bound ``N`` as ``N year-old
  and over``. Their exact age is unknown; they get ``age_80_and_over`` (a
  parameter, in years) for ``N = 80`` and the same offset above ``N`` for other
  bounds. The lower bound (``age_80_and_over = 80``) is conservative: it can only
  shrink an age effect, never inflate it.
- **Age ranges and decades** become the middle of the range, taking integer ages
  ``a`` to ``b`` as the interval ``[a, b + 1)``: ``60-79`` gives 70, the third
  decade (ages 20 to 29) gives 25.
- **Labels without an age** (``unknown``, or a life stage such as ``adult stage``)
  give NaN and are counted; downstream analyses drop and report such donors.
- **Never a silent NaN for a label that carries an age**: a label that is not one
  of the forms above and contains a digit or an age word (``year``, ``month``,
  ``week``, ``day``, ``decade``, ``old``) raises
  :class:`~immune_aging.errors.InputError` naming the label.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: Form names, in the order reported.
FORMS = ("years", "months", "and_over", "range", "decade", "age_column", "unknown", "no_age")

#: Lower bound whose censored age is the parameter ``age_80_and_over``.
CENSOR_BOUND = 80.0

_UNKNOWN = frozenset(
    {
        "",
        "unknown",
        "na",
        "n/a",
        "nan",
        "none",
        "null",
        "missing",
        "not available",
        "not applicable",
        "not reported",
        "not collected",
        "unspecified",
        "unknown stage",
    }
)
_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
}
_NUM = r"(\d+(?:\.\d+)?)"
_STAGE = r"(?:\s+stage)?"
_YEARS = re.compile(rf"^{_NUM}\s*(?:-\s*)?(?:years?(?:\s*-\s*|\s+)old|years?|y)?{_STAGE}$")
_MONTHS = re.compile(rf"^{_NUM}\s*(?:-\s*)?months?(?:(?:\s*-\s*|\s+)old)?{_STAGE}$")
_AND_OVER = re.compile(
    rf"^{_NUM}\s*(?:-\s*)?years?(?:\s*-\s*|\s+)old\s+and\s+(?:over|older){_STAGE}$"
)
_RANGE = re.compile(
    rf"^{_NUM}\s*(?:-|to)\s*{_NUM}\s*(?:-\s*)?years?(?:(?:\s*-\s*|\s+)old)?"
    rf"(?:\s+(?:child|adult))?{_STAGE}$"
)
_PAREN_RANGE = re.compile(
    rf"^[a-z][a-z ]*\s+stage\s*\(\s*{_NUM}\s*-\s*{_NUM}\s*(yo|years?|months?|days?)\s*\)$"
)
_DECADE = re.compile(rf"^({'|'.join(_ORDINALS)})\s+decade{_STAGE}$")
_CENTENARIAN = re.compile(rf"^centenarian{_STAGE}$")
_AGE_WORDS = re.compile(r"\d|year|month|week|day|decade|\bold\b|\byo\b")
_UNIT_YEARS = {"yo": 1.0, "year": 1.0, "years": 1.0, "month": 1 / 12, "months": 1 / 12}
_DAYS_PER_YEAR = 365.25


class StageAge(NamedTuple):
    """An age read from one ``development_stage`` label."""

    age: float
    """Age in years; NaN when the label carries none."""
    form: str
    """The form the label was read as (one of :data:`FORMS`)."""


def normalise_stage(stage: str) -> str:
    """Return a label in the canonical spelling the parser matches.

    Lower case, the word ``human`` removed, runs of spaces collapsed, ends stripped.

    Parameters
    ----------
    stage
        A ``development_stage`` label.

    Returns
    -------
    str
        The normalised label.
    """
    text = re.sub(r"\bhuman\b", " ", str(stage).lower())
    return re.sub(r"\s+", " ", text).strip()


def read_stage(stage: object, *, age_80_and_over: float) -> StageAge:
    """Read the age and the form of one ``development_stage`` label.

    Parameters
    ----------
    stage
        The label (a string; ``None`` or NaN count as unknown).
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors (see the module notes).

    Returns
    -------
    StageAge
        ``(age, form)``; age is NaN for the forms ``unknown`` and ``no_age``.

    Raises
    ------
    InputError
        If the label is not a known form but carries a digit or an age word.
    """
    if stage is None or (isinstance(stage, float) and math.isnan(stage)) or stage is pd.NA:
        return StageAge(math.nan, "unknown")
    text = normalise_stage(str(stage))
    if text in _UNKNOWN:
        return StageAge(math.nan, "unknown")
    offset = age_80_and_over - CENSOR_BOUND
    if m := _AND_OVER.match(text):
        return StageAge(float(m[1]) + offset, "and_over")
    if _CENTENARIAN.match(text):
        return StageAge(100.0 + offset, "and_over")
    if m := _YEARS.match(text):
        return StageAge(float(m[1]), "years")
    if m := _MONTHS.match(text):
        return StageAge(float(m[1]) / 12.0, "months")
    if m := _RANGE.match(text):
        return StageAge(_middle(float(m[1]), float(m[2]), 1.0, stage), "range")
    if m := _PAREN_RANGE.match(text):
        unit = m[3]
        if unit.startswith("day"):
            # days are a continuous span: the middle of [a, b] days
            low, high = float(m[1]), float(m[2])
            if high < low:
                raise InputError(_range_error(stage))
            return StageAge((low + high) / 2.0 / _DAYS_PER_YEAR, "range")
        step = _UNIT_YEARS[unit]
        return StageAge(_middle(float(m[1]), float(m[2]), 1.0, stage) * step, "range")
    if m := _DECADE.match(text):
        return StageAge(10.0 * (_ORDINALS[m[1]] - 1) + 5.0, "decade")
    if _AGE_WORDS.search(text):
        raise InputError(
            f"development_stage {str(stage)!r}: cannot read an age from this label; expected "
            "e.g. '63-year-old stage', '80 year-old and over stage', '60-79 year-old stage', "
            "'third decade stage' or 'unknown'"
        )
    return StageAge(math.nan, "no_age")


def parse_age(stage: object, *, age_80_and_over: float) -> float:
    """Return the age in years of one ``development_stage`` label.

    Parameters
    ----------
    stage
        The label, e.g. ``"63-year-old human stage"``.
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors.

    Returns
    -------
    float
        Age in years; NaN when the label carries no age (``unknown``, ``adult stage``).

    Raises
    ------
    InputError
        If the label looks like an age but is not a known form.

    Examples
    --------
    >>> parse_age("63-year-old human stage", age_80_and_over=80.0)
    63.0
    >>> parse_age("80 year-old and over stage", age_80_and_over=85.0)
    85.0
    """
    return read_stage(stage, age_80_and_over=age_80_and_over).age


def parse_stages(values: pd.Series, *, age_80_and_over: float) -> pd.DataFrame:
    """Read many ``development_stage`` labels (each distinct label parsed once).

    Parameters
    ----------
    values
        Labels (strings or categorical; missing values count as unknown).
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors.

    Returns
    -------
    pandas.DataFrame
        Same index as ``values``; columns ``age`` (float, years) and ``form``.

    Raises
    ------
    InputError
        If any label looks like an age but is not a known form.
    """
    series = pd.Series(values, copy=False)
    codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
    parsed = [read_stage(u, age_80_and_over=age_80_and_over) for u in uniques]
    parsed.append(StageAge(math.nan, "unknown"))  # code -1: a missing label
    ages = np.array([p.age for p in parsed], dtype=np.float64)
    forms = np.array([p.form for p in parsed], dtype=object)
    return pd.DataFrame({"age": ages[codes], "form": forms[codes]}, index=series.index)


def age_table(obs: pd.DataFrame, *, age_80_and_over: float) -> pd.DataFrame:
    """Return each row's age in years and the form it was read from.

    A numeric ``age`` column, when present, is used as is (years; missing values
    stay NaN; form ``age_column``, or ``unknown`` where the value is missing).
    Otherwise ``development_stage`` labels are parsed with :func:`parse_stages`.

    Parameters
    ----------
    obs
        Table with an ``age`` or a ``development_stage`` column.
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors.

    Returns
    -------
    pandas.DataFrame
        Columns ``age`` (float, years) and ``form``; same index as ``obs``.

    Raises
    ------
    InputError
        If neither column exists, ``age`` holds non-numbers or negative values,
        or a label looks like an age but is not a known form.
    """
    if "age" in obs.columns:
        raw = obs["age"]
        if isinstance(raw.dtype, pd.CategoricalDtype):
            raw = raw.astype(object)
        ages = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        bad = ages.isna() & raw.notna()
        if bad.any():
            raise InputError(
                f"obs column 'age': expected numbers (years), got {raw[bad].iloc[0]!r}"
            )
        if (ages < 0).any():
            first = float(ages[ages < 0].iloc[0])
            raise InputError(f"obs column 'age': expected ages >= 0 years, got {first!r}")
        forms = np.where(ages.isna(), "unknown", "age_column").astype(object)
        return pd.DataFrame({"age": ages.to_numpy(), "form": forms}, index=obs.index)
    if "development_stage" not in obs.columns:
        raise InputError("obs: expected an 'age' or a 'development_stage' column, found neither")
    return parse_stages(obs["development_stage"], age_80_and_over=age_80_and_over)


def count_forms(forms: pd.Series) -> dict[str, int]:
    """Count labels per form, listing every form of :data:`FORMS` (zeros included).

    Parameters
    ----------
    forms
        The ``form`` column of :func:`parse_stages` or :func:`age_table`.

    Returns
    -------
    dict
        Form name to count, in the order of :data:`FORMS`.
    """
    counts = pd.Series(forms).value_counts()
    return {form: int(counts.get(form, 0)) for form in FORMS}


def _middle(low: float, high: float, step: float, stage: object) -> float:
    """Middle of integer ages ``low`` to ``high`` taken as ``[low, high + step)``."""
    if high < low:
        raise InputError(_range_error(stage))
    return (low + high + step) / 2.0


def _range_error(stage: object) -> str:
    return f"development_stage {str(stage)!r}: age range ends before it starts"


#: Donor-level columns carried onto every pseudobulk sample.
DONOR_COLUMNS = ("sex", "development_stage")


def donor_table(
    obs: pd.DataFrame, *, donor_key: str = "donor_id", age_80_and_over: float, source: str = ""
) -> pd.DataFrame:
    """Return one row per donor: ``sex``, ``development_stage``, ``age`` and ``age_form``.

    Parameters
    ----------
    obs
        Cell table with ``donor_key``, ``sex`` and ``development_stage`` (or a
        numeric ``age``) columns.
    donor_key
        Donor column.
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors
        (see :mod:`immune_aging.analysis.age`).
    source
        The file ``obs`` came from: when given, messages name it, and a table
        without any donor of known age is refused (the de and predict stages need
        ages).

    Returns
    -------
    pandas.DataFrame
        Indexed by donor id (sorted, strings); ``age`` in years, NaN when unknown.

    Raises
    ------
    InputError
        If a donor has more than one value of a donor-level column, or an age
        label cannot be read.
    """
    try:
        donors = _donor_table(obs, donor_key=donor_key, age_80_and_over=age_80_and_over)
    except InputError as exc:
        raise InputError(f"{source}: {exc}" if source else str(exc)) from None
    if source and donors["age"].isna().all():
        column = "age" if "age" in obs.columns else "development_stage"
        raise InputError(
            f"{source}: obs column {column!r} gives no donor a known age (all "
            f"{len(donors)} donors unknown); the de and predict stages need donor ages"
        )
    return donors


def _donor_table(obs: pd.DataFrame, *, donor_key: str, age_80_and_over: float) -> pd.DataFrame:
    columns = [c for c in (*DONOR_COLUMNS, "age") if c in obs.columns]
    table = obs[[donor_key, *columns]].copy()
    table[donor_key] = table[donor_key].astype(str)
    for col in columns:
        if isinstance(table[col].dtype, pd.CategoricalDtype):
            table[col] = table[col].astype(object)
        counts = table.groupby(donor_key, sort=True)[col].nunique(dropna=False)
        if (counts > 1).any():
            donor = counts.index[counts > 1][0]
            raise InputError(
                f"obs column {col!r}: donor {donor!r} has {counts[donor]} different values; "
                "expected one per donor"
            )
    donors = table.drop_duplicates(donor_key).set_index(donor_key).sort_index()
    donors.index.name = "donor_id"
    ages = age_table(donors, age_80_and_over=age_80_and_over)
    donors["age"] = ages["age"].astype(np.float64)
    donors["age_form"] = ages["form"].astype(str)
    for col in DONOR_COLUMNS:
        if col not in donors.columns:
            donors[col] = "unknown"
        donors[col] = donors[col].astype(str)
    return donors[[*DONOR_COLUMNS, "age", "age_form"]]


#: Sex label of donors whose sex is not recorded (also given to missing and empty values).
UNKNOWN_SEX = "unknown"


def sex_labels(values: Any) -> np.ndarray:
    """Normalise sex labels the same way for de and predict.

    Parameters
    ----------
    values
        Labels per sample (strings, categorical, with missing values).

    Returns
    -------
    ndarray
        Strings, stripped and lower-cased; missing, empty and ``"nan"`` values
        become :data:`UNKNOWN_SEX`.
    """
    series = pd.Series(values, dtype="object")
    labels = series.astype(str).str.strip().str.lower()
    missing = series.isna().to_numpy() | labels.isin(["", "nan", "none"]).to_numpy()
    return np.where(missing, UNKNOWN_SEX, labels.to_numpy()).astype(str)
