"""The annotations of an input dataset: its cells and the genes of its raw counts.

- :func:`read_annotations` validates an input h5ad (backed: the counts stay in the
  file) and returns its cells' ``obs``, the gene table matching the columns of its
  raw counts, and where those counts are;
- :func:`gene_table` returns the gene annotations matching the counts' columns
  (``var``, or ``raw.var`` completed with ``var``'s symbols).

Every fault raises :class:`~immune_aging.errors.InputError` with one line naming
the file.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from immune_aging.errors import InputError
from immune_aging.validate import validated

log = logging.getLogger(__name__)


def read_annotations(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Validate an input h5ad and read its cell annotations and gene table.

    The file is opened backed: only ``obs`` and ``var`` (or ``raw.var``) are read
    into memory.

    Parameters
    ----------
    path
        The input h5ad (CELLxGENE schema).

    Returns
    -------
    tuple
        ``(obs, var, location)``: the cells' annotations, the genes of the raw
        counts (:func:`gene_table`) and where the raw counts are (``"X"`` or
        ``"raw.X"``).

    Raises
    ------
    InputError
        If the dataset fails :func:`~immune_aging.validate.validated` or its
        gene table cannot be made.
    """
    with validated(path) as (backed, location):
        obs = backed.obs.copy()
        var = gene_table(backed, location, path).copy()
    log.info("%s: %d cells x %d genes, raw counts in %s", path, len(obs), len(var), location)
    return obs, var, location


def gene_table(adata: Any, location: str, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Return the gene annotations matching the columns of the raw counts.

    Parameters
    ----------
    adata
        The dataset (backed is fine).
    location
        ``"X"`` or ``"raw.X"``.
    path
        The file, for messages.

    Returns
    -------
    pandas.DataFrame
        ``var`` (or ``raw.var``, with ``feature_name`` taken from ``var`` when it
        has none and the genes are the same).

    Raises
    ------
    InputError
        If ``raw.var`` has no symbols and its genes differ from ``var``.
    """
    if location == "X":
        return adata.var
    raw_var = adata.raw.var
    if "feature_name" in raw_var.columns:
        return raw_var
    if raw_var.index.equals(adata.var.index):
        return raw_var.assign(feature_name=adata.var["feature_name"].to_numpy())
    raise InputError(f"{path}: raw.var has no 'feature_name' column and its genes differ from var")
