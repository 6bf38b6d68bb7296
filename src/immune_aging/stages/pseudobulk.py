"""Stage ``pseudobulk``: raw counts summed per (cell type, donor) over the kept cells.

Reads ``filtered.h5ad`` backed (only ``obs`` and ``var`` in memory) and the QC
table ``cells.parquet``, streams the raw counts in blocks of cells, sums the kept
cells of each block per (cell type, donor) and adds the blocks up, so memory
stays about one block plus the result. Samples with too few cells, then cell
types with too few samples, are dropped; donor metadata (sex, development stage
and the age read from it) is carried onto every sample.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immune_aging import io, stage
from immune_aging.analysis import pseudobulk
from immune_aging.errors import InputError
from immune_aging.params import as_dict

STAGE = "pseudobulk"
log = logging.getLogger(__name__)

#: Cells read per block (sums are exact, so this changes memory, never results).
BLOCK_CELLS = 100_000
#: ``obs`` columns the stage needs (``development_stage`` may be replaced by ``age``).
OBS_COLUMNS = ("donor_id", "cell_type", "sex")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--filtered", type=Path, required=True, help="filtered.h5ad (raw counts)")
    p.add_argument("--cells", type=Path, required=True, help="cells.parquet of the qc stage")
    p.add_argument("--out", type=Path, required=True, help="pseudobulk h5ad to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def validate_filtered(adata: Any, path: Path) -> None:
    """Check the annotations of ``filtered.h5ad``.

    Raises
    ------
    InputError
        Naming the first missing column.
    """
    for col in OBS_COLUMNS:
        if col not in adata.obs.columns:
            raise InputError(f"{path}: obs column {col!r} missing")
    if "development_stage" not in adata.obs.columns and "age" not in adata.obs.columns:
        raise InputError(f"{path}: obs column 'development_stage' missing (or a numeric 'age')")
    for col in ("donor_id", "cell_type"):
        if adata.obs[col].isna().any():
            raise InputError(f"{path}: obs column {col!r} has missing values")
    if "feature_name" not in adata.var.columns:
        raise InputError(f"{path}: var column 'feature_name' missing")


def read_keep(path: Path, cell_ids: pd.Index) -> np.ndarray:
    """Read the ``keep`` flag of every cell of ``filtered.h5ad`` from ``cells.parquet``.

    Parameters
    ----------
    path
        The QC table (index or column ``cell_id``, boolean column ``keep``).
    cell_ids
        The cells of ``filtered.h5ad``, in order.

    Returns
    -------
    numpy.ndarray
        Boolean mask in the order of ``cell_ids``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, lacks ``cell_id``/``keep``, has a
        non-boolean ``keep``, or does not list exactly the cells of ``filtered.h5ad``.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a broken file
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    if "cell_id" in table.columns:
        table = table.set_index("cell_id")
    elif table.index.name != "cell_id":
        raise InputError(f"{path}: no 'cell_id' index or column")
    if "keep" not in table.columns:
        raise InputError(f"{path}: column 'keep' missing")
    keep = table["keep"]
    if isinstance(keep.dtype, pd.BooleanDtype):
        if keep.isna().any():
            raise InputError(f"{path}: column 'keep' has missing values")
        keep = keep.astype(bool)
    if keep.dtype != bool:
        raise InputError(f"{path}: column 'keep' must be boolean, found {keep.dtype}")
    if not table.index.is_unique:
        raise InputError(f"{path}: cell_id {table.index[table.index.duplicated()][0]!r} repeated")
    index = table.index.astype(str)
    missing = cell_ids.difference(index)
    if len(missing):
        raise InputError(
            f"{path}: {len(missing)} cells of filtered.h5ad are not listed "
            f"(e.g. {missing[0]!r}); expected one row per filtered cell"
        )
    extra = index.difference(cell_ids)
    if len(extra):
        raise InputError(
            f"{path}: {len(extra)} cells are not in filtered.h5ad (e.g. {extra[0]!r})"
        )
    keep.index = index
    return keep.reindex(cell_ids).to_numpy(dtype=bool)


