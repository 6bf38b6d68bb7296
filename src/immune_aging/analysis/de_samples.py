"""The DESeq2 inputs of one cell type, and what happened to it.

:func:`prepare_cell_type` builds a cell type's counts and design (donors of known
age, the age z-scored, covariates with more than one level) or records why it
cannot be tested; :func:`expression_ratio` measures how far a gene is another
cell type's marker. :mod:`immune_aging.analysis.de` runs the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from immune_aging.analysis.age import sex_labels


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
