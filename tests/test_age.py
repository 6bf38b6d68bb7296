import math

import numpy as np
import pandas as pd
import pytest

from immune_aging.analysis.age import (
    FORMS,
    age_table,
    count_forms,
    normalise_stage,
    parse_age,
    parse_stages,
    read_stage,
)
from immune_aging.errors import InputError

OVER = 85.0  # a value of age_80_and_over different from 80 shows where it is used

KNOWN = [
    # (label, age, form)
    ("63-year-old stage", 63.0, "years"),
    ("63-year-old human stage", 63.0, "years"),
    ("19-year-old human stage", 19.0, "years"),
    ("100-year-old stage", 100.0, "years"),
    (" 63-Year-Old  Human Stage ", 63.0, "years"),
    ("63-YEAR-OLD STAGE", 63.0, "years"),
    ("63 year old stage", 63.0, "years"),
    ("63-year-old", 63.0, "years"),
    ("63 years", 63.0, "years"),
    ("63", 63.0, "years"),
    ("63.5-year-old stage", 63.5, "years"),
    ("80-year-old stage", 80.0, "years"),
    ("8-month-old stage", 8 / 12, "months"),
    ("18-month-old human stage", 1.5, "months"),
    ("80 year-old and over stage", OVER, "and_over"),
    ("80 year-old and over human stage", OVER, "and_over"),
    ("80-year-old and over stage", OVER, "and_over"),
    ("90 year-old and over stage", 90.0 + OVER - 80.0, "and_over"),
    ("centenarian stage", 100.0 + OVER - 80.0, "and_over"),
    ("60-79 year-old stage", 70.0, "range"),
    ("60-79 year-old human stage", 70.0, "range"),
    ("15-19 year-old", 17.5, "range"),
    ("2-4 year-old child stage", 3.5, "range"),
    ("child stage (1-4 yo)", 3.0, "range"),
    ("juvenile stage (5-14 yo)", 10.0, "range"),
    ("nursing stage (0-11 months)", 0.5, "range"),
    ("newborn stage (0-28 days)", 14.0 / 365.25, "range"),
    ("first decade human stage", 5.0, "decade"),
    ("third decade human stage", 25.0, "decade"),
    ("third decade stage", 25.0, "decade"),
    ("sixth decade human stage", 55.0, "decade"),
    ("ninth decade stage", 85.0, "decade"),
    ("eleventh decade stage", 105.0, "decade"),
]

NO_AGE = [
    ("unknown", "unknown"),
    ("Unknown", "unknown"),
    ("", "unknown"),
    ("   ", "unknown"),
    ("NA", "unknown"),
    ("n/a", "unknown"),
    ("nan", "unknown"),
    ("not reported", "unknown"),
    (None, "unknown"),
    (float("nan"), "unknown"),
    (pd.NA, "unknown"),
    ("human adult stage", "no_age"),
    ("adult stage", "no_age"),
    ("young adult stage", "no_age"),
    ("prime adult stage", "no_age"),
    ("middle aged stage", "no_age"),
    ("late adult stage", "no_age"),
    ("human aged stage", "no_age"),
    ("human late adulthood stage", "no_age"),
    ("postnatal stage", "no_age"),
    ("life cycle", "no_age"),
]

EXPECTED = (
    "expected e.g. '63-year-old stage', '80 year-old and over stage', "
    "'60-79 year-old stage', 'third decade stage' or 'unknown'"
)

BAD = [
    "63 yrs",
    "Carnegie stage 01",
    "10th week post-fertilization stage",
    "eighth LMP month stage",
    "sixty-three year old stage",
    "twelfth decade stage",
    "about 63",
    "63-year-old stage or so",
    "elderly (70+)",
]


@pytest.mark.parametrize(("label", "age", "form"), KNOWN)
def test_forms_carrying_an_age(label, age, form):
    got = read_stage(label, age_80_and_over=OVER)
    assert got.form == form
    assert got.age == pytest.approx(age)
    assert parse_age(label, age_80_and_over=OVER) == pytest.approx(age)


@pytest.mark.parametrize(("label", "form"), NO_AGE)
def test_forms_without_an_age_give_nan(label, form):
    got = read_stage(label, age_80_and_over=OVER)
    assert got.form == form
    assert math.isnan(got.age)
    assert math.isnan(parse_age(label, age_80_and_over=OVER))


