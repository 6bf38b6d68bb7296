"""Stage ``filter``: drop rare donors and cell types, keep raw counts of the rest.

Reads the input backed (only ``obs`` and ``var`` in memory), applies the rules of
:mod:`immune_aging.analysis.filtering` to the annotations, then streams the raw
counts (``X`` or ``raw.X``, as :func:`immune_aging.validate.validate_dataset`
finds them) in row blocks, copying only the kept cells into arrays allocated at
their final size from the file's ``indptr``, checking that every value is a
non-negative integer and totalling each gene. Genes without any count are then
dropped by renumbering columns in place. Peak memory is about the output matrix
plus one block.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from immune_aging import io, stage
from immune_aging.analysis import filtering
from immune_aging.errors import InputError
from immune_aging.guard import reading
from immune_aging.params import as_dict
from immune_aging.validate import check_csr_block

STAGE = "filter"
log = logging.getLogger(__name__)

#: entries (dense: values) read per block while streaming counts
_BLOCK_VALUES = 1 << 23


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stage's paths to its parser."""
    p.add_argument("--input", type=Path, required=True, help="input h5ad (CELLxGENE schema)")
    p.add_argument("--out", type=Path, required=True, help="filtered h5ad to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder of figures to write")


def _gene_table(adata: Any, location: str, path: Path) -> pd.DataFrame:
    """Return the gene annotations matching the columns of the counts matrix."""
    if location == "X":
        return adata.var
    raw_var = adata.raw.var
    if "feature_name" in raw_var.columns:
        return raw_var
    if raw_var.index.equals(adata.var.index):
        return raw_var.assign(feature_name=adata.var["feature_name"].to_numpy())
    raise InputError(f"{path}: raw.var has no 'feature_name' column and its genes differ from var")


def _matrix_shape(node: Any) -> tuple[int, int]:
    shape = node.shape if isinstance(node, h5py.Dataset) else node.attrs["shape"]
    return int(shape[0]), int(shape[1])


