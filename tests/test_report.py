"""The report stage: a self-contained, escaped, deterministic HTML page."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from immune_aging import io
from immune_aging.report import (
    build_report,
    captions,
    collect,
    config,
    findings,
    goals,
    heatmap,
    markup,
    recorded,
    removed,
    tables,
    top,
)
from immune_aging.stages import report as report_stage

REPO = Path(__file__).resolve().parents[1]
CD4 = "central memory CD4-positive, alpha-beta T cell"
NK = "natural killer cell"
EVIL_GENE = "<b>X&Y</b>"


def tiny_png(path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save_figure(fig, path, dpi=40)
    return path.read_bytes()


def write_checkpoint(path: Path, stage: str, params: dict, *, record: bool = True) -> None:
    adata = ad.AnnData(np.zeros((3, 2), dtype="float32"))
    adata.obs_names = ["c1", "c2", "c3"]
    adata.var_names = ["g1", "g2"]
    if record:
        adata.uns["provenance"] = {
            "stage": stage,
            "params": json.dumps(params, sort_keys=True),
            "packages": {"numpy": "2.0.0", "scanpy": "1.11.5"},
            "inputs": {"dataset.h5ad": "ab" * 32},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_h5ad(adata, path)


SKIPPED = "B cell"
SCORES = {
    "de.recall": 0.91,
    "de.fdr": 0.04,
    "gsea.planted_found": 5,
    "gsea.planted_total": 6,
    "ora.planted_found": 4,
    "predict.r2": 0.71,
    "predict.baseline_r2": 0.02,
    "cluster.ari": 0.8,
    "cluster.purity": 0.95,
    "qc.doublet_recall": 0.6,
    "qc.doublet_precision": None,
}


def make_results(root: Path, *, truth: bool = True) -> dict[str, Path]:
    """A tiny results tree: params, metrics, plots, tables and one checkpoint.

    Without ``truth`` the evaluation scored nothing, as on real data.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = collect.read_params(root / "params.yaml")[0]
    metrics = root / "metrics"
    metrics.mkdir()
    io.write_json(
        {
            "cells_in": 1000,
            "cells_out": 950,
            "cutoff": 12.5,
            "min_cells_per_donor": 12,
            "donor_cutoff": {"donors_removed": 1, "donors": ["D9"]},
            "cell_type_prevalence": {"cell_types_removed": 1, "cell_types": ["platelet"]},
            "donor_completeness": {"donors_removed": 0, "donors": []},
        },
        metrics / "filter.json",
    )
    io.write_json(
        {
            "samples_dropped_few_cells": 3,
            "dropped_cell_types": {},
            "donors_unknown_age_ids": ["D7"],
        },
        metrics / "pseudobulk.json",
    )
    io.write_json(
        {
            "alpha": 0.05,
            "cell_types": {
                SKIPPED: {"n_donors": 4, "skipped": "4 donors are too few for the design"},
                CD4: {"n_donors": 40, "age_sd_years": 20.0, "n_up": 2, "n_down": 1},
                NK: {"n_donors": 38, "age_sd_years": 20.0, "n_up": 0, "n_down": 0},
            },
        },
        metrics / "de.json",
    )
    io.write_json(
        {"cells_in": 950, "removed": {"max_pct_mt": 20, "doublets": 31}, "kept": 899},
        metrics / "qc.json",
    )
    io.write_json(
        {
            CD4: {
                "r2_mean": 0.71,
                "baseline_r2_mean": 0.02,
                "mae_mean": 8.25,
                "baseline_mae_mean": 15.5,
                "n_donors": 40,
            }
        },
        metrics / "predict.json",
    )
    io.write_json(SCORES if truth else dict.fromkeys(SCORES), metrics / "evaluate.json")
    tiny_png(root / "plots" / "filter" / "cells_per_donor.png")
    (root / "plots" / "filter" / "cells_per_donor.csv").write_text("donor_id,n_cells\nd1,10\n")
    tiny_png(root / "plots" / "de" / "volcano_natural_killer_cell.png")
    (root / "data" / "de").mkdir(parents=True)
    de = pd.DataFrame(
        {
            "cell_type": [CD4] * 4 + [NK] * 2,
            "gene_id": ["E1", "E2", "E3", "E4", "E1", "E2"],
            "gene": ["AAA", EVIL_GENE, "CCC", "DDD", "AAA", "BBB"],
            "baseMean": [10.0, 20.0, 30.0, 40.0, 5.0, 6.0],
            "log2FoldChange": [1.0, 0.5, -0.7, -0.2, 0.3, np.nan],
            "lfcSE": 0.1,
            "stat": [5.0, 2.0, -4.0, -1.0, 1.0, np.nan],
            "pvalue": [1e-6, 1e-3, 1e-5, 0.3, 0.2, np.nan],
            "padj": [1e-5, 4e-3, 2e-5, 0.4, 0.3, np.nan],
        }
    )
    de["log2fc_per_decade"] = de["log2FoldChange"] * 10 / 20.0
    io.write_parquet(de, root / "data" / "de" / "results.parquet")
    (root / "data" / "gsea").mkdir(parents=True)
    gsea = pd.DataFrame(
        {
            "cell_type": [CD4, CD4],
            "term": ["AGE_UP_1", "DECOY_1"],
            "es": [0.8, 0.1],
            "nes": [2.1, 0.3],
            "pval": [0.001, 0.7],
            "fdr": [0.01, 0.8],
            "lead_genes": ["AAA;CCC", ""],
        }
    )
    io.write_parquet(gsea, root / "data" / "gsea" / "results.parquet")
    (root / "data" / "ora").mkdir(parents=True)
    ora = pd.DataFrame(
        {
            "cell_type": [CD4, CD4],
            "direction": ["up", "down"],
            "term": ["AGE_UP_1", "AGE_DOWN_1"],
            "overlap": ["2/30", "1/25"],
            "pval": [0.001, 0.02],
            "padj": [0.004, 0.04],
            "genes": ["AAA;BBB", "CCC"],
        }
    )
    io.write_parquet(ora, root / "data" / "ora" / "results.parquet")
    write_checkpoint(root / "data" / "filter" / "selection.h5ad", "filter", params["filter"])
    return {"root": root}


