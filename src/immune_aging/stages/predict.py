"""Stage ``predict``: predict donor age from pseudobulk expression, per cell type.

The method is described in :mod:`immune_aging.analysis.predict`.
"""

from __future__ import annotations

import sys

from immune_aging import count_checks, io, stage
from immune_aging.analysis import predict
from immune_aging.errors import InputError
from immune_aging.params import PredictParams

NAME = "predict"
PATHS = {
    "input": "pseudobulk h5ad",
    "metrics": "metrics JSON",
    "plots": "plots folder",
}


def body(args, params: PredictParams) -> None:
    """Cross-validate the age model and the sex-only baseline per cell type."""
    adata = io.read_h5ad(args.input)
    count_checks.validate_pseudobulk(adata, args.input)
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
        io.save_figures({"predictions.png": predict.plot_predictions(predictions)}, plots)


main = stage.main_for(NAME, __doc__, PATHS, body)

if __name__ == "__main__":
    sys.exit(main())
