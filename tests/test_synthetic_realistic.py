"""The realistic simulation preset, its null twin, and the frozen default preset."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from immune_aging import synthetic
from immune_aging.synthetic import realistic

SIZES = dict(
    seed=3,
    n_donors=140,
    n_cell_types=7,
    cells_per_donor=120,
    n_genes=1500,
    doublet_rate=0.02,
    dying_rate=0.03,
    rbc_rate=0.01,
)


@pytest.fixture(scope="module")
def design() -> synthetic.Design:
    return synthetic.design_simulation(**SIZES, preset="realistic")


@pytest.fixture(scope="module")
def twin() -> synthetic.Design:
    return synthetic.design_simulation(**SIZES, preset="realistic", age_effect_scale=0.0)


def test_default_preset_is_unchanged():
    """The default preset's data and truth are frozen: the same bytes as before presets."""
    small = dict(SIZES, seed=0, n_donors=6, n_cell_types=3, cells_per_donor=100, n_genes=500)
    small["doublet_rate"] = 0.06
    design = synthetic.design_simulation(**small)
    adata = synthetic.simulate(design)
    digest = hashlib.sha256()
    for part in (adata.X.data, adata.X.indices, adata.X.indptr):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(adata.obs.to_csv().encode())
    digest.update(adata.var.to_csv().encode())
    digest.update(json.dumps(synthetic.truth(design), sort_keys=True).encode())
    assert digest.hexdigest() == (
        "3e01962d79290f67de58503612f5bfa34b3524d9f04af9d6d194a84b87b4f6e5"
    )


def test_effects_are_small_and_heavy_tailed(design):
    effects = np.abs(design.beta[design.beta != 0])
    assert np.median(effects) < 0.06  # the bulk well under 0.1 log2 per decade
    assert np.mean(effects < 0.1) > 0.8
    assert 0.15 < effects.max() <= 0.5  # a few large ones
    generic = design.category == "generic"
    share = np.any(design.beta[:, generic] != 0, axis=0).mean()
    assert 0.05 < share < 0.25  # about an eighth of the genes (Peters et al. 2015: 12.6 %)


def test_effects_partly_shared_some_specific_none_in_the_null_type(design):
    keys = [ct.key for ct in design.cell_types]
    n_types = (design.beta != 0).sum(axis=0)
    assert (n_types >= 3).sum() > 20 and (n_types == 1).sum() > 20
    nk = keys.index("nk")
    assert design.null_types == (nk,) and not design.beta[nk].any()
    other = keys.index("cd56dim_nk")  # no broad age program, a few specific effects
    assert 0 < np.count_nonzero(design.beta[other]) < np.count_nonzero(design.beta[0])
    shared = np.flatnonzero(n_types >= 3)
    signs = np.sign(design.beta[:, shared])
    assert np.all(np.abs(signs.sum(axis=0)) == (signs != 0).sum(axis=0))  # one sign per gene


def test_pools_of_about_fourteen_with_batch_effects(design):
    sizes = design.donors["pool"].value_counts()
    assert sizes.between(13, 15).all() and len(sizes) == 10
    assert design.pool_effect.shape == (10, design.n_genes)
    assert 0.05 < np.median(design.pool_effect.std(axis=0)) < 0.2


def test_naive_t_share_falls_with_age(design):
    obs = design.obs
    share = pd.crosstab(obs["donor_id"], obs["cell_type"], normalize="index")
    naive = share["naive thymus-derived CD4-positive, alpha-beta T cell"]
    ages = design.donors.set_index("donor_id").loc[naive.index, "age"]
    assert spearmanr(naive, ages)[0] < -0.3
    assert (design.donors["age"] >= 80).mean() > 0.05  # a censored group exists


def test_doublets_partly_homotypic_and_intermediate_states(design):
    cells = design.comp_cell
    first = np.r_[True, cells[1:] != cells[:-1]]
    second = ~first
    n_types = len(design.cell_types)
    label = np.array([*range(n_types), *(b[0] for b in design.blends)])  # body -> label
    partner = design.comp_type[second]
    own = design.comp_type[np.flatnonzero(second) - 1]
    homotypic = np.mean(label[partner] == label[own])
    assert 0.05 < homotypic < 0.5
    assert 0.01 < np.mean(design.cell_state == 3) < 0.03
    blended = design.comp_type >= n_types
    assert blended.sum() > 100
    pi = synthetic.donor_profiles(design, 0)
    assert pi.shape[0] == n_types + len(design.blends)
    a, b, w = design.blends[0]
    np.testing.assert_allclose(pi[n_types], w * pi[a] + (1 - w) * pi[b])