def argv(root: Path, out: Path) -> list[str]:
    stages = [s.name for s in config.STAGES]
    return [
        "--params",
        str(root / "params.yaml"),
        "--metrics",
        *[str(root / "metrics" / f"{s}.json") for s in stages],
        "--plots",
        *[str(root / "plots" / s) for s in stages],
        "--de",
        str(root / "data" / "de" / "results.parquet"),
        "--gsea",
        str(root / "data" / "gsea" / "results.parquet"),
        "--ora",
        str(root / "data" / "ora" / "results.parquet"),
        "--provenance",
        str(root / "data" / "raw" / "dataset.h5ad"),
        str(root / "data" / "filter" / "selection.h5ad"),
        "--out",
        str(out),
    ]


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    return make_results(tmp_path / "results")["root"]


@pytest.fixture
def page(results, tmp_path):
    out = tmp_path / "reports" / "report.html"
    assert report_stage.main(argv(results, out)) == 0
    return out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the page


def test_every_stage_has_a_section_in_pipeline_order(page):
    ids = re.findall(r'<section id="([^"]+)"', page)
    stages = [f"stage-{s.name}" for s in config.STAGES]
    assert ids == ["findings", "validation", "pipeline", *stages, "provenance"]
    toc = re.search(r'<nav class="toc">(.*?)</nav>', page, flags=re.S).group(1)
    assert re.findall(r'href="#([^"]+)"', toc) == ids


def test_sections_show_metrics_params_and_provenance(page):
    filter_section = re.search(r'<section id="stage-filter">(.*?)</section>', page, re.S).group(1)
    assert "cells_out" in filter_section and "950" in filter_section
    assert "filter.cutoff_percentile" in filter_section  # params table
    assert "drop donors below this percentile" in filter_section  # comment from params.yaml
    assert "data/filter/selection.h5ad" in filter_section
    assert "matches params.yaml" in filter_section
    assert "ab" * 32 in filter_section  # input hash
    assert "3 observations" in filter_section
    # metrics per cell type become one table with a row per cell type
    predict = re.search(r'<section id="stage-predict">(.*?)</section>', page, re.S).group(1)
    assert '<th class="num">r2_mean</th>' in predict
    provenance = re.search(r'<section id="provenance">(.*?)</section>', page, re.S).group(1)
    assert "scanpy" in provenance and "1.11.5" in provenance


