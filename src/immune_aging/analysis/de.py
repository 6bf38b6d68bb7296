"""Differential expression with donor age, per cell type, on pseudobulk counts.

For each cell type, PyDESeq2 fits the negative-binomial GLM ``~ age_scaled + sex``
to the summed counts of its (cell type, donor) samples and a Wald test is run on
the age coefficient, with Benjamini-Hochberg adjusted p-values (DESeq2's
independent filtering and Cook's outlier handling as in the reference method).

``age_scaled`` is the donor age z-scored within the cell type (mean 0, sample SD
1), so ``log2FoldChange`` is the change per standard deviation of age; the SD in
years is recorded and ``log2fc_per_decade = 10 * log2FoldChange / sd`` is added.

Donors of unknown age (NaN) are dropped and counted. A cell type is skipped, with
its reason recorded, when it has too few donors of known age, a single age, no
gene above the count threshold, or too few donors for the design; when all its
donors share one sex the design falls back to ``~ age_scaled``.

Sex labels are normalised by :func:`sex_labels` (lower case; missing or empty is
``"unknown"``, CELLxGENE's term). ``"unknown"`` is a level of the sex factor of its
own: a donor of unknown sex is counted neither as female nor as male. The predict
stage encodes sex the same way (:func:`immune_aging.analysis.predict.sex_features`).
"""

from __future__ import annotations

import logging
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from immune_aging.errors import InputError

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
#: obs columns the pseudobulk input must carry.
REQUIRED_OBS = ("cell_type", "donor_id", "sex", "age")
#: Sex label of donors whose sex is not recorded (also given to missing and empty values).
UNKNOWN_SEX = "unknown"


def sex_labels(values: Any) -> np.ndarray:
    """Normalise sex labels the same way for de and predict.

    Parameters
    ----------
    values
        Labels per sample (strings, categorical, with missing values).

    Returns
    -------
    ndarray
        Strings, stripped and lower-cased; missing, empty and ``"nan"`` values
        become :data:`UNKNOWN_SEX`.
    """
    series = pd.Series(values, dtype="object")
    labels = series.astype(str).str.strip().str.lower()
    missing = series.isna().to_numpy() | labels.isin(["", "nan", "none"]).to_numpy()
    return np.where(missing, UNKNOWN_SEX, labels.to_numpy()).astype(str)


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
        Genes at or above the count threshold.
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
            "n_up": self.n_up,
            "n_down": self.n_down,
            "age_sd_years": self.age_sd_years,
            "design": self.design,
            "skipped": self.skipped,
        }


