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
gene) pairs are found, not all (see :data:`EFFECT_RANGE`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

#: Age at which planted effects are neutral (years); effects scale with (age - 55) / 10.
REFERENCE_AGE = 55.0
#: Planted effects: |log2 fold change per decade| drawn uniformly from this range. With
#: BIO_NOISE and MIN_PLANTED_MEAN below, the pipeline (filter, qc with Scrublet,
#: pseudobulk, DESeq2 ~ age + sex) on the default size (seed 0) found 93 % of planted
#: (cell type, gene) pairs at padj < 0.05 (82-97 % by cell type), observed FDR 0.08.
EFFECT_RANGE = (0.2, 0.4)
#: Planted genes are drawn among genes with at least this mean count per cell (UMIs).
MIN_PLANTED_MEAN = 0.05
#: Median donor-level biological noise of a gene (sd of log expression across donors).
BIO_NOISE = 0.3
#: Median library size of a cell with library factor 1 (UMIs).
MEDIAN_LIBRARY = 3000.0
#: Spread of log library sizes between cells of one type and donor (natural log).
LIBRARY_SDLOG = 0.35
#: Cells per donor vary log-normally with this spread (natural log).
_DONOR_SIZE_SDLOG = 0.3
#: Concentration of the per-donor Dirichlet cell-type composition.
_COMPOSITION_CONCENTRATION = 300.0
#: Genes expecting at least this many NB clumps per cell are drawn entry by entry.
_DENSE_RATE = 0.6
#: Background share of a marker gene in cell types that do not express it.
_BACKGROUND = 2e-6

# --------------------------------------------------------------------------- cell types


@dataclass(frozen=True)
class CellType:
    """One simulated cell type.

    Attributes
    ----------
    key
        Short name used in the marker table.
    label
        CELLxGENE label (``obs['cell_type']``).
    ontology_id
        Cell Ontology term.
    lineage
        Shared expression program (T, NK, B, myeloid, pDC).
    frequency
        Mean share of PBMCs (renormalised over the simulated types).
    library
        Library-size factor relative to :data:`MEDIAN_LIBRARY`.
    aged
        Whether planted age effects act in this type.
    """

    key: str
    label: str
    ontology_id: str
    lineage: str
    frequency: float
    library: float
    aged: bool


#: Simulated cell types, in the order they are added as ``n_cell_types`` grows.
CELL_TYPES: tuple[CellType, ...] = (
    CellType(
        "cm_cd4",
        "central memory CD4-positive, alpha-beta T cell",
        "CL:0000904",
        "T",
        0.26,
        0.9,
        True,
    ),
    CellType(
        "naive_cd4",
        "naive thymus-derived CD4-positive, alpha-beta T cell",
        "CL:0000895",
        "T",
        0.19,
        0.85,
        False,
    ),
    CellType("cd8", "CD8-positive, alpha-beta T cell", "CL:0000625", "T", 0.15, 0.95, True),
    CellType("nk", "natural killer cell", "CL:0000623", "NK", 0.06, 1.0, False),
    CellType("naive_b", "naive B cell", "CL:0000788", "B", 0.08, 1.0, True),
    CellType("cd14_mono", "CD14-positive monocyte", "CL:0001054", "myeloid", 0.10, 1.5, True),
    CellType(
        "cd56dim_nk",
        "CD16-positive, CD56-dim natural killer cell, human",
        "CL:0000939",
        "NK",
        0.10,
        1.05,
        False,
    ),
    CellType("pdc", "plasmacytoid dendritic cell", "CL:0000784", "pDC", 0.006, 1.3, False),
    CellType("memory_b", "memory B cell", "CL:0000787", "B", 0.04, 1.1, True),
    CellType(
        "cd16_mono", "CD14-low, CD16-positive monocyte", "CL:0002396", "myeloid", 0.03, 1.4, False
    ),
    CellType("treg", "regulatory T cell", "CL:0000815", "T", 0.03, 0.9, False),
    CellType("plasmablast", "plasmablast", "CL:0000980", "B", 0.004, 2.0, False),
)

# Share of the library taken by mitochondrial and ribosomal genes, per lineage.
_MT_SHARE = {"T": 0.035, "NK": 0.04, "B": 0.04, "myeloid": 0.06, "pDC": 0.05}
_RIBO_SHARE = {"T": 0.30, "NK": 0.22, "B": 0.25, "myeloid": 0.15, "pDC": 0.18}

# --------------------------------------------------------------------------- genes

_MT_GENES = {  # relative weights within the mitochondrial share
    "MT-CO1": 8.0,
    "MT-CO2": 5.0,
    "MT-CO3": 6.0,
    "MT-ATP6": 6.0,
    "MT-ATP8": 1.0,
    "MT-CYB": 4.0,
    "MT-ND1": 3.0,
    "MT-ND2": 3.0,
    "MT-ND3": 2.0,
    "MT-ND4": 4.0,
    "MT-ND4L": 1.0,
    "MT-ND5": 1.5,
    "MT-ND6": 0.5,
}
_RIBO_GENES = (
    "RPS2 RPS3 RPS3A RPS4X RPS5 RPS6 RPS7 RPS8 RPS9 RPS10 RPS11 RPS12 RPS13 RPS14 RPS15 "
    "RPS15A RPS16 RPS17 RPS18 RPS19 RPS20 RPS21 RPS23 RPS24 RPS25 RPS26 RPS27 RPS27A RPS28 "
    "RPS29 RPSA RPL3 RPL4 RPL5 RPL6 RPL7 RPL7A RPL8 RPL9 RPL10 RPL10A RPL11 RPL12 RPL13 "
    "RPL13A RPL14 RPL15 RPL17 RPL18 RPL18A RPL19 RPL21 RPL22 RPL23 RPL23A RPL24 RPL26 RPL27 "
    "RPL27A RPL28 RPL29 RPL30 RPL31 RPL32 RPL34 RPL35 RPL35A RPL36 RPL36A RPL37 RPL37A RPL38 "
    "RPL39 RPL41 RPLP0 RPLP1 RPLP2 RPL22L1"
).split()
#: Hemoglobin genes and their share of red-blood-cell RNA.
_HB_GENES = {
    "HBB": 0.55,
    "HBA2": 0.25,
    "HBA1": 0.15,
    "HBD": 0.025,
    "HBM": 0.01,
    "HBQ1": 0.005,
    "HBG2": 0.004,
    "HBG1": 0.003,
    "HBZ": 0.002,
    "HBE1": 0.001,
}
#: Named like hemoglobin genes but not hemoglobin: must never be flagged.
_HB_LOOKALIKES = {"HBP1": 3e-4, "HBEGF": 1e-4}
_SEX_GENES = {  # (sex expressing it, share of library)
    "XIST": ("female", 1.5e-3),
    "RPS4Y1": ("male", 1.0e-3),
    "DDX3Y": ("male", 2.0e-4),
    "UTY": ("male", 1.0e-4),
    "KDM5D": ("male", 1.0e-4),
    "EIF1AY": ("male", 2.0e-4),
}
# Immune-receptor segments: constant regions first, so the smallest gene sets keep them.
_IG_CONSTANT = ["IGKC", "IGLC2", "IGHD", "IGHG1", "IGHA1", "IGLC1", "IGLC3", "IGHG2", "IGHA2"]
_TR_CONSTANT = ["TRAC", "TRBC2", "TRBC1", "TRDC", "TRGC1", "TRGC2"]
_IG_V = (
    "IGHV1-2 IGHV1-18 IGHV1-46 IGHV1-69 IGHV3-7 IGHV3-15 IGHV3-21 IGHV3-23 IGHV3-30 "
    "IGHV3-33 IGHV3-48 IGHV3-74 IGHV4-34 IGHV4-39 IGHV5-51 IGKV1-5 IGKV1-33 IGKV1-39 "
    "IGKV2-28 IGKV2-30 IGKV3-11 IGKV3-15 IGKV3-20 IGKV4-1 IGLV1-40 IGLV1-44 IGLV1-47 "
    "IGLV2-11 IGLV2-14 IGLV2-23 IGLV3-1 IGLV3-21 IGLV3-25 IGLV6-57 IGHJ4 IGHJ6 IGKJ1 IGKJ2"
).split()
_TR_V = (
    "TRAV1-2 TRAV2 TRAV3 TRAV8-6 TRAV12-1 TRAV12-2 TRAV13-1 TRAV17 TRAV19 TRAV21 TRAV26-1 "
    "TRAV26-2 TRAV29DV5 TRAV38-2DV8 TRAV41 TRBV2 TRBV3-1 TRBV4-1 TRBV5-1 TRBV6-5 TRBV7-2 "
    "TRBV7-9 TRBV9 TRBV10-3 TRBV11-2 TRBV12-3 TRBV19 TRBV20-1 TRBV27 TRBV28 TRBV29-1 "
    "TRBV30 TRDV1 TRDV2 TRDV3 TRGV2 TRGV3 TRGV4 TRGV5 TRGV8 TRGV9 TRGV10 TRAJ33 TRBJ2-7 "
    "TRBD1 TRBD2"
).split()
#: Highly expressed genes shared by all types: symbol -> share of the library.
_HOUSEKEEPING = {
    "MALAT1": 0.04,
    "B2M": 0.03,
    "TMSB4X": 0.03,
    "EEF1A1": 0.025,
    "ACTB": 0.015,
    "TPT1": 0.012,
    "FTH1": 0.01,
    "FTL": 0.008,
    "MYL6": 0.006,
    "PTMA": 0.005,
    "GAPDH": 0.004,
    "TMSB10": 0.006,
    "UBA52": 0.003,
    "EEF1G": 0.003,
    "HLA-B": 0.005,
    "HLA-A": 0.003,
    "HLA-C": 0.004,
    "HLA-E": 0.003,
    "CD74": 0.004,
    "PFN1": 0.003,
    "CFL1": 0.003,
    "ARHGDIB": 0.002,
    "SRGN": 0.003,
    "NACA": 0.002,
    "EIF1": 0.003,
    "UBC": 0.002,
    "PPIA": 0.002,
    "JUNB": 0.002,
    "SH3BGRL3": 0.002,
    "ACTG1": 0.003,
}
#: Marker genes: symbol -> {cell-type key or lineage: share of the library}.
_MARKERS: dict[str, dict[str, float]] = {
    "CD3E": {"T": 2e-3},
    "CD3D": {"T": 3e-3},
    "CD3G": {"T": 1e-3},
    "CD2": {"T": 1e-3, "NK": 3e-4},
    "CD4": {"cm_cd4": 5e-4, "naive_cd4": 5e-4, "treg": 5e-4, "myeloid": 2e-4},
    "CD8A": {"cd8": 1.5e-3},
    "CD8B": {"cd8": 1.2e-3},
    "IL7R": {"cm_cd4": 2.5e-3, "naive_cd4": 1.5e-3, "cd8": 5e-4},
    "CCR7": {"naive_cd4": 2.5e-3, "cm_cd4": 1e-3, "naive_b": 5e-4, "memory_b": 3e-4},
    "SELL": {"naive_cd4": 1.5e-3, "cm_cd4": 8e-4, "naive_b": 8e-4, "cd14_mono": 5e-4},
    "LEF1": {"naive_cd4": 1.5e-3, "cm_cd4": 4e-4, "cd8": 3e-4},
    "TCF7": {"naive_cd4": 1.5e-3, "cm_cd4": 8e-4, "cd8": 4e-4},
    "S100A4": {"cm_cd4": 3e-3, "cd8": 2e-3, "NK": 2e-3, "myeloid": 5e-3, "treg": 2e-3},
    "AQP3": {"cm_cd4": 1e-3},
    "LTB": {"T": 3e-3, "B": 2e-3},
    "GZMK": {"cd8": 1.5e-3, "nk": 5e-4},
    "GZMH": {"cd8": 1e-3, "cd56dim_nk": 1e-3},
    "GZMA": {"cd8": 1e-3, "NK": 2e-3},
    "GZMB": {"cd56dim_nk": 3e-3, "nk": 1.5e-3, "pdc": 2e-3},
    "CCL5": {"cd8": 4e-3, "NK": 3e-3},
    "NKG7": {"cd8": 2e-3, "nk": 5e-3, "cd56dim_nk": 7e-3},
    "GNLY": {"nk": 6e-3, "cd56dim_nk": 9e-3, "cd8": 5e-4},
    "KLRD1": {"NK": 1.5e-3, "cd8": 3e-4},
    "KLRF1": {"NK": 1e-3},
    "PRF1": {"NK": 1.5e-3, "cd8": 5e-4},
    "NCAM1": {"nk": 4e-4, "cd56dim_nk": 5e-5},
    "XCL1": {"nk": 8e-4},
    "FCGR3A": {"cd56dim_nk": 2e-3, "cd16_mono": 3e-3, "nk": 2e-4},
    "FGFBP2": {"cd56dim_nk": 1.5e-3},
    "SPON2": {"cd56dim_nk": 1e-3},
    "MS4A1": {"naive_b": 2e-3, "memory_b": 2e-3},
    "CD79A": {"B": 3e-3},
    "CD79B": {"naive_b": 2e-3, "memory_b": 2e-3},
    "CD19": {"naive_b": 3e-4, "memory_b": 3e-4},
    "BANK1": {"naive_b": 6e-4, "memory_b": 6e-4},
    "TCL1A": {"naive_b": 2e-3},
    "IGHM": {"naive_b": 6e-3, "memory_b": 1e-3},
    "CD27": {"memory_b": 5e-4, "cm_cd4": 4e-4, "plasmablast": 8e-4},
    "CD14": {"cd14_mono": 1.5e-3},
    "LYZ": {"cd14_mono": 2e-2, "cd16_mono": 5e-3, "pdc": 5e-4},
    "S100A8": {"cd14_mono": 1.5e-2, "cd16_mono": 1e-3},
    "S100A9": {"cd14_mono": 2e-2, "cd16_mono": 3e-3},
    "FCN1": {"cd14_mono": 3e-3, "cd16_mono": 1.5e-3},
    "VCAN": {"cd14_mono": 1.5e-3},
    "CST3": {"myeloid": 5e-3, "pdc": 2e-3},
    "MS4A7": {"cd16_mono": 1.5e-3},
    "LST1": {"cd16_mono": 2e-3, "cd14_mono": 8e-4},
    "AIF1": {"myeloid": 3e-3},
    "LILRA4": {"pdc": 1.5e-3},
    "IL3RA": {"pdc": 7e-4},
    "CLEC4C": {"pdc": 5e-4},
    "IRF7": {"pdc": 1e-3},
    "TCF4": {"pdc": 1.2e-3},
    "JCHAIN": {"plasmablast": 6e-3, "pdc": 1.5e-3},
    "MZB1": {"plasmablast": 3e-3, "pdc": 5e-4},
    "XBP1": {"plasmablast": 2e-3},
    "PRDM1": {"plasmablast": 3e-4},
    "FOXP3": {"treg": 5e-4},
    "IL2RA": {"treg": 6e-4},
    "CTLA4": {"treg": 5e-4},
    "IKZF2": {"treg": 3e-4},
    "MKI67": {"plasmablast": 5e-4},
}
#: Real symbols used for generic genes before numbered fillers (GENE00001, ...).
_GENERIC = (
    "ARPC2 ARPC3 ARPC1B CD52 CD37 CD48 CD53 CD69 CD44 CD7 CD247 CD28 CD38 CD55 CD59 CD63 "
    "CD81 CD83 CD86 CD99 CD164 CD320 FOS FOSB JUN JUND EGR1 IER2 IER3 DUSP1 DUSP2 NFKBIA "
    "ZFP36 KLF2 KLF6 TSC22D3 TXNIP SAT1 UBB EIF3E EIF3H EIF4A1 EIF4B EEF1B2 EEF1D EEF2 "
    "HNRNPA1 HNRNPK HNRNPU NPM1 NCL PABPC1 PPIB SERF2 GSTP1 PRDX1 SOD1 TXN COX4I1 COX7C "
    "ATP5F1E ATP5MC2 NDUFA4 UQCRH CHCHD2 ANXA1 ANXA2 S100A6 S100A10 S100A11 LGALS1 LGALS3 "
    "CALM1 CALM2 YBX1 PSMA7 PSMB1 PSMB9 PSME1 PSME2 STAT1 IRF1 ISG15 IFI6 IFITM1 IFITM2 "
    "IFITM3 MX1 OAS1 IFI44L XAF1 BST2 LY6E SP110 GBP1 GBP2 GBP5 CXCR4 CCR4 CCR6 CXCR3 "
    "CXCR5 CCL4 CCL3 CCL4L2 CCL3L1 XCL2 IL32 IL2RG IL10RA IL6ST IL16 CTSW CST7 KLRB1 KLRC1 "
    "KLRG1 ZAP70 LCK FYN ITK LAT PRKCH SYK BLK BLNK FCRLA FCRL5 FCER2 CR2 CIITA POU2AF1 "
    "PAX5 SPIB IRF4 IRF8 BCL2 BCL6 MCL1 BIRC3 TNFAIP3 NR4A1 NR4A2 CEBPB CEBPD SPI1 LILRB2 "
    "FCER1G TYROBP LGALS2 CTSS CTSD CTSZ PSAP GRN FGL2 CD36 CSF1R CSF3R ITGAM ITGAX ITGB2 "
    "PLAC8 MNDA SERPINA1 TIMP1 NEAT1 LINC00861 RETN CLEC7A CLEC12A MS4A6A TYMS TOP2A STMN1 "
    "TUBA1B TUBB HMGB1 HMGB2 HMGN1 HMGN2 RAN PCNA NKTR ZNF331 DDX5 DDX17 SRSF5 SRSF7 SON "
    "PNISR ANKRD12 CHD4 SETD2 GIMAP1 GIMAP4 GIMAP5 GIMAP7 SYNE2 PIK3IP1 PDE3B SESN3 FHIT "
    "NELL2 CAMK4 MAL TRABD2A RCAN3 ADD3 NOSIP SARAF CD6 CD5 SPOCK2 ITM2A ITM2B ARL4C ANXA6 "
    "AHNAK ZEB2 ID2 ID3 TBX21 EOMES RUNX3 CORO1A PTPRC LAPTM5 LCP1 VIM HLA-DRA HLA-DRB1 "
    "HLA-DPA1 HLA-DPB1 HLA-DQA1 HLA-DQB1 HLA-DMA HLA-DMB CDKN1A CDKN2A TP53 ATM FOXO1 "
    "FOXO3 SIRT1 SIRT3 TERT TERF2 LMNA LMNB1 IGF1R INSR MTOR RPTOR RICTOR AKT1 PIK3CA "
    "PTEN NFKB1 RELA IL6 IL1B TNF IFNG CXCL8 CCL2 SERPINE1 MMP9 GDF15 CRP APOE CLU SPP1 "
    "CD9 SELPLG PECAM1 ICAM1 ICAM2 ICAM3 VCAM1 ITGA4 ITGB1 ITGB7 ITGAL CD96 TIGIT PDCD1 "
    "LAG3 HAVCR2 CD160 CD244 KLRK1 KLRC2 KLRC3 FCRL3 FCRL6 ADGRG1 ZNF683 PRSS23 CX3CR1 "
    "TGFBR3 SLAMF7 SLAMF6 SH2D1A SH2D1B GATA3 RORC RORA BATF BACH2 SATB1 TOX TOX2 NR3C1 "
    "PRDM2 ZBTB7B ZBTB16 SLC4A10 NCR3 CEBPA MAFB IRF5 IRF2 TLR2 TLR4 TLR7 TLR8 CD1C "
    "CLEC10A FCER1A ENHO CLEC9A XCR1 THBD C1QA C1QB C1QC PPBP PF4 GP9 ITGA2B TUBB1 CLIC1 "
    "VAMP5 VAMP8 GABARAP GABARAPL2 SQSTM1 MAP1LC3B ATG5 ATG7 BECN1 ULK1 LAMP1 LAMP2 CTSB "
    "CTSH CTSC PRDX2 PRDX3 PRDX6 GPX1 GPX4 CAT SOD2 HMOX1 NQO1 TALDO1 TKT PGK1 ENO1 ALDOA "
    "LDHA LDHB PKM TPI1 PGAM1 GPI HK1 HK2 SLC2A1 SLC2A3 ACSL1 CPT1A PPARG PPARD SCD FASN "
    "HMGCR LDLR SREBF1 SREBF2 INSIG1 NPC1 NPC2 ABCA1 ABCG1 LPL CD68 CD163 MRC1 MSR1 MARCO "
    "SIGLEC1 SIGLEC7 SIGLEC10 LILRB1 LILRB4 LILRA5 FCGR1A FCGR2A FCGR2B TREM1 TREM2 NLRP3 "
    "CASP1 CASP3 CASP8 BAX BAK1 BCL2L1 BID BIM XIAP CFLAR FADD FAS FASLG TRAF1 TRAF3 "
    "TNFRSF1A TNFRSF1B TNFRSF4 TNFRSF9 TNFRSF13B TNFRSF13C TNFRSF17 TNFSF10 TNFSF13B "
    "CD40 CD40LG CD80 CD70 ICOS ICOSLG PDCD1LG2 CD274 IDO1 IL10 IL12A IL12B IL15 IL18 "
    "IL21R IL4R IL7 IL2RB IL18R1 IL18RAP IL12RB1 IL12RB2 IL23R IL17RA IL1R1 IL1RN IL27RA "
    "JAK1 JAK2 JAK3 TYK2 STAT3 STAT4 STAT5A STAT5B STAT6 SOCS1 SOCS3 CISH PIM1 PIM2 MYC "
    "MYB MAX MXD1 MXD4 CCND2 CCND3 CDK4 CDK6 RB1 E2F1 MCM2 MCM5 MCM7 CENPF AURKA AURKB "
    "PLK1 BUB1 CCNB1 CCNB2 CDC20 CDK1 UBE2C BIRC5 H2AZ1 H2AX H3-3A H3-3B H1-0 TOP1 SMC1A"
).split()


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------- design


@dataclass
class Design:
    """Everything decided before counts are drawn: genes, donors, cells, truth.

    Built by :func:`design_simulation`; read by :func:`simulate_donor`,
    :func:`simulate`, :func:`write_h5ad_incremental`, :func:`truth` and
    :func:`gene_set_library`.

    Attributes
    ----------
    seed
        Random seed.
    cell_types
        The simulated :class:`CellType` entries.
    var
        Gene table: index Ensembl-style IDs, column ``feature_name``.
    category
        Gene category per gene (``mt``, ``ribo``, ``hb``, ``receptor``, ``sex``,
        ``marker``, ``housekeeping``, ``generic``).
    profile
        Expected share of the library per (cell type, gene); rows sum to 1.
    theta
        Negative-binomial inverse dispersion per gene.
    sigma
        Donor-level biological noise per gene (natural-log scale).
    beta
        Planted log2 fold change per decade per (cell type, gene).
    donors
        Donor table: ``donor_id, age, sex, development_stage, pool, n_cells,
        library_factor``.
    obs
        Cell table in the CELLxGENE schema (index: cell barcodes).
    cell_donor
        Donor index per cell.
    cell_state
        0 normal, 1 dying, 2 RBC-contaminated, 3 doublet.
    cell_extra
        Target MT share (dying) or hemoglobin share (RBC) per cell; 0 otherwise.
    comp_cell, comp_type, comp_library
        One entry per simulated cell body: the droplet it lands in (a doublet
        has two), its cell-type index and its library size.
    gene_sets
        Planted sets: name -> ``{"direction", "cell_types", "genes"}`` (symbols).
    decoy_sets
        Sets without effect: name -> symbols.
    """

    seed: int
    cell_types: tuple[CellType, ...]
    var: pd.DataFrame
    category: np.ndarray
    profile: np.ndarray
    theta: np.ndarray
    sigma: np.ndarray
    beta: np.ndarray
    donors: pd.DataFrame
    obs: pd.DataFrame
    cell_donor: np.ndarray
    cell_state: np.ndarray
    cell_extra: np.ndarray
    comp_cell: np.ndarray
    comp_type: np.ndarray
    comp_library: np.ndarray
    gene_sets: dict[str, dict[str, Any]]
    decoy_sets: dict[str, list[str]]

    @property
    def n_cells(self) -> int:
        """Number of droplets (rows of ``X``)."""
        return len(self.obs)

    @property
    def n_genes(self) -> int:
        """Number of genes (columns of ``X``)."""
        return len(self.var)

    def donor_rows(self, donor: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` rows of one donor's cells (they are contiguous)."""
        start = int(self.donors["first_row"].iloc[donor])
        return start, start + int(self.donors["n_cells"].iloc[donor])


def design_simulation(
    *,
    seed: int,
    n_donors: int,
    n_cell_types: int,
    cells_per_donor: int,
    n_genes: int,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
) -> Design:
    """Decide genes, donors, cells and planted effects of a simulation.

    Parameters
    ----------
    seed
        Random seed; the same arguments give the same design.
    n_donors
        Number of donors (at least 2).
    n_cell_types
        Number of cell types, 1 to 12, taken from :data:`CELL_TYPES` in order.
    cells_per_donor
        Mean droplets per donor.
    n_genes
        Number of genes (at least 500).
    doublet_rate
        Fraction of droplets that are doublets.
    dying_rate
        Fraction of singlets that are dying cells.
    rbc_rate
        Fraction of singlets contaminated with red-blood-cell RNA.

    Returns
    -------
    Design
        The plan; counts are drawn by :func:`simulate_donor`.
    """
    if not 1 <= n_cell_types <= len(CELL_TYPES):
        raise ValueError(f"n_cell_types must be 1..{len(CELL_TYPES)}, got {n_cell_types}")
    if n_donors < 2 or n_genes < 500 or cells_per_donor < 1:
        raise ValueError("need n_donors >= 2, n_genes >= 500 and cells_per_donor >= 1")
    rng = np.random.default_rng([seed, 1])
    types = CELL_TYPES[:n_cell_types]
    var, category = _genes(n_genes, rng)
    profile, theta = _profiles(var, category, types, rng)
    sigma = np.clip(BIO_NOISE * np.exp(rng.normal(0.0, 0.35, n_genes)), 0.08, 0.8)
    gene_sets, decoy_sets, beta = _plant(var, category, profile, types, rng)
    donors = _donors(n_donors, cells_per_donor, rng)
    cells = _cells(
        donors, types, rng, doublet_rate=doublet_rate, dying_rate=dying_rate, rbc_rate=rbc_rate
    )
    design = Design(
        seed=seed,
        cell_types=types,
        var=var,
        category=category,
        profile=profile,
        theta=theta,
        sigma=sigma,
        beta=beta,
        donors=donors,
        gene_sets=gene_sets,
        decoy_sets=decoy_sets,
        **cells,
    )
    log.info(
        "simulation design: %d donors, %d cells, %d genes, %d cell types",
        n_donors,
        design.n_cells,
        n_genes,
        n_cell_types,
    )
    return design


def _genes(n_genes: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Gene symbols, categories and unique Ensembl-style IDs."""
    n_ribo = min(len(_RIBO_GENES), max(20, n_genes // 60))
    n_receptor = min(len(_IG_V) + len(_TR_V), max(10, n_genes // 50))
    receptors = _IG_CONSTANT[:3] + _TR_CONSTANT[:4]
    v_genes = [g for pair in zip(_IG_V, _TR_V, strict=False) for g in pair]
    v_genes += _IG_V[len(_TR_V) :] + _TR_V[len(_IG_V) :]
    receptors += _IG_CONSTANT[3:] + _TR_CONSTANT[4:]
    receptors = _dedupe(receptors + v_genes)[: max(n_receptor, 7)]
    named = [
        ("mt", list(_MT_GENES)),
        ("ribo", _RIBO_GENES[:n_ribo]),
        ("hb", list(_HB_GENES)),
        ("hb_lookalike", list(_HB_LOOKALIKES)),
        ("sex", list(_SEX_GENES)),
        ("receptor", receptors),
        ("housekeeping", list(_HOUSEKEEPING)),
        ("marker", list(_MARKERS)),
    ]
    symbols: list[str] = []
    cats: list[str] = []
    for cat, genes in named:
        symbols += genes
        cats += [cat] * len(genes)
    taken = set(symbols)
    n_generic = n_genes - len(symbols)
    if n_generic < 300:
        raise ValueError(f"n_genes={n_genes} leaves {n_generic} generic genes; need >= 300")
    generic = [g for g in _dedupe(_GENERIC) if g not in taken][:n_generic]
    generic += [f"GENE{i:05d}" for i in range(1, n_generic - len(generic) + 1)]
    symbols += generic
    cats += ["generic"] * len(generic)
    # genes appear in random order; IDs increase along the file like a sorted annotation
    order = rng.permutation(n_genes)
    ids = np.sort(rng.choice(np.arange(100_000, 300_000), size=n_genes, replace=False))
    var = pd.DataFrame(
        {"feature_name": pd.Categorical(np.asarray(symbols, dtype=object)[order])},
        index=pd.Index([f"ENSG{i:011d}" for i in ids], name=None),
    )
    return var, np.asarray(cats, dtype=object)[order]


def _profiles(
    var: pd.DataFrame, category: np.ndarray, types: tuple[CellType, ...], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Library share per (cell type, gene) and inverse dispersion per gene."""
    symbols = var["feature_name"].astype(str).to_numpy()
    pos = {s: i for i, s in enumerate(symbols)}
    n_types, n_genes = len(types), len(symbols)
    prof = np.zeros((n_types, n_genes))
    theta = np.clip(np.exp(rng.normal(np.log(3.0), 0.6, n_genes)), 0.5, 50.0)

    def idx(cat: str) -> np.ndarray:
        return np.flatnonzero(category == cat)

    # mitochondrial and ribosomal blocks
    mt = idx("mt")
    mt_w = np.array([_MT_GENES[s] for s in symbols[mt]])
    ribo = idx("ribo")
    ribo_w = np.exp(rng.normal(0.0, 0.5, len(ribo)))
    theta[ribo] = 20.0
    theta[mt] = 10.0
    for t, ct in enumerate(types):
        prof[t, mt] = _MT_SHARE[ct.lineage] * mt_w / mt_w.sum()
        prof[t, ribo] = _RIBO_SHARE[ct.lineage] * ribo_w / ribo_w.sum()
    # hemoglobin: ambient traces only (RBC contamination is added per cell)
    hb = idx("hb")
    prof[:, hb] = 2e-6 * np.array([_HB_GENES[s] for s in symbols[hb]])
    myeloid = np.array([ct.lineage == "myeloid" for ct in types])
    for s, share in _HB_LOOKALIKES.items():
        prof[:, pos[s]] = share * np.where(myeloid & (s == "HBEGF"), 5.0, 1.0)
    for s, (_, share) in _SEX_GENES.items():
        prof[:, pos[s]] = share
    for s, share in _HOUSEKEEPING.items():
        prof[:, pos[s]] = share * np.exp(rng.normal(0.0, 0.2, n_types))
        theta[pos[s]] = 15.0
    # immune receptors: constants at steady levels, V/J segments bursty (clonal usage)
    for s in symbols[idx("receptor")]:
        i = pos[s]
        is_ig = s.startswith("IG")
        constant = s in _IG_CONSTANT or s in _TR_CONSTANT
        for t, ct in enumerate(types):
            share = 1e-6
            if is_ig and ct.lineage == "B":
                share = {"IGKC": 6e-3, "IGLC2": 3e-3, "IGHD": 2e-3}.get(
                    s, 8e-4 if constant else 3e-4
                )
                if ct.key == "plasmablast":
                    share *= 15.0
                elif s == "IGHD" and ct.key != "naive_b":
                    share = 2e-4
            elif not is_ig and ct.lineage == "T":
                share = {"TRAC": 2e-3, "TRBC2": 3e-3, "TRBC1": 1.5e-3}.get(
                    s, 3e-4 if constant else 2e-4
                )
            elif s == "TRDC" and ct.lineage == "NK":
                share = 3e-4
            prof[t, i] = share
        theta[i] = 8.0 if constant else 0.05
    # markers
    for s, where in _MARKERS.items():
        i = pos[s]
        for t, ct in enumerate(types):
            prof[t, i] = where.get(ct.key, where.get(ct.lineage, _BACKGROUND))
        theta[i] = max(theta[i], 2.0)
    # generic genes: log-normal abundance with lineage and cell-type programs
    gen = idx("generic")
    base = rng.normal(0.0, 1.6, len(gen))
    lineages = sorted({ct.lineage for ct in CELL_TYPES})
    lineage_dev = {
        lin: rng.normal(0.0, 1.0, len(gen)) * (rng.random(len(gen)) < 0.2) for lin in lineages
    }
    type_dev = {
        ct.key: rng.normal(0.0, 0.6, len(gen)) * (rng.random(len(gen)) < 0.1) for ct in CELL_TYPES
    }
    for t, ct in enumerate(types):
        w = np.exp(base + lineage_dev[ct.lineage] + type_dev[ct.key])
        rest = 1.0 - prof[t].sum()
        prof[t, gen] = rest * w / w.sum()
    prof /= prof.sum(axis=1, keepdims=True)
    return prof, theta


def _plant(
    var: pd.DataFrame,
    category: np.ndarray,
    profile: np.ndarray,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], np.ndarray]:
    """Choose planted age gene sets, decoy sets and the log2 fold changes per decade."""
    symbols = var["feature_name"].astype(str).to_numpy()
    aged = [t for t, ct in enumerate(types) if ct.aged]
    generic = np.flatnonzero(category == "generic")
    # expressed genes only: at least 0.1 expected UMIs per cell in every aged type
    mean_counts = (
        profile[np.ix_(aged, generic)]
        * MEDIAN_LIBRARY
        * np.array([[types[t].library] for t in aged])
    )
    candidates = generic[mean_counts.min(axis=0) >= MIN_PLANTED_MEAN]
    hi = min(40, max(15, len(generic) // 20))
    lo = min(25, hi)
    sizes = rng.integers(lo, hi + 1, size=4)
    if len(candidates) < sizes.sum():
        order = np.argsort(-mean_counts.min(axis=0), kind="stable")
        candidates = generic[order[: sizes.sum()]]
    chosen = rng.choice(candidates, size=sizes.sum(), replace=False)
    half = max(1, math.ceil(len(aged) / 2))
    plan = [
        ("SIM_AGE_UP_1", "up", aged),
        ("SIM_AGE_DOWN_1", "down", aged),
        ("SIM_AGE_UP_2", "up", aged[:half]),
        ("SIM_AGE_DOWN_2", "down", aged[len(aged) // 2 :] or aged),
    ]
    beta = np.zeros(profile.shape)
    gene_sets: dict[str, dict[str, Any]] = {}
    start = 0
    for (name, direction, where), size in zip(plan, sizes, strict=True):
        genes = np.sort(chosen[start : start + size])
        start += size
        sign = 1.0 if direction == "up" else -1.0
        effect = sign * rng.uniform(*EFFECT_RANGE, size=len(genes))
        for t in where:
            beta[t, genes] = effect
        gene_sets[name] = {
            "direction": direction,
            "cell_types": [types[t].label for t in where],
            "genes": [str(s) for s in symbols[genes]],
        }
    # decoys: random generic genes, never planted, sizes log-uniform in 15..200
    free = np.setdiff1d(generic, chosen)
    decoys: dict[str, list[str]] = {}
    for k in range(8):
        size = round(float(np.exp(rng.uniform(np.log(15), np.log(200)))))
        size = min(size, len(free) // 2)
        genes = np.sort(rng.choice(free, size=size, replace=False))
        decoys[f"SIM_DECOY_{k + 1:02d}"] = [str(s) for s in symbols[genes]]
    return gene_sets, decoys, beta


def _donors(n_donors: int, cells_per_donor: int, rng: np.random.Generator) -> pd.DataFrame:
    """Donor ages, sexes, stage strings, pools and sizes."""
    width = max(3, len(str(n_donors)))
    ids = [f"D{i + 1:0{width}d}" for i in range(n_donors)]
    age = rng.integers(20, 91, size=n_donors).astype(float)
    sex = np.where(rng.random(n_donors) < 0.5, "female", "male").astype(object)
    if len(set(sex)) == 1:
        sex[-1] = "male" if sex[0] == "female" else "female"
    n_unknown = max(1, round(0.04 * n_donors)) if n_donors >= 6 else 0
    unknown = np.zeros(n_donors, dtype=bool)
    unknown[rng.choice(n_donors, size=n_unknown, replace=False)] = True
    known = np.flatnonzero(~unknown)
    if n_donors >= 10 and not (age[known] >= 80).any():
        age[known[np.argmax(age[known])]] = float(rng.integers(80, 91))
    form = rng.integers(0, 2, size=n_donors)
    young = [i for i in known if age[i] < 80]
    if len(young) >= 2:  # both spellings always occur
        form[young[0]], form[young[1]] = 0, 1
    stage = []
    for i in range(n_donors):
        if unknown[i]:
            stage.append("unknown")
        elif age[i] >= 80:
            stage.append("80 year-old and over stage")
        elif form[i] == 0:
            stage.append(f"{int(age[i])}-year-old stage")
        else:
            stage.append(f"{int(age[i])}-year-old human stage")
    n_pools = max(1, math.ceil(n_donors / 8))
    pool_of = np.empty(n_donors, dtype=int)
    for p, members in enumerate(np.array_split(rng.permutation(n_donors), n_pools)):
        pool_of[members] = p
    pwidth = max(2, len(str(n_pools)))
    size = cells_per_donor * np.exp(
        rng.normal(-(_DONOR_SIZE_SDLOG**2) / 2, _DONOR_SIZE_SDLOG, n_donors)
    )
    donors = pd.DataFrame(
        {
            "donor_id": ids,
            "age": age,
            "sex": sex,
            "development_stage": stage,
            "pool": [f"pool_{p + 1:0{pwidth}d}" for p in pool_of],
            "n_cells": np.maximum(np.round(size).astype(int), 10),
            "library_factor": np.exp(rng.normal(0.0, 0.15, n_donors)),
        }
    )
    # rows are ordered by pool, then donor: each donor's cells are contiguous
    donors = donors.iloc[np.lexsort((np.arange(n_donors), pool_of))].reset_index(drop=True)
    donors["first_row"] = np.concatenate([[0], np.cumsum(donors["n_cells"].to_numpy())[:-1]])
    return donors


def _barcodes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` unique 16-nt 10x-style barcodes."""
    draws = rng.integers(0, 4**16, size=n + n // 100 + 16, dtype=np.int64)
    _, first = np.unique(draws, return_index=True)
    draws = draws[np.sort(first)][:n]
    digits = (draws[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.int64))) & 3
    letters = np.array(list("ACGT"))[digits]
    return letters.view("<U16").ravel()


def _cells(
    donors: pd.DataFrame,
    types: tuple[CellType, ...],
    rng: np.random.Generator,
    *,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
) -> dict[str, Any]:
    """Cell-level plan: types, library sizes, doublets, dying and RBC cells, obs."""
    freq = np.array([ct.frequency for ct in types])
    freq /= freq.sum()
    lib_type = np.array([ct.library for ct in types])
    n_types = len(types)
    comp_cell, comp_type, comp_lib = [], [], []
    cell_donor, cell_state, cell_extra, cell_type = [], [], [], []
    for d, row in enumerate(donors.itertuples(index=False)):
        n = int(row.n_cells)
        first = int(row.first_row)
        share = rng.dirichlet(_COMPOSITION_CONCENTRATION * freq)
        n_dbl = int(rng.binomial(n, doublet_rate)) if n_types > 1 else 0
        t1 = rng.choice(n_types, size=n, p=share)
        t2 = np.full(n, -1)
        doublet = np.zeros(n, dtype=bool)
        doublet[rng.choice(n, size=n_dbl, replace=False)] = True
        partner = rng.choice(n_types, size=n_dbl, p=share)
        for _ in range(100):  # heterotypic: redraw partners of the same type
            same = partner == t1[doublet]
            if not same.any():
                break
            partner[same] = rng.choice(n_types, size=int(same.sum()), p=share)
        t2[doublet] = partner
        lib1 = MEDIAN_LIBRARY * row.library_factor * lib_type[t1]
        lib1 = lib1 * np.exp(rng.normal(0.0, LIBRARY_SDLOG, n))
        lib2 = MEDIAN_LIBRARY * row.library_factor * lib_type[np.maximum(t2, 0)]
        lib2 = lib2 * np.exp(rng.normal(0.0, LIBRARY_SDLOG, n))
        state = np.where(doublet, 3, 0)
        extra = np.zeros(n)
        singles = rng.permutation(np.flatnonzero(~doublet))
        n_dying = int(rng.binomial(len(singles), dying_rate))
        n_rbc = int(rng.binomial(len(singles) - n_dying, rbc_rate))
        dying = singles[:n_dying]
        rbc = singles[n_dying : n_dying + n_rbc]
        state[dying] = 1
        extra[dying] = rng.uniform(0.3, 0.6, n_dying)
        lib1[dying] *= rng.uniform(0.25, 0.6, n_dying)
        state[rbc] = 2
        extra[rbc] = rng.uniform(0.08, 0.35, n_rbc)
        rows = first + np.arange(n)
        comp_cell += [rows, rows[doublet]]
        comp_type += [t1, t2[doublet]]
        comp_lib += [lib1, lib2[doublet]]
        cell_donor.append(np.full(n, d))
        cell_state.append(state)
        cell_extra.append(extra)
        cell_type.append(t1)
    comp_cell_a = np.concatenate(comp_cell)
    by_cell = np.argsort(comp_cell_a, kind="stable")  # a donor's bodies are contiguous
    cell_donor_a = np.concatenate(cell_donor)
    n_cells = len(cell_donor_a)
    pool_codes = pd.Categorical(donors["pool"]).codes[cell_donor_a] + 1
    index = pd.Index(
        np.char.add(np.char.add(_barcodes(n_cells, rng), "-"), pool_codes.astype(str)).astype(
            object
        )
    )
    obs = _obs(donors, types, cell_donor_a, np.concatenate(cell_type), index)
    return {
        "obs": obs,
        "cell_donor": cell_donor_a,
        "cell_state": np.concatenate(cell_state).astype(np.int8),
        "cell_extra": np.concatenate(cell_extra),
        "comp_cell": comp_cell_a[by_cell],
        "comp_type": np.concatenate(comp_type)[by_cell],
        "comp_library": np.concatenate(comp_lib)[by_cell],
    }


def _obs(
    donors: pd.DataFrame,
    types: tuple[CellType, ...],
    cell_donor: np.ndarray,
    cell_type: np.ndarray,
    index: pd.Index,
) -> pd.DataFrame:
    """Build the CELLxGENE-style obs table."""

    def cat(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=categories)

    def donor_cat(column: str) -> pd.Categorical:
        values = donors[column].astype(str)
        cats = sorted(set(values))
        codes = pd.Categorical(values, categories=cats).codes
        return cat(codes[cell_donor], cats)

    def constant(value: str) -> pd.Categorical:
        return cat(np.zeros(len(cell_donor), dtype=np.int8), [value])

    sex = donor_cat("sex")
    sex_term = {"female": "PATO:0000383", "male": "PATO:0000384", "unknown": "unknown"}
    obs = pd.DataFrame(
        {
            "donor_id": donor_cat("donor_id"),
            "pool": donor_cat("pool"),
            "cell_type": cat(cell_type, [ct.label for ct in types]),
            "cell_type_ontology_term_id": cat(cell_type, [ct.ontology_id for ct in types]),
            "development_stage": donor_cat("development_stage"),
            "sex": sex,
            "sex_ontology_term_id": sex.rename_categories([sex_term[s] for s in sex.categories]),
            "assay": constant("10x 3' v2"),
            "assay_ontology_term_id": constant("EFO:0009899"),
            "tissue": constant("blood"),
            "tissue_ontology_term_id": constant("UBERON:0000178"),
            "disease": constant("normal"),
            "disease_ontology_term_id": constant("PATO:0000461"),
            "is_primary_data": np.ones(len(cell_donor), dtype=bool),
        },
        index=index,
    )
    return obs


# --------------------------------------------------------------------------- counts


def donor_profiles(design: Design, donor: int) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray
        Array of shape (cell types, genes).
    """
    return _donor_profiles(design, donor, np.random.default_rng([design.seed, 2, donor]))


def _donor_profiles(design: Design, donor: int, rng: np.random.Generator) -> np.ndarray:
    row = design.donors.iloc[donor]
    z = rng.standard_normal(design.profile.shape)
    noise = np.exp(design.sigma * z - design.sigma**2 / 2)
    age = 2.0 ** (design.beta * (float(row["age"]) - REFERENCE_AGE) / 10.0)
    pi = design.profile * noise * age
    symbols = design.var["feature_name"].astype(str).to_numpy()
    for s, (sex, _) in _SEX_GENES.items():
        if sex != row["sex"]:
            pi[:, symbols == s] = 0.0
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
    rng = np.random.default_rng([design.seed, 2, donor])
    pi = _donor_profiles(design, donor, rng)
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
        (1, np.flatnonzero(design.category == "mt"), _MT_GENES),
        (2, np.flatnonzero(design.category == "hb"), _HB_GENES),
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
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.indices = counts.indices.astype(np.int32, copy=False)
    counts.indptr = counts.indptr.astype(np.int64, copy=False)
    return counts


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
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
        out = sp.csr_matrix(
            (block[r, c].astype(np.float32), dense[c].astype(np.int32), indptr),
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
        gene = genes[keep]
        indptr = np.zeros(n_genes + 1, dtype=np.int64)
        np.cumsum(np.bincount(gene, minlength=n_genes), out=indptr[1:])
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


def simulate(design: Design, *, uns: Mapping[str, Any] | None = None, threads: int = 1) -> Any:
    """Simulate the whole dataset in memory (small sizes: tests, notebooks).

    Parameters
    ----------
    design
        The simulation design.
    uns
        Unstructured metadata to store.
    threads
        Donors simulated in parallel; the result is the same for any value.

    Returns
    -------
    anndata.AnnData
        The CELLxGENE-style dataset, counts in ``X``.
    """
    import anndata as ad

    x = _stack(list(_donor_blocks(design, threads)))
    return ad.AnnData(X=x, obs=design.obs.copy(), var=design.var.copy(), uns=dict(uns or {}))


def write_h5ad_incremental(
    design: Design,
    path: str | os.PathLike[str],
    *,
    chunk_cells: int,
    uns: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> None:
    """Simulate and write the dataset to an h5ad file chunk by chunk.

    Memory holds the counts of one chunk of about ``chunk_cells`` cells (whole
    donors) at a time; they are written donor by donor. ``X`` is CSR float32
    with zstd-compressed, resizable datasets; the file reads with
    :func:`anndata.read_h5ad`, also in backed mode.

    Parameters
    ----------
    design
        The simulation design.
    path
        Destination file.
    chunk_cells
        Cells simulated before each write.
    uns
        Unstructured metadata to store (e.g. provenance).
    threads
        Donors simulated in parallel; the file is the same for any value.
    """
    import h5py
    from anndata.io import write_elem

    from immune_aging.io import H5AD_COMPRESSION

    comp = dict(H5AD_COMPRESSION)
    n_obs, n_vars = design.n_cells, design.n_genes
    # a chunk cache of several HDF5 chunks: donor blocks end mid-chunk, and a chunk is
    # compressed once, when complete, instead of on every partial write
    with h5py.File(path, "w", rdcc_nbytes=64 << 20) as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", design.obs, dataset_kwargs=comp)
        write_elem(f, "var", design.var, dataset_kwargs=comp)
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = np.array([n_obs, n_vars], dtype=np.int64)
        block = 1 << 18
        data = x.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(block,), **comp
        )
        indices = x.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(block,), **comp
        )
        indptr = x.create_dataset(
            "indptr",
            shape=(n_obs + 1,),
            dtype=np.int64,
            chunks=(min(block, n_obs + 1),),
            **comp,
        )
        nnz = 0
        row = 0
        indptr[0] = 0
        for blocks in _chunks(design, chunk_cells, threads):
            size = nnz + sum(b.nnz for b in blocks)
            data.resize((size,))
            indices.resize((size,))
            while blocks:  # write donor by donor, freeing each: memory holds one chunk
                b = blocks.pop(0)
                data[nnz : nnz + b.nnz] = b.data
                indices[nnz : nnz + b.nnz] = b.indices
                indptr[row + 1 : row + 1 + b.shape[0]] = b.indptr[1:] + nnz
                nnz += b.nnz
                row += b.shape[0]
            log.info("simulated %d / %d cells", row, n_obs)
        for key in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, key, {})
        write_elem(f, "uns", dict(uns or {}), dataset_kwargs=comp)


def _donor_blocks(design: Design, threads: int) -> Iterator[sp.csr_matrix]:
    """Yield every donor's counts in order, simulating up to ``threads`` donors at once."""
    n = len(design.donors)
    if threads <= 1:
        for d in range(n):
            yield simulate_donor(design, d)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[sp.csr_matrix]] = deque()
        todo = iter(range(n))
        for d in itertools.islice(todo, 2 * threads):
            pending.append(pool.submit(simulate_donor, design, d))
        while pending:
            block = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(simulate_donor, design, nxt))
            yield block


