"""Scores against the simulation truth, and the evaluate stage."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from immune_aging import io
from immune_aging.analysis import evaluate
from immune_aging.errors import InputError
from immune_aging.stages import evaluate as evaluate_stage

KEYS = [
    "de.recall",
    "de.fdr",
    "gsea.planted_found",
    "gsea.planted_total",
    "ora.planted_found",
    "predict.r2",
    "predict.baseline_r2",
    "cluster.ari",
    "cluster.purity",
    "qc.doublet_recall",
    "qc.doublet_precision",
    "de.discoveries",
    "de.recall_by_effect",
    "de.effect_scale",
    "de.null_cell_types",
    "de.null_cell_types_with_discoveries",
    "de.null_discoveries",
    "gsea.decoys_called",
    "gsea.decoys_total",
    "gsea.decoy_rate",
    "gsea.decoy_rate_by_kind",
    "ora.decoys_called",
    "ora.decoys_total",
    "ora.decoy_rate",
    "ora.decoy_rate_by_kind",
    "predict.r2_null",
    "predict.baseline_r2_null",
]

TRUTH = {
    "cell_types": ["A", "B", "C"],
    "aged_cell_types": ["A", "C"],
    "log2fc_per_decade": {"g1": 0.3, "g2": -0.08, "g4": 0.02},
    "age_genes": {"A": {"up": ["g1", "g4"], "down": ["g2"]}, "C": {"up": ["g1"], "down": []}},
    "gene_sets": {
        "UP": {"direction": "up", "cell_types": ["A", "C"], "genes": ["G1", "G4"]},
        "DOWN": {"direction": "down", "cell_types": ["A"], "genes": ["G2"]},
    },
    "decoy_sets": ["DECOY"],
    "doublets": ["c1", "c2", "c9"],
}

# A and B were tested (C was not, e.g. filtered out upstream)
DE = pd.DataFrame(
    {
        "cell_type": ["A", "A", "A", "A", "B", "B"],
        "gene_id": ["g1", "g2", "g3", "g4", "g1", "g2"],
        "log2FoldChange": [0.5, 0.4, 0.3, 0.2, 0.5, -0.1],
        "padj": [0.001, 0.01, 0.02, 0.5, 0.01, 0.9],
        "log2fc_per_decade": [0.3, 0.2, 0.1, 0.05, 0.2, -0.04],
    }
)
GSEA = pd.DataFrame(
    {
        "cell_type": ["A", "A", "B"],
        "term": ["lib:UP", "DOWN", "UP"],
        "nes": [2.0, 1.5, 2.0],
        "fdr": [0.001, 0.001, 0.001],
    }
)
ORA = pd.DataFrame(
    {
        "cell_type": ["A", "A"],
        "direction": ["up", "down"],
        "term": ["UP", "UP"],
        "padj": [0.001, 0.001],
    }
)
PREDICT = {
    "A": {"r2_mean": 0.6, "baseline_r2_mean": 0.0},
    "B": {"r2_mean": 0.1, "baseline_r2_mean": -0.1},
    "C": {"r2_mean": None, "baseline_r2_mean": None},
}
CLUSTERS = pd.DataFrame(
    {
        "cell_id": ["c1", "c2", "c3", "c4", "c5", "c6"],
        "leiden": ["0", "0", "0", "1", "1", "1"],
        "cell_type": ["T", "T", "B", "B", "B", "B"],
    }
)
CELLS = pd.DataFrame(
    {"predicted_doublet": [True, False, True, False, False, False], "keep": True},
    index=pd.Index(["c1", "c2", "c3", "c4", "c5", "c6"], name="cell_id"),
)


def test_de_recall_and_fdr():
    scores = evaluate.de_scores(DE, TRUTH, alpha=0.05)
    # planted in tested aged types: (A,g1,+) found, (A,g2,-) found with the wrong sign,
    # (A,g4,+) not significant -> recall 1/3
    assert scores["de.recall"] == pytest.approx(1 / 3)
    # significant: (A,g1) true, (A,g2) wrong sign, (A,g3) not planted, (B,g1) not aged
    assert scores["de.fdr"] == pytest.approx(3 / 4)


def test_de_fdr_is_null_without_significant_genes():
    none = DE.assign(padj=0.9)
    assert evaluate.de_scores(none, TRUTH, alpha=0.05) == {"de.recall": 0.0, "de.fdr": None}


def test_gene_set_recovery_counts_sign_and_prefixed_names():
    pairs = evaluate.planted_pairs(TRUTH, {"A", "B"})
    assert pairs == [("DOWN", "A", "down"), ("UP", "A", "up")]
    gsea = evaluate.gsea_scores(GSEA, pairs, alpha=0.05)
    # UP in A found via "lib:UP"; DOWN in A has a positive NES: not found
    assert gsea == {"gsea.planted_found": 1, "gsea.planted_total": 2}
    assert evaluate.ora_scores(ORA, pairs, alpha=0.05) == {"ora.planted_found": 1}


def test_predict_mean_over_aged_cell_types_with_scores():
    # aged: A (C has no scores); without an age effect: B
    assert evaluate.predict_scores(PREDICT, TRUTH) == {
        "predict.r2": 0.6,
        "predict.baseline_r2": 0.0,
        "predict.r2_null": 0.1,
        "predict.baseline_r2_null": -0.1,
    }
    assert evaluate.predict_scores({}, TRUTH) == dict.fromkeys(
        ["predict.r2", "predict.baseline_r2", "predict.r2_null", "predict.baseline_r2_null"]
    )


def test_recall_by_effect_bins_and_effect_scale():
    scores = evaluate.power_scores(DE, TRUTH, alpha=0.05)
    # planted in the tested types: (A,g1) 0.3 found; (A,g2) -0.08 wrong sign; (A,g4) 0.02 not
    assert scores["de.recall_by_effect"] == {
        "<0.05": {"planted": 1, "found": 0, "recall": 0.0},
        "0.05-0.1": {"planted": 1, "found": 0, "recall": 0.0},
        "0.1-0.2": {"planted": 0, "found": 0, "recall": None},
        ">=0.2": {"planted": 1, "found": 1, "recall": 1.0},
    }
    # estimates 0.3, 0.2, 0.05 against 0.3, -0.08, 0.02: sum(e*v) / sum(v*v)
    expected = (0.3 * 0.3 - 0.2 * 0.08 + 0.05 * 0.02) / (0.09 + 0.0064 + 0.0004)
    assert scores["de.effect_scale"] == pytest.approx(expected)
    # B has no planted effect and one significant gene
    assert scores["de.null_cell_types"] == 1
    assert scores["de.null_cell_types_with_discoveries"] == 1
    assert scores["de.null_discoveries"] == 1 and scores["de.discoveries"] == 4


def test_effects_by_cell_type_take_precedence():
    truth = {**TRUTH, "log2fc_per_decade_by_cell_type": {"A": {"g3": 0.12}, "B": {}}}
    assert evaluate.planted_effects(truth) == {("A", "g3"): 0.12}
    table = evaluate.recall_by_effect(DE, truth, alpha=0.05)
    assert table.set_index("bin").loc["0.1-0.2", "found"] == 1


def test_decoys_called_by_gsea_and_ora():
    truth = {**TRUTH, "decoy_sets": ["DECOY", "PROG"], "decoy_kinds": {"PROG": "program"}}
    gsea = pd.DataFrame(
        {"cell_type": ["A", "B", "A"], "term": ["lib:DECOY", "PROG", "UP"], "fdr": [0.01, 0.2, 0]}
    )
    ora = pd.DataFrame({"cell_type": ["B"], "term": ["PROG"], "padj": [0.001]})
    scores = evaluate.decoy_scores(gsea, ora, truth, {"A", "B"}, alpha=0.05)
    assert scores["gsea.decoys_called"] == 1 and scores["gsea.decoys_total"] == 4
    assert scores["gsea.decoy_rate"] == 0.25
    assert scores["gsea.decoy_rate_by_kind"] == {"program": 0.0, "random": 0.5}
    assert scores["ora.decoy_rate_by_kind"] == {"program": 0.5, "random": 0.0}


def test_cluster_scores_on_literal_labels():
    scores = evaluate.cluster_scores(CLUSTERS)
    assert scores["cluster.purity"] == pytest.approx(5 / 6)
    perfect = evaluate.cluster_scores(CLUSTERS.assign(cell_type=["T", "T", "T", "B", "B", "B"]))
    assert perfect == {"cluster.ari": 1.0, "cluster.purity": 1.0}


def test_doublet_recall_and_precision_among_filtered_cells():
    # c9 (a planted doublet) was filtered out upstream: truth among filtered = c1, c2
    assert evaluate.doublet_scores(CELLS, TRUTH) == {
        "qc.doublet_recall": 0.5,
        "qc.doublet_precision": 0.5,
    }


def test_keys_exactly_and_all_null_without_truth():
    scores = evaluate.evaluate(
        None,
        de_results=DE,
        gsea_results=GSEA,
        ora_results=ORA,
        predict_metrics=PREDICT,
        clusters=CLUSTERS,
        cells=CELLS,
        alpha=0.05,
    )
    assert list(scores) == KEYS and all(v is None for v in scores.values())
    full = evaluate.evaluate(
        TRUTH,
        de_results=DE,
        gsea_results=GSEA,
        ora_results=ORA,
        predict_metrics=PREDICT,
        clusters=CLUSTERS,
        cells=CELLS,
        alpha=0.05,
    )
    assert list(full) == KEYS and full["gsea.planted_total"] == 2


def test_truth_missing_key_is_named():
    with pytest.raises(InputError) as err:
        evaluate.validate_truth({"aged_cell_types": []}, source="data/raw/truth.json")
    assert str(err.value) == "data/raw/truth.json: key 'age_genes' missing"


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "params.yaml").write_text("evaluate: {alpha: 0.05}\n")
    (tmp_path / "raw").mkdir()
    DE.to_parquet(tmp_path / "de.parquet")
    GSEA.to_parquet(tmp_path / "gsea.parquet")
    ORA.to_parquet(tmp_path / "ora.parquet")
    io.write_json(PREDICT, tmp_path / "predict.json")
    CLUSTERS.to_parquet(tmp_path / "clusters.parquet", index=False)
    io.write_parquet(CELLS, tmp_path / "cells.parquet")
    return tmp_path


def stage_args(root):
    args = ["--params", str(root / "params.yaml"), "--raw", str(root / "raw")]
    for name in ("de", "gsea", "ora", "clusters", "cells"):
        args += [f"--{name}", str(root / f"{name}.parquet")]
    return [
        *args,
        "--predict", str(root / "predict.json"),
        "--metrics", str(root / "metrics" / "evaluate.json"),
        "--plots", str(root / "plots"),
    ]  # fmt: skip


def test_stage_without_truth_writes_nulls(stage_env):
    assert evaluate_stage.main(stage_args(stage_env)) == 0
    text = (stage_env / "metrics" / "evaluate.json").read_text()
    assert json.loads(text) == dict.fromkeys(KEYS)
    assert '"de.recall": null' in text
    table = pd.read_csv(stage_env / "plots" / "recall_by_effect.csv")
    assert list(table["planted"]) == [0, 0, 0, 0]


def test_stage_with_truth_writes_scores(stage_env):
    io.write_json(TRUTH, stage_env / "raw" / "truth.json")
    assert evaluate_stage.main(stage_args(stage_env)) == 0
    scores = json.loads((stage_env / "metrics" / "evaluate.json").read_text())
    assert sorted(scores) == sorted(KEYS)
    assert scores["de.recall"] == pytest.approx(1 / 3) and scores["qc.doublet_recall"] == 0.5
    table = pd.read_csv(stage_env / "plots" / "recall_by_effect.csv")
    assert list(table["planted"]) == [1, 1, 0, 1] and list(table["found"]) == [0, 0, 0, 1]


def test_stage_bad_truth_writes_nothing(stage_env, capsys):
    (stage_env / "raw" / "truth.json").write_text("{not json")
    assert evaluate_stage.main(stage_args(stage_env)) == 2
    assert f"{stage_env / 'raw' / 'truth.json'}: not valid JSON (line 1)" in (
        capsys.readouterr().err
    )
    assert not (stage_env / "metrics").exists()
