"""Over-representation analysis (local hypergeometric and Enrichr), and the ora stage."""

from __future__ import annotations

import json
from math import comb
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from immune_aging import io
from immune_aging.analysis import ora
from immune_aging.errors import InputError
from immune_aging.stages import ora as ora_stage

ORA_PARAMS = (
    "ora: {padj: 0.05, min_size: 3, max_size: 100, backend: local,"
    " enrichr_libraries: [MSigDB_Hallmark_2020]}\n"
)


def de_table(cell_type="T cell", *, n=40, n_up=6, n_down=4):
    """GENE0.. up (significant), then down, the rest not significant."""
    lfc = np.zeros(n)
    padj = np.full(n, 0.8)
    lfc[:n_up], padj[:n_up] = 1.0, 0.001
    lfc[n_up : n_up + n_down], padj[n_up : n_up + n_down] = -1.0, 0.001
    return pd.DataFrame(
        {
            "cell_type": cell_type,
            "gene": [f"GENE{i}" for i in range(n)],
            "log2FoldChange": lfc,
            "padj": padj,
        }
    )


SETS = {
    "UP_SET": [f"GENE{i}" for i in range(6)] + ["GENE20", "NOT_TESTED"],
    "DOWN_SET": ["GENE6", "GENE7", "GENE8", "GENE9", "GENE30"],
    "OTHER": [f"GENE{i}" for i in range(21, 30)],
    "TINY": ["GENE0", "GENE1"],
}


def test_hypergeometric_matches_hand_computation():
    # 10 background genes, a set of 4, 3 significant genes, 2 of them in the set
    hand = (comb(4, 2) * comb(6, 1) + comb(4, 3) * comb(6, 0)) / comb(10, 3)
    assert hand == pytest.approx(1 / 3)
    assert ora.hypergeometric_sf(2, 10, 4, 3) == pytest.approx(hand)
    assert ora.hypergeometric_sf(0, 10, 4, 3) == pytest.approx(1.0)