def validate_pseudobulk(adata: Any, *, source: str = "pseudobulk") -> None:
    """Check that a pseudobulk AnnData has what differential expression needs.

    Parameters
    ----------
    adata
        Pseudobulk samples: obs ``cell_type, donor_id, sex, age``, var
        ``feature_name``, ``X`` summed raw counts.
    source
        Name used in error messages (the file path).

    Raises
    ------
    InputError
        Naming the missing column, the non-numeric age, duplicated samples or
        non-count values in ``X``.
    """
    for col in REQUIRED_OBS:
        if col not in adata.obs.columns:
            raise InputError(f"{source}: obs column {col!r} missing")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{source}: var column 'feature_name' missing")
    if not pd.api.types.is_numeric_dtype(adata.obs["age"]):
        raise InputError(f"{source}: obs column 'age' must be numeric years (NaN when unknown)")
    pairs = adata.obs[["cell_type", "donor_id"]].astype(str)
    if pairs.duplicated().any():
        ct, donor = pairs[pairs.duplicated()].iloc[0]
        raise InputError(
            f"{source}: more than one sample for cell type {ct!r} and donor {donor!r}"
        )
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if values.size and (np.nanmin(values) < 0 or not np.all(np.mod(values, 1) == 0)):
        raise InputError(f"{source}: X must hold summed raw counts (non-negative integers)")


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def prepare_cell_type(
    adata: Any, cell_type: str, *, min_total_count: int, min_donors: int
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

    Returns
    -------
    counts : DataFrame or None
        Samples x genes integer counts (columns: gene IDs), ``None`` when skipped.
    metadata : DataFrame or None
        ``age_scaled`` and ``sex`` per sample, ``None`` when skipped.
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
    sex = sex_labels(obs["sex"].to_numpy()[known])
    n_sexes = len(np.unique(sex))
    design = "~age_scaled + sex" if n_sexes > 1 else "~age_scaled"
    n_coef = 2 + (n_sexes - 1 if n_sexes > 1 else 0)
    if summary.n_donors <= n_coef:
        summary.skipped = f"{summary.n_donors} donors are too few for the design {design}"
        return None, None, summary
    x = _dense(adata.X[np.flatnonzero(known)]).astype(np.float64)
    keep = x.sum(axis=0) >= min_total_count
    summary.n_genes_tested = int(keep.sum())
    if summary.n_genes_tested == 0:
        summary.skipped = f"no gene with at least de.min_total_count={min_total_count} counts"
        return None, None, summary
    index = adata.obs_names[known].astype(str)
    counts = pd.DataFrame(
        np.rint(x[:, keep]).astype(np.int64),
        index=index,
        columns=adata.var_names[keep].astype(str),
    )
    metadata = pd.DataFrame(
        {"age_scaled": (ages - ages.mean()) / sd, "sex": pd.Categorical(sex)}, index=index
    )
    summary.age_sd_years = sd
    summary.design = design
    return counts, metadata, summary


def age_wald_test(
    counts: pd.DataFrame, metadata: pd.DataFrame, *, design: str, alpha: float
) -> tuple[pd.DataFrame, list[str]]:
    """Fit PyDESeq2 and run the Wald test on the ``age_scaled`` coefficient.

    Parameters
    ----------
    counts
        Samples x genes non-negative integer counts.
    metadata
        Per sample: ``age_scaled`` (numeric) and, when in the design, ``sex``.
    design
        Formula, ``"~age_scaled + sex"`` or ``"~age_scaled"``.
    alpha
        Significance level used by DESeq2's independent filtering.

    Returns
    -------
    results : DataFrame
        Index gene IDs; ``baseMean, log2FoldChange, lfcSE, stat, pvalue, padj``;
        ``log2FoldChange`` is per unit of ``age_scaled``.
    warnings : list of str
        Distinct warning messages PyDESeq2 raised (already logged).
    """
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dds = DeseqDataSet(
            counts=counts.copy(),
            metadata=metadata.copy(),
            design=design,
            refit_cooks=True,
            n_cpus=1,
            quiet=True,
        )
        dds.deseq2()
        columns = list(dds.varm["LFC"].columns)
        if "age_scaled" not in columns:  # pragma: no cover - formulaic naming changed
            raise RuntimeError(f"no age_scaled coefficient among {columns}")
        contrast = np.array([1.0 if c == "age_scaled" else 0.0 for c in columns])
        stats = DeseqStats(dds, contrast=contrast, alpha=alpha, quiet=True, n_cpus=1)
        stats.summary()
    messages = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    res = stats.results_df[["baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]]
    return res.astype(np.float64), messages


def _run_one(
    counts: pd.DataFrame, metadata: pd.DataFrame, design: str, alpha: float
) -> tuple[pd.DataFrame, list[str]]:
    """Worker: one cell type, single-threaded BLAS.

    PyDESeq2 fits thousands of tiny per-gene models, which multi-threaded BLAS
    only slows down. The limit applies to libraries already loaded, so PyDESeq2
    (which loads SciPy's BLAS) is imported first.
    """
    from pydeseq2 import dds, ds  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return age_wald_test(counts, metadata, design=design, alpha=alpha)


def differential_expression(
    adata: Any,
    *,
    alpha: float,
    min_total_count: int,
    min_donors: int,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, list[CellTypeSummary]]:
    """Test every cell type of a pseudobulk AnnData for genes changing with age.

    Parameters
    ----------
    adata
        Pseudobulk samples (see :func:`validate_pseudobulk`); not modified.
    alpha
        BH-adjusted p-value below which a gene counts as up or down.
    min_total_count
        Genes with fewer summed counts in a cell type are not tested there.
    min_donors
        Cell types with fewer donors of known age are skipped.
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
    cell_types = sorted(set(map(str, names)) | set(labels.astype(str)))
    jobs: list[tuple[pd.DataFrame, pd.DataFrame, CellTypeSummary]] = []
    summaries = []
    for ct in cell_types:
        counts, metadata, summary = prepare_cell_type(
            adata, ct, min_total_count=min_total_count, min_donors=min_donors
        )
        summaries.append(summary)
        if summary.skipped:
            log.warning("cell type %r skipped: %s", ct, summary.skipped)
        else:
            jobs.append((counts, metadata, summary))
    symbols = pd.Series(adata.var["feature_name"].astype(str).to_numpy(), index=adata.var_names)
    args = [(c, m, s.design, alpha) for c, m, s in jobs]
    workers = max(1, min(n_jobs, len(jobs)))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            fitted = list(pool.map(_run_one, *zip(*args, strict=True)))
    else:
        fitted = [_run_one(*a) for a in args]
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


def slug(label: str) -> str:
    """Return a file-name-safe version of a cell type label.

    Parameters
    ----------
    label
        E.g. ``"central memory CD4-positive, alpha-beta T cell"``.

    Returns
    -------
    str
        Lower case, runs of other characters replaced by ``_``
        (``"central_memory_cd4_positive_alpha_beta_t_cell"``).
    """
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "cell_type"


def unique_slugs(labels: list[str]) -> dict[str, str]:
    """Map labels to distinct file-name-safe slugs (a numeric suffix on a clash).

    Parameters
    ----------
    labels
        Distinct labels.

    Returns
    -------
    dict
        Label to slug.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = candidate = slug(label)
        i = 2
        while candidate in used:
            candidate = f"{base}_{i}"
            i += 1
        used.add(candidate)
        out[label] = candidate
    return out


def volcano_figure(results: pd.DataFrame, *, cell_type: str, alpha: float) -> Any:
    """Draw a volcano plot of one cell type's age effects.

    Parameters
    ----------
    results
        Rows of one cell type from :func:`differential_expression`.
    cell_type
        Its label (title).
    alpha
        Adjusted p-value cut that colours significant genes.

    Returns
    -------
    matplotlib.figure.Figure
        log2 fold change per SD of age against -log10 p-value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    lfc = results["log2FoldChange"].to_numpy()
    p = results["pvalue"].to_numpy()
    y = -np.log10(np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0))
    sig = (results["padj"] < alpha).to_numpy()
    colour = np.where(sig & (lfc > 0), "tab:red", np.where(sig & (lfc < 0), "tab:blue", "0.7"))
    ax.scatter(lfc, y, c=colour, s=6, linewidths=0, rasterized=False)
    ax.axvline(0, color="0.5", lw=0.5)
    ax.set_xlabel("log2 fold change per SD of age")
    ax.set_ylabel("-log10 p-value")
    ax.set_title(
        f"{cell_type}\n{int((sig & (lfc > 0)).sum())} up, {int((sig & (lfc < 0)).sum())} down"
        f" (padj < {alpha:g})",
        fontsize=9,
    )
    return fig


def counts_figure(counts: pd.DataFrame) -> Any:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(counts), 1) + 1.2))
    pos = np.arange(len(counts))
    ax.barh(pos, counts["n_up"], color="tab:red", label="up with age")
    ax.barh(pos, -counts["n_down"], color="tab:blue", label="down with age")
    ax.set_yticks(pos, counts["cell_type"], fontsize=8)
    ax.axvline(0, color="0.3", lw=0.5)
    ax.set_xlabel("significant genes (down < 0 < up)")
    ax.legend(fontsize=8, loc="lower right")
    return fig
