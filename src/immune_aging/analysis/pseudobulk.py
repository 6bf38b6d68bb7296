"""Pseudobulk samples: raw counts summed per (cell type, donor).

A sample is the sum of the raw counts of one donor's cells of one cell type. Sums
are computed in float64 (exact for integer counts) so that summing a dataset in
chunks gives the same result as summing it at once; they are stored as float32
when every sum fits exactly (below 2**24), as float64 otherwise. The figures are
drawn by :mod:`immune_aging.analysis.pseudobulk_plots` (:func:`figures` is
re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from immune_aging.analysis.pseudobulk_plots import figures
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "CELL_COLUMNS",
    "FLOAT32_EXACT",
    "SEP",
    "add_donor_metadata",
    "censor_rule",
    "combine_sums",
    "donor_pools",
    "figures",
    "filter_samples",
    "finalize_counts",
    "make_pseudobulk",
    "sum_counts",
    "summary",
]

#: Separator of the sample name ``<cell_type>|<donor_id>``.
SEP = "|"
#: Largest integer float32 holds exactly.
FLOAT32_EXACT = 2**24
#: obs columns of the cells the pseudobulk needs, besides ``development_stage`` or a
#: numeric ``age``.
CELL_COLUMNS = ("donor_id", "cell_type", "sex")


def sum_counts(
    adata: ad.AnnData, *, cell_type_key: str = "cell_type", donor_key: str = "donor_id"
) -> ad.AnnData:
    """Sum raw counts per (cell type, donor) with :func:`scanpy.get.aggregate`.

    Parameters
    ----------
    adata
        Cells with raw counts in ``X`` and the two keys in ``obs``. Not modified.
    cell_type_key, donor_key
        Columns of ``obs`` defining the samples.

    Returns
    -------
    anndata.AnnData
        One observation per (cell type, donor) present, named
        ``<cell_type>|<donor_id>`` and sorted by name; ``obs`` columns
        ``cell_type``, ``donor_id`` and ``n_cells``; ``X`` float64 sums (dense);
        ``var`` as in ``adata``.
    """
    import scanpy as sc

    obs = pd.DataFrame(
        {
            "cell_type": _as_str_categorical(adata.obs[cell_type_key]),
            "donor_id": _as_str_categorical(adata.obs[donor_key]),
        },
        index=adata.obs_names,
    )
    if adata.n_obs == 0:
        empty = pd.DataFrame(
            {
                "cell_type": pd.Series([], dtype=object),
                "donor_id": pd.Series([], dtype=object),
                "n_cells": pd.Series([], dtype=np.int64),
            },
            index=pd.Index([], dtype=object),
        )
        return ad.AnnData(X=np.zeros((0, adata.n_vars)), obs=empty, var=adata.var.copy())
    cells = ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names))
    summed = sc.get.aggregate(cells, by=["cell_type", "donor_id"], func="sum")
    sums = np.asarray(summed.layers["sum"], dtype=np.float64)
    sample_obs = pd.DataFrame(
        {
            "cell_type": summed.obs["cell_type"].astype(str).to_numpy(),
            "donor_id": summed.obs["donor_id"].astype(str).to_numpy(),
        }
    )
    sample_obs.index = pd.Index(sample_obs["cell_type"] + SEP + sample_obs["donor_id"])
    sizes = obs.groupby(["cell_type", "donor_id"], observed=True).size()
    sample_obs["n_cells"] = [
        int(sizes[(c, d)])
        for c, d in zip(sample_obs["cell_type"], sample_obs["donor_id"], strict=True)
    ]
    order = np.argsort(sample_obs.index.to_numpy(), kind="stable")
    return ad.AnnData(X=sums[order], obs=sample_obs.iloc[order].copy(), var=adata.var.copy())


def combine_sums(parts: Iterable[ad.AnnData]) -> ad.AnnData:
    """Add up partial sums of :func:`sum_counts` (e.g. from chunks of cells).

    The parts are consumed one at a time (a generator is never held whole): memory
    is the running sums, one row per sample seen, plus one part. Sums of integer
    counts in float64 are exact, so the order of the parts does not change a bit.

    Parameters
    ----------
    parts
        Results of :func:`sum_counts` over disjoint sets of cells with the same genes.

    Returns
    -------
    anndata.AnnData
        One observation per sample found in any part, sorted by name; ``X`` and
        ``n_cells`` summed.
    """
    var: pd.DataFrame | None = None
    sums: dict[str, np.ndarray] = {}
    n_cells: dict[str, int] = {}
    labels: dict[str, tuple[str, str]] = {}
    for p in parts:
        if var is None:
            var = p.var.copy()
        elif not p.var_names.equals(var.index):
            raise ValueError("combine_sums: parts have different genes")
        X = np.asarray(p.X, dtype=np.float64)
        cells = p.obs["n_cells"].to_numpy(dtype=np.int64)
        for i, (name, ct, donor) in enumerate(
            zip(p.obs_names, p.obs["cell_type"], p.obs["donor_id"], strict=True)
        ):
            if name in sums:
                sums[name] += X[i]
                n_cells[name] += int(cells[i])
            else:
                sums[name] = X[i].copy()
                n_cells[name] = int(cells[i])
                labels[name] = (str(ct), str(donor))
    if var is None:
        raise ValueError("combine_sums: no parts")
    names = sorted(sums)
    total = np.empty((len(names), var.shape[0]), dtype=np.float64)
    for i, name in enumerate(names):
        total[i] = sums.pop(name)  # each row freed as it is copied
    obs = pd.DataFrame(
        {
            "cell_type": [labels[n][0] for n in names],
            "donor_id": [labels[n][1] for n in names],
            "n_cells": np.array([n_cells[n] for n in names], dtype=np.int64),
        },
        index=pd.Index(names),
    )
    return ad.AnnData(X=total, obs=obs, var=var)


def filter_samples(
    pb: ad.AnnData, *, min_cells: int, min_samples_per_cell_type: int
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Keep samples with enough cells, then cell types with enough samples.

    Parameters
    ----------
    pb
        Pseudobulk samples (``obs`` ``cell_type``, ``n_cells``). Not modified.
    min_cells
        A sample needs at least this many cells.
    min_samples_per_cell_type
        A cell type needs at least this many samples (after the first rule).

    Returns
    -------
    kept : anndata.AnnData
        The samples kept (a copy).
    report : pandas.DataFrame
        One row per cell type (sorted): ``samples_total``, ``samples_few_cells``
        (dropped by ``min_cells``), ``samples_kept``, ``kept`` (bool) and
        ``reason`` (empty when kept).
    """
    cell_type = pb.obs["cell_type"].astype(str)
    enough_cells = pb.obs["n_cells"].to_numpy() >= min_cells
    report = (
        pd.DataFrame({"cell_type": cell_type.to_numpy(), "enough": enough_cells})
        .groupby("cell_type", sort=True)["enough"]
        .agg(samples_total="size", samples_with_cells="sum")
    )
    report["samples_few_cells"] = report["samples_total"] - report["samples_with_cells"]
    report["kept"] = report["samples_with_cells"] >= min_samples_per_cell_type
    report["samples_kept"] = np.where(report["kept"], report["samples_with_cells"], 0)
    report["reason"] = np.where(
        report["kept"],
        "",
        [
            f"{n} samples with >= {min_cells} cells (< {min_samples_per_cell_type})"
            for n in report["samples_with_cells"]
        ],
    )
    report = report[["samples_total", "samples_few_cells", "samples_kept", "kept", "reason"]]
    report = report.astype(
        {"samples_total": np.int64, "samples_few_cells": np.int64, "samples_kept": np.int64}
    )
    keep_types = set(report.index[report["kept"]])
    mask = enough_cells & cell_type.isin(keep_types).to_numpy()
    kept = pb[mask].copy()
    log.info(
        "pseudobulk: %d of %d samples kept; cell types kept %d of %d",
        kept.n_obs,
        pb.n_obs,
        len(keep_types),
        report.shape[0],
    )
    return kept, report


