"""The threshold rules of cell quality control (stage ``qc``).

Each rule is a boolean ``fail_<rule>`` column over the cells' QC metrics
(:func:`immune_aging.analysis.qc.qc_metrics`):

``fixed``
    keep ``min_genes < n_genes < max_genes``, ``min_counts < total < max_counts``,
    ``pct_mt < max_pct_mt``, ``pct_hb < max_pct_hb`` (the seed's limits).
``mad``
    within each group (donor, or pool), keep cells within ``n_mads`` median
    absolute deviations (unscaled MAD, as in sc-best-practices) of the median of
    ``log1p(total_counts)`` and of ``log1p(n_genes)`` (both sides), and with
    ``pct_mt`` at most ``n_mads`` MADs above its median. Hemoglobin keeps the
    fixed ``max_pct_hb`` limit: in clean blood its MAD is zero. The
    ``min_*``/``max_*`` rule columns then mean "below/above the window".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from immune_aging.errors import InputError


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


@dataclass(frozen=True)
class Rules(Limits):
    """The settings of the threshold rules (``params.yaml: qc``).

    The fixed limits (:class:`Limits`; ``max_pct_hb`` also applies with ``mad``),
    and:

    Attributes
    ----------
    thresholds
        ``"fixed"`` limits or ``"mad"`` windows (see the module docstring).
    n_mads
        Width of the MAD windows.
    """

    thresholds: Literal["fixed", "mad"]
    n_mads: float

    @classmethod
    def of(cls, settings: Any) -> Rules:
        """Take the rules' settings from an object holding them by name.

        Parameters
        ----------
        settings
            E.g. the ``qc`` section of ``params.yaml``
            (:class:`immune_aging.params.QcParams`).

        Returns
        -------
        Rules
            Its ``thresholds``, limits and ``n_mads``.
        """
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def threshold_rules(
    metrics: pd.DataFrame, *, groups: pd.Series, rules: Rules
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flag cells failing each threshold rule.

    Parameters
    ----------
    metrics
        Output of :func:`qc_metrics`.
    groups
        Group label per cell (donor or pool), aligned with ``metrics``; used by
        ``mad``.
    rules
        The rules' settings.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(fails, limits)``: one boolean ``fail_<rule>`` column per rule of
        :data:`THRESHOLD_RULES`; and the limits used, one row per group (one row
        ``"all"`` with ``fixed``), in cells, genes and percent.
    """
    r = rules
    if r.thresholds not in ("fixed", "mad"):
        raise InputError(f"qc.thresholds: expected 'fixed' or 'mad', got {r.thresholds!r}")
    for low, high, lo_name, hi_name in (
        (r.min_genes, r.max_genes, "min_genes", "max_genes"),
        (r.min_counts, r.max_counts, "min_counts", "max_counts"),
    ):
        if r.thresholds == "fixed" and low >= high:
            raise InputError(f"qc.{lo_name} ({low}) must be below qc.{hi_name} ({high})")
    n_genes = metrics["n_genes_by_counts"].to_numpy(dtype=np.float64)
    total = metrics["total_counts"].to_numpy(dtype=np.float64)
    pct_mt = metrics["pct_counts_mt"].to_numpy(dtype=np.float64)
    pct_hb = metrics["pct_counts_hb"].to_numpy(dtype=np.float64)
    labels = pd.Series(groups).astype(str).to_numpy()
    if len(labels) != len(metrics):
        raise InputError(f"groups has {len(labels)} entries, metrics {len(metrics)} cells")
    rows: dict[str, Limits] = {}
    if r.thresholds == "fixed":
        rows["all"] = Limits(**{f.name: getattr(r, f.name) for f in dataclasses.fields(Limits)})
        fail = {
            "fail_min_genes": ~(n_genes > r.min_genes),
            "fail_max_genes": ~(n_genes < r.max_genes),
            "fail_min_counts": ~(total > r.min_counts),
            "fail_max_counts": ~(total < r.max_counts),
            "fail_pct_mt": ~(pct_mt < r.max_pct_mt),
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
            lo_g, hi_g = _mad_window(log_genes[sel], r.n_mads)
            lo_c, hi_c = _mad_window(log_total[sel], r.n_mads)
            _, hi_mt = _mad_window(pct_mt[sel], r.n_mads)
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
                max_pct_hb=r.max_pct_hb,
            )
    fail["fail_pct_hb"] = ~(pct_hb < r.max_pct_hb)
    fails = pd.DataFrame(fail, index=metrics.index)
    table = pd.DataFrame(
        [dataclasses.asdict(v) for v in rows.values()], index=pd.Index(list(rows), name="group")
    )
    return fails, table
