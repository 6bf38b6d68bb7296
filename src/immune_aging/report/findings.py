"""The answer first: how gene expression changes with donor age in each cell type.

The findings open the report on any input, with or without a planted truth: per
cell type the donors analysed, the genes up and down with age at the run's
cut-off, the top genes each way (log2 fold change per decade), the top gene sets
each way (NES, FDR) and how well expression predicts age against the sex-only
baseline; then one summary figure (:mod:`~immune_aging.report.heatmap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from immune_aging.report import heatmap
from immune_aging.report.collect import Figure, ReportInputs
from immune_aging.report.config import (
    FINDINGS_GENES,
    FINDINGS_SETS,
    HEATMAP_MAX_GENES,
    HEATMAP_PER_DIRECTION,
)
from immune_aging.report.markup import (
    anchors_for,
    data_table,
    esc,
    format_value,
    number,
    plural,
)
from immune_aging.report.recorded import cell_types, cutoff, per_cell_type
from immune_aging.report.top import DOWN, GSEA, UP, gene_name, sorted_genes, sorted_labels
from immune_aging.report.top import sorted_sets as _sorted_sets

PER_DECADE = "log2 fold change per decade"


@dataclass(frozen=True)
class Gene:
    """A gene changing with age in one cell type."""

    symbol: str
    gene_id: str
    effect: float | None  # log2 fold change per decade (None: not known)
    padj: float


@dataclass(frozen=True)
class GeneSet:
    """A gene set of the preranked GSEA in one cell type."""

    term: str
    nes: float
    fdr: float


@dataclass(frozen=True)
class Finding:
    """What the pipeline found for one cell type; ``None`` where nothing is recorded."""

    cell_type: str
    donors: int | None = None
    #: whether DE results exist for the cell type (a skipped one has none)
    tested: bool = False
    skipped: str | None = None
    n_up: int | None = None
    n_down: int | None = None
    up: tuple[Gene, ...] = ()
    down: tuple[Gene, ...] = ()
    #: (up, down) sets; ``None`` when GSEA has no result for the cell type
    sets: tuple[tuple[GeneSet, ...], tuple[GeneSet, ...]] | None = None
    prediction: Mapping[str, float | int | None] | None = None


def effect_per_decade(de: pd.DataFrame, de_metrics: object) -> tuple[pd.Series, str]:
    """Return the age effect of each DE row and what it measures.

    Parameters
    ----------
    de
        DE results.
    de_metrics
        Decoded ``metrics/de.json`` (its ``age_sd_years`` per cell type), or ``None``.

    Returns
    -------
    tuple
        ``(effect, unit)``: ``log2fc_per_decade`` when the table has it, else
        ``log2FoldChange * 10 / age_sd_years``; when neither is known for any row,
        ``log2FoldChange`` itself, per SD of age.
    """
    if "log2fc_per_decade" in de.columns:
        return de["log2fc_per_decade"].astype(float), PER_DECADE
    sd = {
        ct: float(v)
        for ct, info in per_cell_type(de_metrics).items()
        if (v := number(info.get("age_sd_years"))) is not None and v > 0
    }
    effect = de["log2FoldChange"] * 10.0 / de["cell_type"].astype(str).map(sd).astype(float)
    if effect.notna().any():
        return effect, PER_DECADE
    return de["log2FoldChange"].astype(float), "log2 fold change per SD of age"


def _genes(rows: pd.DataFrame, effect: pd.Series) -> tuple[Gene, ...]:
    return tuple(
        Gene(gene_name(r), str(r.gene_id), number(effect.loc[i]), float(r.padj))
        for i, r in zip(rows.index, rows.itertuples(index=False), strict=True)
    )


def _sets(rows: pd.DataFrame) -> tuple[GeneSet, ...]:
    return tuple(GeneSet(str(r.term), float(r.nes), float(r.fdr)) for r in rows.itertuples())


def collect_findings(inputs: ReportInputs) -> list[Finding]:
    """Gather the findings per cell type from the DE and GSEA tables and the metrics.

    Parameters
    ----------
    inputs
        The loaded results.

    Returns
    -------
    list of Finding
        One per cell type of the results, sorted by label. Genes and sets are the
        significant ones at the run's cut-offs, ordered as in the stage sections;
        without a recorded cut-off, the top ones by adjusted p-value.
    """
    alpha, fdr = cutoff(inputs, "de"), cutoff(inputs, "gsea")
    de_info = per_cell_type(inputs.metrics.get("de"))
    predict = inputs.metrics.get("predict")
    predict = predict if isinstance(predict, Mapping) else {}
    de, gsea = inputs.de, inputs.gsea
    effect = effect_per_decade(de, inputs.metrics.get("de"))[0] if de is not None else None
    in_table = set(sorted_labels(de["cell_type"])) if de is not None else set()
    out = []
    for label in cell_types(inputs):
        info = de_info.get(label, {})
        fields: dict[str, object] = {
            "donors": number(info.get("n_donors")),
            "tested": label in in_table or (bool(info) and not info.get("skipped")),
            "skipped": str(info["skipped"]) if info.get("skipped") else None,
            "n_up": number(info.get("n_up")),
            "n_down": number(info.get("n_down")),
        }
        if de is not None and effect is not None and label in in_table:
            rows = de[(de["cell_type"].astype(str) == label) & de["padj"].notna()]
            if alpha is not None:
                fields["n_up"] = int(((rows["padj"] < alpha) & (rows["log2FoldChange"] > 0)).sum())
                fields["n_down"] = int(
                    ((rows["padj"] < alpha) & (rows["log2FoldChange"] < 0)).sum()
                )
                rows = rows[rows["padj"] < alpha]
            rows = sorted_genes(rows)
            fields["up"] = _genes(rows[rows["log2FoldChange"] > 0].head(FINDINGS_GENES), effect)
            fields["down"] = _genes(rows[rows["log2FoldChange"] < 0].head(FINDINGS_GENES), effect)
        if gsea is not None and (gsea["cell_type"].astype(str) == label).any():
            sets = gsea[gsea["cell_type"].astype(str) == label]
            sets = _sorted_sets(sets[sets["fdr"] < fdr] if fdr is not None else sets, GSEA)
            fields["sets"] = (
                _sets(sets[sets["nes"] > 0].head(FINDINGS_SETS)),
                _sets(sets[sets["nes"] < 0].head(FINDINGS_SETS)),
            )
        scores = predict.get(label)
        if isinstance(scores, Mapping):
            fields["prediction"] = {
                k: number(scores.get(k))
                for k in ("r2_mean", "baseline_r2_mean", "mae_mean", "baseline_mae_mean")
            }
        out.append(Finding(label, **fields))
    return out


# --------------------------------------------------------------------------- HTML


def _p(value: float) -> str:
    return f"{value:.2g}"


def _genes_line(arrow: str, n: int | None, genes: Sequence[Gene], none: str) -> str:
    count = f"<b>{format_value(n)}</b>" if n is not None else "?"
    if not genes:
        return f'<div>{arrow} {count} <span class="none">{esc(none)}</span></div>'
    items = ", ".join(
        f'<span title="{esc(g.gene_id)}; padj {esc(_p(g.padj))}">{esc(g.symbol)}</span>'
        + (f"&nbsp;{g.effect:+.2f}" if g.effect is not None else "")
        for g in genes
    )
    return f"<div>{arrow} {count}: {items}</div>"


def _sets_line(arrow: str, sets: Sequence[GeneSet], none: str) -> str:
    if not sets:
        return f'<div>{arrow} <span class="none">{esc(none)}</span></div>'
    items = "; ".join(f"{esc(s.term)}&nbsp;{s.nes:+.1f}&nbsp;({esc(_p(s.fdr))})" for s in sets)
    return f"<div>{arrow} {items}</div>"


def _prediction(scores: Mapping[str, float | int | None] | None) -> str:
    if scores is None:
        return '<td class="none">not predicted</td>'
    lines = []
    for label, key, digits, unit in (
        ("R\N{SUPERSCRIPT TWO}", "r2_mean", 2, ""),
        ("MAE", "mae_mean", 1, " y"),
    ):
        model, base = scores.get(key), scores.get(f"baseline_{key}")
        if model is None:
            lines.append(f"<div>{label} not recorded</div>")
            continue
        against = f" ({base:.{digits}f})" if base is not None else ""
        lines.append(f"<div>{label} {model:.{digits}f}{unit}{against}</div>")
    return f'<td class="num">{"".join(lines)}</td>'


def render_findings(findings: Sequence[Finding], inputs: ReportInputs) -> str:
    """Render the findings as one table, a row per cell type.

    Parameters
    ----------
    findings
        From :func:`collect_findings`.
    inputs
        The loaded results (cut-offs, DE table for the links to its sections).

    Returns
    -------
    str
        HTML: the table (class ``findings``), or a note when DE did not run.
    """
    if not findings:
        return (
            '<p class="notrun">No finding: differential expression did not run (no DE table, '
            "no <code>metrics/de.json</code>).</p>"
        )
    alpha, fdr = cutoff(inputs, "de"), cutoff(inputs, "gsea")
    at = f"padj < {format_value(alpha)}" if alpha is not None else "no padj cut-off recorded"
    set_at = f"FDR < {format_value(fdr)}" if fdr is not None else "no FDR cut-off recorded"
    de = inputs.de
    links = anchors_for("de", sorted_labels(de["cell_type"])) if de is not None else {}
    unit = effect_per_decade(de, inputs.metrics.get("de"))[1] if de is not None else PER_DECADE
    rows = []
    for f in findings:
        name = esc(f.cell_type)
        if f.cell_type in links:
            name = f'<a href="#{links[f.cell_type]}">{name}</a>'
        donors = "donors not recorded" if f.donors is None else plural(f.donors, "donor")
        cells = [f'<td class="ct">{name}<div class="meta">{donors}</div></td>']
        if f.skipped or not f.tested:
            why = f"not tested: {f.skipped}" if f.skipped else "no DE result"
            cells.append(f'<td colspan="2" class="none">{esc(why)}</td>')
        else:
            cells.append(
                '<td class="genes">'
                + _genes_line(UP, f.n_up, f.up, "none")
                + _genes_line(DOWN, f.n_down, f.down, "none")
                + "</td>"
            )
            if f.sets is None:
                cells.append('<td class="none">no GSEA result</td>')
            else:
                cells.append(
                    '<td class="sets">'
                    + _sets_line(UP, f.sets[0], f"none at {set_at}")
                    + _sets_line(DOWN, f.sets[1], f"none at {set_at}")
                    + "</td>"
                )
        cells.append(_prediction(f.prediction))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    headers = [
        "cell type, donors analysed",
        f"genes up and down with age at {at}: count, top genes ({unit})",
        f"top gene sets (NES, FDR) at {set_at}",
        "age predicted (sex-only baseline)",
    ]
    return data_table(headers, rows, numeric=[False, False, False, True], css_class="findings")


def findings_lead(findings: Sequence[Finding], inputs: ReportInputs, removed: str) -> str:
    """Say in a few sentences what the run found (HTML paragraph).

    Parameters
    ----------
    findings
        From :func:`collect_findings`.
    inputs
        The loaded results (cut-offs, design).
    removed
        The summary of removals before DE (plain text, may be empty).

    Returns
    -------
    str
        HTML.
    """
    alpha = cutoff(inputs, "de")
    tested = [f for f in findings if f.tested]
    designs = sorted(
        {
            str(i["design"])
            for i in per_cell_type(inputs.metrics.get("de")).values()
            if i.get("design")
        }
    )
    design = f" (design <code>{esc(' or '.join(designs))}</code>)" if designs else ""
    parts = [f"DESeq2 per cell type{design}: {len(tested)} of {len(findings)} tested."]
    counted = [f for f in tested if f.n_up is not None and f.n_down is not None]
    if alpha is not None and counted:
        up = sum(f.n_up or 0 for f in counted)
        down = sum(f.n_down or 0 for f in counted)
        most = max(counted, key=lambda f: ((f.n_up or 0) + (f.n_down or 0), f.cell_type))
        text = f"At padj &lt; {esc(format_value(alpha))}, {up} genes rise with age and {down} fall"
        if up + down:
            total = (most.n_up or 0) + (most.n_down or 0)
            text += f", most in {esc(most.cell_type)} ({total})"
        parts.append(text + ".")
    elif alpha is None:
        parts.append("No DE cut-off is recorded (de.alpha): genes are listed by adjusted p-value.")
    scored = [
        (r2, f.cell_type, f.prediction.get("baseline_r2_mean"))
        for f in findings
        if f.prediction and (r2 := f.prediction.get("r2_mean")) is not None
    ]
    if scored:
        r2, best, base = max(scored, key=lambda s: (s[0], s[1]))
        against = f"; sex only {base:.2f}" if base is not None else ""
        parts.append(
            f"Age is predicted best from {esc(best)} (R\N{SUPERSCRIPT TWO} {r2:.2f}{against})."
        )
    if removed:
        parts.append(f'Removed before DE: {esc(removed)} (<a href="#removed">which, and why</a>).')
    return f'<p class="lead">{" ".join(parts)}</p>'


def summary_figure(inputs: ReportInputs) -> tuple[Figure, str] | None:
    """Draw the heatmap of the top age genes and write its caption.

    Parameters
    ----------
    inputs
        The loaded results: the DE table, ``metrics/de.json`` and the DE cut-off.

    Returns
    -------
    tuple or None
        ``(figure, caption)``; ``None`` when there is no DE table or no gene tested.
    """
    de = inputs.de
    if de is None:
        return None
    alpha = cutoff(inputs, "de")
    effect, unit = effect_per_decade(de, inputs.metrics.get("de"))
    chosen = heatmap.select_genes(
        de, alpha=alpha, per_direction=HEATMAP_PER_DIRECTION, max_genes=HEATMAP_MAX_GENES
    )
    if not chosen.gene_ids:
        return None
    types = sorted_labels(de["cell_type"])
    values, padj = heatmap.effect_matrix(de, effect, chosen.gene_ids, types)
    order = heatmap.cluster_order(values)
    values, padj = values.iloc[order], padj.iloc[order]
    shown = de[de["gene_id"].astype(str).isin(set(chosen.gene_ids))].drop_duplicates("gene_id")
    names = {str(r.gene_id): gene_name(r) for r in shown.itertuples(index=False)}
    labels = [names.get(g, g) for g in values.index]
    significant = (
        padj < alpha if alpha is not None else pd.DataFrame(False, padj.index, padj.columns)
    )
    fig = heatmap.heatmap_figure(values, significant, labels, unit=unit)
    k = HEATMAP_PER_DIRECTION
    if chosen.significant:
        which = f"the {k} most significant rising and the {k} falling with age in each cell type"
        dots = f"dot: padj < {format_value(alpha)} in that cell type"
    elif alpha is not None:
        which = (
            f"no gene reaches padj < {format_value(alpha)} in any cell type: the {k} genes "
            "with the smallest padj each way in each cell type, none significant"
        )
        dots = "no dot: nothing significant"
    else:
        which = f"the {k} genes with the smallest padj each way in each cell type"
        dots = "no dot: no DE cut-off recorded (de.alpha)"
    cap = (
        f"Top age genes across cell types: {unit} (red rises with age, blue falls, grey not "
        f"tested; {dots}). {plural(len(values), 'gene')}: {which}"
        + (f", at most {HEATMAP_MAX_GENES}" if len(values) == HEATMAP_MAX_GENES else "")
        + "; clustered by profile (average linkage, Euclidean). Drawn by the report from "
        "data/de/results.parquet."
    )
    return fig, cap
