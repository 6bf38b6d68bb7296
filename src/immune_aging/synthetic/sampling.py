"""Drawing the counts: one donor at a time, from its own random stream.

Negative-binomial counts per (donor, cell type, library-size bin), exact and in
time proportional to the non-zero entries (see :func:`_sample_nb`), plus the
extra mitochondrial reads of dying cells and hemoglobin reads of RBC-contaminated
cells.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from immune_aging.synthetic.catalogue import HB_GENES, MT_GENES, REFERENCE_AGE, SEX_GENES
from immune_aging.synthetic.design import Design

#: Genes expecting at least this many NB clumps per cell are drawn entry by entry.
_DENSE_RATE = 0.6


def donor_profiles(
    design: Design, donor: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Return one donor's expected library share per (cell type, gene).

    Applies the donor's biological noise, planted age effects and sex genes to
    the cell-type profiles. Uses the donor's own random stream, so it is the
    same whichever donors are simulated with it.

    Parameters
    ----------
    design
        The simulation design.
    donor
        Donor index (row of ``design.donors``).
    rng
        The donor's random stream, unused so far; a new one by default.
        :func:`simulate_donor` passes its own and draws the counts from it next.

    Returns
    -------
    numpy.ndarray
        Array of shape (cell types, genes); under the realistic preset, one row more
        per intermediate state (:attr:`Design.blends`).
    """
    if rng is None:
        rng = _donor_rng(design, donor)
    if design.preset == "realistic":
        return _realistic_profiles(design, donor, rng)
    row = design.donors.iloc[donor]
    z = rng.standard_normal(design.profile.shape)
    noise = np.exp(design.sigma * z - design.sigma**2 / 2)
    age = 2.0 ** (design.beta * (float(row["age"]) - REFERENCE_AGE) / 10.0)
    pi = design.profile * noise * age
    symbols = design.var["feature_name"].astype(str).to_numpy()
    for s, (sex, _) in SEX_GENES.items():
        if sex != row["sex"]:
            pi[:, symbols == s] = 0.0
    return pi


def _realistic_profiles(design: Design, donor: int, rng: np.random.Generator) -> np.ndarray:
    """One donor's profiles under the realistic preset (rows: cell types, then blends).

    Log expression adds the donor noise per cell type and shared by its types,
    the donor's gene-program factors, its pool's batch effect and the age effect;
    each noise term has mean 1 on the linear scale. A blend's row mixes the
    donor's profiles of its two types.
    """
    row = design.donors.iloc[donor]
    sigma, shared = design.sigma, design.shared_sigma
    loading, active = design.program_loading, design.program_active
    z = rng.standard_normal(design.profile.shape)
    u = rng.standard_normal(design.n_genes)
    f = rng.standard_normal(loading.shape[0])
    log_pi = sigma * z - sigma**2 / 2 + shared * u - shared**2 / 2
    log_pi += active.astype(float) @ (f[:, None] * loading - loading**2 / 2)
    pools = sorted(set(design.donors["pool"]))
    log_pi += design.pool_effect[pools.index(row["pool"])]
    log_pi += np.log(2.0) * design.beta * (float(row["age"]) - REFERENCE_AGE) / 10.0
    pi = design.profile * np.exp(log_pi)
    symbols = design.var["feature_name"].astype(str).to_numpy()
    for s, (sex, _) in SEX_GENES.items():
        if sex != row["sex"]:
            pi[:, symbols == s] = 0.0
    if design.blends:
        mixed = [w * pi[a] + (1.0 - w) * pi[b] for a, b, w in design.blends]
        pi = np.vstack([pi, *mixed])
    return pi


