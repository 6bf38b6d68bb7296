"""The DESeq2 fit of one cell type: PyDESeq2's GLM and a Wald test on age.

:func:`age_wald_test` fits the negative-binomial GLM of the design (DESeq2's
size factors, dispersion trend and shrinkage, independent filtering and Cook's
outlier refit as in the reference method) and tests the ``age_scaled``
coefficient with a numeric contrast (PyDESeq2 0.5 names the design's columns
itself). :func:`run_one` is the unit of work that
:func:`immune_aging.analysis.de.differential_expression` maps over cell types.

Two settings of DESeq2 matter for calibration on pseudobulk (measured in
``bench/results/science.md``):

- ``min_mu``, the floor on fitted means during the fit (0.5 in DESeq2 and
  PyDESeq2, meant for bulk RNA-seq). Where a cell type's pseudobulk libraries
  shrink with age (naive T cells thin out), most fitted means of a low-count gene
  in old donors fall below it, and the floor biases the age slope of such genes
  upwards: 15 % of null genes had p < 0.05. DESeq2's advice for low counts,
  1e-6, removes the bias.
- ``t_test``: p-values of the Wald statistic from Student's t with n - p degrees
  of freedom (DESeq2's ``useT``) instead of the normal. With ~45 donors the
  normal's tail is too thin where BH draws its line (null genes at p < 1e-4 were
  2.6 times too many); the t tail is right.
- ``null``: ``empirical`` rescales the Wald statistics by the spread of their
  central part (:func:`empirical_null_scale`). DESeq2's negative binomial takes
  the donors' variation as gamma; log-normal variation (as biological variation
  between donors tends to be) has a heavier tail, and its dispersion MLE
  understates the variance: at hundreds of donors the statistics of null genes
  with more than a few counts spread 4-8 % wider than the model says, which
  doubles or triples the null genes past BH's cut (``bench/results/science-fdr.md``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd


def age_wald_test(
    counts: pd.DataFrame,
    metadata: pd.DataFrame,
    *,
    design: str,
    alpha: float,
    min_mu: float = 0.5,
    t_test: bool = False,
    solver: str = "batched",
    null: str = "theoretical",
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
    min_mu
        Floor on fitted means during the fit (PyDESeq2's ``min_mu``).
    t_test
        Whether p-values come from Student's t with (samples - coefficients)
        degrees of freedom rather than the normal; Cook's filtering and independent
        filtering then run on those p-values.
    solver
        ``batched``: PyDESeq2 with its per-gene fits batched over genes
        (:class:`immune_aging.analysis.deseq_batched.BatchedInference`);
        ``pydeseq2``: PyDESeq2's own per-gene fits (the reference, much slower).
    null
        ``theoretical``: p-values from the Wald statistics as they are;
        ``empirical``: from the statistics divided by their empirical null scale
        (:func:`empirical_null_scale`), ``lfcSE`` multiplied by it.

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

    if solver == "batched":
        from immune_aging.analysis.deseq_batched import BatchedInference

        inference = BatchedInference()
    elif solver == "pydeseq2":
        from pydeseq2.default_inference import DefaultInference

        inference = DefaultInference(n_cpus=1)
    else:
        raise ValueError(f"unknown solver {solver!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dds = DeseqDataSet(
            counts=counts.copy(),
            metadata=metadata.copy(),
            design=design,
            refit_cooks=True,
            min_mu=min_mu,
            inference=inference,
            quiet=True,
        )
        dds.deseq2()
        columns = list(dds.varm["LFC"].columns)
        if "age_scaled" not in columns:  # pragma: no cover - formulaic naming changed
            raise RuntimeError(f"no age_scaled coefficient among {columns}")
        contrast = np.array([1.0 if c == "age_scaled" else 0.0 for c in columns])
        stats = DeseqStats(dds, contrast=contrast, alpha=alpha, quiet=True, inference=inference)
        if null not in ("theoretical", "empirical"):
            raise ValueError(f"unknown null {null!r}")
        if t_test or null == "empirical":
            from scipy.stats import norm
            from scipy.stats import t as student

            stats.run_wald_test()
            stat = stats.statistics.to_numpy(dtype=np.float64)
            if null == "empirical":
                scale = empirical_null_scale(stat, dds.var["_normed_means"].to_numpy())
                stat = stat / scale
                stats.statistics = pd.Series(stat, index=stats.statistics.index)
                stats.SE = stats.SE * scale
            df = counts.shape[0] - len(columns)
            p = 2.0 * (student.sf(np.abs(stat), df) if t_test else norm.sf(np.abs(stat)))
            stats.p_values = pd.Series(
                np.where(np.isnan(stats.p_values.to_numpy()), np.nan, p),
                index=stats.p_values.index,
            )
        stats.summary()  # Cook's and independent filtering on the p-values above
    messages = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    res = stats.results_df[["baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]]
    return res.astype(np.float64), messages


#: Fewest genes per mean-count stratum of :func:`empirical_null_scale`, and most strata.
NULL_STRATUM_GENES = 400
NULL_STRATA = 5


def empirical_null_scale(
    stat: np.ndarray,
    base_mean: np.ndarray,
    *,
    min_genes: int = NULL_STRATUM_GENES,
    max_strata: int = NULL_STRATA,
) -> np.ndarray:
    """Spread of the central Wald statistics, per stratum of mean count, at least 1.

    Most genes do not change with age, so the middle of the statistics is the null
    distribution's (Efron's empirical null): its scale, estimated by the normalised
    median absolute deviation, is 1 when the model's standard errors are right.
    The misfit grows with the count (at low counts Poisson noise dominates and the
    model is right), so the scale is estimated in strata of equal numbers of genes
    by mean count: as many as hold ``min_genes`` genes each, at most ``max_strata``.
    A scale under 1 is taken as 1: the statistics are never enlarged.

    Parameters
    ----------
    stat
        Wald statistics (NaN where a gene has none).
    base_mean
        Mean normalised count per gene.
    min_genes, max_strata
        Stratum size and count (see above).

    Returns
    -------
    numpy.ndarray
        Scale per gene (1 where ``stat`` is NaN).
    """
    stat = np.asarray(stat, dtype=np.float64)
    base_mean = np.asarray(base_mean, dtype=np.float64)
    scale = np.ones(len(stat))
    ok = np.flatnonzero(np.isfinite(stat))
    n_strata = max(1, min(max_strata, len(ok) // min_genes))
    order = ok[np.argsort(base_mean[ok], kind="stable")]
    for part in np.array_split(order, n_strata):
        z = stat[part]
        mad = 1.4826 * float(np.median(np.abs(z - np.median(z)))) if len(z) else 1.0
        scale[part] = max(1.0, mad)
    return scale


def run_one(
    job: tuple[pd.DataFrame, pd.DataFrame, str, float, dict[str, Any]],
) -> tuple[pd.DataFrame, list[str]]:
    """Worker: :func:`age_wald_test` of one cell type, single-threaded BLAS.

    ``job`` is ``(counts, metadata, design, alpha, options)``, options being the
    keyword arguments ``min_mu``, ``t_test``, ``solver`` and ``null``.

    PyDESeq2 fits thousands of tiny per-gene models, which multi-threaded BLAS
    only slows down. The limit applies to libraries already loaded, so PyDESeq2
    (which loads SciPy's BLAS) is imported first. Freed memory is kept for reuse
    (:func:`_keep_freed_memory`).
    """
    from pydeseq2 import dds, ds  # noqa: F401
    from threadpoolctl import threadpool_limits

    _keep_freed_memory()
    counts, metadata, design, alpha, options = job
    with threadpool_limits(1):
        return age_wald_test(counts, metadata, design=design, alpha=alpha, **options)


def _keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed blocks of up to 256 MiB instead of unmapping them.

    The batched fits allocate many temporaries of samples x genes (tens of MB); by
    default glibc maps each anew from the kernel and unmaps it when freed, and the
    page faults of mapping them cost about a sixth of the fit's CPU time at 981
    donors. Elsewhere than glibc this does nothing; results do not depend on it.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:  # pragma: no cover - no C library found
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 * 2**20)
    mallopt(m_trim_threshold, 1024 * 2**20)
