"""Cell quality control and doublet detection (stage ``qc``).

Order of operations, per cell:

1. The per-cell QC metrics of :func:`scanpy.pp.calculate_qc_metrics`; mitochondrial,
   ribosomal and hemoglobin genes are recognised by symbol
   (:mod:`immune_aging.analysis.genes`).
2. Threshold rules, each a boolean ``fail_<rule>`` column:

   ``fixed``
       keep ``min_genes < n_genes < max_genes``, ``min_counts < total < max_counts``,
       ``pct_mt < max_pct_mt``, ``pct_hb < max_pct_hb`` (the seed's limits).
   ``mad``
       within each Scrublet group (donor, or pool), keep cells within ``n_mads``
       median absolute deviations (unscaled MAD, as in sc-best-practices) of the
       median of ``log1p(total_counts)`` and of ``log1p(n_genes)`` (both sides),
       and with ``pct_mt`` at most ``n_mads`` MADs above its median. Hemoglobin
       keeps the fixed ``max_pct_hb`` limit: in clean blood its MAD is zero.
       The ``min_*``/``max_*`` rule columns then mean "below/above the window".

3. Doublets with Scrublet (:func:`scanpy.pp.scrublet`), run separately per group
   on the cells that passed every threshold rule (empty droplets, dying cells and
   red-cell contamination are removed first, so they do not shape the doublet
   simulation; the seed workflow and sc-best-practices use the same order).
   Groups with fewer than ``min_cells`` such cells are not scored: their cells get
   ``doublet_score`` NaN and ``predicted_doublet`` False. The doublet call uses
   the threshold Scrublet itself would pick: the minimum between the two modes of
   the simulated-doublet score histogram (Glasbey's minimum method, as
   ``skimage.filters.threshold_minimum``), computed here so that scikit-image is
   not needed. A group whose histogram has no two modes calls no doublet.
   Neighbours are exact (scikit-learn) at every group size: scanpy would switch to
   approximate pynndescent above about 1,400 cells, whose compilation costs more
   than exact search saves at donor and pool sizes.

Every group is scored with one BLAS/numba thread and the same seed, so the
scores do not depend on how many groups run in parallel.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from immune_aging.analysis import genes
from immune_aging.errors import InputError

log = logging.getLogger(__name__)

QC_VARS = ("mt", "ribo", "hb")
#: per-cell metric columns written to cells.parquet
METRIC_COLUMNS = (
    "n_genes_by_counts",
    "total_counts",
    "total_counts_mt",
    "pct_counts_mt",
    "total_counts_ribo",
    "pct_counts_ribo",
    "total_counts_hb",
    "pct_counts_hb",
)
THRESHOLD_RULES = (
    "min_genes",
    "max_genes",
    "min_counts",
    "max_counts",
    "pct_mt",
    "pct_hb",
)
RULES = (*THRESHOLD_RULES, "doublet")
#: below this many cells in all scored groups together, Scrublet runs in-process: a
#: spawned worker spends about 10 s importing scanpy and compiling numba code, more
#: than it saves on ~1 ms per cell
PARALLEL_MIN_CELLS = 50_000


def qc_metrics(adata: ad.AnnData) -> pd.DataFrame:
    """Compute per-cell QC metrics on raw counts.

    The per-cell metrics of :func:`scanpy.pp.calculate_qc_metrics` with
    ``qc_vars=["mt", "ribo", "hb"]`` (same names and definitions; a unit test
    checks equality), computed directly: scanpy's function also derives per-gene
    metrics through a CSC copy of the matrix, twice the memory of the counts.

    Parameters
    ----------
    adata
        Raw counts in ``X``; gene symbols in ``var['feature_name']`` (not modified).

    Returns
    -------
    pandas.DataFrame
        One row per cell (index ``obs_names``), columns :data:`METRIC_COLUMNS`.

    Raises
    ------
    InputError
        If ``var['feature_name']`` is missing.
    """
    if "feature_name" not in adata.var.columns:
        raise InputError("var column 'feature_name' missing")
    flags = genes.classify_genes(adata.var["feature_name"])[list(QC_VARS)]
    X = adata.X
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)  # no copy for CSR input
        n_genes = np.diff(X.indptr).astype(np.int64)
        if _has_explicit_zeros(X):
            rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
            n_genes -= np.bincount(rows[X.data == 0], minlength=X.shape[0])
    else:
        X = np.asarray(X)
        n_genes = (X != 0).sum(axis=1).astype(np.int64)
    # in the matrix's own float type: a float64 operand would upcast a copy of X
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    by_class = np.asarray(X @ flags.to_numpy(dtype=dtype), dtype=np.float64)
    out = pd.DataFrame(
        {"n_genes_by_counts": n_genes, "total_counts": total}, index=adata.obs_names
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, name in enumerate(QC_VARS):
            out[f"total_counts_{name}"] = by_class[:, k]
            out[f"pct_counts_{name}"] = by_class[:, k] / total * 100
    out = out.loc[:, list(METRIC_COLUMNS)]
    out.index = out.index.copy()
    log.info(
        "%d cells; %d mitochondrial, %d ribosomal, %d hemoglobin genes (by symbol)",
        len(out),
        int(flags["mt"].sum()),
        int(flags["ribo"].sum()),
        int(flags["hb"].sum()),
    )
    return out


def _has_explicit_zeros(X: Any, block: int = 1 << 24) -> bool:
    data = X.data
    return any((data[lo : lo + block] == 0).any() for lo in range(0, len(data), block))


def _mad_window(values: np.ndarray, n_mads: float) -> tuple[float, float]:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med - n_mads * mad, med + n_mads * mad


@dataclass(frozen=True)
class Limits:
    """Threshold limits of one group (one set for all cells with ``fixed``).

    With ``fixed``, cells pass when ``min_genes < n_genes < max_genes``,
    ``min_counts < total < max_counts``, ``pct_mt < max_pct_mt`` and
    ``pct_hb < max_pct_hb``; with ``mad`` the gene, count and mitochondrial windows
    are closed (a cell on a bound passes).
    """

    min_genes: float
    max_genes: float
    min_counts: float
    max_counts: float
    max_pct_mt: float
    max_pct_hb: float


def threshold_rules(
    metrics: pd.DataFrame,
    *,
    groups: pd.Series,
    thresholds: Literal["fixed", "mad"],
    min_genes: int,
    max_genes: int,
    min_counts: int,
    max_counts: int,
    max_pct_mt: float,
    max_pct_hb: float,
    n_mads: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flag cells failing each threshold rule.

    Parameters
    ----------
    metrics
        Output of :func:`qc_metrics`.
    groups
        Group label per cell (donor or pool), aligned with ``metrics``; used by
        ``mad``.
    thresholds
        ``"fixed"`` limits or ``"mad"`` windows (see the module docstring).
    min_genes, max_genes, min_counts, max_counts, max_pct_mt, max_pct_hb
        Fixed limits (``max_pct_hb`` also applies with ``mad``).
    n_mads
        Width of the MAD windows.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(fails, limits)``: one boolean ``fail_<rule>`` column per rule of
        :data:`THRESHOLD_RULES`; and the limits used, one row per group (one row
        ``"all"`` with ``fixed``), in cells, genes and percent.
    """
    if thresholds not in ("fixed", "mad"):
        raise InputError(f"qc.thresholds: expected 'fixed' or 'mad', got {thresholds!r}")
    for low, high, lo_name, hi_name in (
        (min_genes, max_genes, "min_genes", "max_genes"),
        (min_counts, max_counts, "min_counts", "max_counts"),
    ):
        if thresholds == "fixed" and low >= high:
            raise InputError(f"qc.{lo_name} ({low}) must be below qc.{hi_name} ({high})")
    n_genes = metrics["n_genes_by_counts"].to_numpy(dtype=np.float64)
    total = metrics["total_counts"].to_numpy(dtype=np.float64)
    pct_mt = metrics["pct_counts_mt"].to_numpy(dtype=np.float64)
    pct_hb = metrics["pct_counts_hb"].to_numpy(dtype=np.float64)
    labels = pd.Series(groups).astype(str).to_numpy()
    if len(labels) != len(metrics):
        raise InputError(f"groups has {len(labels)} entries, metrics {len(metrics)} cells")
    rows: dict[str, Limits] = {}
    if thresholds == "fixed":
        rows["all"] = Limits(min_genes, max_genes, min_counts, max_counts, max_pct_mt, max_pct_hb)
        fail = {
            "fail_min_genes": ~(n_genes > min_genes),
            "fail_max_genes": ~(n_genes < max_genes),
            "fail_min_counts": ~(total > min_counts),
            "fail_max_counts": ~(total < max_counts),
            "fail_pct_mt": ~(pct_mt < max_pct_mt),
        }
    else:
        fail = {
            k: np.zeros(len(metrics), dtype=bool)
            for k in (
                "fail_min_genes",
                "fail_max_genes",
                "fail_min_counts",
                "fail_max_counts",
                "fail_pct_mt",
            )
        }
        log_genes, log_total = np.log1p(n_genes), np.log1p(total)
        for group in np.unique(labels):
            sel = labels == group
            lo_g, hi_g = _mad_window(log_genes[sel], n_mads)
            lo_c, hi_c = _mad_window(log_total[sel], n_mads)
            _, hi_mt = _mad_window(pct_mt[sel], n_mads)
            # the windows are closed: a cell on a bound passes
            fail["fail_min_genes"][sel] = log_genes[sel] < lo_g
            fail["fail_max_genes"][sel] = log_genes[sel] > hi_g
            fail["fail_min_counts"][sel] = log_total[sel] < lo_c
            fail["fail_max_counts"][sel] = log_total[sel] > hi_c
            fail["fail_pct_mt"][sel] = pct_mt[sel] > hi_mt
            rows[str(group)] = Limits(
                min_genes=float(np.expm1(lo_g)),
                max_genes=float(np.expm1(hi_g)),
                min_counts=float(np.expm1(lo_c)),
                max_counts=float(np.expm1(hi_c)),
                max_pct_mt=hi_mt,
                max_pct_hb=max_pct_hb,
            )
    fail["fail_pct_hb"] = ~(pct_hb < max_pct_hb)
    fails = pd.DataFrame(fail, index=metrics.index)
    table = pd.DataFrame(
        [dataclasses.asdict(v) for v in rows.values()], index=pd.Index(list(rows), name="group")
    )
    return fails, table