def test_bh_adjust_matches_hand_computation():
    adjusted = ora.bh_adjust([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(adjusted, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert ora.bh_adjust([]).size == 0


def test_local_ora_restricts_sets_to_background():
    background = [f"GENE{i}" for i in range(40)]
    res = ora.ora_local([f"GENE{i}" for i in range(6)], background, SETS, min_size=3, max_size=100)
    row = res.set_index("term").loc["UP_SET"]
    # universe = background genes in any set: UP_SET 7 (with GENE20, without NOT_TESTED),
    # DOWN_SET 5, OTHER 9, TINY inside UP_SET: 21 genes; P(X >= 6) = P(X = 6)
    assert row["overlap"] == "6/7"
    assert row["pval"] == pytest.approx(comb(7, 6) * comb(14, 0) / comb(21, 6))
    assert row["genes"] == "GENE0;GENE1;GENE2;GENE3;GENE4;GENE5"
    assert "TINY" not in res["term"].to_numpy()  # 2 genes < min_size
    assert "OTHER" not in res["term"].to_numpy()  # no overlap: tested but not reported


def test_ora_per_cell_type_and_direction():
    results, summary = ora.ora(de_table(), SETS, padj=0.05, min_size=3, max_size=100)
    assert list(results.columns) == ora.RESULT_COLUMNS
    up = results[results["direction"] == "up"].set_index("term")
    down = results[results["direction"] == "down"].set_index("term")
    assert up.loc["UP_SET", "padj"] < 0.05 and down.loc["DOWN_SET", "padj"] < 0.05
    assert "DOWN_SET" not in up.index
    assert summary["T cell"] == {
        "n_background": 21,
        "n_up_genes": 6,
        "n_up_sets": 1,
        "n_down_genes": 4,
        "n_down_sets": 1,
    }


def test_cell_type_without_significant_genes_gives_no_rows():
    de_results = pd.concat([de_table(), de_table("quiet", n_up=0, n_down=0)])
    results, summary = ora.ora(de_results, SETS, padj=0.05, min_size=3, max_size=100)
    assert "quiet" not in set(results["cell_type"])
    assert summary["quiet"]["n_up_genes"] == 0 and summary["quiet"]["n_up_sets"] == 0


def test_nothing_significant_anywhere_gives_empty_table():
    results, _ = ora.ora(de_table(n_up=0, n_down=0), SETS, padj=0.05, min_size=3, max_size=100)
    assert results.empty and list(results.columns) == ora.RESULT_COLUMNS
    assert ora.plot_dots(results, padj=0.05) is not None


def test_enrichr_offline_is_one_clear_error():
    with pytest.raises(InputError) as err:
        ora.check_enrichr_reachable(url="http://127.0.0.1:9/", timeout=2)
    msg = str(err.value)
    assert msg.startswith(
        "ora.backend: 'enrichr' needs the Enrichr web service at http://127.0.0.1:9/, which"
        " cannot be reached ("
    )
    assert msg.endswith("); set ora.backend: local to test offline")
    assert "\n" not in msg


def test_enrichr_backend_formats_the_service_answer():
    calls = []

    def fake_enrichr(*, gene_list, gene_sets, outdir, no_plot):
        calls.append((tuple(gene_list), tuple(gene_sets), outdir))
        table = pd.DataFrame(
            {
                "Gene_set": ["LIB"],
                "Term": ["SET"],
                "Overlap": ["2/50"],
                "P-value": [0.001],
                "Adjusted P-value": [0.01],
                "Genes": [";".join(gene_list[:2])],
            }
        )
        return SimpleNamespace(results=table)

    results, summary = ora.ora_enrichr(de_table(), ["LIB"], padj=0.05, enrichr=fake_enrichr)
    assert list(results.columns) == ora.RESULT_COLUMNS
    assert list(results["direction"]) == ["up", "down"]
    assert calls[0][1:] == (("LIB",), None)
    assert summary["T cell"]["n_up_sets"] == 1


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "params.yaml").write_text(ORA_PARAMS)
    de_table().to_parquet(tmp_path / "de.parquet")
    io.write_gmt(SETS, tmp_path / "sets.gmt")
    return tmp_path


def stage_args(root):
    return [
        "--params", str(root / "params.yaml"),
        "--de", str(root / "de.parquet"),
        "--genesets", str(root / "sets.gmt"),
        "--out", str(root / "ora" / "results.parquet"),
        "--metrics", str(root / "metrics" / "ora.json"),
        "--plots", str(root / "plots" / "ora"),
    ]  # fmt: skip


def test_stage_writes_results_metrics_and_plot(stage_env):
    assert ora_stage.main(stage_args(stage_env)) == 0
    results = pd.read_parquet(stage_env / "ora" / "results.parquet")
    assert list(results.columns) == ora.RESULT_COLUMNS
    metrics = json.loads((stage_env / "metrics" / "ora.json").read_text())
    assert metrics["n_up_sets"] == 1 and metrics["n_down_sets"] == 1
    assert metrics["backend"] == "local"
    assert [p.name for p in (stage_env / "plots" / "ora").iterdir()] == ["ora_dotplot.png"]


def test_stage_enrichr_offline_writes_nothing(stage_env, monkeypatch, capsys):
    monkeypatch.setattr(ora, "ENRICHR_URL", "http://127.0.0.1:9/")
    (stage_env / "params.yaml").write_text(ORA_PARAMS.replace("local", "enrichr"))
    assert ora_stage.main(stage_args(stage_env)) == 2
    err = capsys.readouterr().err
    assert "error: ora: ora.backend: 'enrichr' needs the Enrichr web service" in err
    assert not (stage_env / "ora").exists() and not (stage_env / "metrics").exists()


def test_background_is_the_genes_with_a_de_test():
    # GENE20..GENE29 got no padj (independent filtering): they could never have been
    # significant, so they leave the background, and OTHER (GENE21..29) leaves the test
    table = de_table()
    table.loc[20:29, "padj"] = np.nan
    results, summary = ora.ora(table, SETS, padj=0.05, min_size=3, max_size=100)
    # universe: UP_SET 6 (GENE20 untested), DOWN_SET 4 (GENE30 is tested: 5), = GENE0..9, 30
    assert summary["T cell"]["n_background"] == 11
    up = results[results["direction"] == "up"].set_index("term")
    assert up.loc["UP_SET", "overlap"] == "6/6"
    assert up.loc["UP_SET", "pval"] == pytest.approx(1 / comb(11, 6))
    _, full_summary = ora.ora(de_table(), SETS, padj=0.05, min_size=3, max_size=100)
    assert full_summary["T cell"]["n_background"] == 21  # every gene tested: unchanged
