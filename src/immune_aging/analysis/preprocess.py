"""Normalisation, highly variable genes and PCA (stage ``preprocess``).

Steps and choices:

1. Highly variable genes with Seurat v3's method (``flavor="seurat_v3"``) on
   the raw counts, per donor (``batch_key``), exactly as
   :func:`scanpy.pp.highly_variable_genes` combines batches (rank genes by
   normalised variance in each donor, keep the ``n_top_genes`` with the best
   median rank, ties broken by the number of donors where the gene is variable).
   Each donor is fitted on its own so that a donor whose loess fit is impossible
   is left out of the ranking (and reported) instead of failing the whole run:
   donors with fewer than 2 cells or fewer than :data:`MIN_VARIABLE_GENES` genes
   of non-zero variance are skipped before fitting (the loess library aborts the
   process on such input), and donors whose fit fails are skipped after.
2. Genes whose symbol matches ``blocklist_regex`` (immune-receptor segments,
   mitochondrial, ribosomal) are removed from the HVG set, which then holds
   fewer than ``n_top_genes`` genes (as in the seed workflow; the set is not
   refilled).
3. Counts are normalised to ``target_sum`` per cell (the cell's total over all
   genes, as :func:`scanpy.pp.normalize_total`) and log1p-transformed; only the
   HVG columns are materialised, so no full normalised matrix is ever held.
4. PCA on those genes, centred but **not scaled** to unit variance: the seed
   workflow does not scale, sc-best-practices does not either, and scaling
   would densify a cells x HVGs matrix (12 GB for OneK1K). ``pca_solver``
   ``covariance`` (default) sums the genes' covariance matrix from the sparse
   rows on all threads in fixed gene blocks and eigendecomposes it
   (:mod:`immune_aging.analysis.sparse_pca`): the exact components, in one pass
   over the data. ``arpack`` is scanpy's seeded ARPACK solver (single-threaded
   sparse products; its components agree with the covariance solver's to
   ``|correlation| > 0.999``). BLAS runs on one thread with one kernel
   (:mod:`immune_aging.determinism`) and the covariance sums never depend on the
   thread count, so the result is the same bytes at any thread count and on any
   x86-64-v3 machine.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging.analysis import genes
from immune_aging.analysis import hvg as hvg_select
from immune_aging.analysis.preprocess_batches import (
    EachBatch,
    normalise_batch,
    scale_log1p,
    stack_rows,
    summarise_batch,
)
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

OBS_COLUMNS = ("donor_id", "cell_type", "sex")
#: ``preprocess.pca_solver`` values: the gene covariance matrix (all threads) or ARPACK.
PCA_SOLVERS = ("covariance", "arpack")


def block_genes(symbols: pd.Series, *, regex: str) -> np.ndarray:
    """Flag genes whose symbol matches the blocklist.

    Parameters
    ----------
    symbols
        Gene symbols (``var['feature_name']``).
    regex
        Regular expression searched in each symbol.

    Returns
    -------
    numpy.ndarray
        Boolean mask.

    Raises
    ------
    InputError
        If ``regex`` is not a valid regular expression.
    """
    try:
        return genes.match_symbols(symbols, regex=regex)
    except re.error as exc:
        raise InputError(
            f"preprocess.blocklist_regex: not a valid regular expression ({exc})"
        ) from None


def log_normalise(counts: Any, *, columns: np.ndarray, target_sum: float) -> sparse.csr_matrix:
    """Normalise each cell to ``target_sum`` and log1p-transform, for some genes.

    Equal to :func:`scanpy.pp.normalize_total` (no highly-expressed exclusion) then
    :func:`scanpy.pp.log1p`, restricted afterwards to ``columns``; the size
    factor uses the cell's total over all genes (:func:`scale_log1p`).

    Parameters
    ----------
    counts
        Raw counts, cells x genes (not modified).
    columns
        Boolean mask of the genes to return.
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, cells x selected genes.
    """
    X = sparse.csr_matrix(counts)
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    sub = X[:, np.asarray(columns, dtype=bool)]  # a new matrix: scaled in place below
    sub = sub.astype(np.float32) if sub.dtype != np.float32 else sub
    if np.shares_memory(sub.data, X.data):  # never write into the input
        sub = sub.copy()
    return scale_log1p(sub, totals, target_sum=target_sum)


def run_pca(
    data: sparse.csr_matrix, *, n_comps: int, seed: int, solver: str = "covariance"
) -> dict[str, np.ndarray]:
    """Principal components of a cells x genes matrix (centred, not scaled).

    Parameters
    ----------
    data
        Log-normalised expression of the PCA genes (not modified).
    n_comps
        Components to compute; must be below both dimensions.
    seed
        Random state of the ARPACK start vector (the covariance solver has none).
    solver
        One of :data:`PCA_SOLVERS`: ``covariance`` (eigendecomposition of the
        genes' covariance matrix, summed on all threads) or ``arpack`` (scanpy's).

    Returns
    -------
    dict
        ``X_pca`` (cells x comps), ``PCs`` (genes x comps), ``variance`` and
        ``variance_ratio`` (per component).

    Raises
    ------
    InputError
        If ``n_comps`` is not below the number of cells and of genes.
    """
    import scanpy as sc

    if n_comps >= min(data.shape):
        raise InputError(
            f"preprocess.n_comps={n_comps}: needs more cells and PCA genes than components "
            f"(have {data.shape[0]} cells, {data.shape[1]} genes)"
        )
    if solver not in PCA_SOLVERS:
        raise ValueError(f"unknown PCA solver {solver!r}; expected one of {PCA_SOLVERS}")
    if solver == "covariance":
        from immune_aging.analysis.sparse_pca import covariance_pca

        return covariance_pca(data, n_comps=n_comps)
    adata = ad.AnnData(X=data.copy())
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="arpack", zero_center=True, random_state=seed)
    return {
        "X_pca": np.asarray(adata.obsm["X_pca"]),
        "PCs": np.asarray(adata.varm["PCs"]),
        "variance": np.asarray(adata.uns["pca"]["variance"]),
        "variance_ratio": np.asarray(adata.uns["pca"]["variance_ratio"]),
    }


def preprocess(
    each_batch: EachBatch,
    read_columns: Callable[[np.ndarray], sparse.csr_matrix] | None,
    *,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    target_sum: float,
    n_top_genes: int,
    hvg_span: float,
    blocklist_regex: str,
    n_comps: int,
    seed: int,
    pca_solver: str = "covariance",
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Run HVG selection, blocklisting, normalisation and PCA, reading counts in two passes.

    The counts are never held for all genes at once. The first pass works on a
    few whole donors at a time (:func:`.preprocess_batches.summarise_batch`: each
    cell's total, each donor's HVG fit, the batch's column moments), folded in batch order
    (:func:`immune_aging.analysis.hvg.combine_batches`). The second reads only the
    PCA genes' columns of every cell, normalises them with those totals and
    log1p-transforms them (:func:`scale_log1p`): in one read (``read_columns``),
    or batch by batch (:func:`normalise_batch`, element-wise) with the blocks put
    back in cell order (:func:`stack_rows`). Either way the per-batch work may run
    on a cluster's workers (``each_batch``) and the result is the same bits for
    any split into batches and wherever the batches ran.

    PCA itself runs here, on all cells at once: the covariance solver sums one
    genes x genes matrix over all cells in a fixed order, and that order is what
    makes the result the same bytes everywhere; split over workers, the sum
    would depend on the split.

    Parameters
    ----------
    each_batch
        ``each_batch(fn, extra)`` yields ``fn(positions, counts, extra(positions))``
        for each batch, in batch order: ascending positions of a batch's cells in
        ``obs`` and their raw CSR counts (cells x ``var``); a donor's cells all in
        one batch, every cell in exactly one.
    read_columns
        Given a boolean mask over ``var``, returns the raw counts of those genes
        of every cell of ``obs``, in order (CSR, a new matrix: it is modified).
        None: the second pass runs batch by batch through ``each_batch`` too.
    obs
        The cells (all kept by QC), with ``donor_id``, ``cell_type`` and ``sex``.
    var
        The genes, with ``feature_name``.
    target_sum, n_top_genes, hvg_span, blocklist_regex, n_comps, seed, pca_solver
        See ``params.yaml: preprocess``.

    Returns
    -------
    tuple
        ``(result, info)``: an AnnData of the cells without ``X``, obs
        ``donor_id, cell_type, sex, total_counts``, var (all genes) ``feature_name``
        and the HVG columns plus ``blocked`` and ``used_for_pca``, ``obsm['X_pca']``,
        ``varm['PCs']`` (zero rows for genes not used), ``uns['pca']`` and
        ``uns['hvg']``; and a summary dict.

    Raises
    ------
    InputError
        If a column is missing, there is no cell, the blocklist removes every
        HVG or there are too few cells or genes for ``n_comps``.
    """
    missing = [c for c in OBS_COLUMNS if c not in obs.columns]
    if missing:
        raise InputError(f"obs column {missing[0]!r} missing")
    if "feature_name" not in var.columns:
        raise InputError("var column 'feature_name' missing")
    if len(obs) == 0:
        raise InputError("no cell is kept by QC")
    blocked = block_genes(var["feature_name"], regex=blocklist_regex)
    donors = obs["donor_id"].astype(str).to_numpy()
    totals = np.full(len(obs), np.nan)
    summarise = functools.partial(
        summarise_batch, var_names=var.index, n_top_genes=n_top_genes, span=hvg_span
    )

    def fits() -> Iterator[tuple[np.ndarray, hvg_select.BatchFits]]:
        for summary in each_batch(summarise, lambda positions: donors[positions]):
            totals[summary.positions] = summary.totals
            yield summary.positions, summary.hvg

    hvg, hvg_info = hvg_select.combine_batches(
        fits(), labels=donors, var_names=var.index, n_top_genes=n_top_genes
    )
    used = hvg["highly_variable"].to_numpy() & ~blocked
    if not used.any():
        raise InputError(
            "preprocess.blocklist_regex removes every highly variable gene; none left for PCA"
        )
    log.info("reading the counts of %d PCA genes of %d cells", int(used.sum()), len(obs))
    if read_columns is None:
        normalise = functools.partial(normalise_batch, columns=used, target_sum=target_sum)
        data = stack_rows(each_batch(normalise, lambda positions: totals[positions]), len(obs))
    else:
        data = sparse.csr_matrix(read_columns(used))
        if data.shape != (len(obs), int(used.sum())):
            raise ValueError(
                f"read_columns returned {data.shape}, not {(len(obs), int(used.sum()))}"
            )
        data = scale_log1p(data, totals, target_sum=target_sum)
    pca = run_pca(data, n_comps=n_comps, seed=seed, solver=pca_solver)
    return _result(
        obs,
        var,
        hvg,
        hvg_info,
        blocked=blocked,
        used=used,
        pca=pca,
        totals=totals,
        target_sum=target_sum,
        n_top_genes=n_top_genes,
        hvg_span=hvg_span,
        n_comps=n_comps,
        pca_solver=pca_solver,
    )


