"""Checks that stored matrices hold raw counts and are well-formed.

- :func:`count_problem` and :func:`check_counts` refuse stored values that are
  not raw counts (negative, fractional, not finite, not numbers);
- :func:`check_csr_indptr` and :func:`check_csr_block` refuse a corrupt sparse
  matrix (row pointer, column indices) before it is used;
- :func:`validate_pseudobulk` checks that a pseudobulk file holds what the ``de``
  and ``predict`` stages read.

Every fault raises :class:`~immune_aging.errors.InputError` with one line naming
the file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.errors import InputError

# --------------------------------------------------------------------------- values


def count_problem(values: np.ndarray) -> str | None:
    """Describe why stored matrix values are not raw counts, or return None when they are.

    Raw counts are finite, non-negative and integer-valued (any numeric dtype).

    Parameters
    ----------
    values
        The stored values (a sparse matrix's ``data``, or dense values).

    Returns
    -------
    str or None
        E.g. ``"non-integer values (e.g. 2.5)"``, ``"negative values (e.g. -1)"``,
        ``"non-finite values (e.g. nan)"`` or ``"values of type <U3"``.
    """
    values = np.asarray(values)
    if values.size == 0:
        return None
    if values.dtype.kind in "iu":
        negative = values[values < 0]
        return f"negative values (e.g. {negative[0]:g})" if negative.size else None
    if values.dtype.kind != "f":
        return f"values of type {values.dtype}"
    with np.errstate(invalid="ignore"):  # a signalling NaN (damaged file) would warn
        for what, bad in (
            ("non-finite", ~np.isfinite(values)),
            ("non-integer", values != np.floor(values)),
            ("negative", values < 0),
        ):
            if bad.any():
                return f"{what} values (e.g. {values[bad][0]:.4g})"
    return None


def check_counts(values: np.ndarray, path: str | os.PathLike[str], location: str) -> None:
    """Refuse stored matrix values that are not raw counts (see :func:`count_problem`).

    Parameters
    ----------
    values
        The stored values.
    path
        The file they came from.
    location
        Where in the file (``"X"``, ``"raw.X"``).

    Raises
    ------
    InputError
        ``<path>: <location> holds non-integer values (e.g. 2.5): raw counts are
        required`` and the like.
    """
    problem = count_problem(values)
    if problem is not None:
        raise InputError(f"{path}: {location} holds {problem}: raw counts are required")


# --------------------------------------------------------------------------- structure


def check_csr_indptr(indptr: Any, n_rows: int, nnz: int, *, where: str) -> None:
    """Check the row pointer of a CSR matrix (or the column pointer of a CSC one).

    Parameters
    ----------
    indptr
        The pointer array (1-D, integers).
    n_rows
        Rows of the matrix (columns for CSC).
    nnz
        Stored entries (the length of ``data`` and ``indices``).
    where
        Prefix of the message (file and matrix).

    Raises
    ------
    InputError
        ``<where>: corrupt sparse matrix (...)`` unless ``indptr`` has
        ``n_rows + 1`` entries, starts at 0, never decreases and ends at ``nnz``.
    """
    indptr = np.asarray(indptr)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu":
        raise InputError(f"{where}: corrupt sparse matrix (indptr is not a 1-D integer array)")
    if len(indptr) != n_rows + 1:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr has {len(indptr)} entries for "
            f"{n_rows} rows, expected {n_rows + 1})"
        )
    if int(indptr[0]) != 0:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr starts at {int(indptr[0])}, not 0)"
        )
    steps = np.diff(indptr.astype(np.int64, copy=False))
    if steps.size and int(steps.min()) < 0:
        row = int(np.argmax(steps < 0))
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr decreases at row {row}: "
            f"{int(indptr[row])} then {int(indptr[row + 1])})"
        )
    if int(indptr[-1]) != nnz:
        raise InputError(
            f"{where}: corrupt sparse matrix (indptr ends at {int(indptr[-1])}, but there are "
            f"{nnz} stored entries)"
        )


def check_csr_block(indptr: Any, indices: Any, n_cols: int, *, where: str) -> None:
    """Check a block of CSR rows: its row pointer and that column indices are in range.

    ``indptr`` is relative to the block (starts at 0). The check is two passes of
    min/max over the block, cheap next to reading it.

    Parameters
    ----------
    indptr
        Row pointer of the block.
    indices
        Column indices of its stored entries.
    n_cols
        Columns of the matrix.
    where
        Prefix of the message (file and matrix).

    Raises
    ------
    InputError
        ``<where>: corrupt sparse matrix (...)`` naming the first defect.
    """
    indices = np.asarray(indices)
    check_csr_indptr(indptr, len(indptr) - 1, len(indices), where=where)
    if indices.size == 0:
        return
    if indices.dtype.kind not in "iu":
        raise InputError(f"{where}: corrupt sparse matrix (column indices are not integers)")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= n_cols:
        bad = low if low < 0 else high
        raise InputError(
            f"{where}: corrupt sparse matrix (column index {bad} outside 0..{n_cols - 1})"
        )


# --------------------------------------------------------------------------- pseudobulk

#: obs columns of ``pseudobulk.h5ad`` that the de and predict stages read.
SAMPLE_OBS = ("cell_type", "donor_id", "sex", "age")


def validate_pseudobulk(adata: Any, path: str | os.PathLike[str]) -> None:
    """Check that a pseudobulk AnnData holds what the de and predict stages read.

    Parameters
    ----------
    adata
        Pseudobulk samples: obs ``cell_type, donor_id, sex, age``, var
        ``feature_name``, ``X`` summed raw counts.
    path
        The file, named in messages.

    Raises
    ------
    InputError
        Naming the missing column, the non-numeric age, duplicated samples or
        values of ``X`` that are not counts.
    """
    for col in SAMPLE_OBS:
        if col not in adata.obs.columns:
            raise InputError(f"{path}: obs column {col!r} missing")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{path}: var column 'feature_name' missing")
    if not pd.api.types.is_numeric_dtype(adata.obs["age"]):
        raise InputError(f"{path}: obs column 'age' must be numeric years (NaN when unknown)")
    pairs = adata.obs[["cell_type", "donor_id"]].astype(str)
    if pairs.duplicated().any():
        ct, donor = pairs[pairs.duplicated()].iloc[0]
        raise InputError(f"{path}: more than one sample for cell type {ct!r} and donor {donor!r}")
    values = adata.X.data if sparse.issparse(adata.X) else np.asarray(adata.X)
    check_counts(values, path, "X")
