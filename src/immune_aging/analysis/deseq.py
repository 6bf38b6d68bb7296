"""The DESeq2 fit of one cell type: PyDESeq2's GLM and a Wald test on age.

:func:`age_wald_test` fits the negative-binomial GLM of the design (DESeq2's
size factors, dispersion trend and shrinkage, independent filtering and Cook's
outlier refit as in the reference method) and tests the ``age_scaled``
coefficient with a numeric contrast (PyDESeq2 0.5 names the design's columns
itself). :func:`run_one` is the unit of work that
:func:`immune_aging.analysis.de.differential_expression` maps over cell types.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def age_wald_test(
    counts: pd.DataFrame, metadata: pd.DataFrame, *, design: str, alpha: float
) -> tuple[pd.DataFrame, list[str]]:
    """Fit PyDESeq2 and run the Wald test on the ``age_scaled`` coefficient.

    Parameters
    ----------
    counts
        Samples x genes non-negative integer counts.
    metadata
        Per sample: ``age_scaled`` (numeric) and the design's categorical covariates.
    design
        Formula, ``"~age_scaled"`` plus covariates (``"~age_scaled + sex + pool"``).
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


def run_one(job: tuple[pd.DataFrame, pd.DataFrame, str, float]) -> tuple[pd.DataFrame, list[str]]:
    """Worker: :func:`age_wald_test` of one cell type, single-threaded BLAS.

    ``job`` is ``(counts, metadata, design, alpha)``.

    PyDESeq2 fits thousands of tiny per-gene models, which multi-threaded BLAS
    only slows down. The limit applies to libraries already loaded, so PyDESeq2
    (which loads SciPy's BLAS) is imported first.
    """
    from pydeseq2 import dds, ds  # noqa: F401
    from threadpoolctl import threadpool_limits

    counts, metadata, design, alpha = job
    with threadpool_limits(1):
        return age_wald_test(counts, metadata, design=design, alpha=alpha)
