"""Check that an input dataset follows the CELLxGENE schema the pipeline needs.

The public API is small:

- :func:`validate_dataset` checks annotations and finds the raw counts;
- :func:`counts_location` only finds the raw counts;
- :func:`validated` opens an h5ad file backed and runs :func:`validate_dataset`.

The structure of a sparse matrix is checked by :mod:`immune_aging.count_checks`.

All of them work on a backed AnnData and read only ``obs``, ``var`` and a
deterministic sample of rows of ``X`` / ``raw.X``. Raw counts are recognised
by their values (finite, non-negative, integer-valued), and where they are
follows CELLxGENE's rule: when ``raw.X`` is present it holds the raw counts (and
``X`` normalised values), otherwise ``X`` holds them. ``raw.X`` is therefore
chosen whenever it holds counts, even when ``X`` is integer-valued too; ``X`` is
taken instead of a present ``raw.X`` only when ``raw.X`` fails the count check
and ``X`` passes it, with a warning naming the reason. Normalised values are
never taken for counts. Every problem raises
:class:`~immune_aging.errors.InputError` with one line naming the file and the
field.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from immune_aging.count_checks import check_csr_block, count_problem
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

#: obs columns every input must have.
REQUIRED_OBS = ("donor_id", "cell_type", "development_stage", "sex")
#: var column holding gene symbols (the var index holds Ensembl IDs).
SYMBOL_COLUMN = "feature_name"
#: Where raw counts live.
CountsLocation = Literal["X", "raw.X"]

#: Rows read per matrix check, spread over the file in ``_SAMPLE_BLOCKS`` blocks.
_SAMPLE_ROWS = 2000
_SAMPLE_BLOCKS = 10
#: Rows read at a time when a sample holds only zeros and the scan goes on.
_SCAN_ROWS = 10_000


def validate_dataset(adata: Any, path: str | os.PathLike[str]) -> CountsLocation:
    """Check an input dataset and return where its raw counts are.

    Checks, in order: the obs columns of :data:`REQUIRED_OBS`, ``var['feature_name']``,
    unique cell and gene names, no missing ``donor_id`` / ``cell_type``, at
    least two donors, and raw counts in ``X`` or ``raw.X``
    (:func:`counts_location`).

    Parameters
    ----------
    adata
        The dataset, in memory or backed (only a sample of rows is read).
    path
        The file it came from, named in error messages.

    Returns
    -------
    {"X", "raw.X"}
        Where the raw counts are.

    Raises
    ------
    InputError
        One line naming the file and what is wrong.
    """
    if adata.n_obs == 0:
        raise InputError(f"{path}: the dataset holds no cells")
    if adata.n_vars == 0:
        raise InputError(f"{path}: the dataset holds no genes")
    missing = [c for c in REQUIRED_OBS if c not in adata.obs.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        plural = "s" if len(missing) > 1 else ""
        raise InputError(
            f"{path}: obs column{plural} {names} missing (required: {', '.join(REQUIRED_OBS)})"
        )
    if SYMBOL_COLUMN not in adata.var.columns:
        raise InputError(f"{path}: var column {SYMBOL_COLUMN!r} (gene symbols) missing")
    _check_unique(adata.obs_names, f"{path}: obs names (cell IDs)")
    _check_unique(adata.var_names, f"{path}: var names (gene IDs)")
    for column in ("donor_id", "cell_type"):
        n_missing = int(pd.isna(adata.obs[column]).sum())
        if n_missing:
            raise InputError(f"{path}: obs column {column!r} has {n_missing} missing values")
    donors = pd.unique(adata.obs["donor_id"].astype(str))
    if len(donors) < 2:
        raise InputError(
            f"{path}: obs column 'donor_id' holds 1 donor ({donors[0]!r}); at least 2 are required"
        )
    return counts_location(adata, path)


def counts_location(adata: Any, path: str | os.PathLike[str]) -> CountsLocation:
    """Return where the raw counts of a dataset are: ``"X"`` or ``"raw.X"``.

    A matrix holds raw counts when a deterministic sample of its rows (about
    2000 rows in 10 blocks spread over the file; more when these hold only
    zeros) is finite, non-negative and integer-valued, and its sparse structure
    is sound. The rule is CELLxGENE's: when ``raw.X`` exists it holds the raw
    counts, so it is chosen whenever it passes, also when ``X`` is
    integer-valued too (logged); ``X`` is chosen when there is no ``raw.X``, or
    when ``raw.X`` fails and ``X`` passes (a warning names why ``raw.X`` was
    not used). ``raw.X`` needs genes that can be matched to symbols
    (``raw.var`` has ``feature_name`` or the same index as ``var``).

    Parameters
    ----------
    adata
        The dataset, in memory or backed.
    path
        The file it came from, named in error messages.

    Returns
    -------
    {"X", "raw.X"}
        Where the raw counts are.

    Raises
    ------
    InputError
        When neither ``X`` nor ``raw.X`` holds raw counts, or when a read of
        either fails (a damaged file).
    """
    raw = adata.raw
    if raw is None:
        x_problem = _count_problem(adata.X, adata.n_obs, path, "X")
        if x_problem is None:
            return "X"
        raise InputError(
            f"{path}: X holds {x_problem} and there is no raw.X: raw counts are required"
        )
    raw_problem = _count_problem(raw.X, adata.n_obs, path, "raw.X")
    x_problem = _count_problem(adata.X, adata.n_obs, path, "X")
    if raw_problem is not None and x_problem is not None:
        raise InputError(
            f"{path}: neither X nor raw.X holds raw counts (X: {x_problem}; "
            f"raw.X: {raw_problem}): raw counts are required"
        )
    if raw_problem is not None:
        log.warning(
            "%s: raw.X holds %s, so the raw counts are taken from X (CELLxGENE keeps them "
            "in raw.X when it exists)",
            path,
            raw_problem,
        )
        return "X"
    if SYMBOL_COLUMN not in raw.var.columns and not raw.var_names.equals(adata.var_names):
        raise InputError(
            f"{path}: raw.var has no {SYMBOL_COLUMN!r} column and its genes differ from var"
        )
    if x_problem is None:
        log.info(
            "%s: X and raw.X both hold integer values; raw counts are taken from raw.X "
            "(CELLxGENE's rule: raw.X holds the raw counts when present)",
            path,
        )
    return "raw.X"


@contextlib.contextmanager
def validated(path: str | os.PathLike[str]) -> Iterator[tuple[Any, CountsLocation]]:
    """Open an h5ad file read-only backed and validate it; close it after the block.

    Parameters
    ----------
    path
        The h5ad file.

    Yields
    ------
    tuple
        ``(adata, location)``: the backed AnnData and where its raw counts are.

    Raises
    ------
    InputError
        When the file is missing, is not an h5ad file, or fails
        :func:`validate_dataset`.
    """
    from immune_aging import io

    adata = io.read_h5ad(Path(path), backed=True)
    try:
        yield adata, validate_dataset(adata, path)
    finally:
        adata.file.close()


# --------------------------------------------------------------------------- helpers


def _check_unique(names: pd.Index, what: str) -> None:
    if names.is_unique:
        return
    counts = names.value_counts()
    first = names[names.duplicated()][0]
    raise InputError(f"{what} are not unique: {first!r} occurs {int(counts[first])} times")


def _sample_starts(n_rows: int) -> list[tuple[int, int]]:
    """Row ranges of the deterministic sample: blocks spread evenly over the rows."""
    if n_rows <= _SAMPLE_ROWS:
        return [(0, n_rows)]
    size = math.ceil(_SAMPLE_ROWS / _SAMPLE_BLOCKS)
    starts = np.linspace(0, n_rows - size, _SAMPLE_BLOCKS).astype(int)
    return [(int(a), int(a) + size) for a in starts]


def _values(block: Any) -> np.ndarray:
    """Return the stored values of a matrix block (sparse: the explicit entries)."""
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block).ravel()


def _count_problem(matrix: Any, n_rows: int, path: Any, what: str) -> str | None:
    """Describe why ``matrix`` does not hold raw counts, or return None when it does."""
    from immune_aging.guard import reading

    if matrix is None:
        return "no values"
    seen_nonzero = False
    with reading(path, what):
        for a, b in _sample_starts(n_rows):
            problem, nonzero = _block_problem(matrix[a:b], path, what)
            if problem:
                return problem
            seen_nonzero |= nonzero
        for a in range(0, n_rows, _SCAN_ROWS):  # a sample of zeros proves nothing: read on
            if seen_nonzero:
                break
            problem, seen_nonzero = _block_problem(matrix[a : a + _SCAN_ROWS], path, what)
            if problem:
                return problem
    if not seen_nonzero:
        return "only zeros"
    return None


def _block_problem(block: Any, path: Any, what: str) -> tuple[str | None, bool]:
    if sp.issparse(block) and block.format == "csr":
        check_csr_block(block.indptr, block.indices, block.shape[1], where=f"{path}: {what}")
    values = _values(block)
    problem = count_problem(values)
    if problem is not None:
        return problem, True
    return None, bool(values.size and (values != 0).any())
