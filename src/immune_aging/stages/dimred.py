"""Stage ``dimred``: Harmony on the PCA by donor, the kNN graph and UMAP.

Reads ``pca.h5ad`` (cells, no genes' values), corrects ``obsm['X_pca']`` for the
donor with Harmony, builds the neighbour graph on the leading ``n_pcs`` corrected
components and lays it out with UMAP. Writes ``embedding.h5ad`` holding only what
this stage adds (no ``X``, no genes), the metrics (Harmony's iterations and how
well donors mix before and after) and UMAP figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from immune_aging import io, stage, threads
from immune_aging.analysis import dimred
from immune_aging.errors import InputError
from immune_aging.params import as_dict

STAGE = "dimred"
log = logging.getLogger(__name__)

#: Cells subsampled to measure donor mixing (exact kNN on this many cells).
MIXING_CELLS = 10_000
#: ``obs`` columns the stage needs and keeps.
OBS_COLUMNS = ("donor_id", "cell_type")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--input", type=Path, required=True, help="pca.h5ad of the preprocess stage")
    p.add_argument("--out", type=Path, required=True, help="embedding h5ad to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def validate(adata: Any, path: Path, params: Any) -> None:
    """Check that ``pca.h5ad`` holds what the stage needs, naming the first problem.

    Raises
    ------
    InputError
        For a missing column or embedding, missing labels, non-finite values or a
        parameter the data cannot satisfy.
    """
    for col in OBS_COLUMNS:
        if col not in adata.obs.columns:
            raise InputError(f"{path}: obs column {col!r} missing")
        if adata.obs[col].isna().any():
            raise InputError(f"{path}: obs column {col!r} has missing values")
    if "X_pca" not in adata.obsm:
        raise InputError(
            f"{path}: obsm 'X_pca' missing (expected the PCA of the preprocess stage)"
        )
    pca = np.asarray(adata.obsm["X_pca"])
    if pca.ndim != 2:
        raise InputError(f"{path}: obsm 'X_pca' must be a cells x components matrix")
    if pca.shape[1] < params.n_pcs:
        raise InputError(
            f"{path}: obsm 'X_pca' has {pca.shape[1]} components; dimred.n_pcs asks for "
            f"{params.n_pcs}"
        )
    if not np.isfinite(pca).all():
        raise InputError(f"{path}: obsm 'X_pca' holds NaN or infinite values")
    if adata.n_obs <= params.n_neighbors:
        raise InputError(
            f"{path}: {adata.n_obs} cells; dimred.n_neighbors = {params.n_neighbors} needs more"
        )


def body(args: argparse.Namespace, params: Any) -> None:
    """Integrate donors, build the graph and UMAP; write embedding, metrics, figures."""
    import anndata as ad

    adata = io.read_h5ad(args.input)
    validate(adata, args.input, params)
    log.info("%s: %d cells, %d PCs", args.input, adata.n_obs, adata.obsm["X_pca"].shape[1])

    corrected, harmony = dimred.harmony_integrate(
        adata,
        key="donor_id",
        max_iter=params.harmony_max_iter,
        seed=params.seed,
        n_threads=threads.n_threads(),
    )
    work = ad.AnnData(obs=adata.obs[list(OBS_COLUMNS)].copy())
    work.obsm["X_pca_harmony"] = corrected
    work = dimred.neighbors_umap(
        work,
        use_rep="X_pca_harmony",
        n_neighbors=params.n_neighbors,
        n_pcs=params.n_pcs,
        min_dist=params.umap_min_dist,
        seed=params.seed,
        exact_max_cells=params.exact_knn_max_cells,
    )
    mixing = dimred.donor_mixing(
        {
            "pca": np.asarray(adata.obsm["X_pca"])[:, : params.n_pcs],
            "harmony": corrected[:, : params.n_pcs],
        },
        adata.obs["donor_id"].astype(str).to_numpy(),
        n_neighbors=params.n_neighbors,
        max_cells=MIXING_CELLS,
        seed=params.seed,
    )
    emb = dimred.embedding_anndata(work, obs_columns=OBS_COLUMNS)
    emb.uns["harmony"] = {k: v for k, v in harmony.items() if k != "objective"}
    emb.uns["harmony"]["objective"] = np.asarray(harmony["objective"], dtype=np.float64)
    emb.uns["provenance"] = io.provenance(STAGE, as_dict(params), [args.input])

    metrics = {
        "cells": int(emb.n_obs),
        "donors": int(emb.obs["donor_id"].nunique()),
        "n_pcs_available": int(adata.obsm["X_pca"].shape[1]),
        "n_pcs": int(params.n_pcs),
        "n_neighbors": int(params.n_neighbors),
        "knn": str(work.uns["neighbors"]["params"]["knn"]),
        "harmony_iterations": int(harmony["iterations"]),
        "harmony_converged": bool(harmony["converged"]),
        "harmony_max_iter": int(params.harmony_max_iter),
        "donor_mixing_pca": mixing["pca"],
        "donor_mixing_harmony": mixing["harmony"],
        "donor_mixing_expected": mixing["expected"],
        "donor_mixing_cells": int(mixing["cells"]),
    }
    log.info(
        "share of neighbours from other donors: %.3f before Harmony, %.3f after (random: %.3f)",
        mixing["pca"],
        mixing["harmony"],
        mixing["expected"],
    )
    n_donors = metrics["donors"]
    fig_type = dimred.plot_embedding(
        emb.obsm["X_umap"], emb.obs["cell_type"], title="UMAP by cell type", seed=params.seed
    )
    fig_donor = dimred.plot_embedding(
        emb.obsm["X_umap"],
        emb.obs["donor_id"],
        title=f"UMAP by donor ({n_donors} donors, after Harmony)",
        legend="right" if n_donors <= 20 else "none",
        seed=params.seed,
    )

    with io.Outputs() as out:
        io.write_h5ad(emb, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        io.save_figure(fig_type, plots / "umap_cell_type.png")
        io.save_figure(fig_donor, plots / "umap_donor.png")
    log.info("%d cells embedded, written to %s", emb.n_obs, args.out)


main = stage.main_for(
    STAGE, "Integrate donors with Harmony, build the kNN graph and UMAP.", add_arguments, body
)

if __name__ == "__main__":
    sys.exit(main())