def _chunks(design: Design, chunk_cells: int, threads: int) -> Iterator[list[sp.csr_matrix]]:
    """Yield lists of donor blocks holding about ``chunk_cells`` cells together."""
    pending: list[sp.csr_matrix] = []
    held = 0
    for block in _donor_blocks(design, threads):
        pending.append(block)
        held += block.shape[0]
        if held >= chunk_cells:
            yield pending
            pending, held = [], 0
    if pending:
        yield pending


def _stack(blocks: list[sp.csr_matrix]) -> sp.csr_matrix:
    if len(blocks) == 1:
        return blocks[0]
    out = sp.vstack(blocks, format="csr", dtype=np.float32)
    out.indptr = out.indptr.astype(np.int64, copy=False)
    out.indices = out.indices.astype(np.int32, copy=False)
    return out


# --------------------------------------------------------------------------- truth


def truth(design: Design) -> dict[str, Any]:
    """Return the ground truth in the ``truth.json`` schema of docs/pipeline.md.

    Parameters
    ----------
    design
        The simulation design.

    Returns
    -------
    dict
        ``seed, n_cells, n_donors, donors, cell_types, aged_cell_types,
        age_genes, log2fc_per_decade, gene_sets, decoy_sets, doublets,
        dying_cells, rbc_contaminated``.
    """
    ids = design.var.index.to_numpy()
    labels = [ct.label for ct in design.cell_types]
    aged = [ct.label for ct in design.cell_types if ct.aged]
    age_genes = {}
    for t, ct in enumerate(design.cell_types):
        if ct.aged:
            age_genes[ct.label] = {
                "up": [str(g) for g in ids[design.beta[t] > 0]],
                "down": [str(g) for g in ids[design.beta[t] < 0]],
            }
    planted = np.flatnonzero(np.abs(design.beta).max(axis=0) > 0)
    effect = {}
    for g in planted:
        column = design.beta[:, g]
        effect[str(ids[g])] = round(float(column[np.flatnonzero(column)[0]]), 6)
    cells = design.obs.index.to_numpy()
    donors = {
        str(r.donor_id): {
            "age": float(r.age),
            "sex": str(r.sex),
            "development_stage": str(r.development_stage),
        }
        for r in design.donors.itertuples(index=False)
    }
    return {
        "seed": design.seed,
        "n_cells": design.n_cells,
        "n_donors": len(design.donors),
        "donors": donors,
        "cell_types": labels,
        "aged_cell_types": aged,
        "age_genes": age_genes,
        "log2fc_per_decade": effect,
        "gene_sets": {k: dict(v) for k, v in design.gene_sets.items()},
        "decoy_sets": list(design.decoy_sets),
        "doublets": [str(c) for c in cells[design.cell_state == 3]],
        "dying_cells": [str(c) for c in cells[design.cell_state == 1]],
        "rbc_contaminated": [str(c) for c in cells[design.cell_state == 2]],
    }


