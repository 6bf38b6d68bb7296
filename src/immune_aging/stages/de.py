"""Stage ``de``: genes changing with donor age, per cell type (PyDESeq2 Wald test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from immune_aging import io, stage
from immune_aging.analysis import de
from immune_aging.errors import InputError
from immune_aging.threads import n_threads

NAME = "de"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths."""
    p.add_argument("--input", type=Path, required=True, help="pseudobulk h5ad")
    p.add_argument("--out", type=Path, required=True, help="results parquet")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    p.add_argument("--plots", type=Path, required=True, help="plots folder")


def body(args: argparse.Namespace, params: Any) -> None:
    """Read pseudobulk counts, test every cell type, write results, metrics and plots."""
    adata = io.read_h5ad(args.input)
    de.validate_pseudobulk(adata, source=str(args.input))
    results, summaries = de.differential_expression(
        adata,
        alpha=params.alpha,
        min_total_count=params.min_total_count,
        min_donors=params.min_donors,
        n_jobs=n_threads(),
    )
    tested = [s for s in summaries if not s.skipped]
    if not tested:
        first = summaries[0] if summaries else None
        example = f" (e.g. {first.cell_type!r}: {first.skipped})" if first else ""
        raise InputError(
            f"{args.input}: no cell type can be tested for age effects: all {len(summaries)} "
            f"skipped{example}"
        )
    metrics = {
        "alpha": params.alpha,
        "cell_types": {s.cell_type: s.as_dict() for s in summaries},
        "n_cell_types_tested": len(tested),
        "n_cell_types_skipped": len(summaries) - len(tested),
        "n_tests": len(results),
        "n_up": sum(s.n_up for s in tested),
        "n_down": sum(s.n_down for s in tested),
    }
    counts = pd.DataFrame(
        {
            "cell_type": [s.cell_type for s in tested],
            "n_up": [s.n_up for s in tested],
            "n_down": [s.n_down for s in tested],
        }
    )
    with io.Outputs() as out:
        io.write_parquet(results, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        counts.to_csv(plots / "de_counts.csv", index=False)
        io.save_figure(de.counts_figure(counts), plots / "de_counts.png")
        names = de.unique_slugs([s.cell_type for s in tested])
        for s in tested:
            rows = results[results["cell_type"] == s.cell_type]
            fig = de.volcano_figure(rows, cell_type=s.cell_type, alpha=params.alpha)
            io.save_figure(fig, plots / f"volcano_{names[s.cell_type]}.png")


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
