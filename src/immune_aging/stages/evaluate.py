"""Stage ``evaluate``: score the results against the simulation's ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from immune_aging import io, stage
from immune_aging.analysis import evaluate
from immune_aging.errors import InputError

NAME = "evaluate"
TRUTH_FILE = "truth.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths."""
    p.add_argument("--raw", type=Path, required=True, help="data folder holding truth.json")
    p.add_argument("--de", type=Path, required=True, help="DE results parquet")
    p.add_argument("--gsea", type=Path, required=True, help="GSEA results parquet")
    p.add_argument("--ora", type=Path, required=True, help="ORA results parquet")
    p.add_argument("--predict", type=Path, required=True, help="predict metrics JSON")
    p.add_argument("--clusters", type=Path, required=True, help="clusters parquet")
    p.add_argument("--cells", type=Path, required=True, help="QC cells parquet")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")


def body(args: argparse.Namespace, params: Any) -> None:
    """Read the truth (when there is one) and every result, and write the scores."""
    truth_path = args.raw / TRUTH_FILE
    if not truth_path.is_file():
        scores = evaluate.empty_scores()
    else:
        truth = io.read_json(truth_path)
        evaluate.validate_truth(truth, source=str(truth_path))
        predict_metrics = io.read_json(args.predict)
        if not isinstance(predict_metrics, dict):
            raise InputError(f"{args.predict}: expected a JSON object of cell types")
        cells = io.read_parquet(args.cells, ("predicted_doublet",))
        if cells.index.name != "cell_id" and "cell_id" in cells.columns:
            cells = cells.set_index("cell_id")
        scores = evaluate.evaluate(
            truth,
            de_results=io.read_parquet(
                args.de, ("cell_type", "gene_id", "log2FoldChange", "padj")
            ),
            gsea_results=io.read_parquet(args.gsea, ("cell_type", "term", "nes", "fdr")),
            ora_results=io.read_parquet(args.ora, ("cell_type", "direction", "term", "padj")),
            predict_metrics=predict_metrics,
            clusters=io.read_parquet(args.clusters, ("leiden", "cell_type")),
            cells=cells,
            alpha=params.alpha,
        )
    with io.Outputs() as out:
        io.write_json(scores, out.file(args.metrics))


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
