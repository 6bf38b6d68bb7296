"""End to end on the tiny preset: the planted age effects come out with their sign, a null does not.

These reuse the session's reproduced tiny pipeline (tests/conftest.py): they fail
if the sign of age is flipped anywhere between the simulator and the DE results,
if the planted effects vanish, or if DE calls genes when age carries no signal.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from immune_aging import io
from immune_aging.analysis import de, evaluate
from immune_aging.params import load_section


@pytest.fixture(scope="module")
def outputs(reproduced):
    truth = json.loads((reproduced / "data/raw/truth.json").read_text())
    results = pd.read_parquet(reproduced / "data/de/results.parquet")
    scores = json.loads((reproduced / "metrics/evaluate.json").read_text())
    return truth, results, scores


def test_planted_effects_are_found_with_their_sign(outputs):
    truth, results, scores = outputs
    assert scores["de.recall"] >= 0.5
    effects = evaluate.planted_effects(truth)
    table = results.set_index(["cell_type", "gene_id"])
    planted = [k for k in effects if k in table.index]
    assert len(planted) >= 20
    estimated = table.loc[planted, "log2fc_per_decade"].to_numpy()
    true = np.array([effects[k] for k in planted])
    # signs agree for nearly every planted pair, and the sizes are recovered
    assert np.mean(np.sign(estimated) == np.sign(true)) > 0.9
    assert scores["de.effect_scale"] == pytest.approx(1.0, abs=0.35)
    significant = table["padj"] < 0.05
    assert significant.sum() >= 0.5 * len(planted)


def test_permuted_ages_give_no_discoveries(reproduced, outputs):
    """The same pseudobulk with donor ages permuted: DE finds (next to) nothing."""
    _, results, _ = outputs
    pb = io.read_h5ad(reproduced / "data/pseudobulk/pseudobulk.h5ad")
    donors = pb.obs[["donor_id", "age"]].drop_duplicates("donor_id").set_index("donor_id")
    rng = np.random.default_rng(7)
    permuted = pd.Series(rng.permutation(donors["age"].to_numpy()), index=donors.index)
    pb.obs["age"] = permuted.loc[pb.obs["donor_id"].astype(str)].to_numpy()
    params = load_section("de", reproduced / "params.yaml")
    null, _ = de.differential_expression(
        pb,
        alpha=params.alpha,
        min_total_count=params.min_total_count,
        min_donors=params.min_donors,
        covariates=params.covariates,
        min_expression_ratio=params.min_expression_ratio,
        min_mu=params.min_mu,
        t_test=params.wald_distribution == "t",
    )
    assert (results["padj"] < 0.05).sum() >= 20
    assert (null["padj"] < 0.05).sum() <= 2
    p = null["pvalue"].dropna().to_numpy()
    assert np.mean(p < 0.05) < 0.1
