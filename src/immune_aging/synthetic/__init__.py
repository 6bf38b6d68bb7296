"""A seeded simulator of OneK1K-like PBMC data with planted, known age effects.

The simulated dataset follows the CELLxGENE schema the pipeline reads (obs
``donor_id``, ``cell_type``, ``development_stage``, ``sex``, ...; var index
Ensembl-style IDs with symbols in ``var['feature_name']``; raw counts as CSR
float32 in ``X``) and comes with its ground truth (``truth.json``) and a GMT
gene-set library.

Model
-----
Donors have an age (uniform 20–90 years), a sex and a 10x pool. Each donor has
a cell-type composition (Dirichlet around realistic PBMC frequencies) and a
number of droplets (log-normal around ``cells_per_donor``). A droplet is a
singlet or, at ``doublet_rate``, the sum of two cells of different types of the
same donor (inter-donor doublets are removed by genetic demultiplexing in real
pools, so only these remain; with a single cell type there are no doublets).
Among singlets, ``dying_rate`` are dying cells
(a smaller library plus extra mitochondrial reads, 30–60 % MT share) and
``rbc_rate`` carry ambient red-blood-cell RNA (8–35 % hemoglobin share).

The expected count of gene ``g`` in a cell of type ``t`` from donor ``d`` with
library size ``L`` (log-normal, median about 2.6–4.5 k UMIs by type) is::

    mu = L * p[t, g] * exp(sigma_g * z[d, t, g] - sigma_g**2 / 2)
             * 2 ** (beta[t, g] * (age_d - 55) / 10) * sex_mask[d, g]

where ``p`` holds cell-type profiles (lineage and type programs plus marker
genes), ``z`` is standard-normal donor-level biological noise, and ``beta`` the
planted log2 fold change per decade. Counts are negative binomial with mean
``mu`` and gene-specific inverse dispersion ``theta_g``.

Sampling is exact and costs time in proportion to the non-zero entries, not to
cells x genes, so OneK1K's size (1.25 M cells x 35.5 k genes) takes minutes. In
each (donor, cell type, library-size bin within a factor 2), genes expected in
most cells are drawn entry by entry (gamma-Poisson); the others use the fact
that a negative binomial is compound Poisson (a Poisson number of clumps with
logarithmic-series sizes): clumps per gene are drawn at the bin's largest
library, spread uniformly over the bin's cells and thinned to each cell's own
rate. Every donor has its own random stream, so results do not depend on how
cells are chunked when writing, nor on the number of threads.

The planted effect sizes and the biological noise were tuned with the pipeline's
pseudobulk DESeq2 on the default size (48 donors): most planted (cell type,
gene) pairs are found, not all (see :data:`EFFECT_RANGE`). That makes the
``default`` preset a smoke test, not evidence about power or calibration: its
effects are 0.2-0.4 log2 per decade, the same in every aged cell type, and
nothing else varies with age.

Presets
-------
``preset="realistic"`` (:mod:`immune_aging.synthetic.realistic`) draws OneK1K-like
effects instead: small, heavy-tailed, per (cell type, gene); pools of ~14 donors
with batch effects; composition changing with age; co-varying gene programs;
gene sets mixing planted and unplanted genes, with decoys; homotypic doublets and
intermediate states. ``age_effect_scale`` multiplies every age effect on
expression; 0 gives the null twin of a design (the same data without any change
of expression with age; the realistic composition still changes with age). The
default preset with ``age_effect_scale=1`` draws exactly what it drew before
presets existed.

Modules
-------
``catalogue``
    Model constants, cell types and the gene catalogue (fixed inputs).
``expression``, ``cohort``, ``design``
    The :class:`Design`: genes, profiles and planted effects; donors, cells and
    obs; the dataclass and :func:`design_simulation` that draws them.
``sampling``
    :func:`simulate_donor`: one donor's counts from its own random stream.
``writer``
    :func:`simulate` (in memory), :func:`write_h5ad_incremental` and
    :func:`write_simulation` (the data stage's folder).
``truth``
    :func:`truth` (``truth.json``) and :func:`gene_set_library` (GMT).
``realistic``
    The realistic preset's effects, programs, pools, gene sets and ages.
"""

from immune_aging.synthetic.catalogue import (
    BIO_NOISE,
    CELL_TYPES,
    EFFECT_RANGE,
    LIBRARY_SDLOG,
    MEDIAN_LIBRARY,
    MIN_PLANTED_MEAN,
    REFERENCE_AGE,
    CellType,
)
from immune_aging.synthetic.design import Design, design_simulation
from immune_aging.synthetic.sampling import donor_profiles, simulate_donor
from immune_aging.synthetic.truth import gene_set_library, truth
from immune_aging.synthetic.writer import simulate, write_h5ad_incremental, write_simulation

__all__ = [
    "BIO_NOISE",
    "CELL_TYPES",
    "EFFECT_RANGE",
    "LIBRARY_SDLOG",
    "MEDIAN_LIBRARY",
    "MIN_PLANTED_MEAN",
    "REFERENCE_AGE",
    "CellType",
    "Design",
    "design_simulation",
    "donor_profiles",
    "gene_set_library",
    "simulate",
    "simulate_donor",
    "truth",
    "write_h5ad_incremental",
    "write_simulation",
]
