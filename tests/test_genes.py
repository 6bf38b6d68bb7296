"""Gene classes by symbol: mitochondrial, ribosomal, hemoglobin, immune receptor."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from immune_aging.analysis import genes


def flags(symbols):
    return genes.classify_genes(symbols)


@pytest.mark.parametrize(
    "symbol", ["HBA1", "HBA2", "HBB", "HBD", "HBE1", "HBG1", "HBG2", "HBM", "HBQ1", "HBZ"]
)
def test_hemoglobin_subunits_are_flagged(symbol):
    assert flags([symbol])["hb"].tolist() == [True]


@pytest.mark.parametrize("symbol", ["HBP1", "HBEGF", "HBS1L", "HBB-AS1", "HBAP1", "hbb"])
def test_non_globins_are_not_hemoglobin(symbol):
    assert flags([symbol])["hb"].tolist() == [False]


def test_seed_pattern_would_flag_hbegf():
    # why the explicit list: the seed's character class lets HBEGF through
    assert re.search(r"^HB[^(P)]", "HBEGF")
    assert not re.search(genes.HB_REGEX, "HBEGF")


def test_mitochondrial_ribosomal_and_receptor_rules():
    symbols = ["MT-CO1", "MT-ND4L", "MTOR", "RPS3", "RPL13A", "RPLP0", "RPSA", "RPS4Y1"]
    symbols += ["TRBV20-1", "TRAC", "IGKC", "IGHV1-2", "IGLL5", "TRIM22", "CD3E"]
    out = flags(symbols).set_axis(symbols)
    assert out.index[out["mt"]].tolist() == ["MT-CO1", "MT-ND4L"]
    assert out.index[out["ribo"]].tolist() == ["RPS3", "RPL13A", "RPLP0", "RPSA", "RPS4Y1"]
    assert out.index[out["immune_receptor"]].tolist() == ["TRBV20-1", "TRAC", "IGKC", "IGHV1-2"]
    assert not out.loc["CD3E"].any()


def test_series_index_is_kept_and_missing_symbols_never_match():
    symbols = pd.Series(["MT-CO1", None, np.nan, "HBB"], index=["E1", "E2", "E3", "E4"])
    out = flags(symbols)
    assert out.index.tolist() == ["E1", "E2", "E3", "E4"]
    assert out["mt"].tolist() == [True, False, False, False]
    assert out["hb"].tolist() == [False, False, False, True]
    assert list(out.columns) == ["mt", "ribo", "hb", "immune_receptor"]


def test_categorical_symbols_and_input_not_modified():
    symbols = pd.Series(pd.Categorical(["MT-CO1", "CD14", "MT-CO1"]))
    before = symbols.copy()
    assert flags(symbols)["mt"].tolist() == [True, False, True]
    pd.testing.assert_series_equal(symbols, before)


def test_match_symbols_searches_and_rejects_bad_patterns():
    assert genes.match_symbols(["ABC", "XABC"], regex="ABC").tolist() == [True, True]
    assert genes.match_symbols(["ABC", "XABC"], regex="^ABC").tolist() == [True, False]
    with pytest.raises(re.error):
        genes.match_symbols(["A"], regex="(")
