"""Stage ``qc``: per-cell QC metrics, threshold rules and Scrublet doublets.

Writes a per-cell table (``cells.parquet``), not a copy of the count matrix:
later stages read the counts from ``filtered.h5ad`` and keep the cells whose
``keep`` is true. The method is described in :mod:`immune_aging.analysis.qc`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from immune_aging import io, stage
from immune_aging.analysis import qc
from immune_aging.errors import InputError
from immune_aging.threads import n_threads

STAGE = "qc"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--input", type=Path, required=True, help="filtered h5ad (raw counts)")
    p.add_argument("--out", type=Path, required=True, help="per-cell QC table (parquet)")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def body(args: argparse.Namespace, params: Any) -> None:
    """Compute QC metrics, apply the rules, detect doublets; write the cell table."""
    import matplotlib

    matplotlib.use("Agg")
    adata = io.read_h5ad(args.input)
    group_key = params.pool_key or "donor_id"
    if group_key not in adata.obs.columns:
        what = " (qc.pool_key)" if params.pool_key else ""
        raise InputError(f"{args.input}: obs column {group_key!r}{what} missing")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{args.input}: var column 'feature_name' missing")
    groups = adata.obs[group_key]

    metrics = qc.qc_metrics(adata)
    fails, limits = qc.threshold_rules(
        metrics,
        groups=groups,
        thresholds=params.thresholds,
        min_genes=params.min_genes,
        max_genes=params.max_genes,
        min_counts=params.min_counts,
        max_counts=params.max_counts,
        max_pct_mt=params.max_pct_mt,
        max_pct_hb=params.max_pct_hb,
        n_mads=params.n_mads,
    )
    doublets, scrublet_groups = qc.detect_doublets(
        adata,
        groups=groups,
        eligible=~fails.any(axis=1).to_numpy(),
        expected_doublet_rate=params.expected_doublet_rate,
        min_cells=params.min_cells_scrublet,
        seed=params.seed,
        n_jobs=n_threads(),
    )
    table = qc.qc_table(metrics, fails, doublets)
    if not table["keep"].any():
        worst = fails.sum().idxmax().removeprefix("fail_")
        raise InputError(
            f"{args.input}: no cell passes QC (rule {worst!r} alone removes "
            f"{int(fails.sum().max())} of {len(table)}); check the qc.* limits"
        )
    summary = qc.qc_summary(table, scrublet_groups, limits)
    summary.update(thresholds=params.thresholds, group_key=group_key)
    log.info(
        "%d of %d cells kept; %d doublets; %d groups not scored",
        summary["cells_kept"],
        summary["cells_in"],
        summary["doublets_found"],
        summary["groups_not_scored"],
    )

    hb_hist = qc.histogram_table(table["pct_counts_hb"], bins=50)
    scored = table["doublet_score"].dropna()
    score_hist = qc.histogram_table(scored, bins=50)
    figures = {
        "qc_violins.png": qc.plot_violins(table, limits=limits, seed=params.seed),
        "counts_vs_genes.png": qc.plot_counts_vs_genes(table, seed=params.seed),
        "hemoglobin_hist.png": qc.plot_histogram(
            hb_hist, xlabel="% hemoglobin counts", cutoff=params.max_pct_hb
        ),
        "doublet_scores.png": qc.plot_histogram(
            score_hist,
            xlabel="Scrublet doublet score (scored cells)",
            cutoff_label="median group threshold",
            cutoff=float(np.nanmedian(scrublet_groups["threshold"]))
            if scrublet_groups["threshold"].notna().any()
            else None,
        ),
    }
    with io.Outputs() as out:
        io.write_parquet(table, out.file(args.out))
        io.write_json(summary, out.file(args.metrics))
        plots = out.dir(args.plots)
        hb_hist.to_csv(plots / "hemoglobin_hist.csv", index=False)
        score_hist.to_csv(plots / "doublet_score_hist.csv", index=False)
        scrublet_groups.to_csv(plots / "scrublet_groups.csv", index=False)
        limits.to_csv(plots / "limits.csv")
        for name, fig in figures.items():
            io.save_figure(fig, plots / name)


main = stage.main_for(
    STAGE, "Per-cell QC metrics, threshold rules and doublets.", add_arguments, body
)

if __name__ == "__main__":
    sys.exit(main())