def gene_set_library(design: Design) -> dict[str, list[str]]:
    """Return the GMT library: planted sets then decoys, as gene symbols.

    Parameters
    ----------
    design
        The simulation design.

    Returns
    -------
    dict
        Set name to symbols.
    """
    sets = {name: list(s["genes"]) for name, s in design.gene_sets.items()}
    sets.update({name: list(genes) for name, genes in design.decoy_sets.items()})
    return sets


def write_simulation(
    out_dir: str | os.PathLike[str],
    *,
    seed: int,
    n_donors: int,
    n_cell_types: int,
    cells_per_donor: int,
    n_genes: int,
    doublet_rate: float,
    dying_rate: float,
    rbc_rate: float,
    chunk_cells: int,
    uns: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Simulate into a folder: ``dataset.h5ad``, ``genesets.gmt`` and ``truth.json``.

    Parameters
    ----------
    out_dir
        An existing folder (normally a temporary from :class:`immune_aging.io.Outputs`).
    seed, n_donors, n_cell_types, cells_per_donor, n_genes, doublet_rate, dying_rate, rbc_rate
        See :func:`design_simulation`.
    chunk_cells
        Cells simulated per write, see :func:`write_h5ad_incremental`.
    uns
        Unstructured metadata for the h5ad (e.g. provenance).
    threads
        Donors simulated in parallel; the files are the same for any value.

    Returns
    -------
    dict
        Summary: cells, donors, genes, planted genes, doublets, dying and RBC cells.
    """
    from immune_aging import io

    design = design_simulation(
        seed=seed,
        n_donors=n_donors,
        n_cell_types=n_cell_types,
        cells_per_donor=cells_per_donor,
        n_genes=n_genes,
        doublet_rate=doublet_rate,
        dying_rate=dying_rate,
        rbc_rate=rbc_rate,
    )
    out = Path(out_dir)
    write_h5ad_incremental(
        design, out / "dataset.h5ad", chunk_cells=chunk_cells, uns=uns, threads=threads
    )
    io.write_gmt(
        gene_set_library(design),
        out / "genesets.gmt",
        descriptions={name: "simulated" for name in gene_set_library(design)},
    )
    t = truth(design)
    io.write_json(t, out / "truth.json")
    return {
        "n_cells": design.n_cells,
        "n_donors": len(design.donors),
        "n_genes": design.n_genes,
        "n_cell_types": len(design.cell_types),
        "n_planted_genes": len(t["log2fc_per_decade"]),
        "n_doublets": len(t["doublets"]),
        "n_dying_cells": len(t["dying_cells"]),
        "n_rbc_contaminated": len(t["rbc_contaminated"]),
    }