def test_gene_sets_mix_planted_and_unplanted_and_decoys_overlap(design):
    truth = synthetic.truth(design)
    ids = dict(zip(design.var["feature_name"].astype(str), design.var.index, strict=True))
    planted = {g for genes in truth["log2fc_per_decade_by_cell_type"].values() for g in genes}
    mixed = [n for n in truth["gene_sets"] if n.startswith("SIM_AGE_")]
    assert len(mixed) == 4
    for name in mixed:
        genes = [ids[s] for s in truth["gene_sets"][name]["genes"]]
        share = np.mean([g in planted for g in genes])
        assert 0.3 <= share <= 0.75, name
    kinds = truth["decoy_kinds"]
    assert {"random", "program"} <= set(kinds.values())
    library = synthetic.gene_set_library(design)
    random_decoys = [ids[s] for n, k in kinds.items() if k == "random" for s in library[n]]
    assert any(g in planted for g in random_decoys)
    # program decoys: co-varying genes without a shared age drift; some of their genes
    # have an age effect of their own, about as often as any expressed gene
    for name, kind in kinds.items():
        if kind == "program":
            columns = [design.var.index.get_loc(ids[s]) for s in library[name]]
            with_effect = np.any(design.beta[:, columns] != 0, axis=0)
            assert with_effect.mean() < 0.4, name
            assert np.abs(design.beta[:, columns].mean(axis=1)).max() < 0.02, name


def test_truth_lists_effects_per_cell_type(design):
    truth = synthetic.truth(design)
    assert truth["preset"] == "realistic" and truth["null_cell_types"] == ["natural killer cell"]
    by_type = truth["log2fc_per_decade_by_cell_type"]
    assert set(truth["aged_cell_types"]) == {ct for ct, genes in by_type.items() if genes}
    for ct, genes in by_type.items():
        up = set(truth["age_genes"].get(ct, {}).get("up", []))
        assert up == {g for g, v in genes.items() if v > 0}
    assert set(truth["pools"]) == set(truth["donors"])
    trend = truth["composition_trend"]
    assert trend["naive thymus-derived CD4-positive, alpha-beta T cell"] < 0


def test_null_twin_has_the_same_data_but_no_age_effect(design, twin):
    assert not twin.beta.any() and twin.gene_sets == {}
    # expression does not change with age; the composition still does
    np.testing.assert_array_equal(twin.composition_trend, design.composition_trend)
    pd.testing.assert_frame_equal(twin.obs, design.obs)
    pd.testing.assert_frame_equal(twin.donors, design.donors)
    np.testing.assert_array_equal(twin.profile, design.profile)
    np.testing.assert_array_equal(twin.pool_effect, design.pool_effect)
    assert set(design.gene_sets) <= set(twin.decoy_sets)
    truth = synthetic.truth(twin)
    assert truth["aged_cell_types"] == [] and truth["gene_sets"] == {}
    assert len(truth["null_cell_types"]) == len(twin.cell_types)
    assert {truth["decoy_kinds"][n] for n in design.gene_sets} == {"unplanted"}


def test_realistic_counts_follow_age_in_aged_types(design):
    """The summed expression of a shared up set rises with age in an aged type."""
    small = synthetic.design_simulation(
        **{**SIZES, "n_donors": 60, "cells_per_donor": 80, "n_genes": 800}, preset="realistic"
    )
    adata = synthetic.simulate(small)
    shared = np.flatnonzero((small.beta > 0).sum(axis=0) >= 3)
    label = small.cell_types[0].label
    mask = (adata.obs["cell_type"] == label).to_numpy() & (small.cell_state == 0)
    donors = adata.obs["donor_id"].astype(str).to_numpy()[mask]
    x = adata.X[np.flatnonzero(mask)]
    ages = small.donors.set_index("donor_id")["age"]
    values, age = [], []
    for donor in sorted(set(donors)):
        sub = x[donors == donor]
        values.append(np.log((sub[:, shared].sum() + 1) / sub.sum()))
        age.append(ages[donor])
    assert spearmanr(age, values)[0] > 0.2


def test_preset_and_scale_are_checked():
    with pytest.raises(ValueError, match="preset"):
        synthetic.design_simulation(**SIZES, preset="bogus")
    with pytest.raises(ValueError, match="age_effect_scale"):
        synthetic.design_simulation(**SIZES, age_effect_scale=-1.0)


def test_sample_ages_are_older_skewed():
    ages = realistic.sample_ages(np.random.default_rng(0), 5000)
    assert ages.min() >= 19 and ages.max() <= 97
    assert 55 < np.median(ages) < 70 and 0.06 < np.mean(ages >= 80) < 0.2