def _row_blocks(node: Any, shape: tuple[int, int]) -> Iterator[tuple[int, sparse.csr_matrix]]:
    """Yield ``(first row, CSR block)`` over consecutive rows of an h5ad matrix."""
    n_rows, n_cols = shape
    encoding = None if isinstance(node, h5py.Dataset) else node.attrs.get("encoding-type")
    if encoding == "csr_matrix":
        indptr = node["indptr"][:]
        data, indices = node["data"], node["indices"]
        per_row = max(1, int(indptr[-1]) // max(n_rows, 1))
        step = max(1, _BLOCK_VALUES // per_row)
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            lo, hi = int(indptr[a]), int(indptr[b])
            yield (
                a,
                sparse.csr_matrix(
                    (data[lo:hi], indices[lo:hi], indptr[a : b + 1] - lo), shape=(b - a, n_cols)
                ),
            )
        return
    step = max(1, _BLOCK_VALUES // max(n_cols, 1))
    if encoding is None:  # dense
        for a in range(0, n_rows, step):
            yield a, sparse.csr_matrix(node[a : a + step])
        return
    if encoding == "csc_matrix":
        from anndata.io import sparse_dataset

        matrix = sparse_dataset(node)
        for a in range(0, n_rows, step):
            yield a, sparse.csr_matrix(matrix[a : a + step])
        return
    raise InputError(f"unsupported matrix encoding {encoding!r}")


def _entries_bound(node: Any, keep: np.ndarray) -> int | None:
    """Return the stored entries of the kept rows of a CSR matrix (None otherwise)."""
    if isinstance(node, h5py.Dataset) or node.attrs.get("encoding-type") != "csr_matrix":
        return None
    return int(np.diff(node["indptr"][:])[keep].sum())


def read_counts(
    path: Path, location: str, keep: np.ndarray, *, drop_empty_genes: bool = True
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Read the kept cells' raw counts, dropping genes without any count.

    A CSR matrix is read in one pass into arrays sized from its ``indptr``; other
    layouts are read block by block and concatenated. Peak memory is about the
    result plus one block (``anndata``'s backed subsetting needs 2-3 times the
    result), so the ``preprocess`` stage reads its kept cells with it too.

    Parameters
    ----------
    path
        The h5ad file.
    location
        ``"X"`` or ``"raw.X"``.
    keep
        Boolean mask of the cells to read.
    drop_empty_genes
        Drop the genes without any count in the kept cells (else keep every gene).

    Returns
    -------
    tuple
        ``(counts, genes)``: CSR float32 counts (kept cells x expressed genes, no
        explicit zeros, sorted indices) and the boolean mask of expressed genes over
        all genes.

    Raises
    ------
    InputError
        If a value is negative, fractional or not finite, or the file is damaged
        (a read fails, or the sparse structure is unsound).
    """
    key = "X" if location == "X" else "raw/X"
    with h5py.File(path, "r") as fh, reading(path, location):
        node = fh[key]
        n_rows, n_cols = _matrix_shape(node)
        if n_rows != len(keep):
            raise InputError(f"{path}: {location} has {n_rows} rows, obs has {len(keep)}")
        bound = _entries_bound(node, keep)
        wide = max(bound or 0, n_cols) >= np.iinfo(np.int32).max
        index_dtype = np.int64 if wide else np.int32
        data = np.empty(bound or 0, dtype=np.float32)
        indices = np.empty(bound or 0, dtype=index_dtype)
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        row_nnz: list[np.ndarray] = []
        totals = np.zeros(n_cols, dtype=np.float64)
        pos = 0
        for a, block in _row_blocks(node, (n_rows, n_cols)):
            check_csr_block(block.indptr, block.indices, n_cols, where=f"{path}: {location}")
            rows = keep[a : a + block.shape[0]]
            sub = block if rows.all() else block[np.flatnonzero(rows)]
            sub.sum_duplicates()
            sub.eliminate_zeros()
            values = sub.data
            with np.errstate(invalid="ignore"):  # a signalling NaN (damaged file) warns
                bad = ~np.isfinite(values) | (values < 0) | (values != np.rint(values))
            if bad.any():
                raise InputError(
                    f"{path}: {location} holds a value that is not a count "
                    f"({float(values[bad][0])!r}): raw counts are required"
                )
            totals += np.bincount(sub.indices, weights=values, minlength=n_cols)
            row_nnz.append(np.diff(sub.indptr))
            if bound is None:
                pieces.append((values.astype(np.float32), sub.indices.astype(index_dtype)))
            else:
                data[pos : pos + sub.nnz] = values
                indices[pos : pos + sub.nnz] = sub.indices
            pos += sub.nnz
    if bound is None:
        data = np.concatenate([p[0] for p in pieces]) if pieces else data
        indices = np.concatenate([p[1] for p in pieces]) if pieces else indices
    elif pos < bound:  # explicit zeros or duplicates were dropped
        data, indices = data[:pos].copy(), indices[:pos].copy()
    genes = totals > 0 if drop_empty_genes else np.ones(n_cols, dtype=bool)
    if not genes.all():
        new_column = (np.cumsum(genes) - 1).astype(index_dtype)
        step = _BLOCK_VALUES
        for lo in range(0, len(indices), step):  # renumber columns in place, block by block
            indices[lo : lo + step] = new_column[indices[lo : lo + step]]
    nnz_per_row = np.concatenate(row_nnz) if row_nnz else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(len(nnz_per_row) + 1, dtype=index_dtype)
    np.cumsum(nnz_per_row, out=indptr[1:])
    counts = sparse.csr_matrix(
        (data, indices, indptr), shape=(len(nnz_per_row), int(genes.sum())), copy=False
    )
    log.info(
        "read %d cells, %d stored counts; %d of %d genes have counts",
        counts.shape[0],
        counts.nnz,
        counts.shape[1],
        n_cols,
    )
    return counts, genes


def body(args: argparse.Namespace, params: Any) -> None:
    """Filter donors, cell types and genes; write the filtered counts."""
    import matplotlib

    matplotlib.use("Agg")
    from immune_aging.validate import validate_dataset

    backed = io.read_h5ad(args.input, backed=True)
    try:
        location = validate_dataset(backed, args.input)
        obs = backed.obs.copy()
        var = _gene_table(backed, location, args.input).copy()
    finally:
        backed.file.close()
    log.info("%s: %d cells x %d genes, raw counts in %s", args.input, len(obs), len(var), location)

    selection = filtering.select_cells(
        obs,
        cutoff_percentile=params.cutoff_percentile,
        min_cells_per_celltype=params.min_cells_per_celltype,
        percent_donors=params.percent_donors,
    )
    counts, genes = read_counts(args.input, location, selection.keep)
    filtered = filtering.assemble_filtered(
        counts, obs.loc[selection.keep], var.loc[genes], extra_obs=params.keep_obs
    )
    filtered.uns["provenance"] = io.provenance(STAGE, as_dict(params), [args.input])
    metrics = filtering.filter_metrics(
        selection,
        n_cells_in=len(obs),
        n_genes_in=len(var),
        filtered=filtered,
        cell_types_in=int(obs[filtering.CELL_TYPE_KEY].nunique()),
    )
    table = filtering.donor_table(selection, filtered)
    fig = filtering.plot_cells_per_donor(table, cutoff=selection.cutoff)

    with io.Outputs() as out:
        io.write_h5ad(filtered, out.file(args.out))
        io.write_json(metrics, out.file(args.metrics))
        plots = out.dir(args.plots)
        table.to_csv(plots / "cells_per_donor.csv", index=False)
        io.save_figure(fig, plots / "cells_per_donor.png")
    log.info("%d cells x %d genes written to %s", filtered.n_obs, filtered.n_vars, args.out)


main = stage.main_for(
    STAGE, "Drop rare donors and cell types; keep their raw counts.", add_arguments, body
)

if __name__ == "__main__":
    sys.exit(main())
