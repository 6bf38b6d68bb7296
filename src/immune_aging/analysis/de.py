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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from immune_aging.analysis import deseq
from immune_aging.analysis.age import sex_labels
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


@dataclass
class CellTypeSummary:
    """What happened to one cell type.

    Attributes
    ----------
    cell_type
        The label.
    n_samples
        Samples (donors) of this cell type in the input.
    n_donors
        Donors of known age that entered the model.
    n_dropped_unknown_age
        Donors dropped because their age is unknown.
    n_genes_tested
        Genes at or above the count thresholds and not borrowed from other cell types.
    n_genes_low_mean
        Genes with ``min_total_count`` counts but a mean count per donor below
        ``min_mean_count``, not tested.
    n_genes_borrowed
        Genes above the count threshold left untested because their expression in
        this cell type is mostly other cell types' RNA (see :func:`expression_ratio`).
    n_up, n_down
        Genes with ``padj < alpha`` and a positive / negative age effect.
    age_sd_years
        SD of age (years) used to scale it; ``log2FoldChange`` is per this many years.
    design
        The formula fitted.
    skipped
        Why the cell type was not tested (``None`` when it was).
    """

    cell_type: str
    n_samples: int = 0
    n_donors: int = 0
    n_dropped_unknown_age: int = 0
    n_genes_tested: int = 0
    n_genes_low_mean: int = 0
    n_genes_borrowed: int = 0
    n_up: int = 0
    n_down: int = 0
    age_sd_years: float | None = None
    design: str | None = None
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as a plain dict (for metrics JSON).

        Returns
        -------
        dict
            Every attribute except the label and the warnings.
        """
        return {
            "n_samples": self.n_samples,
            "n_donors": self.n_donors,
            "n_dropped_unknown_age": self.n_dropped_unknown_age,
            "n_genes_tested": self.n_genes_tested,
            "n_genes_low_mean": self.n_genes_low_mean,
            "n_genes_borrowed": self.n_genes_borrowed,
            "n_up": self.n_up,
            "n_down": self.n_down,
            "age_sd_years": self.age_sd_years,
            "design": self.design,
            "skipped": self.skipped,
        }


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _pool_levels(values: np.ndarray) -> np.ndarray:
    """Merge pools holding a single sample into one level, so that no level is one sample.

    A level of one sample fits that sample exactly (leverage 1), which leaves its
    Cook's distance undefined and spends a coefficient on nothing. Such pools share
    the level ``other pools``; if that is a single sample too, it joins the largest
    pool.
    """
    values = np.asarray(values, dtype=object)
    levels, counts = np.unique(values, return_counts=True)
    single = set(levels[counts < 2])
    if not single:
        return values
    out = np.where(np.isin(values, list(single)), "other pools", values).astype(object)
    if len(single) == 1:
        out[out == "other pools"] = levels[np.argmax(counts)]
    return out


def prepare_cell_type(
    adata: Any,
    cell_type: str,
    *,
    min_total_count: int,
    min_donors: int,
    covariates: tuple[str, ...] | list[str] = ("sex",),
    borrowed: np.ndarray | None = None,
    min_mean_count: float = 0.0,
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, CellTypeSummary]:
    """Build the DESeq2 inputs of one cell type, or say why it cannot be tested.

    Parameters
    ----------
    adata
        Validated pseudobulk AnnData (not modified).
    cell_type
        The cell type label.
    min_total_count
        Genes with fewer summed counts over the kept donors are not tested.
    min_donors
        Fewest donors of known age needed.
    covariates
        Sample annotations adjusted for (``sex``, ``pool``), as categorical terms
        after ``age_scaled``; one with a single level among the donors is left out.
        Pools holding a single sample share one level (see :func:`_pool_levels`).
    borrowed
        Boolean per gene: not tested here (mostly other cell types' RNA); ``None``:
        every gene may be tested.
    min_mean_count
        Genes whose mean count over the kept donors is below this are not tested
        (counted in ``n_genes_low_mean``).

    Returns
    -------
    counts : DataFrame or None
        Samples x genes integer counts (columns: gene IDs), ``None`` when skipped.
    metadata : DataFrame or None
        ``age_scaled`` and the covariates in the design per sample, ``None`` when
        skipped.
    summary : CellTypeSummary
        Donor and gene counts, the design and, when skipped, the reason.
    """
    obs = adata.obs
    mask = (obs["cell_type"].astype(str) == cell_type).to_numpy()
    summary = CellTypeSummary(cell_type=cell_type, n_samples=int(mask.sum()))
    if summary.n_samples == 0:
        summary.skipped = "no samples"
        return None, None, summary
    age = obs["age"].to_numpy(dtype=float)
    known = mask & np.isfinite(age)
    summary.n_dropped_unknown_age = int(summary.n_samples - known.sum())
    summary.n_donors = int(known.sum())
    if summary.n_donors < min_donors:
        summary.skipped = (
            f"{summary.n_donors} donor(s) of known age, fewer than de.min_donors={min_donors}"
        )
        return None, None, summary
    ages = age[known]
    sd = float(np.std(ages, ddof=1))
    if not sd > 0:
        summary.skipped = "every donor has the same age"
        return None, None, summary
    terms: dict[str, np.ndarray] = {}
    for name in covariates:
        if name == "sex":
            values = sex_labels(obs["sex"].to_numpy()[known])
        else:
            values = obs[name].astype(str).to_numpy()[known]
            values = np.where(pd.isna(obs[name].to_numpy()[known]), "unknown", values)
        if name == "pool":
            values = _pool_levels(values)
        if len(np.unique(values)) > 1:
            terms[name] = values
    design = "~" + " + ".join(["age_scaled", *terms])
    n_coef = 2 + sum(len(np.unique(v)) - 1 for v in terms.values())
    if summary.n_donors <= n_coef:
        summary.skipped = f"{summary.n_donors} donors are too few for the design {design}"
        return None, None, summary
    x = _dense(adata.X[np.flatnonzero(known)]).astype(np.float64)
    total = x.sum(axis=0)
    keep = total >= min_total_count
    low = keep & (total < min_mean_count * len(x))
    summary.n_genes_low_mean = int(low.sum())
    keep &= ~low
    if borrowed is not None:
        summary.n_genes_borrowed = int((keep & borrowed).sum())
        keep &= ~borrowed
    summary.n_genes_tested = int(keep.sum())
    if summary.n_genes_tested == 0:
        summary.skipped = (
            f"no gene with at least de.min_total_count={min_total_count} counts and a mean "
            f"of de.min_mean_count={min_mean_count:g} per donor"
        )
        return None, None, summary
    index = adata.obs_names[known].astype(str)
    counts = pd.DataFrame(
        np.rint(x[:, keep]).astype(np.int64),
        index=index,
        columns=adata.var_names[keep].astype(str),
    )
    metadata = pd.DataFrame(
        {
            "age_scaled": (ages - ages.mean()) / sd,
            **{name: pd.Categorical(v) for name, v in terms.items()},
        },
        index=index,
    )
    summary.age_sd_years = sd
    summary.design = design
    return counts, metadata, summary


def expression_ratio(adata: Any) -> pd.DataFrame:
    """Each gene's mean CPM in each cell type over its highest mean CPM in any type.

    A gene far more expressed in another cell type (a marker of it) is counted in
    this type's samples mostly through that type's RNA: doublets that escaped
    detection, ambient RNA, misannotated cells. That share follows the donor's
    cell-type composition, which changes with age (naive T cells thin out), so
    such a gene can rise or fall with age in this type's pseudobulk while its
    expression in this type's cells does not.

    Parameters
    ----------
    adata
        Pseudobulk samples (every cell type); not modified.

    Returns
    -------
    pandas.DataFrame
        Cell types (sorted) x genes (``adata.var_names``), values in [0, 1]; 1 for
        the type expressing the gene most, 0 where the gene has no count.
    """
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    types = sorted(set(labels))
    rows = []
    for t in types:  # one cell type's samples at a time: memory of one dense block
        x = _dense(adata.X[np.flatnonzero(labels == t)]).astype(np.float64)
        totals = x.sum(axis=1, keepdims=True)
        cpm = np.divide(x, totals, out=np.zeros_like(x), where=totals > 0) * 1e6
        rows.append(cpm.mean(axis=0))
    means = np.vstack(rows) if rows else np.zeros((0, adata.n_vars))
    top = means.max(axis=0, initial=0.0)
    ratio = np.divide(means, top, out=np.zeros_like(means), where=top > 0)
    return pd.DataFrame(ratio, index=types, columns=adata.var_names.astype(str))


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
        Pseudobulk samples (see :func:`immune_aging.counts.validate_pseudobulk`); not
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


#: Genes labelled by symbol on each volcano plot (the smallest adjusted p-values).
VOLCANO_LABELS = 10


def plot_volcano(
    results: pd.DataFrame, *, cell_type: str, alpha: float, label_top: int = VOLCANO_LABELS
) -> Any:
    """Draw a volcano plot of one cell type's age effects, the top genes labelled.

    Parameters
    ----------
    results
        Rows of one cell type from :func:`differential_expression`.
    cell_type
        Its label (title).
    alpha
        Adjusted p-value cut that colours significant genes.
    label_top
        The genes with the smallest adjusted p-values (then p-values) labelled by
        symbol (gene ID when the symbol is empty).

    Returns
    -------
    matplotlib.figure.Figure
        log2 fold change per SD of age against -log10 p-value.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    lfc = results["log2FoldChange"].to_numpy()
    p = results["pvalue"].to_numpy()
    y = -np.log10(np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0))
    sig = (results["padj"] < alpha).to_numpy()
    colour = np.where(sig & (lfc > 0), "tab:red", np.where(sig & (lfc < 0), "tab:blue", "0.7"))
    ax.scatter(lfc, y, c=colour, s=6, linewidths=0, rasterized=False)
    _label_genes(ax, results.assign(neglog10p=y), label_top)
    ax.axvline(0, color="0.5", lw=0.5)
    ax.set_xlabel("log2 fold change per SD of age")
    ax.set_ylabel("-log10 p-value")
    ax.set_title(
        f"{cell_type}\n{int((sig & (lfc > 0)).sum())} up, {int((sig & (lfc < 0)).sum())} down"
        f" (padj < {alpha:g})",
        fontsize=9,
    )
    return fig


