"""Doublet detection with Scrublet, per group of cells (stage ``qc``).

Scrublet (:func:`immune_aging.analysis.scrublet.scrublet`, the method of
:func:`scanpy.pp.scrublet` with its defaults, computed faster) runs separately per
group (donor, or 10x pool) on the cells that passed every QC threshold rule (empty
droplets, dying cells and red-cell contamination are removed first, so they do not
shape the doublet simulation; the seed workflow and sc-best-practices use the same
order). Groups with fewer than ``min_cells`` such cells are not scored: their cells
get ``doublet_score`` NaN and ``predicted_doublet`` False. The doublet call uses the
threshold Scrublet itself would pick: the minimum between the two modes of the
simulated-doublet score histogram (Glasbey's minimum method, as
``skimage.filters.threshold_minimum``), computed here so that scikit-image is not
needed. A group whose histogram has no two modes calls no doublet. Neighbours are
exact at every group size.

Every group is scored on one BLAS thread with the same seed, so the scores do not
depend on how many groups run in parallel (:func:`immune_aging.executor.map_ordered`).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from immune_aging.analysis.scrublet import scrublet
from immune_aging.errors import InputError
from immune_aging.executor import map_ordered

log = logging.getLogger(__name__)

#: below this many cells in all scored groups together, Scrublet runs in-process: a
#: spawned worker spends about 1 s importing its modules, more than it saves on
#: ~0.15 ms per cell
PARALLEL_MIN_CELLS = 20_000


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


def _scrub(job: tuple[sparse.csr_matrix, float, int]) -> tuple[np.ndarray, np.ndarray] | str:
    """Scrublet scores of one group: (observed, simulated-doublet) scores, or why it failed."""
    try:
        return _scrub_group(*job)
    except ValueError as exc:  # e.g. fewer variable genes than principal components
        return f"Scrublet failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _scrub_group(
    counts: sparse.csr_matrix, expected_doublet_rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    result = scrublet(counts, expected_doublet_rate=expected_doublet_rate, seed=seed)
    return result.obs, result.sim


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
        Scrublet raises ``ValueError``, e.g. with too few variable genes, is reported
        there, not scored).
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
    results = map_ordered(_scrub, jobs, workers, label="Scrublet groups", total=len(where))
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
