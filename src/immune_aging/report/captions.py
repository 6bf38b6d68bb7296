"""Figure captions: what each figure shows and how to read it.

Captions are keyed by stage and figure file name (a shell-style pattern on the
name without ``.png``); the first matching entry wins. A figure no entry matches
gets a generic caption built from its file name, so a new figure never breaks the
report, it only reads less well until a caption is written for it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from immune_aging.names import slug

#: (stage, pattern on the file stem, caption). ``{label}`` is replaced by the part of
#: the stem the ``*`` matched, with underscores shown as spaces (e.g. a cell type).
CAPTIONS: tuple[tuple[str, str, str], ...] = (
    # filter
    (
        "filter",
        "cells_per_donor*",
        "Cells per donor before filtering. Each donor is one bar or count; the line marks "
        "the cut-off below which donors were dropped (filter.cutoff_percentile). Donors "
        "with very few cells give noisy pseudobulk profiles.",
    ),
    (
        "filter",
        "cells_per_cell_type*",
        "Cells per cell type. Cell types present in too few donors with enough cells "
        "(filter.min_cells_per_celltype, filter.percent_donors) were dropped.",
    ),
    # qc
    (
        "qc",
        "*violin*",
        "Distribution of per-cell quality metrics (detected genes, total counts, "
        "mitochondrial and hemoglobin share). Dashed lines mark the thresholds; cells "
        "outside them were removed.",
    ),
    (
        "qc",
        "*counts_vs_genes*",
        "Total counts against detected genes per cell, coloured by mitochondrial share. "
        "Healthy cells lie on one curve; dying cells (high mitochondrial share) sit low; "
        "doublets sit at the high end of both axes.",
    ),
    (
        "qc",
        "*scatter*",
        "Total counts against detected genes per cell, coloured by mitochondrial share. "
        "Healthy cells lie on one curve; dying cells (high mitochondrial share) sit low; "
        "doublets sit at the high end of both axes.",
    ),
    (
        "qc",
        "*hb*",
        "Hemoglobin share of counts per cell. Cells above qc.max_pct_hb carry red blood "
        "cell contamination and were removed.",
    ),
    (
        "qc",
        "*hemoglobin*",
        "Hemoglobin share of counts per cell. Cells above qc.max_pct_hb carry red blood "
        "cell contamination and were removed.",
    ),
    (
        "qc",
        "*mt*",
        "Mitochondrial share of counts per cell. A high share marks dying or broken cells; "
        "cells above qc.max_pct_mt were removed.",
    ),
    (
        "qc",
        "*doublet*",
        "Scrublet doublet scores. Scores of simulated doublets form the high mode; cells "
        "called doublets (above the per-group threshold) were removed.",
    ),
    (
        "qc",
        "*removed*",
        "Cells removed by each quality rule (a cell can fail several rules).",
    ),
    # preprocess
    (
        "preprocess",
        "*variance*",
        "Share of variance explained by each principal component (elbow plot). "
        "Components after the bend mostly carry noise; dimred.n_pcs of them are used "
        "for the neighbour graph.",
    ),
    (
        "preprocess",
        "*elbow*",
        "Share of variance explained by each principal component (elbow plot). "
        "Components after the bend mostly carry noise; dimred.n_pcs of them are used "
        "for the neighbour graph.",
    ),
    (
        "preprocess",
        "*hvg*",
        "Highly variable genes: mean against variance of each gene; genes chosen as highly "
        "variable are highlighted, blocked nuisance genes (immune receptor, mitochondrial, "
        "ribosomal) are excluded from the PCA.",
    ),
    (
        "preprocess",
        "pca*total*",
        "First two principal components, cells coloured by total counts. A gradient along "
        "a component means that component partly reflects sequencing depth.",
    ),
    (
        "preprocess",
        "pca",
        "First two principal components of the highly variable genes, one dot per cell, "
        "coloured by cell type and by total counts. Cell types should already separate; a "
        "gradient of total counts along a component means it partly reflects sequencing depth.",
    ),
    (
        "preprocess",
        "pca*",
        "First two principal components of the highly variable genes, one dot per cell, "
        "coloured by {label}. Cell types should already separate here.",
    ),
    # dimred
    (
        "dimred",
        "umap*donor*",
        "UMAP of the Harmony-corrected space, cells coloured by donor. After integration "
        "the donors should be mixed within each cell-type island, not form islands of "
        "their own.",
    ),
    (
        "dimred",
        "umap*cell_type*",
        "UMAP of the Harmony-corrected space, cells coloured by annotated cell type. Each "
        "cell type should form its own island; distances between islands are not "
        "meaningful in UMAP.",
    ),
    (
        "dimred",
        "umap*",
        "UMAP of the Harmony-corrected space, cells coloured by {label}.",
    ),
    (
        "dimred",
        "*mixing*",
        "Donor mixing before and after Harmony: share of each cell's neighbours that come "
        "from other donors. Higher after correction means donor effects were removed.",
    ),
    # cluster
    (
        "cluster",
        "umap*leiden*",
        "UMAP coloured by Leiden cluster. Compare with the UMAP by cell type in the dimred "
        "section: a good clustering draws the same islands.",
    ),
    (
        "cluster",
        "*contingency*",
        "Cells per Leiden cluster (rows) and annotated cell type (columns). A clean "
        "clustering has one dominant cell type per cluster; a cell type spread over several "
        "clusters is split, several cell types in one cluster are merged.",
    ),
    (
        "cluster",
        "*heatmap*",
        "Cells per Leiden cluster and annotated cell type. A clean clustering has one "
        "dominant cell type per cluster.",
    ),
    # pseudobulk
    (
        "pseudobulk",
        "*samples*",
        "Pseudobulk samples (donors with at least pseudobulk.min_cells cells) per cell "
        "type. Cell types with fewer than pseudobulk.min_samples_per_cell_type samples "
        "were dropped.",
    ),
    (
        "pseudobulk",
        "*age*",
        "Age of the donors. Donors of unknown age are excluded from the age models; "
        "'80 year-old and over' donors get pseudobulk.age_80_and_over years.",
    ),
    (
        "pseudobulk",
        "*cells*",
        "Cells summed into each pseudobulk sample, per cell type.",
    ),
    # de
    (
        "de",
        "volcano*",
        "Volcano plot for {label}: one dot per gene; x is the log2 fold change per "
        "standard deviation of age (right: higher in older donors), y is -log10 of the "
        "p-value. Genes significant after BH correction (padj < de.alpha) are highlighted; "
        "the genes with the smallest adjusted p-values are labelled by symbol.",
    ),
    (
        "de",
        "*counts*",
        "Genes significantly up (higher in older donors, right) and down (left) with age per "
        "cell type (padj < de.alpha). Cell types with no bar have no significant gene.",
    ),
    (
        "de",
        "*summary*",
        "Genes significantly up (higher in older donors) and down with age per cell type "
        "(padj < de.alpha).",
    ),
    (
        "de",
        "*n_sig*",
        "Genes significantly up (higher in older donors) and down with age per cell type "
        "(padj < de.alpha).",
    ),
    (
        "de",
        "*up_down*",
        "Genes significantly up (higher in older donors) and down with age per cell type "
        "(padj < de.alpha).",
    ),
    (
        "de",
        "*pvalue*",
        "Distribution of DE p-values. A flat histogram with a peak near 0 is healthy; a "
        "peak near 1 or a hump in the middle points at a misspecified model.",
    ),
    # gsea
    (
        "gsea",
        "*dot*",
        "Top gene sets per cell type from preranked GSEA on the DE Wald statistic. Colour "
        "or position gives the normalised enrichment score (positive: the set rises with "
        "age), dot size or shade the significance (FDR).",
    ),
    (
        "gsea",
        "*",
        "Gene-set enrichment (preranked GSEA) for {label}: positive normalised enrichment "
        "scores mark sets whose genes rise with age, negative ones sets that fall.",
    ),
    # ora
    (
        "ora",
        "*dot*",
        "Over-represented gene sets among the significantly up and down genes per cell "
        "type (hypergeometric test against the tested genes). Dot size or shade gives the "
        "significance (adjusted p-value).",
    ),
    (
        "ora",
        "*",
        "Over-representation analysis for {label}: gene sets enriched among the genes "
        "significantly up or down with age.",
    ),
    # predict
    (
        "predict",
        "*pred*",
        "Predicted against actual donor age on held-out donors, per cell type, for the "
        "expression model and the sex-only baseline. Points on the diagonal are perfect "
        "predictions; the expression model should hug it far better than the baseline.",
    ),
    (
        "predict",
        "*r2*",
        "Cross-validated R\N{SUPERSCRIPT TWO} of the age prediction per cell type, expression "
        "model against the sex-only baseline (bars: mean over splits, whiskers: SD).",
    ),
    # evaluate
    (
        "evaluate",
        "*",
        "Comparison of the results with the simulation truth: {label}.",
    ),
)


def _humanise(text: str) -> str:
    """Turn a file-name fragment into words (``umap_cell_type`` -> ``umap cell type``)."""
    return re.sub(r"_+", " ", text).strip(" -.")


def caption_for(stage: str, name: str, *, labels: Iterable[str] = ()) -> str:
    """Return the caption of figure ``name`` of ``stage``.

    Parameters
    ----------
    stage
        Stage the figure belongs to (its ``plots/<stage>`` folder).
    name
        File name relative to that folder, e.g. ``umap_cell_type.png``.
    labels
        Known group labels (cell types): a file-name part that is the slug of one
        of them (``cd14_positive_monocyte``) is shown as the label itself
        (``CD14-positive monocyte``).

    Returns
    -------
    str
        A caption saying what the figure shows and how to read it; a generic one
        built from the file name when no entry of :data:`CAPTIONS` matches.
    """
    stem = name.rsplit("/", 1)[-1]
    stem = stem[:-4] if stem.lower().endswith(".png") else stem
    for entry_stage, pattern, text in CAPTIONS:
        if entry_stage != stage or not fnmatch.fnmatchcase(stem.lower(), pattern):
            continue
        part = _wildcard_part(stem, pattern)
        known = {slug(x): x for x in labels}
        label = known.get(slug(part)) or _humanise(part)
        if not label:  # e.g. "volcano.png": drop the phrase naming the group
            text = re.sub(r"(\s(for|by)\s|: )\{label\}", "", text)
        return text.replace("{label}", label)
    return (
        f"Figure '{_humanise(stem) or name}' of the {stage} stage (file {name}); see the stage's "
        "metrics above for the numbers behind it."
    )


def _wildcard_part(stem: str, pattern: str) -> str:
    """Return what the wildcards of ``pattern`` matched in ``stem`` (joined)."""
    regex = "^" + "(.*)".join(re.escape(part) for part in pattern.split("*")) + "$"
    match = re.match(regex, stem, flags=re.IGNORECASE)
    if match is None:  # pragma: no cover - only called after a match
        return stem
    return " ".join(g for g in match.groups() if g.strip("_- ")).strip()