def test_images_are_embedded_as_data_uris(page, results):
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == 3  # the two of the stages and the summary heatmap
    pngs = sorted(p.read_bytes() for p in (results / "plots").rglob("*.png"))
    decoded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in srcs]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert decoded[0].startswith(collect.PNG_SIGNATURE)  # Figure 1: the summary heatmap
    assert sorted(decoded[1:]) == pngs
    assert page.count("<figcaption>") == 3
    assert "Cells per donor before filtering" in page  # a known caption
    assert "Volcano plot for natural killer cell" in page


def test_no_external_references(page):
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert value.startswith(("#", "data:")), (attr, value[:60])
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page)


def test_text_is_escaped(page):
    assert EVIL_GENE not in page
    assert html.escape(EVIL_GENE) in page
    assert html.escape(CD4) in page
    assert f">{NK}</h4>" in page  # DE table of the second cell type


def test_rebuild_is_byte_identical(results, tmp_path):
    first, second = tmp_path / "a" / "r.html", tmp_path / "b" / "r.html"
    assert report_stage.main(argv(results, first)) == 0
    assert report_stage.main(argv(results, second)) == 0
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in first.parent.iterdir()) == ["r.html"]


def test_missing_inputs_say_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    root = tmp_path / "empty"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    out = tmp_path / "r.html"
    assert report_stage.main(argv(root, out)) == 0
    page = out.read_text()
    for stage in config.STAGES:
        section = re.search(rf'<section id="stage-{stage.name}">(.*?)</section>', page, re.S)
        assert "not run" in section.group(1), stage.name
    assert "<img" not in page


def test_goals_in_the_check_on_simulated_data(page):
    validation = re.search(r'<section id="validation">(.*?)</section>', page, re.S).group(1)
    assert "Check on simulated data" in validation
    assert "6 of 7" in validation  # doublet precision is null: not checked
    assert validation.count('class="badge bad">not met') == 1  # gsea 5 of 6
    assert validation.count('class="badge na">n/a') == 1
    assert "evaluate.alpha</code> = 0.05" in validation
    evaluate = re.search(r'<section id="stage-evaluate">(.*?)</section>', page, re.S).group(1)
    assert 'href="#validation"' in evaluate


def test_top_tables_sorted_and_split_by_direction(page):
    de = re.search(r'<section id="stage-de">(.*?)</section>', page, re.S).group(1)
    top = de[de.index("Top genes per cell type") :]
    cd4 = top[top.index(html.escape(CD4)) :]
    up, down = cd4.index("up with age"), cd4.index("down with age")
    assert up < cd4.index("AAA") < cd4.index(html.escape(EVIL_GENE)) < down  # by padj
    assert down < cd4.index("CCC") < cd4.index("DDD")
    assert "2 up and 1 down at padj &lt; 0.05" in cd4
    assert '<tr class="dim"><td title="E4">DDD</td>' in cd4  # padj 0.4: dimmed
    gsea = re.search(r'<section id="stage-gsea">(.*?)</section>', page, re.S).group(1)
    assert gsea.index("AGE_UP_1") < gsea.index("DECOY_1")
    ora = re.search(r'<section id="stage-ora">(.*?)</section>', page, re.S).group(1)
    up, down = ora.index("up genes</h5>"), ora.index("down genes</h5>")
    assert up < ora.index("AGE_UP_1") < down < ora.index("AGE_DOWN_1")


def test_de_per_decade_from_age_sd():
    de = pd.DataFrame(
        {
            "cell_type": ["T", "B"],
            "gene_id": ["E1", "E2"],
            "gene": ["G1", "G2"],
            "baseMean": 1.0,
            "log2FoldChange": [0.4, 0.4],
            "pvalue": 0.001,
            "padj": 0.01,
        }
    )
    out = top.render_top_de(de, top_n=5, alpha=0.05, age_sd={"T": 20.0})
    t_block = out[out.index('id="de-t"') :]
    b_block = out[out.index('id="de-b"') : out.index('id="de-t"')]
    assert '<th class="num">per decade</th>' in t_block
    assert '<td class="num">0.4</td><td class="num">0.2</td>' in t_block
    assert "per decade" not in b_block