def _result(
    obs: pd.DataFrame,
    var_in: pd.DataFrame,
    hvg: pd.DataFrame,
    hvg_info: dict[str, Any],
    *,
    blocked: np.ndarray,
    used: np.ndarray,
    pca: dict[str, np.ndarray],
    totals: np.ndarray,
    target_sum: float,
    n_top_genes: int,
    hvg_span: float,
    n_comps: int,
    pca_solver: str,
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Assemble the AnnData and summary of :func:`preprocess`."""
    obs = obs.loc[:, list(OBS_COLUMNS)].copy()
    for col in OBS_COLUMNS:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    obs["total_counts"] = totals
    var = pd.concat([var_in[["feature_name"]].astype(str), hvg.set_axis(var_in.index)], axis=1)
    var["blocked"] = blocked
    var["used_for_pca"] = used
    pcs = np.zeros((len(var_in), n_comps), dtype=pca["PCs"].dtype)
    pcs[used] = pca["PCs"]
    hvg_uns = {
        "flavor": "seurat_v3",
        "n_top_genes": n_top_genes,
        "span": hvg_span,
        "batch_key": "donor_id",
        "batches_used": hvg_info["batches_used"],
        "batches_skipped": sorted(hvg_info["batches_skipped"]),
    }
    pca_uns = {
        "variance": pca["variance"],
        "variance_ratio": pca["variance_ratio"],
        "params": {
            "n_comps": n_comps,
            "svd_solver": pca_solver,
            "zero_center": True,
            "scaled": False,
            "target_sum": target_sum,
            "log1p": True,
        },
    }
    result = ad.AnnData(
        obs=obs,
        var=var,
        obsm={"X_pca": pca["X_pca"]},
        varm={"PCs": pcs},
        uns={"pca": pca_uns, "hvg": hvg_uns},
    )
    ratio = pca["variance_ratio"]
    info = {
        "cells": int(result.n_obs),
        "genes": int(result.n_vars),
        "hvg_found": int(hvg["highly_variable"].sum()),
        "hvg_blocked": int((hvg["highly_variable"].to_numpy() & blocked).sum()),
        "hvg_used": int(used.sum()),
        "genes_blocked": int(blocked.sum()),
        "hvg_batches_used": hvg_info["batches_used"],
        "hvg_batches_skipped": hvg_info["batches_skipped"],
        "n_comps": n_comps,
        "variance_ratio_pc1": float(ratio[0]),
        "variance_explained_first_10": float(ratio[:10].sum()),
        "variance_explained_all": float(ratio.sum()),
    }
    log.info(
        "%d HVGs, %d blocked, %d used; PC1 explains %.1f %%",
        info["hvg_found"],
        info["hvg_blocked"],
        info["hvg_used"],
        100 * info["variance_ratio_pc1"],
    )
    return result, info