def block_sums(adata: Any, keep: np.ndarray, path: Path) -> list[Any]:
    """Sum the kept cells' counts per sample, one block of cells at a time.

    Returns the running total as a one-element list (empty when no cell is kept).

    Raises
    ------
    InputError
        If ``X`` holds a value that is not a count.
    """
    import anndata as ad

    total = None
    var = adata.var[["feature_name"]].copy()
    for start in range(0, adata.n_obs, BLOCK_CELLS):
        stop = min(start + BLOCK_CELLS, adata.n_obs)
        rows = np.flatnonzero(keep[start:stop])
        if rows.size == 0:
            continue
        x = adata.X[start:stop]
        x = x[rows] if hasattr(x, "tocsr") else np.asarray(x)[rows]
        values = x.data if hasattr(x, "data") and hasattr(x, "indices") else np.asarray(x)
        bad = ~np.isfinite(values) | (values < 0) | (values != np.floor(values))
        if bad.any():
            raise InputError(
                f"{path}: X holds a value that is not a count ({float(values[bad][0])!r}); "
                "expected raw counts"
            )
        obs = adata.obs.iloc[start:stop].iloc[rows][["cell_type", "donor_id"]]
        part = pseudobulk.sum_counts(ad.AnnData(X=x, obs=obs, var=var))
        total = part if total is None else pseudobulk.combine_sums([total, part])
        log.info("summed cells %d to %d", start, stop)
    return [] if total is None else [total]


def body(args: argparse.Namespace, params: Any) -> None:
    """Sum counts per sample; write the pseudobulk h5ad, metrics and figures."""
    backed = io.read_h5ad(args.filtered, backed=True)
    try:
        validate_filtered(backed, args.filtered)
        keep = read_keep(args.cells, backed.obs_names.astype(str))
        if not keep.any():
            raise InputError(f"{args.cells}: no cell has keep == True")
        cell_obs = backed.obs.loc[keep].copy()
        try:
            donors = pseudobulk.donor_table(cell_obs, age_80_and_over=params.age_80_and_over)
        except InputError as exc:
            raise InputError(f"{args.filtered}: {exc}") from None
        if donors["age"].isna().all():
            column = "age" if "age" in cell_obs.columns else "development_stage"
            raise InputError(
                f"{args.filtered}: obs column {column!r} gives no donor a known age (all "
                f"{len(donors)} donors unknown); the de and predict stages need donor ages"
            )
        log.info(
            "%s: %d of %d cells kept, %d donors",
            args.filtered,
            int(keep.sum()),
            backed.n_obs,
            len(donors),
        )
        parts = block_sums(backed, keep, args.filtered)
    finally:
        backed.file.close()

    pb, report = pseudobulk.make_pseudobulk(
        parts,
        donors,
        min_cells=params.min_cells,
        min_samples_per_cell_type=params.min_samples_per_cell_type,
    )
    if pb.n_obs == 0:
        raise InputError(
            f"{args.filtered}: no cell type has {params.min_samples_per_cell_type} samples of "
            f">= {params.min_cells} cells (pseudobulk.min_samples_per_cell_type, "
            "pseudobulk.min_cells)"
        )
    pb.uns["provenance"] = io.provenance(STAGE, as_dict(params), [args.filtered, args.cells])
    metrics = pseudobulk.summary(pb, report, donors)
    fig_samples = pseudobulk.plot_samples(
        report, min_samples_per_cell_type=params.min_samples_per_cell_type
    )
    fig_ages = pseudobulk.plot_ages(donors, age_80_and_over=params.age_80_and_over)

    with io.Outputs() as out:
        io.write_h5ad(pb, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        report.rename_axis("cell_type").to_csv(plots / "samples_per_cell_type.csv")
        donors.to_csv(plots / "donors.csv")
        io.save_figure(fig_samples, plots / "samples_per_cell_type.png")
        io.save_figure(fig_ages, plots / "donor_ages.png")
    log.info(
        "%d samples x %d genes (%d cell types) written to %s",
        pb.n_obs,
        pb.n_vars,
        metrics["cell_types_kept"],
        args.out,
    )


main = stage.main_for(
    STAGE, "Sum raw counts per (cell type, donor) over the kept cells.", add_arguments, body
)

if __name__ == "__main__":
    sys.exit(main())
