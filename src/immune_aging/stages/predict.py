"""Stage ``predict``: predict donor age from pseudobulk expression, per cell type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from immune_aging import io, stage
from immune_aging.analysis import de, predict
from immune_aging.errors import InputError

NAME = "predict"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths."""
    p.add_argument("--input", type=Path, required=True, help="pseudobulk h5ad")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    p.add_argument("--plots", type=Path, required=True, help="plots folder")


def body(args: argparse.Namespace, params: Any) -> None:
    """Cross-validate the age model and the sex-only baseline per cell type."""
    adata = io.read_h5ad(args.input)
    de.validate_pseudobulk(adata, source=str(args.input))
    if adata.n_vars == 0:
        raise InputError(f"{args.input}: no genes")
    metrics, predictions = predict.predict_age(
        adata,
        C=params.C,
        n_splits=params.n_splits,
        test_size=params.test_size,
        seed=params.seed,
        n_top_genes=params.n_top_genes,
    )
    with io.Outputs() as out:
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        predictions.to_csv(plots / "predictions.csv", index=False, float_format="%.4f")
        io.save_figure(predict.scatter_figure(predictions), plots / "predictions.png")


main = stage.main_for(NAME, __doc__.splitlines()[0], add_arguments, body)

if __name__ == "__main__":
    sys.exit(main())
