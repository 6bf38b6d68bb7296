"""Raw counts streamed from an h5ad file: the one reader the stages share.

- :func:`kept_blocks` streams the raw counts of the kept cells of an h5ad file
  (``X`` or ``raw.X``, CSR, CSC or dense) in blocks of rows, checking every
  stored value with :func:`~immune_aging.count_checks.check_counts`;
- :func:`read_counts` assembles them into one CSR matrix whose arrays are
  allocated at their final size from the file's ``indptr``, so peak memory is the
  result plus one block (anndata's backed subsetting needs 2-3 times the result);
  both can keep a subset of the genes;
- :func:`expressed_genes` finds the genes with any count in the kept cells.

The ``filter`` stage's selection of cells and genes is read through
:mod:`immune_aging.selection`. Every fault raises
:class:`~immune_aging.errors.InputError` with one line naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import sparse

from immune_aging.count_checks import check_counts, check_csr_block
from immune_aging.errors import InputError
from immune_aging.executor import Progress
from immune_aging.guard import reading

log = logging.getLogger(__name__)

#: Stored entries (dense: values) read per block while streaming counts.
BLOCK_VALUES = 1 << 23


def node_key(location: str) -> str:
    """Return the HDF5 path of the counts at ``location`` (``"X"`` or ``"raw.X"``).

    Parameters
    ----------
    location
        ``"X"`` or ``"raw.X"``.

    Returns
    -------
    str
        ``"X"`` or ``"raw/X"``.
    """
    return "X" if location == "X" else "raw/X"


def matrix_shape(node: Any) -> tuple[int, int]:
    """Return ``(rows, columns)`` of an h5ad matrix node (dataset or sparse group).

    Parameters
    ----------
    node
        An ``h5py`` dataset (dense) or group (sparse, with a ``shape`` attribute).

    Returns
    -------
    tuple of int
        The shape.
    """
    shape = node.shape if isinstance(node, h5py.Dataset) else node.attrs["shape"]
    return int(shape[0]), int(shape[1])


def _row_blocks(
    node: Any, shape: tuple[int, int], span: tuple[int, int] | None = None
) -> Iterator[tuple[int, sparse.csr_matrix]]:
    """Yield ``(first row, CSR block)`` over consecutive rows of an h5ad matrix.

    ``span`` ``(first, stop)`` skips the blocks without a row in ``first..stop-1``
    (the blocks are the same as without it).
    """
    n_rows, n_cols = shape
    first, stop = span if span is not None else (0, n_rows)
    encoding = None if isinstance(node, h5py.Dataset) else node.attrs.get("encoding-type")
    if encoding == "csr_matrix":
        indptr = node["indptr"][:]
        data, indices = node["data"], node["indices"]
        per_row = max(1, int(indptr[-1]) // max(n_rows, 1))
        step = max(1, BLOCK_VALUES // per_row)
        for a in range(first - first % step, stop, step):
            b = min(a + step, n_rows)
            lo, hi = int(indptr[a]), int(indptr[b])
            yield (
                a,
                sparse.csr_matrix(
                    (data[lo:hi], indices[lo:hi], indptr[a : b + 1] - lo), shape=(b - a, n_cols)
                ),
            )
        return
    step = max(1, BLOCK_VALUES // max(n_cols, 1))
    starts = range(first - first % step, stop, step)
    if encoding is None:  # dense
        for a in starts:
            yield a, sparse.csr_matrix(node[a : a + step])
        return
    if encoding == "csc_matrix":
        from anndata.io import sparse_dataset

        matrix = sparse_dataset(node)
        for a in starts:
            yield a, sparse.csr_matrix(matrix[a : a + step])
        return
    raise InputError(f"unsupported matrix encoding {encoding!r}")


def _entries_bound(node: Any, keep: np.ndarray) -> int | None:
    """Return the stored entries of the kept rows of a CSR matrix (None otherwise)."""
    if isinstance(node, h5py.Dataset) or node.attrs.get("encoding-type") != "csr_matrix":
        return None
    return int(np.diff(node["indptr"][:])[keep].sum())


@dataclass(frozen=True)
class Block:
    """Counts of the kept cells among consecutive rows of a matrix.

    Attributes
    ----------
    start
        First row of the block in the file.
    rows
        Positions (in the file) of the kept rows, ascending.
    counts
        CSR counts of those rows (all genes; no explicit zeros, duplicates summed).
    """

    start: int
    rows: np.ndarray
    counts: sparse.csr_matrix


def _take_columns(block: sparse.csr_matrix, genes: np.ndarray) -> sparse.csr_matrix:
    """Keep the columns ``genes`` (boolean mask) of a CSR block, renumbered in order."""
    chosen = genes[block.indices]
    wide = block.nnz >= np.iinfo(np.int32).max
    before = np.zeros(block.nnz + 1, dtype=np.int64 if wide else np.int32)
    np.cumsum(chosen, out=before[1:])  # entries kept before each stored entry
    new_column = (np.cumsum(genes) - 1).astype(block.indices.dtype)
    return sparse.csr_matrix(
        (block.data[chosen], new_column[block.indices[chosen]], before[block.indptr]),
        shape=(block.shape[0], int(genes.sum())),
    )


def kept_blocks(
    path: str | os.PathLike[str],
    location: str,
    keep: np.ndarray,
    *,
    genes: np.ndarray | None = None,
) -> Iterator[Block]:
    """Stream the raw counts of the kept cells, one block of rows at a time.

    Blocks without a kept cell are skipped; those before the first kept cell or
    after the last one are not read at all (a subset of contiguous cells reads only
    their blocks). Every stored value read is checked with
    :func:`~immune_aging.count_checks.check_counts`.

    Parameters
    ----------
    path
        The h5ad file.
    location
        ``"X"`` or ``"raw.X"``.
    keep
        Boolean mask over the file's rows.
    genes
        Boolean mask over the file's columns: only these genes are returned, in
        file order (None: every gene).

    Yields
    ------
    Block
        The kept rows of each block, in file order.

    Raises
    ------
    InputError
        If the matrix and ``keep`` or ``genes`` disagree in length or a value is
        not a count.
    """
    path = Path(path)
    with h5py.File(path, "r") as fh, reading(path, location):
        node = fh[node_key(location)]
        shape = matrix_shape(node)
        if shape[0] != len(keep):
            raise InputError(f"{path}: {location} has {shape[0]} rows, obs has {len(keep)}")
        if genes is not None and shape[1] != len(genes):
            raise InputError(f"{path}: {location} has {shape[1]} columns, var has {len(genes)}")
        chosen = np.flatnonzero(keep)
        if chosen.size == 0:
            return
        span = (int(chosen[0]), int(chosen[-1]) + 1)
        progress = Progress(f"{path.name}: rows read", total=span[1] - span[0])
        for a, block in _row_blocks(node, shape, span):
            # rows of the span in this block (the first block may start before it)
            progress.step(min(a + block.shape[0], span[1]) - max(a, span[0]))
            check_csr_block(block.indptr, block.indices, shape[1], where=f"{path}: {location}")
            local = np.flatnonzero(keep[a : a + block.shape[0]])
            if local.size == 0:
                continue
            sub = block if local.size == block.shape[0] else block[local]
            sub.sum_duplicates()
            sub.eliminate_zeros()
            check_counts(sub.data, path, location)
            if genes is not None and not genes.all():
                sub = _take_columns(sub, genes)
            yield Block(start=a, rows=a + local, counts=sub)


def read_counts(
    path: str | os.PathLike[str],
    location: str,
    keep: np.ndarray,
    *,
    genes: np.ndarray | None = None,
    drop_empty_genes: bool = True,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Read the kept cells' raw counts, dropping genes without any count.

    Parameters
    ----------
    path, location, keep, genes
        As :func:`kept_blocks`.
    drop_empty_genes
        Of those, drop the genes without any count in the kept cells (else keep
        every one).

    Returns
    -------
    tuple
        ``(counts, genes)``: CSR float32 counts (kept cells x genes read, no
        explicit zeros, sorted indices) and the boolean mask of the genes read over
        all genes of the file.

    Raises
    ------
    InputError
        If a value is negative, fractional or not finite.
    """
    path = Path(path)
    with h5py.File(path, "r") as fh:
        node = fh[node_key(location)]
        n_cols = matrix_shape(node)[1]
        bound = _entries_bound(node, keep) if len(keep) == matrix_shape(node)[0] else None
    wide = max(bound or 0, n_cols) >= np.iinfo(np.int32).max
    index_dtype = np.int64 if wide else np.int32
    data = np.empty(bound or 0, dtype=np.float32)
    indices = np.empty(bound or 0, dtype=index_dtype)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    row_nnz: list[np.ndarray] = []
    totals = np.zeros(n_cols, dtype=np.float64)
    pos = 0
    chosen = np.ones(n_cols, dtype=bool) if genes is None else np.asarray(genes, dtype=bool)
    columns = np.flatnonzero(chosen)
    for block in kept_blocks(path, location, keep, genes=chosen):
        sub = block.counts
        totals[columns] += np.bincount(sub.indices, weights=sub.data, minlength=len(columns))
        row_nnz.append(np.diff(sub.indptr))
        if bound is None:
            pieces.append((sub.data.astype(np.float32), sub.indices.astype(index_dtype)))
        else:
            data[pos : pos + sub.nnz] = sub.data
            indices[pos : pos + sub.nnz] = sub.indices
        pos += sub.nnz
    if bound is None:
        data = np.concatenate([p[0] for p in pieces]) if pieces else data
        indices = np.concatenate([p[1] for p in pieces]) if pieces else indices
    elif pos < bound:  # explicit zeros, duplicates or genes not read were dropped
        data.resize(pos, refcheck=False)  # in place: no second copy
        indices.resize(pos, refcheck=False)
    read = chosen & (totals > 0) if drop_empty_genes else chosen
    if not read[columns].all():  # renumber the columns read onto the genes kept
        new_column = (np.cumsum(read[columns]) - 1).astype(index_dtype)
        for lo in range(0, len(indices), BLOCK_VALUES):  # renumber columns in place
            indices[lo : lo + BLOCK_VALUES] = new_column[indices[lo : lo + BLOCK_VALUES]]
    nnz_per_row = np.concatenate(row_nnz) if row_nnz else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(len(nnz_per_row) + 1, dtype=index_dtype)
    np.cumsum(nnz_per_row, out=indptr[1:])
    counts = sparse.csr_matrix(
        (data, indices, indptr), shape=(len(nnz_per_row), int(read.sum())), copy=False
    )
    log.info(
        "read %d cells, %d stored counts; %d of %d genes",
        counts.shape[0],
        counts.nnz,
        counts.shape[1],
        n_cols,
    )
    return counts, read


def expressed_genes(path: str | os.PathLike[str], location: str, keep: np.ndarray) -> np.ndarray:
    """Return which genes have any count in the kept cells, streaming the counts.

    Memory is one block of rows: nothing is assembled.

    Parameters
    ----------
    path, location, keep
        As :func:`kept_blocks`.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the file's genes.

    Raises
    ------
    InputError
        If a value is negative, fractional or not finite.
    """
    with h5py.File(path, "r") as fh:
        n_cols = matrix_shape(fh[node_key(location)])[1]
    seen = np.zeros(n_cols, dtype=bool)
    n_cells = n_counts = 0
    for block in kept_blocks(path, location, keep):
        seen[block.counts.indices] = True  # explicit zeros were removed
        n_cells += block.counts.shape[0]
        n_counts += block.counts.nnz
    log.info(
        "read %d cells, %d stored counts; %d of %d genes have counts",
        n_cells,
        n_counts,
        int(seen.sum()),
        n_cols,
    )
    return seen