def test_top_n_limits_rows():
    de = pd.DataFrame(
        {
            "cell_type": ["T"] * 5,
            "gene_id": [f"E{i}" for i in range(5)],
            "gene": [f"G{i}" for i in range(5)],
            "baseMean": 1.0,
            "log2FoldChange": 1.0,
            "pvalue": [0.5, 0.1, 0.2, 0.3, 0.4],
            "padj": [0.5, 0.1, 0.2, 0.3, 0.4],
        }
    )
    out = top.render_top_de(de, top_n=2, alpha=0.05)
    assert re.findall(r"<td title=\"E\d\">(G\d)</td>", out) == ["G1", "G2"]
    assert "No gene tested in this direction." in out


def test_cutoffs_come_from_the_run():
    inputs = collect.ReportInputs(
        params={"de": {"alpha": 0.1}, "gsea": {"fdr": 0.2}, "evaluate": {"alpha": 0.3}},
        metrics={"de": {"alpha": 0.01}, "ora": {"padj": 0.02}},
    )
    assert recorded.cutoff(inputs, "de") == 0.01  # the stage's metrics first
    assert recorded.cutoff(inputs, "gsea") == 0.2  # else its params
    assert recorded.cutoff(inputs, "ora") == 0.02
    assert recorded.cutoff(inputs, "evaluate") == 0.3
    assert recorded.cutoff(collect.ReportInputs(), "de") is None  # never a guess


def test_top_tables_use_the_given_cutoff_or_say_there_is_none():
    de = pd.DataFrame(
        {
            "cell_type": ["T", "T"],
            "gene_id": ["E1", "E2"],
            "gene": ["G1", "G2"],
            "baseMean": 1.0,
            "log2FoldChange": [0.4, -0.4],
            "pvalue": [0.001, 0.02],
            "padj": [0.005, 0.03],
        }
    )
    strict = top.render_top_de(de, top_n=5, alpha=0.01)
    assert "1 up and 0 down at padj &lt; 0.01" in strict
    assert strict.count('class="dim"') == 1
    unknown = top.render_top_de(de, top_n=5, alpha=None)
    assert "No padj cut-off is recorded for this run (de.alpha)" in unknown
    assert "no significance cut-off recorded" in unknown and 'class="dim"' not in unknown
    gsea = pd.DataFrame(
        {
            "cell_type": ["T", "T"],
            "term": ["S1", "S2"],
            "nes": [2.0, -1.5],
            "pval": [0.001, 0.01],
            "fdr": [0.01, 0.04],
            "lead_genes": ["G1", "G2"],
        }
    )
    out = top.render_top_sets(gsea, top.GSEA, top_n=5, cut=0.02)
    assert "1 up and 0 down at FDR &lt; 0.02" in out and out.count('class="dim"') == 1
    out = top.render_top_sets(gsea, top.GSEA, top_n=5, cut=None)
    assert "No FDR cut-off is recorded for this run (gsea.fdr)" in out
    assert 'class="dim"' not in out
    ora = pd.DataFrame(
        {
            "cell_type": ["T", "T", "T"],
            "direction": ["down", "up", "up"],
            "term": ["S3", "S2", "S1"],
            "overlap": ["1/10", "2/10", "3/10"],
            "pval": [0.01, 0.02, 0.001],
            "padj": [0.03, 0.04, 0.004],
            "genes": ["G2", "G1", "G1;G3"],
        }
    )
    out = top.render_top_sets(ora, top.ORA, top_n=5, cut=0.035)
    assert out.index("up genes") < out.index("S1") < out.index("S2") < out.index("down genes")
    assert out.count('class="dim"') == 1 and "padj \N{GREATER-THAN OR EQUAL TO} 0.035" in out


