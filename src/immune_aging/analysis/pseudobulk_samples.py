"""From the kept cells to the pseudobulk samples (stage ``pseudobulk``).

- :func:`cells` checks and returns the cells' annotations the samples are built
  from;
- :func:`donor_metadata` returns each donor's metadata carried onto its samples:
  sex, development stage, the age read from it
  (:func:`immune_aging.analysis.age.donor_table`) under the censored-age rule
  (:func:`immune_aging.analysis.pseudobulk.censor_rule`), and the 10x pool of most
  of the donor's cells when the pool column is known
  (:func:`immune_aging.analysis.pseudobulk.donor_pools`);
- :func:`build` sums the counts block by block and builds the samples
  (:func:`immune_aging.analysis.pseudobulk.make_pseudobulk`), refusing an empty
  result.

Messages name the file the cells came from (``source``).
"""

from __future__ import annotations

from collections.abc import Iterable

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


def build(
    blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
    obs: pd.DataFrame,
    var: pd.DataFrame,
    donors: pd.DataFrame,
    *,
    min_cells: int,
    min_samples_per_cell_type: int,
    source: str,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Sum the counts block by block and build the samples.

    Only one block and its sums are in memory at a time.

    Parameters
    ----------
    blocks
        ``(positions, counts)``: positions of a block's cells in ``obs`` and their
        raw counts (cells x ``var``); every cell in one block.
    obs
        The cells (:func:`cells`).
    var
        The genes, with ``feature_name``.
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
    genes = var[["feature_name"]].copy()
    parts = (
        pseudobulk.sum_counts(ad.AnnData(X=block, obs=obs.iloc[positions], var=genes))
        for positions, block in blocks
    )
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
