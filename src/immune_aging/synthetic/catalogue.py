"""Fixed inputs of the simulation: model constants, cell types and the gene catalogue.

Nothing here is random: the tables below are what :func:`design_simulation`
draws from (genes, profiles, planted effects) and what the sampler refers to
(mitochondrial, hemoglobin and sex genes).
"""

from __future__ import annotations

from dataclasses import dataclass

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
MT_SHARE = {"T": 0.035, "NK": 0.04, "B": 0.04, "myeloid": 0.06, "pDC": 0.05}
RIBO_SHARE = {"T": 0.30, "NK": 0.22, "B": 0.25, "myeloid": 0.15, "pDC": 0.18}

# --------------------------------------------------------------------------- genes

MT_GENES = {  # relative weights within the mitochondrial share
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
RIBO_GENES = (
    "RPS2 RPS3 RPS3A RPS4X RPS5 RPS6 RPS7 RPS8 RPS9 RPS10 RPS11 RPS12 RPS13 RPS14 RPS15 "
    "RPS15A RPS16 RPS17 RPS18 RPS19 RPS20 RPS21 RPS23 RPS24 RPS25 RPS26 RPS27 RPS27A RPS28 "
    "RPS29 RPSA RPL3 RPL4 RPL5 RPL6 RPL7 RPL7A RPL8 RPL9 RPL10 RPL10A RPL11 RPL12 RPL13 "
    "RPL13A RPL14 RPL15 RPL17 RPL18 RPL18A RPL19 RPL21 RPL22 RPL23 RPL23A RPL24 RPL26 RPL27 "
    "RPL27A RPL28 RPL29 RPL30 RPL31 RPL32 RPL34 RPL35 RPL35A RPL36 RPL36A RPL37 RPL37A RPL38 "
    "RPL39 RPL41 RPLP0 RPLP1 RPLP2 RPL22L1"
).split()
#: Hemoglobin genes and their share of red-blood-cell RNA.
HB_GENES = {
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
HB_LOOKALIKES = {"HBP1": 3e-4, "HBEGF": 1e-4}
SEX_GENES = {  # (sex expressing it, share of library)
    "XIST": ("female", 1.5e-3),
    "RPS4Y1": ("male", 1.0e-3),
    "DDX3Y": ("male", 2.0e-4),
    "UTY": ("male", 1.0e-4),
    "KDM5D": ("male", 1.0e-4),
    "EIF1AY": ("male", 2.0e-4),
}
# Immune-receptor segments: constant regions first, so the smallest gene sets keep them.
IG_CONSTANT = ["IGKC", "IGLC2", "IGHD", "IGHG1", "IGHA1", "IGLC1", "IGLC3", "IGHG2", "IGHA2"]
TR_CONSTANT = ["TRAC", "TRBC2", "TRBC1", "TRDC", "TRGC1", "TRGC2"]
IG_V = (
    "IGHV1-2 IGHV1-18 IGHV1-46 IGHV1-69 IGHV3-7 IGHV3-15 IGHV3-21 IGHV3-23 IGHV3-30 "
    "IGHV3-33 IGHV3-48 IGHV3-74 IGHV4-34 IGHV4-39 IGHV5-51 IGKV1-5 IGKV1-33 IGKV1-39 "
    "IGKV2-28 IGKV2-30 IGKV3-11 IGKV3-15 IGKV3-20 IGKV4-1 IGLV1-40 IGLV1-44 IGLV1-47 "
    "IGLV2-11 IGLV2-14 IGLV2-23 IGLV3-1 IGLV3-21 IGLV3-25 IGLV6-57 IGHJ4 IGHJ6 IGKJ1 IGKJ2"
).split()
TR_V = (
    "TRAV1-2 TRAV2 TRAV3 TRAV8-6 TRAV12-1 TRAV12-2 TRAV13-1 TRAV17 TRAV19 TRAV21 TRAV26-1 "
    "TRAV26-2 TRAV29DV5 TRAV38-2DV8 TRAV41 TRBV2 TRBV3-1 TRBV4-1 TRBV5-1 TRBV6-5 TRBV7-2 "
    "TRBV7-9 TRBV9 TRBV10-3 TRBV11-2 TRBV12-3 TRBV19 TRBV20-1 TRBV27 TRBV28 TRBV29-1 "
    "TRBV30 TRDV1 TRDV2 TRDV3 TRGV2 TRGV3 TRGV4 TRGV5 TRGV8 TRGV9 TRGV10 TRAJ33 TRBJ2-7 "
    "TRBD1 TRBD2"
).split()
#: Highly expressed genes shared by all types: symbol -> share of the library.
HOUSEKEEPING = {
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
MARKERS: dict[str, dict[str, float]] = {
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
GENERIC = (
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
