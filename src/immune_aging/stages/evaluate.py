"""Stage ``evaluate``: score the results against the simulation's ground truth.

On real data (no ``truth.json``) every score is empty. The scores are described
in :mod:`immune_aging.analysis.evaluate`; ``recall_by_effect.csv`` in the plots
folder tabulates DE recall per bin of planted effect size (no rows' counts
without truth).
"""

from __future__ import annotations

import sys

from immune_aging import cell_tables, io, stage
from immune_aging.analysis import evaluate
from immune_aging.errors import InputError
from immune_aging.params import EvaluateParams

NAME = "evaluate"
PATHS = {
    "raw": "data folder holding truth.json",
    "de": "DE results parquet",
    "gsea": "GSEA results parquet",
    "ora": "ORA results parquet",
    "predict": "predict metrics JSON",
    "clusters": "clusters parquet",
    "cells": "QC cells parquet",
    "metrics": "metrics JSON",
    "plots": "folder of the recall-by-effect-size table",
}
TRUTH_FILE = "truth.json"


def body(args, params: EvaluateParams) -> None:
    """Read the truth (when there is one) and every result, and write the scores."""
    truth_path = args.raw / TRUTH_FILE
    recall = evaluate.recall_by_effect(evaluate.empty_de(), evaluate.NO_TRUTH, alpha=params.alpha)
    if not truth_path.is_file():
        scores = evaluate.empty_scores()
    else:
        truth = io.read_json(truth_path)
        evaluate.validate_truth(truth, source=str(truth_path))
        predict_metrics = io.read_json(args.predict)
        if not isinstance(predict_metrics, dict):
            raise InputError(f"{args.predict}: expected a JSON object of cell types")
        de_results = io.read_parquet(
            args.de, ("cell_type", "gene_id", "log2FoldChange", "padj", "log2fc_per_decade")
        )
        recall = evaluate.recall_by_effect(de_results, truth, alpha=params.alpha)
        scores = evaluate.evaluate(
            truth,
            de_results=de_results,
            gsea_results=io.read_parquet(args.gsea, ("cell_type", "term", "nes", "fdr")),
            ora_results=io.read_parquet(args.ora, ("cell_type", "direction", "term", "padj")),
            predict_metrics=predict_metrics,
            clusters=io.read_parquet(args.clusters, ("leiden", "cell_type")),
            cells=cell_tables.read_cells(args.cells, ("predicted_doublet",)),
            alpha=params.alpha,
        )
    with io.Outputs() as out:
        io.write_json(scores, out.file(args.metrics))
        recall.to_csv(out.dir(args.plots) / "recall_by_effect.csv", index=False)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