def _label_genes(ax: Any, rows: pd.DataFrame, n: int) -> None:
    """Label the ``n`` most significant genes, texts stacked apart on each side of zero."""
    top = (
        rows.loc[rows["padj"].notna()]
        .sort_values(["padj", "pvalue", "gene_id"], kind="mergesort")
        .head(n)
    )
    if top.empty:
        return
    y_span = max(float(rows["neglog10p"].max()), 1.0)
    x_span = max(float(rows["log2FoldChange"].abs().max()), 1e-6)
    gap = 0.045 * y_span  # the height of one label, in data units
    for side, part in top.groupby(top["log2FoldChange"] >= 0, sort=True):
        placed: list[float] = []
        for row in part.sort_values(
            ["neglog10p", "gene_id"], ascending=[False, True]
        ).itertuples():
            y_text = (
                float(row.neglog10p) if not placed else min(float(row.neglog10p), placed[-1] - gap)
            )
            placed.append(y_text)
            symbol = row.gene if isinstance(row.gene, str) and row.gene else str(row.gene_id)
            ax.annotate(
                symbol.replace("$", r"\$"),  # "$" would start matplotlib's mathtext
                (row.log2FoldChange, row.neglog10p),
                xytext=(row.log2FoldChange + (0.08 if side else -0.08) * x_span, y_text),
                textcoords="data",
                ha="left" if side else "right",
                va="center",
                fontsize=6,
                arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.4},
            )


def plot_de_counts(counts: pd.DataFrame) -> Any:
    """Draw horizontal bars of genes up and down with age per cell type.

    Parameters
    ----------
    counts
        Columns ``cell_type, n_up, n_down``.

    Returns
    -------
    matplotlib.figure.Figure
        The bar chart.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 0.4 * max(len(counts), 1) + 1.2))
    ax = fig.subplots()
    pos = np.arange(len(counts))
    ax.barh(pos, counts["n_up"], color="tab:red", label="up with age")
    ax.barh(pos, -counts["n_down"], color="tab:blue", label="down with age")
    ax.set_yticks(pos, counts["cell_type"], fontsize=8)
    ax.axvline(0, color="0.3", lw=0.5)
    ax.set_xlabel("significant genes (down < 0 < up)")
    ax.legend(fontsize=8, loc="lower right")
    return fig
