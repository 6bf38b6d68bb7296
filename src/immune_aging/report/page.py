"""Assemble the report page from the loaded results of the pipeline.

Everything here is pure: :func:`build_report` takes a
:class:`~immune_aging.report.collect.ReportInputs` and returns the page as text.
Figures are embedded as ``data:`` URIs, the stylesheet is inline, there is no
script and no external reference, every text is HTML-escaped, and iteration
order is fixed, so the same inputs always give the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from immune_aging.report.collect import ReportInputs
from immune_aging.report.config import STAGE_NAMES, STAGES, StageInfo
from immune_aging.report.findings import (
    collect_findings,
    findings_lead,
    render_findings,
    summary_figure,
)
from immune_aging.report.goals import goals_intro, has_truth, validation_section
from immune_aging.report.markup import (
    FigureCounter,
    anchor_slug,
    badge,
    data_table,
    esc,
    figure_html,
    figures_block,
    format_value,
    is_number,
    series_block,
)
from immune_aging.report.recorded import cell_types, cutoff, per_cell_type
from immune_aging.report.removed import removals, render_removals, summary_line, warnings
from immune_aging.report.style import CSS
from immune_aging.report.tables import (
    packages_table,
    params_match,
    provenance_block,
    render_metrics,
    render_params,
)
from immune_aging.report.top import GSEA, ORA, render_top_de, render_top_sets

log = logging.getLogger(__name__)


def _stage_ran(name: str, inputs: ReportInputs) -> bool:
    tables = {"de": inputs.de, "gsea": inputs.gsea, "ora": inputs.ora}
    return (
        name in inputs.metrics
        or name in inputs.plot_stages
        or any(r.stage == name for r in inputs.provenance)
        or tables.get(name) is not None
    )


def _stage_section(
    step: int, info: StageInfo, inputs: ReportInputs, *, top_n: int, counter: FigureCounter
) -> str:
    name = info.name
    ran = _stage_ran(name, inputs)
    parts = [
        f'<section id="stage-{anchor_slug(name)}"><h2><span class="step">{step}.</span>'
        f"{esc(info.title)} "
        f"<code>{esc(name)}</code> {badge('ran' if ran else 'not run')}</h2>",
        f'<p class="lead">{esc(info.summary)}</p>',
    ]
    if not ran:
        parts.append(
            '<p class="notrun">Not run: none of this stage\'s outputs (metrics, figures, '
            "tables, checkpoints) was found.</p>"
        )
    if name == "evaluate" and name in inputs.metrics:
        if has_truth(inputs.metrics[name]):
            parts.append(
                '<p>The goals and headline scores are in <a href="#validation">Check on '
                "simulated data</a>.</p>"
            )
        else:
            parts.append(goals_intro(inputs.metrics[name]))
    if name in inputs.metrics:
        parts.append(f"<h3>Metrics</h3>{render_metrics(inputs.metrics[name])}")
    if inputs.figures.get(name):
        parts.append("<h3>Figures</h3>")
        parts.append(figures_block(inputs.figures[name], counter, cell_types(inputs)))
    parts.append(series_block(inputs.series.get(name, [])))
    if name == "de" and inputs.de is not None:
        age_sd = {
            k: v.get("age_sd_years") for k, v in per_cell_type(inputs.metrics.get("de")).items()
        }
        parts.append(
            render_top_de(
                inputs.de,
                top_n=top_n,
                alpha=cutoff(inputs, "de"),
                age_sd={k: v for k, v in age_sd.items() if is_number(v)},
            )
        )
    for kind, results in ((GSEA, inputs.gsea), (ORA, inputs.ora)):
        if name == kind.key and results is not None:
            parts.append(render_top_sets(results, kind, top_n=top_n, cut=cutoff(inputs, kind.key)))
    records = [r for r in inputs.provenance if r.stage == name]
    if records:
        parts.append("<h3>Provenance</h3>")
        parts.extend(provenance_block(r, inputs.params) for r in records)
    if name in inputs.params:
        parts.append(
            "<details><summary>Parameters (params.yaml section "
            f"<code>{esc(name)}</code>)</summary>"
        )
        parts.append(render_params(name, inputs.params[name], inputs.param_notes))
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def _findings_section(inputs: ReportInputs, counter: FigureCounter) -> str:
    found = collect_findings(inputs)
    gone = removals(inputs)
    parts = [
        '<section id="findings"><h2>Findings: gene expression with age, per cell type</h2>',
        findings_lead(found, inputs, summary_line(gone)),
    ]
    drawn = summary_figure(inputs)
    if drawn is not None:
        fig, caption = drawn
        parts.append(f'<div class="figures">{figure_html(fig, counter.next(), caption)}</div>')
    parts.append(render_findings(found, inputs))
    parts.append(
        '<h3 id="removed">What was removed before DE, and why</h3><p class="lead">The rules '
        "applied before the DE models, in order, and what each removed. Donors dropped by a "
        "rule that can depend on age (few cells of some type) are listed with their ages "
        "where the stage recorded them.</p>"
    )
    parts.append(render_removals(gone, warnings(inputs)))
    parts.append("</section>")
    return "".join(parts)


def _pipeline_section(inputs: ReportInputs, stages: Sequence[StageInfo]) -> str:
    rows = []
    for step, info in enumerate(stages, start=1):
        ran = _stage_ran(info.name, inputs)
        n_fig = len(inputs.figures.get(info.name, []))
        rows.append(
            f'<tr><td class="num">{step}</td>'
            f'<td><a href="#stage-{anchor_slug(info.name)}">{esc(info.title)}</a> '
            f"<code>{esc(info.name)}</code></td><td>{badge('ran' if ran else 'not run')}</td>"
            f'<td class="num">{n_fig}</td><td class="note">{esc(info.summary)}</td></tr>'
        )
    return (
        '<section id="pipeline"><h2>Pipeline stages</h2>'
        + data_table(
            ["", "stage", "status", "figures", "what it does"],
            rows,
            numeric=[True, False, False, True],
        )
        + "</section>"
    )


def _provenance_section(inputs: ReportInputs, *, title: str, top_n: int) -> str:
    parts = [
        '<section id="provenance"><h2>Provenance and software</h2>',
        "<p class='lead'>Package versions recorded in the checkpoints' "
        "<code>uns['provenance']</code>, and every checkpoint with its size. Input hashes and "
        "recorded parameters are listed in each stage's section.</p>",
        "<h3>Packages</h3>",
        packages_table(inputs.provenance),
        "<h3>Checkpoints</h3>",
    ]
    if inputs.provenance:
        rows = []
        for r in sorted(inputs.provenance, key=lambda r: (_stage_rank(r.stage), r.path)):
            n_obs = "" if r.n_obs is None else f"{r.n_obs:,}"
            n_vars = "" if r.n_vars is None else f"{r.n_vars:,}"
            match = params_match(r, inputs.params) if r.recorded else "no record"
            rows.append(
                f"<tr><td><code>{esc(r.path)}</code></td>"
                f"<td><a href='#stage-{anchor_slug(r.stage)}'>{esc(r.stage)}</a></td>"
                f"<td class='num'>{n_obs}</td><td class='num'>{n_vars}</td>"
                f"<td>{esc(match)}</td></tr>"
            )
        parts.append(
            data_table(
                ["file", "stage", "observations", "variables", "parameters"],
                rows,
                numeric=[False, False, True, True],
            )
        )
    else:
        parts.append('<p class="notrun">No checkpoint found.</p>')
    parts.append("<h3>This report</h3>")
    if "report" in inputs.params:
        parts.append(render_params("report", inputs.params["report"], inputs.param_notes))
    else:
        parts.append(f"<p>Title {esc(title)}; {top_n} genes and sets per cell type.</p>")
    parts.append(
        "<p class='note'>Built by the <code>report</code> stage from the metrics, figures, "
        "result tables and checkpoints of the pipeline. Self-contained: figures are embedded, "
        "nothing is loaded from elsewhere. It carries no date, so the same results always give "
        "the same page; <code>dvc.lock</code> records which results it was built from.</p>"
    )
    parts.append("</section>")
    return "".join(parts)


def _stage_rank(stage: str) -> int:
    return STAGE_NAMES.index(stage) if stage in STAGE_NAMES else len(STAGE_NAMES)


def _extra_stages(inputs: ReportInputs) -> list[StageInfo]:
    """Stages with outputs but not in :data:`STAGES` (shown after the known ones)."""
    names = set(inputs.metrics) | set(inputs.plot_stages) | {r.stage for r in inputs.provenance}
    return [
        StageInfo(n, n, "A stage not described by the report.")
        for n in sorted(names - set(STAGE_NAMES) - {"report"})
    ]


def build_report(inputs: ReportInputs, *, title: str, top_n: int) -> str:
    """Build the report page.

    Parameters
    ----------
    inputs
        The loaded results (see :func:`immune_aging.report.collect.read_all`).
    title
        Page title.
    top_n
        Genes and gene sets listed per cell type (and direction).

    Returns
    -------
    str
        The complete HTML document: inline CSS, figures as ``data:`` URIs, no
        script, no external reference.
    """
    stages = [*STAGES, *_extra_stages(inputs)]
    counter = FigureCounter()
    validation = validation_section(
        inputs.metrics.get("evaluate"), alpha=cutoff(inputs, "evaluate")
    )
    sections = [_findings_section(inputs, counter)]
    sections += [validation] if validation else []
    sections.append(_pipeline_section(inputs, stages))
    for step, info in enumerate(stages, start=1):
        sections.append(_stage_section(step, info, inputs, top_n=top_n, counter=counter))
    sections.append(_provenance_section(inputs, title=title, top_n=top_n))
    toc = [
        '<li><span class="n"></span><a href="#findings">Findings</a></li>',
        *(
            ['<li><span class="n"></span><a href="#validation">Check on simulated data</a></li>']
            if validation
            else []
        ),
        '<li><span class="n"></span><a href="#pipeline">Pipeline stages</a></li>',
    ]
    for step, info in enumerate(stages, start=1):
        ran = _stage_ran(info.name, inputs)
        flag = "" if ran else " " + badge("not run")
        toc.append(
            f'<li><span class="n">{step}.</span><span><a href="#stage-{anchor_slug(info.name)}">'
            f"{esc(info.title)}</a>{flag}</span></li>"
        )
    toc.append('<li><span class="n"></span><a href="#provenance">Provenance and software</a></li>')
    source = ""
    data = inputs.params.get("data")
    if isinstance(data, Mapping) and "source" in data:
        source = f"Input: {esc(format_value(data['source']))}. "
    n_figures = counter.n
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header class="top"><h1>{esc(title)}</h1><p>{source}{len(stages)} stages, '
        f"{n_figures} figures. Every figure, metric, parameter and checkpoint of the pipeline on "
        "one page.</p></header>\n"
        '<div class="layout">\n<nav class="toc"><h2>Contents</h2><ul>'
        + "".join(toc)
        + "</ul></nav>\n<main>\n"
        + "\n".join(sections)
        + "\n</main>\n</div>\n</body>\n</html>\n"
    )
    log.info("report: %d sections, %d figures, %.1f MB", len(sections), n_figures, len(page) / 1e6)
    return page
