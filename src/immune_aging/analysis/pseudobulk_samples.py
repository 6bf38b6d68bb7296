"""From the kept cells to the pseudobulk samples (stage ``pseudobulk``).

- :func:`cells` checks and returns the cells' annotations the samples are built
  from;
- :func:`donor_metadata` returns each donor's metadata carried onto its samples:
  sex, development stage, the age read from it
  (:func:`immune_aging.analysis.age.donor_table`) under the censored-age rule
  (:func:`immune_aging.analysis.pseudobulk.censor_rule`), and the 10x pool of most
  of the donor's cells when the pool column is known
  (:func:`immune_aging.analysis.pseudobulk.donor_pools`);
- :func:`sum_batch` sums the counts of a batch of whole donors per (cell type,
  donor), and :func:`build` adds up the batches' sums and builds the samples
  (:func:`immune_aging.analysis.pseudobulk.make_pseudobulk`), refusing an empty
  result.

Messages name the file the cells came from (``source``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.analysis import age, pseudobulk
from immune_aging.errors import InputError

#: Cell columns an age is read from, in the order they are carried.
AGE_COLUMNS = ("development_stage", "age")
#: Cell columns that must have no missing value.
NOT_MISSING = ("donor_id", "cell_type")
#: Stored values of a batch's counts summed at a time (:func:`sum_batch`).
SUM_VALUES = 1 << 23


def cells(obs: pd.DataFrame, pool_key: str | None, *, source: str) -> pd.DataFrame:
    """Check the cells' annotations and return those the samples are built from.

    Parameters
    ----------
    obs
        Annotations of the cells (the ``filter`` stage's selection).
    pool_key
        The 10x pool column (``params.yaml: pseudobulk.pool_key``), or None.
    source
        The file ``obs`` came from, named in messages.

    Returns
    -------
    pandas.DataFrame
        A copy of :data:`~immune_aging.analysis.pseudobulk.CELL_COLUMNS`, the
        columns of :data:`AGE_COLUMNS` present, and ``pool_key`` when it names a
        column.

    Raises
    ------
    InputError
        ``<source>: obs column 'donor_id' missing`` (a column of ``CELL_COLUMNS``;
        ``development_stage``, unless a numeric ``age`` is there) or ``... has
        missing values`` (:data:`NOT_MISSING`).
    """
    age_column = "age" if "age" in obs.columns else "development_stage"
    for column in pseudobulk.CELL_COLUMNS:
        if column not in obs.columns:
            raise InputError(f"{source}: obs column {column!r} missing")
    if age_column not in obs.columns:
        raise InputError(f"{source}: obs column {age_column!r} missing (or a numeric 'age')")
    for column in NOT_MISSING:
        if obs[column].isna().any():
            raise InputError(f"{source}: obs column {column!r} has missing values")
    ages = [c for c in AGE_COLUMNS if c in obs.columns]
    pool = [pool_key] if pool_key in obs.columns else []
    return obs[[*pseudobulk.CELL_COLUMNS, *ages, *pool]].copy()


def donor_metadata(
    obs: pd.DataFrame,
    *,
    age_80_and_over: float,
    censored_age: str,
    pool_key: str | None,
    source: str,
) -> tuple[pd.DataFrame, int]:
    """Return each donor's metadata, carried onto its samples.

    Parameters
    ----------
    obs
        The kept cells (:func:`cells`).
    age_80_and_over
        Age in years given to ``80 year-old and over`` donors.
    censored_age
        The rule for those donors (:func:`~immune_aging.analysis.pseudobulk.censor_rule`).
    pool_key
        The 10x pool column, or None.
    source
        The file ``obs`` came from, named in messages.

    Returns
    -------
    donors : pandas.DataFrame
        :func:`~immune_aging.analysis.age.donor_table` after the censored-age rule,
        with ``pool`` when the pool column is known.
    n_split : int
        Donors whose cells lie in more than one pool.

    Raises
    ------
    InputError
        As :func:`~immune_aging.analysis.age.donor_table`.
    """
    donors = age.donor_table(obs, age_80_and_over=age_80_and_over, source=source)
    donors = pseudobulk.censor_rule(donors, censored_age)
    pools, n_split = pseudobulk.donor_pools(obs, pool_key)
    if pools is not None:
        donors["pool"] = pools.reindex(donors.index).to_numpy()
    return donors, n_split


def sum_batch(
    positions: np.ndarray,
    counts: sparse.csr_matrix,
    obs: pd.DataFrame,
    *,
    var: pd.DataFrame,
    max_values: int | None = None,
) -> ad.AnnData:
    """Sum the counts of one batch of cells per (cell type, donor).

    The function of one batch of :func:`immune_aging.batches.map_batches` (with
    ``var`` bound by :func:`functools.partial`): it runs in the stage's process or
    in a Dask job. The batch is summed :data:`SUM_VALUES` stored values at a time,
    so that the float64 copy :func:`~immune_aging.analysis.pseudobulk.sum_counts`
    makes of what it sums stays small; sums of integer counts in float64 are exact,
    so the result does not depend on it.

    Parameters
    ----------
    positions
        Positions of the batch's cells (unused: ``obs`` holds their rows).
    counts
        Their raw counts (cells x ``var``).
    obs
        Their ``cell_type`` and ``donor_id``.
    var
        The genes, with ``feature_name``.
    max_values
        Stored values summed at a time (None: :data:`SUM_VALUES`).

    Returns
    -------
    anndata.AnnData
        :func:`~immune_aging.analysis.pseudobulk.combine_sums` of the batch's
        sums; ``var`` is ``feature_name``.
    """
    counts = sparse.csr_matrix(counts)
    genes = var[["feature_name"]]
    chunks = _row_chunks(counts.indptr, SUM_VALUES if max_values is None else max_values)
    parts = (
        pseudobulk.sum_counts(ad.AnnData(X=counts[lo:hi], obs=obs.iloc[lo:hi], var=genes))
        for lo, hi in chunks
    )
    return pseudobulk.combine_sums(parts)


def batch_work(
    kept: pd.DataFrame, var: pd.DataFrame
) -> tuple[Callable[..., ad.AnnData], np.ndarray, Callable[[np.ndarray], pd.DataFrame]]:
    """Return what summing the kept cells a batch of whole donors at a time needs.

    The arguments of :func:`immune_aging.batches.map_batches`.

    Parameters
    ----------
    kept
        The kept cells (:func:`cells`), with ``cell_type`` and ``donor_id``.
    var
        The genes of the counts, with ``feature_name``.

    Returns
    -------
    tuple
        ``(fn, labels, extra)``: :func:`sum_batch` with ``var`` bound, the donor
        of each kept cell (the groups of the batches), and the function giving a
        batch's ``cell_type`` and ``donor_id`` rows from its positions (sent along
        with the batch).
    """
    rows = kept[["cell_type", "donor_id"]]
    fn = functools.partial(sum_batch, var=var[["feature_name"]])
    return fn, rows["donor_id"].to_numpy(), lambda positions: rows.iloc[positions]


def _row_chunks(indptr: np.ndarray, max_values: int) -> list[tuple[int, int]]:
    """Split rows into consecutive ``(start, stop)`` of at most ``max_values`` stored values.

    A row with more values than that is a chunk of its own; no rows: one empty chunk.
    """
    n_rows = len(indptr) - 1
    chunks, start = [], 0
    while start < n_rows:
        stop = int(np.searchsorted(indptr, indptr[start] + max_values, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        chunks.append((start, stop))
        start = stop
    return chunks or [(0, 0)]


def build(
    parts: Iterable[ad.AnnData],
    donors: pd.DataFrame,
    *,
    min_cells: int,
    min_samples_per_cell_type: int,
    source: str,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Add up the batches' sums and build the samples.

    The parts are folded in as they come (a generator is never held whole), so
    only the running sums and one part are in memory.

    Parameters
    ----------
    parts
        :func:`sum_batch` of disjoint batches of the kept cells, every kept cell
        in one.
    donors
        Output of :func:`donor_metadata`.
    min_cells, min_samples_per_cell_type
        See :func:`~immune_aging.analysis.pseudobulk.filter_samples`.
    source
        The file the cells came from, named in messages.

    Returns
    -------
    tuple
        ``(pb, report)`` of :func:`~immune_aging.analysis.pseudobulk.make_pseudobulk`.

    Raises
    ------
    InputError
        If no cell type keeps ``min_samples_per_cell_type`` samples.
    """
    pb, report = pseudobulk.make_pseudobulk(
        parts, donors, min_cells=min_cells, min_samples_per_cell_type=min_samples_per_cell_type
    )
    if pb.n_obs == 0:
        raise InputError(
            f"{source}: no cell type has {min_samples_per_cell_type} samples of "
            f">= {min_cells} cells (pseudobulk.min_samples_per_cell_type, "
            "pseudobulk.min_cells)"
        )
    return pb, report