def section(page: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', page, re.S).group(1)


def text_of(page: str) -> str:
    """The page without its embedded images."""
    return re.sub(r"data:image/png;base64,[^\"]+", "", page)


def test_findings_come_first_and_answer_the_question(page):
    assert re.findall(r'<section id="([^"]+)"', page)[0] == "findings"
    findings = section(page, "findings")
    assert findings.index("<figure") < findings.index('<table class="findings">')
    assert "2 genes rise with age and 1 fall" in findings
    rows = re.findall(r"<tr>(.*?)</tr>", findings.split('<table class="findings">')[1])
    by_type = {re.sub(r"<[^>]+>", "", r.split("<div")[0]): r for r in rows[1:]}
    cd4 = by_type[html.escape(CD4)]
    assert "40 donors" in cd4
    assert "\N{UPWARDS ARROW} <b>2</b>:" in cd4 and "\N{DOWNWARDS ARROW} <b>1</b>:" in cd4
    assert cd4.index("AAA</span>&nbsp;+0.50") < cd4.index(f"{html.escape(EVIL_GENE)}</span>")
    assert "CCC</span>&nbsp;-0.35" in cd4  # log2 fold change per decade
    assert "DDD" not in cd4  # padj 0.4: not significant
    assert "AGE_UP_1&nbsp;+2.1&nbsp;(0.01)" in cd4 and "DECOY_1" not in cd4
    assert "R\N{SUPERSCRIPT TWO} 0.71 (0.02)" in cd4 and "MAE 8.2 y (15.5)" in cd4
    assert f'href="#de-{markup.anchor_slug(CD4)}"' in cd4
    assert "not tested: 4 donors are too few for the design" in by_type[SKIPPED]
    assert "\N{UPWARDS ARROW} <b>0</b>" in by_type[NK] and "no GSEA result" in by_type[NK]


def test_what_was_removed_before_de(page):
    removed = section(page, "findings").split('<h3 id="removed">')[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", removed)
    text = [re.sub(r"<[^>]+>", "|", r) for r in rows]
    assert any("1 donor" in t and "D9" in t and "not recorded" in t for t in text)
    assert any("1 cell type" in t and "platelet" in t for t in text)
    assert any("D7" in t and "unknown" in t for t in text)
    assert any("3 samples" in t and "pseudobulk.min_cells" in t for t in text)
    assert any(f"{SKIPPED}: 4 donors are too few" in t for t in text)
    lead = section(page, "findings").split("</p>")[0]
    assert "Removed before DE: filter: 1 donor, 1 cell type" in lead


def test_ages_of_removed_donors_when_recorded():
    metrics = {
        "filter": {
            "donor_cutoff": {
                "donors_removed": 2,
                "donors": ["D1", "D2"],
                "ages_removed": [71, None],
            },
            "donor_completeness": {
                "donors_removed": 1,
                "donors": ["D3"],
                "ages_removed": {"D3": 84.5},
            },
        }
    }
    items = removed.removals(collect.ReportInputs(metrics=metrics))
    assert [r.ages for r in items] == [("71", "unknown"), ("84.5",)]
    out = removed.render_removals(items)
    assert "D1: 71, D2: unknown" in out and "D3: 84.5" in out
    assert "(value not recorded) (filter.cutoff_percentile)" in out  # no params given


def test_the_filters_age_comparison_and_warnings_are_shown():
    """metrics/filter.json's ``ages_removed`` per rule and its warnings reach the table."""
    compare = {"donors": 1, "mean_age": 24.0, "mean_age_rest": 55.8, "p_value": None}
    metrics = {
        "filter": {
            "donor_cutoff": {"donors_removed": 1, "donors": ["D13"]},
            "cell_type_prevalence": {"cell_types_removed": 1, "cell_types": ["pDC"]},
            "donor_completeness": {"donors_removed": 0, "donors": []},
            "ages_removed": {
                "donor_cutoff": compare,
                "cell_type_prevalence": {
                    "pDC": {
                        "donors": 46,
                        "mean_age": 55.48,
                        "mean_age_rest": 70.0,
                        "p_value": 0.003,
                        "share_age_spearman": -0.41,
                    }
                },
            },
            "warnings": ["rule 2 removed cell type 'pDC': ... removed it by age"],
        }
    }
    inputs = collect.ReportInputs(metrics=metrics)
    items = removed.removals(inputs)
    assert items[0].age_note == "mean age 24 (others 55.8)"
    assert items[1].age_note.startswith("pDC: 46 donors below the minimum, mean age 55.48 (")
    assert "Mann-Whitney p 0.003" in items[1].age_note and "Spearman -0.41" in items[1].age_note
    out = removed.render_removals(items, removed.warnings(inputs))
    assert out.index('<p class="warning">filter: rule 2 removed') < out.index("<table")
    assert f"<td>{removed.NOT_RECORDED}</td>" not in out  # every rule has its ages


def test_without_truth_there_is_no_validation_section(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    root = make_results(tmp_path / "results", truth=False)["root"]
    out = tmp_path / "r.html"
    assert report_stage.main(argv(root, out)) == 0
    page = out.read_text()
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids[:2] == ["findings", "pipeline"] and "validation" not in ids
    assert "n/a" not in text_of(page) and "goals met" not in page
    assert "simulated data" not in re.search(r'<nav class="toc">(.*?)</nav>', page, re.S).group(1)
    assert '<table class="findings">' in section(page, "findings")
    assert "No ground truth" in section(page, "stage-evaluate")


def test_findings_without_a_recorded_cutoff(results):
    inputs = collect.read_all(
        params_file=results / "params.yaml", de=results / "data" / "de" / "results.parquet"
    )
    inputs.params = {k: v for k, v in inputs.params.items() if k != "de"}
    found = {f.cell_type: f for f in findings.collect_findings(inputs)}
    assert found[CD4].n_up is None  # not counted without a cut-off: no metrics/de.json
    assert [g.symbol for g in found[CD4].up] == ["AAA", EVIL_GENE]  # by padj, none claimed
    out = findings.render_findings(list(found.values()), inputs)
    assert "no padj cut-off recorded" in out
    _, caption = findings.summary_figure(inputs)
    assert "no DE cut-off recorded" in caption


def test_cell_type_without_de_results_says_so():
    de = pd.DataFrame(
        {
            "cell_type": ["T"],
            "gene_id": ["E1"],
            "gene": ["G1"],
            "baseMean": 1.0,
            "log2FoldChange": [0.5],
            "pvalue": [0.001],
            "padj": [0.01],
        }
    )
    inputs = collect.ReportInputs(
        params={"de": {"alpha": 0.05}},
        metrics={"predict": {"Mono": {"r2_mean": 0.3, "baseline_r2_mean": 0.1}}},
        de=de,
    )
    found = {f.cell_type: f for f in findings.collect_findings(inputs)}
    assert found["T"].tested and found["T"].n_up == 1 and found["T"].prediction is None
    assert not found["Mono"].tested and found["Mono"].up == ()
    out = findings.render_findings(list(found.values()), inputs)
    assert "no DE result" in out and "not predicted" in out
    assert "R\N{SUPERSCRIPT TWO} 0.30 (0.10)" in out and "MAE not recorded" in out


def test_summary_heatmap_selects_clusters_and_is_deterministic():
    de = pd.DataFrame(
        {
            "cell_type": ["T"] * 5 + ["B"] * 5,
            "gene_id": ["E1", "E2", "E3", "E4", "E5"] * 2,
            "log2FoldChange": [1.0, 0.9, -1.0, -0.9, 0.1, 1.0, 0.8, -1.1, -0.8, 0.0],
            "pvalue": [1e-6, 1e-5, 1e-6, 1e-5, 0.5] * 2,
            "padj": [1e-5, 1e-4, 1e-5, 1e-4, 0.9] * 2,
        }
    )
    chosen = heatmap.select_genes(de, alpha=0.05, per_direction=1, max_genes=10)
    assert chosen.significant and chosen.gene_ids == ["E1", "E3"]
    chosen = heatmap.select_genes(de, alpha=0.05, per_direction=2, max_genes=3)
    assert chosen.gene_ids == ["E1", "E2", "E3"]  # cut to the smallest padj (ties by ID)
    none = heatmap.select_genes(de, alpha=1e-9, per_direction=1, max_genes=10)
    assert not none.significant and none.gene_ids == ["E1", "E3"]
    genes = ["E1", "E3", "E2", "E4"]
    values, padj = heatmap.effect_matrix(de, de["log2FoldChange"], genes, ["B", "T"])
    assert values.loc["E3", "T"] == -1.0 and list(values.columns) == ["B", "T"]
    order = [genes[i] for i in heatmap.cluster_order(values)]
    assert {frozenset(order[:2]), frozenset(order[2:])} == {
        frozenset({"E1", "E2"}),
        frozenset({"E3", "E4"}),
    }
    first = heatmap.heatmap_figure(values, padj < 0.05, genes, unit="u")
    second = heatmap.heatmap_figure(values, padj < 0.05, genes, unit="u")
    assert first.png == second.png and first.png.startswith(collect.PNG_SIGNATURE)
    assert (first.width, first.height) == collect.png_size(first.png, "x")
    odd = heatmap.heatmap_figure(values, padj < 0.05, ["g$\\q$", "b", "c", "d"], unit="u")
    assert odd.png.startswith(collect.PNG_SIGNATURE)  # a "$" is text, not math


def test_effect_per_decade_from_the_table_or_the_age_sd():
    de = pd.DataFrame(
        {"cell_type": ["T", "B"], "gene_id": ["E1", "E2"], "log2FoldChange": [0.4, 0.4]}
    )
    effect, unit = findings.effect_per_decade(de, {"cell_types": {"T": {"age_sd_years": 20.0}}})
    assert effect.iloc[0] == pytest.approx(0.2) and np.isnan(effect.iloc[1])
    assert unit == "log2 fold change per decade"
    effect, unit = findings.effect_per_decade(de, None)
    assert unit == "log2 fold change per SD of age" and effect.iloc[1] == 0.4
    effect, _ = findings.effect_per_decade(de.assign(log2fc_per_decade=[1.0, 2.0]), None)
    assert list(effect) == [1.0, 2.0]


# --------------------------------------------------------------------------- pieces


def test_check_goals():
    results = {
        r.goal.name: r
        for r in goals.check_goals(
            {
                "de.recall": 0.8,
                "de.fdr": 0.2,
                "gsea.planted_found": 3,
                "gsea.planted_total": 3,
                "predict.r2": 0.6,
                "predict.baseline_r2": 0.4,
                "cluster.purity": None,
            }
        )
    }
    assert results["DE recall"].status == "met"
    assert results["DE false discoveries"].status == "not met"
    assert results["GSEA finds the planted sets"].status == "met"
    assert results["Age prediction R\N{SUPERSCRIPT TWO}"].status == "met"
    beats = results["Age prediction beats the baseline"]
    assert beats.status == "not met" and beats.target == pytest.approx(0.7)
    assert results["Cluster purity"].status == "n/a"
    assert results["Doublet recall"].status == "n/a"


def test_check_goals_accepts_nested_metrics():
    (recall, *_) = goals.check_goals({"de": {"recall": 0.9}})
    assert recall.status == "met" and recall.value == 0.9


def test_no_truth_says_so():
    html_text = goals.goals_intro({"de.recall": None, "de.fdr": None})
    assert "No ground truth" in html_text


def test_format_value():
    assert markup.format_value(None) == "null"
    assert markup.format_value(float("nan")) == "null"
    assert markup.format_value(True) == "true"
    assert markup.format_value(12) == "12"
    assert markup.format_value(26297) == "26,297"
    assert markup.format_value(3.0) == "3"
    assert markup.format_value(30000.0) == "30,000"
    assert markup.format_value(1234.56) == "1,234.6"
    assert markup.format_value(0.123456) == "0.1235"
    assert markup.format_value(1.5e-8) == "1.5e-08"
    assert markup.format_value(np.float32(0.5)) == "0.5"


def test_render_metrics_nested_and_escaped():
    out = tables.render_metrics({"a<b": 1, "per": {"x": {"k": 1}, "y": {"k": 2, "j": 3}}})
    assert "a&lt;b" in out and "a<b" not in out
    assert "<h4>per</h4>" in out
    labels = tables.render_metrics({"kept": [CD4, NK], "sizes": [1, 2]})
    assert f"<td>{html.escape(CD4)}; {NK}</td>" in labels and "<td>1, 2</td>" in labels
    assert '<th class="num">k</th><th class="num">j</th>' in out
    sizes = tables.render_metrics({"10": 1, "2": 5, "0": 7})
    assert re.findall(r'<td class="key">(\d+)</td>', sizes) == ["0", "2", "10"]


def test_param_comments():
    text = (
        "# file header\n\ndata:\n  # Where from:\n  #   synthetic  simulated\n"
        "  source: synthetic\n  sub:\n    seed: 0   # random seed\n"
        'qc:\n  regex: "^MT-#x"  # not cut at the quoted hash\n  list:\n    - a\n  n: 1\n'
    )
    assert collect.param_comments(text) == {
        "data.source": "Where from:\nsynthetic  simulated",
        "data.sub.seed": "random seed",
        "qc.regex": "not cut at the quoted hash",
    }


def test_captions():
    assert captions.caption_for("dimred", "umap_donor.png").startswith("UMAP of the Harmony")
    assert "cell type" in captions.caption_for("preprocess", "pca_cell_type.png")
    volcano = captions.caption_for("de", "volcano_CD14-positive_monocyte.png")
    assert volcano.startswith("Volcano plot for CD14-positive monocyte:")
    slugged = captions.caption_for(
        "de",
        "volcano_cd16_positive_cd56_dim_nk_cell.png",
        labels=["CD16-positive, CD56-dim NK cell"],
    )
    assert slugged.startswith("Volcano plot for CD16-positive, CD56-dim NK cell:")
    assert captions.caption_for("de", "volcano.png").startswith("Volcano plot: one dot")
    generic = captions.caption_for("qc", "something_new.png")
    assert generic.startswith("Figure 'something new' of the qc stage")


def test_provenance_inputs_written_as_nested_groups(tmp_path):
    path = tmp_path / "pseudobulk" / "pb.h5ad"
    write_checkpoint(path, "pseudobulk", {"min_cells": 10})
    with h5py.File(path, "a") as fh:
        del fh["uns/provenance/inputs"]
        group = fh.create_group("uns/provenance/inputs/data/qc")
        group.create_dataset("cells.parquet", data="cd" * 32, dtype=h5py.string_dtype())
    record = collect.read_provenance(path)
    assert record.stage == "pseudobulk" and record.recorded
    assert record.inputs == {"data/qc/cells.parquet": "cd" * 32}
    assert record.params == {"min_cells": 10}
    assert (record.n_obs, record.n_vars) == (3, 2)


def test_checkpoint_without_provenance(tmp_path):
    path = tmp_path / "raw" / "dataset.h5ad"
    write_checkpoint(path, "data", {}, record=False)
    record = collect.read_provenance(path)
    assert record.stage == "data" and not record.recorded
    assert collect.read_provenance(tmp_path / "missing.h5ad") is None


def test_build_does_not_touch_inputs(results):
    inputs = collect.read_all(
        params_file=results / "params.yaml",
        de=results / "data" / "de" / "results.parquet",
        gsea=results / "data" / "gsea" / "results.parquet",
        ora=results / "data" / "ora" / "results.parquet",
    )
    before = inputs.de.copy(), inputs.gsea.copy(), inputs.ora.copy()
    build_report(inputs, title="t", top_n=3)
    for df, old in zip((inputs.de, inputs.gsea, inputs.ora), before, strict=True):
        pd.testing.assert_frame_equal(df, old)


# --------------------------------------------------------------------------- bad inputs


def fails_with(results, tmp_path, capsys, message):
    out = tmp_path / "out" / "report.html"
    assert report_stage.main(argv(results, out)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: report: {message}"
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_bad_metrics_json(results, tmp_path, capsys):
    path = results / "metrics" / "qc.json"
    path.write_text("{not json")
    fails_with(results, tmp_path, capsys, f"{path}: not valid JSON (line 1)")


def test_table_missing_column(results, tmp_path, capsys):
    path = results / "data" / "de" / "results.parquet"
    io.write_parquet(pd.read_parquet(path).drop(columns="padj"), path)
    fails_with(results, tmp_path, capsys, f"{path}: column 'padj' missing")


def test_table_not_parquet(results, tmp_path, capsys):
    path = results / "data" / "ora" / "results.parquet"
    path.write_text("cell_type,term\n")
    fails_with(results, tmp_path, capsys, f"{path}: not a readable parquet file")


def test_figure_not_png(results, tmp_path, capsys):
    path = results / "plots" / "filter" / "broken.png"
    path.write_bytes(b"GIF89a")
    fails_with(results, tmp_path, capsys, f"{path}: not a PNG image")


def test_checkpoint_not_h5ad(results, tmp_path, capsys):
    path = results / "data" / "filter" / "selection.h5ad"
    path.write_text("not hdf5")
    fails_with(results, tmp_path, capsys, f"{path}: not an h5ad file (no HDF5 signature)")


def test_bad_report_params(results, tmp_path, capsys):
    path = results / "params.yaml"
    path.write_text(path.read_text().replace("top_n: 10 ", "top_n: 0 "))
    fails_with(results, tmp_path, capsys, f"{path}: report.top_n: expected an integer >= 1, got 0")
