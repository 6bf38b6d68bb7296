"""What the report knows about the pipeline: its stages and the goals of the workflow.

Plain data, no HTML: :data:`STAGES` (titles and summaries in pipeline order) and
:data:`GOALS` (targets on ``metrics/evaluate.json``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    """A pipeline stage as the report introduces it."""

    name: str
    title: str
    summary: str


#: The stages in pipeline order (stage name = params section = plots/metrics name).
STAGES: tuple[StageInfo, ...] = (
    StageInfo(
        "data",
        "Input data",
        "Obtains the input: a simulated OneK1K-like dataset with planted age effects, a "
        "downloaded file or a local h5ad, in the CELLxGENE schema.",
    ),
    StageInfo(
        "filter",
        "Donor and cell-type filter",
        "Drops donors with too few cells and cell types missing from most donors, then "
        "genes never detected.",
    ),
    StageInfo(
        "qc",
        "Cell quality control",
        "Flags cells by detected genes, total counts, mitochondrial and hemoglobin share, and "
        "doublets (Scrublet per donor); keeps the rest.",
    ),
    StageInfo(
        "preprocess",
        "Normalisation, highly variable genes, PCA",
        "Normalises counts per cell, log-transforms, selects highly variable genes on raw "
        "counts, removes nuisance genes and runs PCA.",
    ),
    StageInfo(
        "dimred",
        "Integration and embedding",
        "Corrects the PCA for donor effects with Harmony, builds the neighbour graph and "
        "a UMAP embedding.",
    ),
    StageInfo(
        "cluster",
        "Clustering",
        "Leiden clustering of the neighbour graph and its agreement with the annotated "
        "cell types.",
    ),
    StageInfo(
        "pseudobulk",
        "Pseudobulk",
        "Sums raw counts per (cell type, donor) sample and attaches donor age and sex.",
    ),
    StageInfo(
        "genesets",
        "Gene sets",
        "Resolves the gene-set libraries into one GMT file used by GSEA and ORA.",
    ),
    StageInfo(
        "de",
        "Differential expression with age",
        "Per cell type, DESeq2 (PyDESeq2) on the pseudobulk counts with design "
        "~ age_scaled + sex; Wald test on the age coefficient, BH-adjusted p-values.",
    ),
    StageInfo(
        "gsea",
        "Gene-set enrichment (GSEA)",
        "Preranked GSEA of each cell type's DE Wald statistic against the gene sets.",
    ),
    StageInfo(
        "ora",
        "Over-representation (ORA)",
        "Hypergeometric over-representation of the significantly up and down genes of each "
        "cell type in the gene sets, against the tested genes.",
    ),
    StageInfo(
        "predict",
        "Age prediction",
        "Predicts donor age from each cell type's pseudobulk expression (scaled LinearSVR, "
        "repeated random splits) and compares with a sex-only baseline.",
    ),
    StageInfo(
        "evaluate",
        "Evaluation against the simulation truth",
        "Scores the results against the effects planted in the simulated data (empty on "
        "real data, which has no truth).",
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass(frozen=True)
class Goal:
    """A target on one value of ``metrics/evaluate.json``.

    The value at ``key`` is compared (``op``) with ``target``, or with the value at
    ``ref_key`` plus ``offset`` when ``ref_key`` is set.
    """

    name: str
    key: str
    op: str
    target: float | None
    meaning: str
    ref_key: str | None = None
    offset: float = 0.0


#: What the workflow must achieve on the default simulated dataset.
GOALS: tuple[Goal, ...] = (
    Goal(
        "DE recall",
        "de.recall",
        ">=",
        0.8,
        "share of the planted (cell type, gene) age effects found at padj < alpha with the "
        "right sign",
    ),
    Goal(
        "DE false discoveries",
        "de.fdr",
        "<=",
        0.1,
        "share of the significant (cell type, gene) pairs that were not planted",
    ),
    Goal(
        "GSEA finds the planted sets",
        "gsea.planted_found",
        "==",
        None,
        "planted (set, cell type) pairs found at FDR < alpha with the right sign, out of all",
        ref_key="gsea.planted_total",
    ),
    Goal(
        "Age prediction R\N{SUPERSCRIPT TWO}",
        "predict.r2",
        ">=",
        0.5,
        "mean cross-validated R\N{SUPERSCRIPT TWO} over the aged cell types",
    ),
    Goal(
        "Age prediction beats the baseline",
        "predict.r2",
        ">=",
        None,
        "R\N{SUPERSCRIPT TWO} of the expression model against the sex-only baseline + 0.3",
        ref_key="predict.baseline_r2",
        offset=0.3,
    ),
    Goal(
        "Cluster purity",
        "cluster.purity",
        ">=",
        0.9,
        "share of cells whose Leiden cluster's majority cell type is their own",
    ),
    Goal(
        "Doublet recall",
        "qc.doublet_recall",
        ">=",
        0.5,
        "share of the simulated doublets that Scrublet called",
    ),
    Goal(
        "Doublet precision",
        "qc.doublet_precision",
        ">=",
        0.5,
        "share of the called doublets that were simulated doublets",
    ),
)

#: Top genes and gene sets listed per cell type and direction in the findings table
#: (the stage sections list ``report.top_n``).
FINDINGS_GENES = 3
FINDINGS_SETS = 2
#: The summary heatmap: genes per cell type and direction, and at most this many genes.
HEATMAP_PER_DIRECTION = 3
HEATMAP_MAX_GENES = 40
