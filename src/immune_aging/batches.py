"""Work on the kept cells' counts a batch of whole groups at a time, here or on a cluster.

:func:`map_batches` splits the cells into batches of whole groups (donors or
pools, :func:`immune_aging.selection.group_batches`) and yields ``fn(positions,
counts, extra)`` for each batch, in batch order:

- with no Dask scheduler (``IMMUNE_AGING_SCHEDULER`` unset), this process reads
  each batch from the input file and calls ``fn`` on it, one batch at a time
  (:meth:`immune_aging.selection.Selection.read_batches`, with its progress lines);
- under a scheduler, each batch is a job of :func:`immune_aging.executor.imap_ordered`:
  a worker reads the batch's counts itself from the input file (which must be at
  the same path on every worker: a shared file system) and returns only ``fn``'s
  result, so no counts travel over the network and the stage process holds the
  results, not the counts.

Either way the batches, their order and ``fn``'s inputs are the same, so the
results are the same bits; folding them in batch order keeps the outputs
byte-identical whichever runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from scipy import sparse

from immune_aging import counts, executor
from immune_aging.selection import Selection, batch_cells, group_batches

R = TypeVar("R")
#: ``fn(positions, counts, extra)`` of :func:`map_batches`.
BatchFn = Callable[[np.ndarray, sparse.csr_matrix, Any], Any]


@dataclass(frozen=True)
class CountsFile:
    """What a worker needs to read a batch of the kept cells' counts.

    Attributes
    ----------
    path
        The input h5ad (a path every worker can open).
    location
        ``"X"`` or ``"raw.X"``.
    shape
        ``(rows, columns)`` of the file's counts.
    columns
        Ascending columns of the kept genes in the file's counts.
    """

    path: str
    location: str
    shape: tuple[int, int]
    columns: np.ndarray

    def read(self, rows: np.ndarray) -> sparse.csr_matrix:
        """Read the counts of some rows over the kept genes.

        Parameters
        ----------
        rows
            Ascending rows of the file.

        Returns
        -------
        scipy.sparse.csr_matrix
            float32 counts, rows x kept genes, as :meth:`Selection.read` returns them.
        """
        keep = np.zeros(self.shape[0], dtype=bool)
        keep[rows] = True
        genes = np.zeros(self.shape[1], dtype=bool)
        genes[self.columns] = True
        matrix, _ = counts.read_counts(
            self.path, self.location, keep, genes=genes, drop_empty_genes=False
        )
        return matrix


def _job(job: tuple[BatchFn, CountsFile, np.ndarray, np.ndarray, Any]) -> Any:
    fn, file, rows, positions, extra = job
    return fn(positions, file.read(rows), extra)


def map_batches(
    selection: Selection,
    fn: BatchFn,
    labels: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    extra: Callable[[np.ndarray], Any] | None = None,
    max_cells: int | None = None,
    label: str = "batch",
) -> Iterator[Any]:
    """Yield ``fn(positions, counts, extra(positions))`` for each batch of whole groups.

    Parameters
    ----------
    selection
        The filter stage's selection (its input file holds the counts).
    fn
        A picklable function defined at the top level of a module of
        :mod:`immune_aging` (a ``functools.partial`` of one is fine).
    labels
        Group of each cell read (all of the selection's cells, or those of ``keep``).
    keep
        Boolean mask over the selection's cells (None: all of them).
    extra
        Given a batch's positions, returns what ``fn`` needs besides the counts
        (e.g. the batch's rows of ``obs``); it is sent along with the job.
    max_cells
        Cells per batch at most, unless one group has more (None:
        :func:`immune_aging.selection.batch_cells`).
    label
        Names the batches in progress lines.

    Yields
    ------
    object
        ``fn``'s result for each batch, in batch order.
    """
    more = extra if extra is not None else (lambda positions: None)
    if executor.in_task() or executor.scheduler() is None:
        for positions, matrix in selection.read_batches(
            labels, keep=keep, max_cells=max_cells, label=label
        ):
            yield fn(positions, matrix, more(positions))
        return
    chosen = np.arange(len(selection.rows)) if keep is None else np.flatnonzero(keep)
    labels = np.asarray(labels)
    if len(labels) != len(chosen):
        raise ValueError(f"labels has {len(labels)} entries for {len(chosen)} cells")
    size = batch_cells() if max_cells is None else max_cells
    batches = group_batches(labels, size)
    file = CountsFile(
        path=os.fspath(Path(selection.source).resolve()),
        location=selection.location,
        shape=selection.shape,
        columns=selection.columns,
    )
    jobs = (
        (fn, file, selection.rows[chosen[positions]], positions, more(positions))
        for positions in batches
    )
    yield from executor.imap_ordered(_job, jobs, label=label, total=len(batches))
