"""Preranked GSEA on the DE statistic, and the gsea stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from immune_aging import io
from immune_aging.analysis import gsea, plots
from immune_aging.stages import gsea as gsea_stage

GSEA_PARAMS = "gsea: {min_size: 5, max_size: 100, permutations: 100, seed: 42, fdr: 0.05}\n"


def de_table(cell_type="T cell", n=60, *, signal=True):
    """DE rows: GENE0..GENE9 strongly up, GENE10..19 strongly down (if signal), rest noise."""
    stat = np.random.default_rng(0).permutation(np.linspace(-1.5, 1.5, n))
    if signal:
        stat[:10] = np.linspace(8, 6, 10)
        stat[10:20] = np.linspace(-6, -8, 10)
    padj = np.where(np.abs(stat) > 5, 1e-6, 0.9)
    return pd.DataFrame(
        {
            "cell_type": cell_type,
            "gene_id": [f"ENSG{i:011d}" for i in range(n)],
            "gene": [f"GENE{i}" for i in range(n)],
            "log2FoldChange": stat / 10,
            "stat": stat,
            "padj": padj,
        }
    )


SETS = {
    "UP_SET": [f"GENE{i}" for i in range(10)],
    "DOWN_SET": [f"GENE{i}" for i in range(10, 20)],
    "NULL_SET": [f"GENE{i}" for i in range(20, 60, 4)],
    "TOO_SMALL": ["GENE1", "GENE2"],
}


def test_ranking_drops_missing_and_keeps_largest_duplicate():
    df = pd.DataFrame(
        {
            "gene": ["A", "B", "B", "C", "D", None],
            "stat": [1.0, -3.0, 2.0, np.nan, np.inf, 5.0],
        }
    )
    rnk = gsea.ranking(df)
    assert list(rnk.index) == ["A", "B"]
    assert list(rnk) == [1.0, -3.0]


def test_ranking_breaks_ties_by_symbol():
    df = pd.DataFrame({"gene": ["B", "A", "C"], "stat": [1.0, 1.0, 2.0]})
    assert list(gsea.ranking(df).index) == ["C", "A", "B"]


def test_testable_sets_restrict_to_ranked_genes():
    sets = gsea.testable_sets(SETS, [f"GENE{i}" for i in range(15)], min_size=3, max_size=8)
    assert sets == {"DOWN_SET": [f"GENE{i}" for i in range(10, 15)]}


def test_planted_sets_found_with_the_right_sign():
    results, summary = gsea.gsea(
        de_table(), SETS, min_size=5, max_size=100, permutations=100, seed=42, fdr=0.05
    )
    assert list(results.columns) == gsea.RESULT_COLUMNS
    by = results.set_index("term")
    assert set(by.index) == {"UP_SET", "DOWN_SET", "NULL_SET"}
    assert by.loc["UP_SET", "nes"] > 0 and by.loc["UP_SET", "fdr"] < 0.05
    assert by.loc["DOWN_SET", "nes"] < 0 and by.loc["DOWN_SET", "fdr"] < 0.05
    assert by.loc["NULL_SET", "fdr"] > 0.05
    assert "GENE0" in by.loc["UP_SET", "lead_genes"].split(";")
    assert summary["T cell"] == {
        "n_genes": 60,
        "n_sets_tested": 3,
        "n_up": 1,
        "n_down": 1,
        "skipped": None,
    }


def test_same_seed_same_results():
    a, _ = gsea.gsea(
        de_table(), SETS, min_size=5, max_size=100, permutations=100, seed=1, fdr=0.05
    )
    b, _ = gsea.gsea(
        de_table(), SETS, min_size=5, max_size=100, permutations=100, seed=1, fdr=0.05
    )
    pd.testing.assert_frame_equal(a, b)


def test_cell_type_without_signal_or_with_too_few_genes_does_not_crash():
    de_results = pd.concat(
        [de_table("quiet", signal=False), de_table("tiny", n=4, signal=False)], ignore_index=True
    )
    results, summary = gsea.gsea(
        de_results, SETS, min_size=5, max_size=100, permutations=100, seed=42, fdr=0.05
    )
    assert summary["quiet"]["n_up"] == 0 and summary["quiet"]["n_down"] == 0
    assert summary["tiny"]["skipped"] == "no gene set with 5 to 100 genes among 4 ranked genes"
    assert set(results["cell_type"]) == {"quiet"}


def test_no_testable_set_anywhere_gives_empty_table():
    results, _ = gsea.gsea(
        de_table(), {"X": ["NOPE1", "NOPE2"]}, min_size=1, max_size=10, permutations=100,
        seed=0, fdr=0.05,
    )  # fmt: skip
    assert results.empty and list(results.columns) == gsea.RESULT_COLUMNS
    fig = plots.plot_dots(results, fdr=0.05)
    assert fig is not None


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("IMMUNE_AGING_THREADS", "1")
    (tmp_path / "params.yaml").write_text(GSEA_PARAMS)
    de_table().to_parquet(tmp_path / "de.parquet")
    io.write_gmt(SETS, tmp_path / "sets.gmt")
    return tmp_path


def stage_args(root):
    return [
        "--params", str(root / "params.yaml"),
        "--de", str(root / "de.parquet"),
        "--genesets", str(root / "sets.gmt"),
        "--out", str(root / "gsea" / "results.parquet"),
        "--metrics", str(root / "metrics" / "gsea.json"),
        "--plots", str(root / "plots" / "gsea"),
    ]  # fmt: skip


def test_stage_writes_results_metrics_and_plot(stage_env):
    assert gsea_stage.main(stage_args(stage_env)) == 0
    results = pd.read_parquet(stage_env / "gsea" / "results.parquet")
    assert list(results.columns) == gsea.RESULT_COLUMNS and len(results) == 3
    metrics = json.loads((stage_env / "metrics" / "gsea.json").read_text())
    assert metrics["n_up"] == 1 and metrics["n_down"] == 1 and metrics["n_sets_in_library"] == 4
    assert [p.name for p in (stage_env / "plots" / "gsea").iterdir()] == ["gsea_dotplot.png"]


def test_stage_missing_column_writes_nothing(stage_env, capsys):
    de_table().drop(columns="stat").to_parquet(stage_env / "de.parquet")
    assert gsea_stage.main(stage_args(stage_env)) == 2
    assert f"error: gsea: {stage_env / 'de.parquet'}: column 'stat' missing" in (
        capsys.readouterr().err
    )
    assert not (stage_env / "gsea").exists()


def test_stage_refuses_min_size_above_max_size(stage_env, capsys):
    (stage_env / "params.yaml").write_text(GSEA_PARAMS.replace("max_size: 100", "max_size: 3"))
    assert gsea_stage.main(stage_args(stage_env)) == 2
    assert (
        f"error: gsea: {stage_env / 'params.yaml'}: gsea.min_size: 5 is larger than "
        "max_size (3)" in capsys.readouterr().err
    )
