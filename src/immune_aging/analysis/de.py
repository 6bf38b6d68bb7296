"""Differential expression with donor age, per cell type, on pseudobulk counts.

For each cell type, PyDESeq2 fits the negative-binomial GLM ``~ age_scaled +
<covariates>`` (``de.covariates``: ``sex`` by default, ``pool`` possible) to the
summed counts of its (cell type, donor) samples and a Wald test is run on the age
coefficient, with Benjamini-Hochberg adjusted p-values (DESeq2's independent
filtering and Cook's outlier handling as in the reference method).

``age_scaled`` is the donor age z-scored within the cell type (mean 0, sample SD
1), so ``log2FoldChange`` is the change per standard deviation of age; the SD in
years is recorded and ``log2fc_per_decade = 10 * log2FoldChange / sd`` is added.

Donors of unknown age (NaN) are dropped and counted. A cell type is skipped, with
its reason recorded, when it has too few donors of known age, a single age, no
gene above the count threshold, or too few donors for the design; a covariate
with a single level among its donors (e.g. one sex) is left out of its design.

Sex labels are normalised by :func:`immune_aging.analysis.age.sex_labels` (lower case;
missing or empty is ``"unknown"``, CELLxGENE's term). ``"unknown"`` is a level of the
sex factor of its own: a donor of unknown sex is counted neither as female nor as
male. The predict stage encodes sex the same way
(:func:`immune_aging.analysis.predict.sex_features`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from immune_aging.analysis import deseq
from immune_aging.analysis.de_plots import plot_de_counts, plot_volcano
from immune_aging.analysis.de_samples import CellTypeSummary, expression_ratio, prepare_cell_type
from immune_aging.executor import map_ordered
from immune_aging.names import unique_slugs

log = logging.getLogger(__name__)

#: Columns of the results table, in order (``log2fc_per_decade`` is an extra).
RESULT_COLUMNS = [
    "cell_type",
    "gene_id",
    "gene",
    "baseMean",
    "log2FoldChange",
    "lfcSE",
    "stat",
    "pvalue",
    "padj",
    "log2fc_per_decade",
]


def options(params: Any) -> dict[str, Any]:
    """Return the keyword arguments of :func:`differential_expression` from ``DeParams``.

    Parameters
    ----------
    params
        The ``de`` section (:class:`immune_aging.params.DeParams`).

    Returns
    -------
    dict
        Every argument but ``adata`` and ``n_jobs``.
    """
    return {
        "alpha": params.alpha,
        "min_total_count": params.min_total_count,
        "min_donors": params.min_donors,
        "covariates": params.covariates,
        "min_expression_ratio": params.min_expression_ratio,
        "min_mu": params.min_mu,
        "t_test": params.wald_distribution == "t",
        "min_mean_count": params.min_mean_count,
        "cell_types": list(params.cell_types),
        "solver": params.solver,
        "null": params.null_distribution,
    }


def differential_expression(
    adata: Any,
    *,
    alpha: float,
    min_total_count: int,
    min_donors: int,
    covariates: tuple[str, ...] | list[str] = ("sex",),
    min_expression_ratio: float = 0.0,
    min_mu: float = 0.5,
    t_test: bool = False,
    min_mean_count: float = 0.0,
    cell_types: list[str] | tuple[str, ...] = (),
    solver: str = "batched",
    null: str = "theoretical",
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, list[CellTypeSummary]]:
    """Test every cell type of a pseudobulk AnnData for genes changing with age.

    Parameters
    ----------
    adata
        Pseudobulk samples (see :func:`immune_aging.count_checks.validate_pseudobulk`); not
        modified.
    alpha
        BH-adjusted p-value below which a gene counts as up or down.
    min_total_count
        Genes with fewer summed counts in a cell type are not tested there.
    min_donors
        Cell types with fewer donors of known age are skipped.
    covariates
        Sample annotations adjusted for, see :func:`prepare_cell_type`.
    min_expression_ratio
        A gene is tested in a cell type only where its mean CPM reaches this
        fraction of its highest mean CPM among the cell types
        (:func:`expression_ratio`); 0 tests every gene.
    min_mu, t_test, solver, null
        DESeq2 settings, see :func:`immune_aging.analysis.deseq.age_wald_test`
        (the defaults of the first two are PyDESeq2's).
    min_mean_count
        Genes with a lower mean count per donor in a cell type are not tested there.
    cell_types
        The cell types tested; empty: every cell type of ``adata``. Expression
        ratios (``min_expression_ratio``) are computed over every cell type all the
        same.
    n_jobs
        Cell types fitted in parallel (processes); results do not depend on it.

    Returns
    -------
    results : DataFrame
        One row per (tested cell type, tested gene), columns :data:`RESULT_COLUMNS`,
        cell types in sorted order, genes in input order.
    summaries : list of CellTypeSummary
        One per cell type (sorted by label), skipped ones included.
    """
    labels = adata.obs["cell_type"]
    names = list(labels.cat.categories) if isinstance(labels.dtype, pd.CategoricalDtype) else []
    present = sorted(set(map(str, names)) | set(labels.astype(str)))
    missing = [c for c in cell_types if c not in present]
    if missing:
        raise ValueError(f"cell type {missing[0]!r} not in the data")
    chosen = sorted(cell_types) if cell_types else present
    jobs: list[tuple[pd.DataFrame, pd.DataFrame, CellTypeSummary]] = []
    summaries = []
    ratio = expression_ratio(adata) if min_expression_ratio > 0 else None
    for ct in chosen:
        borrowed = None
        if ratio is not None and ct in ratio.index:
            borrowed = ratio.loc[ct].to_numpy() < min_expression_ratio
        counts, metadata, summary = prepare_cell_type(
            adata,
            ct,
            min_total_count=min_total_count,
            min_donors=min_donors,
            covariates=covariates,
            borrowed=borrowed,
            min_mean_count=min_mean_count,
        )
        summaries.append(summary)
        if summary.skipped:
            log.warning("cell type %r skipped: %s", ct, summary.skipped)
        else:
            jobs.append((counts, metadata, summary))
    symbols = pd.Series(adata.var["feature_name"].astype(str).to_numpy(), index=adata.var_names)
    options = {"min_mu": min_mu, "t_test": t_test, "solver": solver, "null": null}
    args = [(c, m, s.design, alpha, options) for c, m, s in jobs]
    workers = max(1, min(n_jobs, len(jobs)))
    fitted = map_ordered(deseq.run_one, args, workers, label="cell types fitted")
    tables = []
    for (_, _, summary), (res, messages) in zip(jobs, fitted, strict=True):
        for msg in messages:
            log.warning("cell type %r: PyDESeq2: %s", summary.cell_type, msg)
        summary.warnings = messages
        table = res.reset_index(names="gene_id")
        table.insert(0, "cell_type", summary.cell_type)
        table.insert(2, "gene", symbols.loc[table["gene_id"]].to_numpy())
        table["log2fc_per_decade"] = table["log2FoldChange"] * 10.0 / summary.age_sd_years
        sig = table["padj"] < alpha
        summary.n_up = int((sig & (table["log2FoldChange"] > 0)).sum())
        summary.n_down = int((sig & (table["log2FoldChange"] < 0)).sum())
        log.info(
            "%s: %d donors, %d genes, %d up, %d down",
            summary.cell_type,
            summary.n_donors,
            summary.n_genes_tested,
            summary.n_up,
            summary.n_down,
        )
        tables.append(table[RESULT_COLUMNS])
    if tables:
        results = pd.concat(tables, ignore_index=True)
    else:
        results = empty_results()
    results["cell_type"] = results["cell_type"].astype(str)
    return results, summaries


def empty_results() -> pd.DataFrame:
    """Return an empty results table with the right columns and dtypes.

    Returns
    -------
    DataFrame
        No rows; string ID columns, float statistics.
    """
    data: dict[str, pd.Series] = {}
    for col in RESULT_COLUMNS:
        dtype = object if col in ("cell_type", "gene_id", "gene") else np.float64
        data[col] = pd.Series([], dtype=dtype)
    return pd.DataFrame(data)


def summary(
    results: pd.DataFrame, summaries: list[CellTypeSummary], *, alpha: float
) -> dict[str, Any]:
    """Summarise the tests for ``metrics/de.json``.

    Parameters
    ----------
    results, summaries
        Output of :func:`differential_expression`.
    alpha
        The significance cut used.

    Returns
    -------
    dict
        ``alpha``, per cell type its summary, counts of cell types tested and
        skipped, of tests, and of genes up and down.
    """
    tested = [s for s in summaries if not s.skipped]
    return {
        "alpha": alpha,
        "cell_types": {s.cell_type: s.as_dict() for s in summaries},
        "n_cell_types_tested": len(tested),
        "n_cell_types_skipped": len(summaries) - len(tested),
        "n_tests": len(results),
        "n_up": sum(s.n_up for s in tested),
        "n_down": sum(s.n_down for s in tested),
    }


def counts_table(summaries: list[CellTypeSummary]) -> pd.DataFrame:
    """Return genes up and down with age per tested cell type.

    Parameters
    ----------
    summaries
        Output of :func:`differential_expression`.

    Returns
    -------
    pandas.DataFrame
        Columns ``cell_type, n_up, n_down``.
    """
    tested = [s for s in summaries if not s.skipped]
    return pd.DataFrame(
        {
            "cell_type": [s.cell_type for s in tested],
            "n_up": [s.n_up for s in tested],
            "n_down": [s.n_down for s in tested],
        }
    )


def figures(
    results: pd.DataFrame, summaries: list[CellTypeSummary], *, alpha: float
) -> dict[str, Any]:
    """Draw the bar chart of genes up and down and one volcano plot per tested cell type.

    Parameters
    ----------
    results, summaries
        Output of :func:`differential_expression`.
    alpha
        The significance cut used.

    Returns
    -------
    dict
        PNG file name (``volcano_<cell type slug>.png``) to figure.
    """
    tested = [s.cell_type for s in summaries if not s.skipped]
    out = {"de_counts.png": plot_de_counts(counts_table(summaries))}
    for cell_type, name in unique_slugs(tested).items():
        rows = results[results["cell_type"] == cell_type]
        out[f"volcano_{name}.png"] = plot_volcano(rows, cell_type=cell_type, alpha=alpha)
    return out