def censor_rule(donors: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Apply the rule for donors whose age is censored (``N year-old and over``).

    Parameters
    ----------
    donors
        Donor table of :func:`immune_aging.analysis.age.donor_table` (``age``,
        ``age_form``); not modified.
    rule
        ``assign``: keep the age the parser gave them (``age_80_and_over``);
        ``drop``: no age (NaN), so that de and predict leave them out.

    Returns
    -------
    pandas.DataFrame
        A copy with the rule applied.
    """
    if rule not in ("assign", "drop"):
        raise ValueError(f"unknown censored-age rule {rule!r}")
    out = donors.copy()
    if rule == "drop":
        out.loc[out["age_form"] == "and_over", "age"] = np.nan
    return out


def donor_pools(obs: pd.DataFrame, pool_key: str | None) -> tuple[pd.Series | None, int]:
    """Return each donor's 10x pool: the pool of most of its cells.

    Parameters
    ----------
    obs
        Cells with ``donor_id`` and the pool column.
    pool_key
        The pool column; ``None`` or a column ``obs`` lacks gives no pools.

    Returns
    -------
    pools : pandas.Series or None
        Pool per donor id (strings, sorted by donor); ties go to the first pool
        name in sorted order. ``None`` without a pool column.
    n_split : int
        Donors whose cells lie in more than one pool.
    """
    if pool_key is None or pool_key not in obs.columns:
        return None, 0
    frame = pd.DataFrame(
        {"donor_id": obs["donor_id"].astype(str).to_numpy(), "pool": obs[pool_key].astype(str)}
    )
    counts = frame.groupby(["donor_id", "pool"], sort=True).size().rename("n").reset_index()
    n_split = int((counts.groupby("donor_id").size() > 1).sum())
    counts = counts.sort_values(["donor_id", "n", "pool"], ascending=[True, False, True])
    pools = counts.drop_duplicates("donor_id").set_index("donor_id")["pool"]
    if n_split:
        log.warning("%d donors have cells in more than one pool: each gets its main pool", n_split)
    return pools.sort_index(), n_split


def add_donor_metadata(pb: ad.AnnData, donors: pd.DataFrame) -> ad.AnnData:
    """Carry donor metadata onto every sample.

    Parameters
    ----------
    pb
        Pseudobulk samples with ``obs['donor_id']``. Not modified.
    donors
        Output of :func:`donor_table`, with a ``pool`` column when pools are known.

    Returns
    -------
    anndata.AnnData
        A copy whose ``obs`` is ``cell_type, donor_id, n_cells, sex,
        development_stage, age`` (categoricals for the strings, float years), and
        ``pool`` when ``donors`` has it.
    """
    out = pb.copy()
    ids = out.obs["donor_id"].astype(str)
    missing = sorted(set(ids) - set(donors.index))
    if missing:
        raise ValueError(f"donor metadata missing for donor {missing[0]!r}")
    obs = pd.DataFrame(index=out.obs_names.copy())
    obs["cell_type"] = pd.Categorical(out.obs["cell_type"].astype(str))
    obs["donor_id"] = pd.Categorical(ids)
    obs["n_cells"] = out.obs["n_cells"].to_numpy(dtype=np.int64)
    obs["sex"] = pd.Categorical(donors.loc[ids, "sex"].to_numpy())
    obs["development_stage"] = pd.Categorical(donors.loc[ids, "development_stage"].to_numpy())
    obs["age"] = donors.loc[ids, "age"].to_numpy(dtype=np.float64)
    if "pool" in donors.columns:
        obs["pool"] = pd.Categorical(donors.loc[ids, "pool"].astype(str).to_numpy())
    out.obs = obs
    return out


def finalize_counts(pb: ad.AnnData) -> ad.AnnData:
    """Store sums as float32 when exact (all below 2**24), else keep float64.

    Parameters
    ----------
    pb
        Pseudobulk samples with float sums in ``X``. Not modified.

    Returns
    -------
    anndata.AnnData
        A copy with a dense ``X``.
    """
    out = pb.copy()
    x = np.asarray(out.X, dtype=np.float64)
    if x.size and x.max() >= FLOAT32_EXACT:
        log.info("pseudobulk sums reach %.0f: kept as float64", x.max())
        out.X = x
    else:
        out.X = x.astype(np.float32)
    return out


def make_pseudobulk(
    parts: Iterable[ad.AnnData],
    donors: pd.DataFrame,
    *,
    min_cells: int,
    min_samples_per_cell_type: int,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Build pseudobulk samples from partial sums and the donor table.

    Parameters
    ----------
    parts
        :func:`sum_counts` of disjoint sets of the kept cells (e.g. blocks).
    donors
        Donor table of :func:`immune_aging.analysis.age.donor_table`.
    min_cells, min_samples_per_cell_type
        See :func:`filter_samples`.

    Returns
    -------
    pb : anndata.AnnData
        The samples kept, with donor metadata, sorted by name.
    report : pandas.DataFrame
        Per cell type counts and decisions (:func:`filter_samples`).
    """
    summed = combine_sums(parts)
    kept, report = filter_samples(
        summed, min_cells=min_cells, min_samples_per_cell_type=min_samples_per_cell_type
    )
    return finalize_counts(add_donor_metadata(kept, donors)), report


def summary(
    pb: ad.AnnData,
    report: pd.DataFrame,
    donors: pd.DataFrame,
    *,
    censored_age: str = "assign",
    donors_split_pools: int = 0,
) -> dict[str, Any]:
    """Summarise a pseudobulk result for the stage's metrics.

    Parameters
    ----------
    pb
        The samples kept.
    report
        Per cell type report of :func:`filter_samples`.
    donors
        Donor table of :func:`immune_aging.analysis.age.donor_table` after
        :func:`censor_rule` (with ``pool`` when pools are known).
    censored_age
        The censored-age rule applied.
    donors_split_pools
        Donors whose cells lie in more than one pool (:func:`donor_pools`).

    Returns
    -------
    dict
        Counts of samples, genes, cell types and donors; samples per kept cell
        type; dropped cell types with their reason; donors of unknown age (censored
        ones dropped by the rule included); age forms; the censored-age rule and
        its donors; pools.
    """
    from immune_aging.analysis.age import count_forms

    unknown = donors.index[donors["age"].isna()].tolist()
    used = set(pb.obs["donor_id"].astype(str))
    censored = donors["age_form"] == "and_over"
    pools = donors["pool"] if "pool" in donors.columns else None
    return {
        "samples": int(pb.n_obs),
        "genes": int(pb.n_vars),
        "donors": len(used),
        "cell_types_kept": int(report["kept"].sum()),
        "cell_types_dropped": int((~report["kept"]).sum()),
        "samples_per_cell_type": {
            str(ct): int(n) for ct, n in report.loc[report["kept"], "samples_kept"].items()
        },
        "samples_dropped_few_cells": int(report["samples_few_cells"].sum()),
        "dropped_cell_types": {
            str(ct): str(reason) for ct, reason in report.loc[~report["kept"], "reason"].items()
        },
        "donors_unknown_age": len(unknown),
        "donors_unknown_age_ids": [str(d) for d in unknown],
        "age_forms": count_forms(donors["age_form"]),
        "censored_age": {
            "rule": censored_age,
            "donors": int(censored.sum()),
            "dropped": int((censored & donors["age"].isna()).sum()),
        },
        "pools": None if pools is None else int(pools.nunique()),
        "donors_split_pools": donors_split_pools,
    }


def _as_str_categorical(values: pd.Series) -> pd.Categorical:
    """Return labels as a categorical of strings (missing values refused)."""
    series = pd.Series(values)
    if series.isna().any():
        raise InputError(f"obs column {series.name!r}: missing values")
    return pd.Categorical(series.astype(str))