@pytest.mark.parametrize("label", BAD)
def test_labels_that_look_like_ages_but_do_not_parse_raise(label):
    with pytest.raises(InputError) as err:
        parse_age(label, age_80_and_over=OVER)
    assert str(err.value) == (
        f"development_stage {label!r}: cannot read an age from this label; {EXPECTED}"
    )


def test_reversed_range_raises():
    with pytest.raises(InputError) as err:
        parse_age("79-60 year-old stage", age_80_and_over=80.0)
    assert (
        str(err.value)
        == "development_stage '79-60 year-old stage': age range ends before it starts"
    )


def test_reversed_day_range_raises():
    with pytest.raises(InputError, match="age range ends before it starts"):
        parse_age("newborn stage (28-0 days)", age_80_and_over=80.0)


def test_80_and_over_follows_the_parameter():
    assert parse_age("80 year-old and over stage", age_80_and_over=80.0) == 80.0
    assert parse_age("80 year-old and over stage", age_80_and_over=90.0) == 90.0


def test_normalise_stage():
    assert normalise_stage("  63-Year-Old   HUMAN stage ") == "63-year-old stage"
    assert normalise_stage("humane stage") == "humane stage"  # whole word only


def test_parse_stages_vectorised_keeps_index_and_order():
    values = pd.Series(
        pd.Categorical(
            [
                "63-year-old stage",
                "unknown",
                "80 year-old and over stage",
                None,
                "63-year-old stage",
            ]
        ),
        index=list("abcde"),
    )
    got = parse_stages(values, age_80_and_over=OVER)
    assert list(got.index) == list("abcde")
    np.testing.assert_array_equal(got["age"].to_numpy(), [63.0, np.nan, OVER, np.nan, 63.0])
    assert got["form"].tolist() == ["years", "unknown", "and_over", "unknown", "years"]


def test_parse_stages_raises_on_a_bad_label_among_good_ones():
    values = pd.Series(["63-year-old stage", "63 yrs"])
    with pytest.raises(InputError, match="'63 yrs'"):
        parse_stages(values, age_80_and_over=OVER)


def test_age_table_parses_development_stage():
    obs = pd.DataFrame(
        {"development_stage": ["63-year-old human stage", "unknown", "third decade human stage"]},
        index=["c1", "c2", "c3"],
    )
    before = obs.copy()
    ages = age_table(obs, age_80_and_over=OVER)["age"]
    assert ages.name == "age"
    assert list(ages.index) == ["c1", "c2", "c3"]
    np.testing.assert_array_equal(ages.to_numpy(), [63.0, np.nan, 25.0])
    pd.testing.assert_frame_equal(obs, before)


def test_age_table_prefers_a_numeric_age_column():
    obs = pd.DataFrame(
        {"age": [41, np.nan, 90.5], "development_stage": ["x", "y", "z"]}, index=list("abc")
    )
    got = age_table(obs, age_80_and_over=OVER)
    np.testing.assert_array_equal(got["age"].to_numpy(), [41.0, np.nan, 90.5])
    assert got["form"].tolist() == ["age_column", "unknown", "age_column"]


def test_age_table_numeric_strings_in_age_column():
    obs = pd.DataFrame({"age": pd.Categorical(["41", "55"])})
    np.testing.assert_array_equal(age_table(obs, age_80_and_over=OVER)["age"].to_numpy(), [41, 55])


def test_age_table_rejects_a_non_numeric_age_column():
    obs = pd.DataFrame({"age": ["41", "old"]})
    with pytest.raises(InputError) as err:
        age_table(obs, age_80_and_over=OVER)
    assert str(err.value) == "obs column 'age': expected numbers (years), got 'old'"


def test_age_table_rejects_negative_ages():
    obs = pd.DataFrame({"age": [41.0, -3.0]})
    with pytest.raises(InputError) as err:
        age_table(obs, age_80_and_over=OVER)
    assert str(err.value) == "obs column 'age': expected ages >= 0 years, got -3.0"


def test_age_table_needs_a_column():
    with pytest.raises(InputError) as err:
        age_table(pd.DataFrame({"sex": ["male"]}), age_80_and_over=OVER)
    assert str(err.value) == (
        "obs: expected an 'age' or a 'development_stage' column, found neither"
    )


def test_count_forms_lists_every_form():
    counts = count_forms(pd.Series(["years", "years", "unknown"]))
    assert list(counts) == list(FORMS)
    assert counts["years"] == 2
    assert counts["unknown"] == 1
    assert counts["and_over"] == 0
