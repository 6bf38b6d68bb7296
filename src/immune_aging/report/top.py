"""The top tables per cell type: DE genes, and gene sets of GSEA and ORA.

Significance cut-offs come from the run (see :func:`immune_aging.report.page.cutoff`);
``None`` means the run recorded none: then no row is dimmed and the text says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from immune_aging.report.markup import (
    GE,
    anchors_for,
    chips,
    data_table,
    esc,
    format_value,
    is_number,
    plural,
    td_num,
    td_num3,
)

#: genes listed per row of a pathway table
_GENES_SHOWN = 8
UP = "\N{UPWARDS ARROW}"
DOWN = "\N{DOWNWARDS ARROW}"


def sorted_labels(values: pd.Series) -> list[str]:
    """Return the distinct labels of a column as sorted text (missing ones left out)."""
    return sorted({str(v) for v in values.dropna().unique()})


def _genes_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    genes = [str(g) for g in value] if not isinstance(value, str) else re.split(r"[;,]\s*", value)
    genes = [g for g in genes if g]
    more = f" \N{HORIZONTAL ELLIPSIS} ({len(genes)})" if len(genes) > _GENES_SHOWN else ""
    return ", ".join(genes[:_GENES_SHOWN]) + more


def gene_name(row: Any) -> str:
    """Return the gene symbol of a DE row, or its ID when the symbol is missing."""
    gene = row.gene
    if gene is None or (isinstance(gene, float) and math.isnan(gene)) or not str(gene):
        return str(row.gene_id)
    return str(gene)


def sorted_genes(de: pd.DataFrame) -> pd.DataFrame:
    """Return DE rows ordered by ``padj``, then ``pvalue``, then gene ID (stable)."""
    return de.sort_values(["padj", "pvalue", "gene_id"], kind="mergesort")


def sorted_sets(sets: pd.DataFrame, kind: SetTable) -> pd.DataFrame:
    """Return gene-set rows in ``kind.order`` (stable, missing values last)."""
    if "-|nes|" in kind.order:
        sets = sets.assign(**{"-|nes|": -sets["nes"].abs()})
    return sets.sort_values(list(kind.order), kind="mergesort", na_position="last")


def _dim(p: float, cut: float | None) -> str:
    """Return the class attribute of a row not significant at ``cut`` (none without one)."""
    return ' class="dim"' if cut is not None and not p < cut else ""


def _dimmed(label: str, cut: float | None, key: str) -> str:
    """Say which rows are dimmed, or that the run recorded no cut-off (``key``)."""
    if cut is None:
        return f"No {label} cut-off is recorded for this run ({key}), so no row is dimmed"
    return f"Rows with {label} {GE} {esc(format_value(cut))} are dimmed"


def render_top_de(
    de: pd.DataFrame,
    *,
    top_n: int,
    alpha: float | None,
    age_sd: Mapping[str, float] | None = None,
) -> str:
    """Render the top genes up and down with age per cell type.

    Parameters
    ----------
    de
        DE results (docs/pipeline.md columns).
    top_n
        Genes listed per cell type and direction.
    alpha
        Significance cut on ``padj``; rows at or above it are shown dimmed. ``None``
        when the run recorded none: nothing is dimmed or counted, and the page says so.
    age_sd
        Cell type to the standard deviation (years) of its donors' age, which
        ``log2FoldChange`` is per; where known, a log2 fold change per decade
        (``log2FoldChange * 10 / sd``) is shown too.

    Returns
    -------
    str
        HTML: per cell type, two tables (up, down) ordered by ``padj``.
    """
    labels = sorted_labels(de["cell_type"])
    if not labels:
        return '<p class="notrun">The DE table is empty.</p>'
    anchors = anchors_for("de", labels)
    parts = [
        f"<h3>Top genes per cell type</h3><p class='lead'>The {top_n} genes with the smallest "
        f"adjusted p-value rising (up) and falling (down) with age in each cell type. log2FC "
        "is the log2 fold change per standard deviation of donor age"
        + ("; per decade rescales it to 10 years of age" if age_sd else "")
        + "; hover a gene for its Ensembl ID"
        + f". {_dimmed('padj', alpha, 'de.alpha')}.</p>",
        chips(anchors),
    ]
    for label in labels:
        sub = de[de["cell_type"].astype(str) == label]
        tested = sub[sub["padj"].notna()]
        counted = "no significance cut-off recorded"
        if alpha is not None:
            n_up = int(((tested["padj"] < alpha) & (tested["log2FoldChange"] > 0)).sum())
            n_down = int(((tested["padj"] < alpha) & (tested["log2FoldChange"] < 0)).sum())
            counted = f"{n_up} up and {n_down} down at padj &lt; {esc(format_value(alpha))}"
        sd = (age_sd or {}).get(label)
        sd = float(sd) if is_number(sd) and sd > 0 else None
        tables = []
        for direction, mask in (
            ("up", tested["log2FoldChange"] > 0),
            ("down", tested["log2FoldChange"] < 0),
        ):
            top = sorted_genes(tested[mask]).head(top_n)
            rows = []
            for r in top.itertuples(index=False):
                dim = _dim(r.padj, alpha)
                decade = td_num3(r.log2FoldChange * 10 / sd) if sd else ""
                rows.append(
                    f'<tr{dim}><td title="{esc(r.gene_id)}">{esc(gene_name(r))}</td>'
                    f"{td_num3(r.log2FoldChange)}{decade}{td_num3(r.padj)}"
                    f"{td_num3(r.baseMean)}</tr>"
                )
            headers = ["gene", "log2FC", *(["per decade"] if sd else []), "padj", "baseMean"]
            body = (
                data_table(headers, rows, numeric=[False] + [True] * (len(headers) - 1))
                if rows
                else '<p class="note">No gene tested in this direction.</p>'
            )
            arrow = UP if direction == "up" else DOWN
            tables.append(f"<div><h5>{arrow} {direction} with age</h5>{body}</div>")
        parts.append(
            f'<div class="celltype" id="{anchors[label]}"><h4>{esc(label)}</h4>'
            f'<p class="meta">{plural(len(tested), "gene")} tested; {counted}</p>'
            f'<div class="pair">{"".join(tables)}</div></div>'
        )
    return "".join(parts)


@dataclass(frozen=True)
class SetTable:
    """How the top gene sets of one enrichment method are shown per cell type.

    The rows of a cell type are sorted by ``order``; ``-|nes|`` in it stands for
    the absolute NES, largest first. ``cells`` renders what stands between a row's
    set name and its ``p`` value; ``genes`` is the column of the genes listed last.
    """

    key: str  # anchor prefix; the params key of its cut-off is f"{key}.{p}"
    p: str
    p_label: str
    order: tuple[str, ...]
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    cells: Callable[[Any], str]
    genes: str
    intro: str  # {top_n} is the number of sets listed
    outro: str
    empty: str
    none_tested: str
    #: one table per value of the ``direction`` column (else one table of all sets)
    by_direction: bool
    #: count the significant sets up and down by the sign of NES
    count_by_nes: bool


def _gsea_cells(r: Any) -> str:
    arrow = UP if r.nes > 0 else DOWN if r.nes < 0 else ""
    return f"<td>{arrow}</td>{td_num(r.nes)}"


def _ora_cells(r: Any) -> str:
    return f"<td class='num'>{esc(r.overlap)}</td>"


GSEA = SetTable(
    key="gsea",
    p="fdr",
    p_label="FDR",
    order=("fdr", "pval", "-|nes|", "term"),
    headers=("gene set", "", "NES", "FDR", "lead genes"),
    numeric=(False, False, True, True),
    cells=_gsea_cells,
    genes="lead_genes",
    intro="The {top_n} sets with the smallest FDR in each cell type. NES &gt; 0: the set's "
    "genes rise with age; NES &lt; 0: they fall. ",
    outro="; lead genes are the leading-edge genes driving the score.",
    empty="The GSEA table is empty: no cell type had sets to test.",
    none_tested="No gene set tested.",
    by_direction=False,
    count_by_nes=True,
)
ORA = SetTable(
    key="ora",
    p="padj",
    p_label="padj",
    order=("padj", "pval", "term"),
    headers=("gene set", "overlap", "padj", "genes"),
    numeric=(False, True, True),
    cells=_ora_cells,
    genes="genes",
    intro="The {top_n} sets with the smallest adjusted p-value among the genes significantly "
    "up and down with age in each cell type. Overlap is k/K: genes of the set in the list / "
    "genes of the set tested. ",
    outro=".",
    empty="The ORA table is empty: no cell type had significant genes.",
    none_tested="No set tested.",
    by_direction=True,
    count_by_nes=False,
)


def render_top_sets(
    results: pd.DataFrame, kind: SetTable, *, top_n: int, cut: float | None
) -> str:
    """Render the top gene sets per cell type (and direction) of GSEA or ORA.

    Parameters
    ----------
    results
        GSEA or ORA results (docs/pipeline.md columns).
    kind
        :data:`GSEA` or :data:`ORA`.
    top_n
        Sets listed per cell type (and direction).
    cut
        Significance cut on the ``kind.p`` column; rows at or above it are shown
        dimmed. ``None`` when the run recorded none: nothing is dimmed or counted.

    Returns
    -------
    str
        HTML: per cell type one table (GSEA) or one per direction (ORA), ordered
        by ``kind.order``.
    """
    labels = sorted_labels(results["cell_type"])
    if not labels:
        return f'<p class="notrun">{esc(kind.empty)}</p>'
    anchors = anchors_for(kind.key, labels)
    parts = [
        "<h3>Top gene sets per cell type</h3><p class='lead'>"
        + kind.intro.format(top_n=top_n)
        + _dimmed(kind.p_label, cut, f"{kind.key}.{kind.p}")
        + f"{kind.outro}</p>",
        chips(anchors),
    ]
    for label in labels:
        sub = results[results["cell_type"].astype(str) == label]
        groups = [("", sub)]
        if kind.by_direction:
            directions = sorted(
                {str(d) for d in sub["direction"].dropna()}, key=lambda d: (d != "up", d)
            )
            groups = [(d, sub[sub["direction"].astype(str) == d]) for d in directions]
        tables = [
            (direction, _sets_table(part, kind, top_n=top_n, cut=cut))
            for direction, part in groups
        ]
        meta = ""
        if kind.count_by_nes:
            counted = "no significance cut-off recorded"
            if cut is not None:
                n_up = int(((sub[kind.p] < cut) & (sub["nes"] > 0)).sum())
                n_down = int(((sub[kind.p] < cut) & (sub["nes"] < 0)).sum())
                counted = (
                    f"{n_up} up and {n_down} down at {kind.p_label} &lt; {esc(format_value(cut))}"
                )
            meta = f'<p class="meta">{plural(len(sub), "set")} tested; {counted}</p>'
        if not any(table for _, table in tables):
            body = f'<p class="note">{esc(kind.none_tested)}</p>'
        elif kind.by_direction:
            body = (
                '<div class="pair">'
                + "".join(f"<div><h5>{_arrow(d)}{esc(d)} genes</h5>{t}</div>" for d, t in tables)
                + "</div>"
            )
        else:
            body = tables[0][1]
        parts.append(
            f'<div class="celltype" id="{anchors[label]}"><h4>{esc(label)}</h4>{meta}{body}</div>'
        )
    return "".join(parts)


def _arrow(direction: str) -> str:
    return {"up": f"{UP} ", "down": f"{DOWN} "}.get(direction, "")


def _sets_table(part: pd.DataFrame, kind: SetTable, *, top_n: int, cut: float | None) -> str:
    """Render the ``top_n`` first sets of ``part`` in ``kind.order`` (empty: ``""``)."""
    top = sorted_sets(part, kind).head(top_n)
    rows = [
        f"<tr{_dim(getattr(r, kind.p), cut)}><td>{esc(r.term)}</td>{kind.cells(r)}"
        f"{td_num(getattr(r, kind.p))}<td class='genes'>"
        f"{esc(_genes_text(getattr(r, kind.genes)))}</td></tr>"
        for r in top.itertuples(index=False)
    ]
    return data_table(kind.headers, rows, numeric=kind.numeric) if rows else ""