def simulate_donor(design: Design, donor: int) -> sp.csr_matrix:
    """Draw the raw counts of one donor's cells.

    Parameters
    ----------
    design
        The simulation design.
    donor
        Donor index (row of ``design.donors``).

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 integer-valued counts, shape (donor's cells, genes), rows in the
        order of ``design.obs``, indices sorted, no duplicates.
    """
    rng = _donor_rng(design, donor)
    pi = donor_profiles(design, donor, rng)
    start, stop = design.donor_rows(donor)
    n, n_genes = stop - start, design.n_genes
    comp = np.arange(
        np.searchsorted(design.comp_cell, start, side="left"),
        np.searchsorted(design.comp_cell, stop, side="left"),
    )
    # one block per (cell type, library-size bin) of cell bodies
    blocks, rows = [], []
    for t in np.unique(design.comp_type[comp]):
        mine = comp[design.comp_type[comp] == t]
        lib = design.comp_library[mine]
        bins = np.floor(np.log2(lib)).astype(np.int64)
        for b in np.unique(bins):
            inbin = np.flatnonzero(bins == b)
            blocks.append(_sample_nb(pi[t], design.theta, lib[inbin], rng))
            rows.append(design.comp_cell[mine[inbin]] - start)
    bodies = sp.vstack(blocks, format="csr")
    body_row = np.concatenate(rows)
    # every droplet has a first body; a doublet adds its second one
    order = np.argsort(body_row, kind="stable")
    sorted_rows = body_row[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    counts = bodies[order[first]]
    second = order[~first]
    if len(second):
        counts = counts + _scatter_rows(bodies[second], body_row[second], n)
    # dying cells: extra mitochondrial reads; RBC contamination: hemoglobin reads
    lib_cell = np.bincount(
        design.comp_cell[comp] - start, weights=design.comp_library[comp], minlength=n
    )
    symbols = design.var["feature_name"].astype(str).to_numpy()
    state = design.cell_state[start:stop]
    extra = design.cell_extra[start:stop]
    for code, genes, weights in (
        (1, np.flatnonzero(design.category == "mt"), MT_GENES),
        (2, np.flatnonzero(design.category == "hb"), HB_GENES),
    ):
        cells = np.flatnonzero(state == code)
        if len(cells) == 0:
            continue
        w = np.array([weights[s] for s in symbols[genes]])
        f = extra[cells]
        total = rng.poisson(lib_cell[cells] * f / (1.0 - f))
        added = sp.csr_matrix(rng.multinomial(total, w / w.sum()).astype(np.float32))
        added = sp.csr_matrix(
            (added.data, genes[added.indices].astype(np.int32), added.indptr),
            shape=(len(cells), n_genes),
        )
        counts = counts + _scatter_rows(added, cells, n)
    return h5ad_layout(sp.csr_matrix(counts, dtype=np.float32))


def h5ad_layout(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Give float32 CSR counts int32 column indices and int64 row pointers, in place.

    Parameters
    ----------
    counts
        Counts, CSR float32.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``counts``, with the index dtypes the h5ad writer stores.
    """
    counts.indices = counts.indices.astype(np.int32, copy=False)
    counts.indptr = counts.indptr.astype(np.int64, copy=False)
    return counts


def _donor_rng(design: Design, donor: int) -> np.random.Generator:
    """Return a donor's own random stream (profiles, then counts)."""
    return np.random.default_rng([design.seed, 2, donor])


def _indptr(index: np.ndarray, n: int) -> np.ndarray:
    """Return compressed pointers (int64, length ``n + 1``) of sorted entries' ``index``."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=indptr[1:])
    return indptr


def _scatter_rows(block: sp.csr_matrix, rows: np.ndarray, n: int) -> sp.csr_matrix:
    """Place row ``i`` of ``block`` at row ``rows[i]`` (unique) of an empty n-row matrix."""
    order = np.argsort(rows, kind="stable")
    block = block[order]
    per_row = np.zeros(n + 1, dtype=np.int64)
    per_row[rows[order] + 1] = np.diff(block.indptr)
    return sp.csr_matrix(
        (block.data, block.indices, np.cumsum(per_row)), shape=(n, block.shape[1])
    )


def _sample_nb(
    pi: np.ndarray, theta: np.ndarray, lib: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    """Draw negative-binomial counts for cells that share one expression profile.

    Entry (cell ``c``, gene ``g``) is NB with mean ``lib[c] * pi[g]`` and inverse
    dispersion ``theta[g]``; the cells' libraries should lie within a factor 2.
    Genes expected in most cells are drawn entry by entry (gamma-Poisson); the
    others as compound Poisson: the number of clumps per gene is Poisson at the
    largest library, clumps fall uniformly on the cells and are kept with
    probability ``rate(cell) / rate(largest)``, and each kept clump has a
    logarithmic-series size. Both are exact; the second costs time in
    proportion to the non-zero entries only.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 counts, shape (cells, genes), canonical (sorted, no duplicates).
    """
    n, n_genes = len(lib), len(pi)
    pit = pi / theta
    lrate_max = np.log1p(lib.max() * pit)  # clump rate / theta at the largest library
    rate_max = theta * lrate_max
    dense = np.flatnonzero(rate_max >= _DENSE_RATE)
    sparse = np.flatnonzero((rate_max < _DENSE_RATE) & (rate_max > 0))
    out = sp.csr_matrix((n, n_genes), dtype=np.float32)
    if len(dense):
        th = theta[dense]
        scale = lib[:, None] * (pi[dense] / th)[None, :]
        block = rng.poisson(rng.gamma(np.broadcast_to(th, scale.shape), scale))
        r, c = np.nonzero(block)
        out = sp.csr_matrix(
            (block[r, c].astype(np.float32), dense[c].astype(np.int32), _indptr(r, n)),
            shape=(n, n_genes),
        )
    genes = np.repeat(sparse, rng.poisson(n * rate_max[sparse]))
    total = len(genes)
    if total:
        cell = (rng.random(total, dtype=np.float32) * n).astype(np.int64)
        np.minimum(cell, n - 1, out=cell)
        x = lib[cell] * pit[genes]
        lx = np.log1p(x)
        keep = np.flatnonzero(rng.random(total) * lrate_max[genes] < lx)
        size = _logseries(x[keep], lx[keep], rng)
        # clumps are gene-major: a CSC matrix whose transpose to CSR sorts each row
        indptr = _indptr(genes[keep], n_genes)
        clumps = sp.csc_matrix(
            (size, cell[keep].astype(np.int32), indptr), shape=(n, n_genes)
        ).tocsr()
        clumps.sum_duplicates()
        out = out + clumps
    return out


def _logseries(x: np.ndarray, log1p_x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logarithmic-series draws with ``p = x / (1 + x)``, fast for small ``p``.

    Inversion from ``P(1) = p / log(1 + x)``: most draws end at 1. Entries with
    ``p > 0.5`` (long tails) use numpy's sampler.
    """
    p = x / (1.0 + x)
    out = np.ones(len(x), dtype=np.float32)
    u = rng.random(len(x))
    pk = p / log1p_x
    high = p > 0.5
    rest = np.flatnonzero((u >= pk) & ~high)
    u, pr, pk = u[rest] - pk[rest], p[rest], pk[rest]
    k = 1
    while len(rest):
        pk = pk * pr * k / (k + 1)
        k += 1
        out[rest] = k
        more = u >= pk
        u, pr, pk, rest = u[more] - pk[more], pr[more], pk[more], rest[more]
    hi = np.flatnonzero(high)
    if len(hi):
        out[hi] = rng.logseries(p[hi])
    return out
