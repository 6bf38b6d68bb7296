"""Gene classes recognised by their HGNC symbol (``var['feature_name']``).

CELLxGENE files index genes by Ensembl ID, so every class is matched on the
symbol column, never on ``var_names``. The rules:

``mt``
    Mitochondrially encoded genes: ``^MT-`` (MT-CO1, MT-ND4, ...).
``ribo``
    Cytosolic ribosomal proteins: ``^RP[SL]`` (RPS3, RPL13A, RPLP0, RPSA, and the
    Y-linked RPS4Y1). The prefix also catches a few non-ribosomal kinases
    (RPS6KA1, RPS6KB1, ...); this is the usual scanpy/sc-best-practices rule and it
    is kept so that percentages agree with published QC.
``hb``
    Hemoglobin subunits, an explicit list: ``^HB(A1|A2|B|D|E1|G1|G2|M|Q1|Z)$``.
    The seed pattern ``^HB[^(P)]`` (a character class excluding ``(``, ``P`` and
    ``)``) correctly skips HBP1 (a transcription factor) but matches HBEGF
    (heparin-binding EGF-like growth factor, expressed by monocytes) and HBS1L,
    neither of which is a globin; counting them as hemoglobin would flag healthy
    monocytes as red-cell contaminated.
``immune_receptor``
    Rearranging immunoglobulin and T-cell receptor segments:
    ``^(IG[HKL]|TR[ABDG])[VDJC]`` (IGHV1-2, IGKC, TRBV20-1, TRAC, ...).
    Such genes vary by clonotype, not by cell state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

MT_REGEX = r"^MT-"
RIBO_REGEX = r"^RP[SL]"
HB_REGEX = r"^HB(A1|A2|B|D|E1|G1|G2|M|Q1|Z)$"
IMMUNE_RECEPTOR_REGEX = r"^(IG[HKL]|TR[ABDG])[VDJC]"

#: Gene class name to the regular expression matched against the symbol.
GENE_CLASSES: dict[str, str] = {
    "mt": MT_REGEX,
    "ribo": RIBO_REGEX,
    "hb": HB_REGEX,
    "immune_receptor": IMMUNE_RECEPTOR_REGEX,
}


def _as_symbols(symbols: Iterable[object]) -> pd.Series:
    values = pd.Series(list(symbols) if not isinstance(symbols, pd.Series) else symbols)
    return values.astype("object").where(values.notna(), "").astype(str)


def match_symbols(symbols: Iterable[object], *, regex: str) -> np.ndarray:
    """Return which gene symbols match a regular expression.

    The pattern is searched anywhere in each symbol (``re.search``: anchor it
    with ``^`` to match prefixes only) and is case-sensitive; missing symbols
    never match.

    Parameters
    ----------
    symbols
        Gene symbols, e.g. ``adata.var['feature_name']`` (a Series, Index or list).
    regex
        A Python regular expression.

    Returns
    -------
    numpy.ndarray
        Boolean mask, one entry per symbol, in input order.

    Raises
    ------
    re.error
        If ``regex`` is not a valid regular expression.
    """
    pattern = re.compile(regex)
    values = _as_symbols(symbols)
    return np.fromiter((bool(pattern.search(s)) for s in values), dtype=bool, count=len(values))


def classify_genes(symbols: Iterable[object]) -> pd.DataFrame:
    """Flag mitochondrial, ribosomal, hemoglobin and immune-receptor genes.

    Parameters
    ----------
    symbols
        Gene symbols (``var['feature_name']``). When a Series is given its index
        is kept (normally the Ensembl IDs of ``var_names``).

    Returns
    -------
    pandas.DataFrame
        One boolean column per class of :data:`GENE_CLASSES` (``mt``, ``ribo``,
        ``hb``, ``immune_receptor``), one row per gene.

    Examples
    --------
    >>> classify_genes(["MT-CO1", "HBB", "HBEGF", "CD3E"])["hb"].tolist()
    [False, True, False, False]
    """
    index = symbols.index if isinstance(symbols, pd.Series) else None
    values = _as_symbols(symbols)
    flags = {name: match_symbols(values, regex=rx) for name, rx in GENE_CLASSES.items()}
    out = pd.DataFrame(flags)
    if index is not None:
        out.index = index
    return out