def doublet_threshold(
    sim_scores: np.ndarray, *, nbins: int = 256, max_iter: int = 10_000
) -> float:
    """Return the score between the two modes of the simulated-doublet histogram.

    Glasbey's minimum method, as ``skimage.filters.threshold_minimum`` (which
    Scrublet uses): the histogram over ``[min, max]`` is smoothed with a 3-bin
    running mean until at most two local maxima remain; the threshold is the
    centre of the lowest bin between them.

    Parameters
    ----------
    sim_scores
        Doublet scores of the simulated doublets.
    nbins
        Histogram bins.
    max_iter
        Smoothing passes at most.

    Returns
    -------
    float
        The threshold, or NaN when the histogram does not have exactly two modes.
    """
    values = np.asarray(sim_scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float("nan")
    counts, edges = np.histogram(values, bins=nbins, range=(values.min(), values.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    smooth = counts.astype(np.float64)
    maxima: list[int] = []
    for _ in range(max_iter):
        smooth = ndimage.uniform_filter1d(smooth, 3)
        maxima = _local_maxima(smooth)
        if len(maxima) < 3:
            break
    else:
        return float("nan")
    if len(maxima) != 2:
        return float("nan")
    lowest = int(np.argmin(smooth[maxima[0] : maxima[1] + 1]))
    return float(centers[maxima[0] + lowest])


def _local_maxima(hist: np.ndarray) -> list[int]:
    """Return the indices of local maxima, the first bin of a plateau (as skimage)."""
    maxima = []
    direction = 1
    for i in range(hist.shape[0] - 1):
        if direction > 0:
            if hist[i + 1] < hist[i]:
                direction = -1
                maxima.append(i)
        elif hist[i + 1] > hist[i]:
            direction = 1
    return maxima


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run BLAS, OpenMP and numba code on one thread inside the block."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(before)


def _scrub(job: tuple[sparse.csr_matrix, float, int]) -> tuple[np.ndarray, np.ndarray] | str:
    """Scrublet scores of one group: (observed, simulated-doublet) scores, or why it failed."""
    try:
        return _scrub_group(*job)
    except ValueError as exc:  # e.g. fewer variable genes than principal components
        return f"Scrublet failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _scrub_group(
    counts: sparse.csr_matrix, expected_doublet_rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc

    with _one_thread(), warnings.catch_warnings():
        # the placeholder threshold can leave Scrublet's summary rate at 0/0
        warnings.filterwarnings(
            "ignore", "invalid value encountered in scalar divide", RuntimeWarning
        )
        obs = pd.DataFrame(index=pd.RangeIndex(counts.shape[0]).astype(str))
        result = sc.pp.scrublet(
            ad.AnnData(X=counts, obs=obs),
            expected_doublet_rate=expected_doublet_rate,
            random_state=seed,
            threshold=1.0,  # placeholder: the call is made by doublet_threshold
            use_approx_neighbors=False,  # exact kNN: no pynndescent JIT, same at every size
            verbose=False,
            copy=True,
        )
    scores = result.obs["doublet_score"].to_numpy(dtype=np.float64)
    return scores, np.asarray(result.uns["scrublet"]["doublet_scores_sim"], dtype=np.float64)


def _map_jobs(fn: Callable[[Any], Any], jobs: Iterable[Any], n_jobs: int) -> list[Any]:
    """Return ``[fn(job) for job in jobs]``, in order, over ``n_jobs`` spawned processes.

    Jobs are drawn lazily and at most ``2 * n_jobs`` are in flight, so only a few
    groups' counts exist as copies at any time.
    """
    if n_jobs <= 1:
        return [fn(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # fork is unsafe with OpenMP/numba threads
    results: list[Any] = []
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
        pending: collections.deque[Any] = collections.deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * n_jobs:
                results.append(pending.popleft().result())
        results.extend(future.result() for future in pending)
    return results


def detect_doublets(
    adata: ad.AnnData,
    *,
    groups: pd.Series,
    eligible: np.ndarray,
    expected_doublet_rate: float,
    min_cells: int,
    seed: int,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score doublets with Scrublet, separately per group.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (not modified).
    groups
        Group label per cell (donor or pool), aligned with ``adata.obs``.
    eligible
        Boolean mask of the cells to score (those that passed the threshold rules).
    expected_doublet_rate
        Scrublet's prior doublet rate.
    min_cells
        Groups with fewer eligible cells are not scored.
    seed
        Scrublet's random state (the same for every group).
    n_jobs
        Worker processes; groups run in parallel only when the scored cells
        number at least :data:`PARALLEL_MIN_CELLS` (results do not depend on it).

    Returns
    -------
    tuple of pandas.DataFrame
        ``(cells, groups)``: per cell ``doublet_score`` (NaN when not scored) and
        ``predicted_doublet``; per group ``n_cells`` (eligible), ``scored``,
        ``threshold`` (NaN when not scored or not found), ``n_doublets`` and
        ``note`` (why a group was not scored or called no doublet; a group on which
        Scrublet raises ``ValueError`` is reported there, not scored).
    """
    labels = pd.Series(groups).astype(str).to_numpy()
    eligible = np.asarray(eligible, dtype=bool)
    if len(labels) != adata.n_obs or len(eligible) != adata.n_obs:
        raise InputError(f"groups/eligible do not match the {adata.n_obs} cells")
    X = sparse.csr_matrix(adata.X)
    score = np.full(adata.n_obs, np.nan)
    called = np.zeros(adata.n_obs, dtype=bool)
    summary = []
    where = []
    for group in np.unique(labels):
        rows = np.flatnonzero((labels == group) & eligible)
        scored = len(rows) >= min_cells
        summary.append({"group": group, "n_cells": len(rows), "scored": scored})
        if scored:
            where.append((len(summary) - 1, rows))
    n_scored = sum(len(rows) for _, rows in where)
    workers = min(n_jobs, len(where)) if n_scored >= PARALLEL_MIN_CELLS else 1
    log.info(
        "Scrublet on %d of %d groups (%d cells), %d process(es); %d groups below %d cells",
        len(where),
        len(summary),
        n_scored,
        max(workers, 1),
        len(summary) - len(where),
        min_cells,
    )
    jobs = ((X[rows], expected_doublet_rate, seed) for _, rows in where)
    results = _map_jobs(_scrub, jobs, workers)
    for row in summary:
        note = "" if row["scored"] else f"fewer than {min_cells} cells"
        row.update(threshold=float("nan"), n_doublets=0, note=note)
    for (i, rows), result in zip(where, results, strict=True):
        group = summary[i]["group"]
        if isinstance(result, str):
            log.warning("group %s: %s; not scored", group, result)
            summary[i].update(scored=False, note=result)
            continue
        obs_scores, sim_scores = result
        threshold = doublet_threshold(sim_scores)
        score[rows] = obs_scores
        if np.isfinite(threshold):
            called[rows] = np.nan_to_num(obs_scores, nan=-np.inf) > threshold
        else:
            log.warning("group %s: no doublet threshold found; no doublet called", group)
            summary[i]["note"] = "no threshold: simulated scores not bimodal"
        summary[i].update(threshold=threshold, n_doublets=int(called[rows].sum()))
    cells = pd.DataFrame(
        {"doublet_score": score, "predicted_doublet": called}, index=adata.obs_names.copy()
    )
    columns = ["group", "n_cells", "scored", "threshold", "n_doublets", "note"]
    return cells, pd.DataFrame(summary, columns=columns)


def qc_table(metrics: pd.DataFrame, fails: pd.DataFrame, doublets: pd.DataFrame) -> pd.DataFrame:
    """Assemble the per-cell QC table written to ``cells.parquet``.

    Parameters
    ----------
    metrics
        Output of :func:`qc_metrics`.
    fails
        ``fail_<rule>`` columns of :func:`threshold_rules`.
    doublets
        Per-cell output of :func:`detect_doublets`.

    Returns
    -------
    pandas.DataFrame
        Index ``cell_id``; metrics, ``doublet_score``, ``predicted_doublet``, one
        ``fail_<rule>`` column per rule of :data:`RULES`, and ``keep`` (no rule
        failed).
    """
    table = pd.concat([metrics, doublets], axis=1)
    for col in fails.columns:
        table[col] = fails[col].to_numpy(dtype=bool)
    table["fail_doublet"] = doublets["predicted_doublet"].to_numpy(dtype=bool)
    table["keep"] = ~table[[f"fail_{r}" for r in RULES]].any(axis=1)
    table.index = pd.Index(metrics.index.astype(str), name="cell_id")
    return table


def qc_summary(table: pd.DataFrame, groups: pd.DataFrame, limits: pd.DataFrame) -> dict[str, Any]:
    """Summarise QC for ``metrics/qc.json``.

    Parameters
    ----------
    table
        Output of :func:`qc_table`.
    groups
        Per-group output of :func:`detect_doublets`.
    limits
        Limits table of :func:`threshold_rules`.

    Returns
    -------
    dict
        Cells in, cells failing each rule (a cell may fail several), cells removed
        only by thresholds, doublets, groups not scored, cells kept and medians.
    """
    fail_cols = [f"fail_{r}" for r in RULES]
    threshold_fail = table[[f"fail_{r}" for r in THRESHOLD_RULES]].any(axis=1)
    not_scored = groups.loc[~groups["scored"]]
    limits_out: dict[str, Any]
    if list(limits.index) == ["all"]:
        limits_out = {k: float(v) for k, v in limits.loc["all"].items()}
    else:
        limits_out = {f"median_{k}": float(v) for k, v in limits.median().items()}
    return {
        "cells_in": len(table),
        "limits": limits_out,
        "cells_failing": {c.removeprefix("fail_"): int(table[c].sum()) for c in fail_cols},
        "cells_failing_thresholds": int(threshold_fail.sum()),
        "doublets_found": int(table["predicted_doublet"].sum()),
        "doublet_rate_scored": float(table["predicted_doublet"].sum())
        / max(1, int(table["doublet_score"].notna().sum())),
        "groups": len(groups),
        "groups_scored": int(groups["scored"].sum()),
        "groups_not_scored": len(not_scored),
        "cells_in_groups_not_scored": int(not_scored["n_cells"].sum()),
        "groups_without_threshold": int(
            (groups["scored"] & ~np.isfinite(groups["threshold"].to_numpy(dtype=float))).sum()
        ),
        "cells_kept": int(table["keep"].sum()),
        "fraction_kept": float(table["keep"].mean()) if len(table) else 0.0,
        "median_n_genes": float(table["n_genes_by_counts"].median()),
        "median_total_counts": float(table["total_counts"].median()),
        "median_pct_mt": float(table["pct_counts_mt"].median()),
    }


# --------------------------------------------------------------------------- figures


def _sample(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(table) <= n:
        return table
    rng = np.random.default_rng(seed)
    return table.iloc[np.sort(rng.choice(len(table), n, replace=False))]


def _violin_stats(values: np.ndarray, bins: int = 200) -> dict[str, Any]:
    """Violin outline from a smoothed histogram (fast on a million cells)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-9
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    density = ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)
    return {
        "coords": (edges[:-1] + edges[1:]) / 2,
        "vals": density / max(density.max(), 1e-12),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": lo,
        "max": hi,
    }


def plot_violins(
    table: pd.DataFrame, *, limits: pd.DataFrame, max_cells: int = 50_000, seed: int = 0
) -> Any:
    """Violins of genes, counts, mitochondrial and hemoglobin share: all vs kept cells.

    Parameters
    ----------
    table
        Output of :func:`qc_table`.
    limits
        Limits table of :func:`threshold_rules` (drawn as lines when fixed).
    max_cells
        Cells drawn at most (a seeded random sample).
    seed
        Sampling seed.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    data = _sample(table, max_cells, seed)
    panels = [
        ("n_genes_by_counts", "genes detected", ("min_genes", "max_genes")),
        ("total_counts", "total counts", ("min_counts", "max_counts")),
        ("pct_counts_mt", "% mitochondrial", ("max_pct_mt",)),
        ("pct_counts_hb", "% hemoglobin", ("max_pct_hb",)),
    ]
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, len(panels))
    fixed = list(limits.index) == ["all"]
    for ax, (col, label, keys) in zip(axes, panels, strict=True):
        series = [data[col].to_numpy(float), data.loc[data["keep"], col].to_numpy(float)]
        stats = [_violin_stats(v) for v in series if v.size]
        if stats:
            ax.violin(stats, positions=[1, 2][: len(stats)], showmedians=True)
        ax.set_xticks([1, 2], ["all", "kept"])
        ax.set_title(label)
        if fixed:
            for key in keys:
                ax.axhline(float(limits.loc["all", key]), color="red", linestyle="--", lw=1)
    fig.suptitle("QC metrics per cell" + ("" if fixed else " (MAD limits differ per group)"))
    return fig


def plot_counts_vs_genes(table: pd.DataFrame, *, max_cells: int = 50_000, seed: int = 0) -> Any:
    """Scatter of total counts against genes detected, coloured by % mitochondrial.

    Parameters
    ----------
    table
        Output of :func:`qc_table`.
    max_cells
        Cells drawn at most (a seeded random sample).
    seed
        Sampling seed.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    data = _sample(table, max_cells, seed)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    points = ax.scatter(
        data["total_counts"],
        data["n_genes_by_counts"],
        c=data["pct_counts_mt"],
        s=3,
        cmap="viridis",
        rasterized=True,
    )
    fig.colorbar(points, ax=ax, label="% mitochondrial")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("total counts")
    ax.set_ylabel("genes detected")
    return fig


def histogram_table(values: Sequence[float] | np.ndarray, *, bins: int = 50) -> pd.DataFrame:
    """Bin values into a histogram table.

    Parameters
    ----------
    values
        Values; NaN are ignored.
    bins
        Number of equal-width bins over the finite range.

    Returns
    -------
    pandas.DataFrame
        Columns ``bin_left``, ``bin_right``, ``n_cells``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return pd.DataFrame({"bin_left": [], "bin_right": [], "n_cells": []})
    lo, hi = float(v.min()), float(v.max())
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    return pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "n_cells": counts})


def plot_histogram(
    hist: pd.DataFrame,
    *,
    xlabel: str,
    cutoff: float | None = None,
    cutoff_label: str = "limit",
    log_y: bool = True,
) -> Any:
    """Draw a histogram table from :func:`histogram_table`.

    Parameters
    ----------
    hist
        The binned counts.
    xlabel
        Axis label.
    cutoff
        A vertical line to draw (e.g. the hemoglobin limit), or None.
    cutoff_label
        Legend text of the line (its value is appended).
    log_y
        Logarithmic count axis (shows small contaminated populations).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if len(hist):
        widths = hist["bin_right"] - hist["bin_left"]
        ax.bar(hist["bin_left"], hist["n_cells"], width=widths, align="edge", linewidth=0)
    if cutoff is not None and np.isfinite(cutoff):
        ax.axvline(cutoff, color="red", linestyle="--", lw=1, label=f"{cutoff_label} {cutoff:.3g}")
        ax.legend()
    if log_y:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cells")
    return fig
