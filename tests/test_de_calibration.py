"""DE at realistic effect sizes: null calibration, power, the pool covariate, borrowed genes.

Pseudobulk counts are drawn here from a known model (negative binomial around
donor-level log-normal noise, per-pool batch effects, age effects of a few
hundredths of log2 per decade), small enough that each PyDESeq2 fit takes seconds.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from immune_aging.analysis import de, deseq

PARAMS = {"alpha": 0.05, "min_total_count": 10, "min_donors": 6}


def pseudobulk(
    n_donors: int,
    *,
    n_genes: int = 150,
    effect: float = 0.0,
    n_planted: int = 30,
    pool_sd: float = 0.0,
    seed: int = 0,
    types: tuple[str, ...] = ("T cell",),
    borrowed_trend: float = 0.0,
    mean_count: float = 80.0,
    library_trend: float = 0.0,
    n_high: int = 0,
) -> tuple[ad.AnnData, np.ndarray]:
    """Samples of ``types`` for ``n_donors`` donors (ages 20-90, pools of 14).

    The first ``n_planted`` genes change by ``effect`` log2 per decade in the first
    type. With two types, gene ``n_genes - 1`` is a marker of the second type that
    reaches the first through doublets, at a share rising by ``borrowed_trend`` (log)
    per decade. ``mean_count`` is the median count of a gene; ``library_trend`` the
    change of a sample's library (its number of cells) per decade, in log; ``n_high``
    genes after the planted ones have 500 counts (size factors need genes without a
    zero). Returns the AnnData and the planted effects per gene (first type).
    """
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n_donors).round()
    sex = rng.choice(["female", "male"], n_donors)
    pool = np.array([f"P{i // 14:02d}" for i in rng.permutation(n_donors)])
    pools = sorted(set(pool))
    pool_effect = rng.normal(0, pool_sd, (len(pools), n_genes)) if pool_sd else None
    base = np.exp(rng.normal(np.log(mean_count), 1.0, n_genes))
    base[n_planted : n_planted + n_high] = 500.0
    beta = np.zeros(n_genes)
    beta[:n_planted] = effect * np.where(np.arange(n_planted) % 2, -1, 1)
    rows, obs = [], []
    for t, label in enumerate(types):
        mu = base * np.exp(rng.normal(0, 0.5, n_genes)) if t else base.copy()
        if len(types) > 1:  # a marker of the second type: 4,000 counts per sample there
            mu[-1] = 2.0 if t == 0 else 4000.0
        log_mu = np.log(mu)[None, :] + rng.normal(0, 0.3, (n_donors, n_genes))
        if t == 0:
            log_mu += np.log(2) * beta[None, :] * (age[:, None] - 55) / 10
        if pool_effect is not None:
            log_mu += pool_effect[[pools.index(p) for p in pool]]
        cells = np.exp(library_trend * (age - 55) / 10)[:, None]
        lam = np.exp(log_mu) * rng.uniform(0.7, 1.3, (n_donors, 1)) * cells
        if t == 0 and borrowed_trend:  # each doublet brings one cell's worth (1 %)
            doublets = rng.poisson(0.5 * np.exp(borrowed_trend * (age - 55) / 10))
            lam[:, -1] += doublets * 40.0
        rows.append(rng.negative_binomial(20, 20 / (20 + lam)))
        obs.append(
            pd.DataFrame(
                {"cell_type": label, "donor_id": [f"D{i:03d}" for i in range(n_donors)]}
            ).assign(age=age, sex=sex, pool=pool, n_cells=30)
        )
    obs = pd.concat(obs, ignore_index=True)
    obs.index = obs["cell_type"] + "|" + obs["donor_id"]
    for col in ("cell_type", "donor_id", "sex", "pool"):
        obs[col] = pd.Categorical(obs[col])
    var = pd.DataFrame(
        {"feature_name": [f"G{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    return ad.AnnData(np.vstack(rows).astype(np.float32), obs=obs, var=var), beta


def recall(results: pd.DataFrame, beta: np.ndarray) -> float:
    table = results.set_index("gene_id")
    planted = np.flatnonzero(beta)
    ids = [f"ENSG{i:011d}" for i in planted]
    hit = (table.loc[ids, "padj"] < 0.05) & (
        np.sign(table.loc[ids, "log2FoldChange"]) == np.sign(beta[planted])
    )
    return float(hit.mean())


def test_null_pvalues_are_uniform_and_nothing_is_called():
    adata, _ = pseudobulk(120, pool_sd=0.1, seed=1)
    results, (s,) = de.differential_expression(adata, **PARAMS, covariates=["sex"])
    p = results["pvalue"].dropna().to_numpy()
    assert len(p) > 140
    assert 0.01 <= np.mean(p < 0.05) <= 0.1
    assert 0.3 <= np.mean(p < 0.5) <= 0.7
    assert s.n_up + s.n_down == 0


def test_power_at_realistic_effect_sizes_grows_with_donors():
    """0.05 log2 per decade: found in most genes at 300 donors, few at 48."""
    small, beta = pseudobulk(48, effect=0.05, seed=2)
    large, _ = pseudobulk(300, effect=0.05, seed=2)
    r_small = recall(de.differential_expression(small, **PARAMS)[0], beta)
    r_large = recall(de.differential_expression(large, **PARAMS)[0], beta)
    assert r_small < 0.3 and r_large > 0.6
    # the estimate is per decade and unbiased at this size
    res = de.differential_expression(large, **PARAMS)[0].set_index("gene_id")
    est = res.loc[[f"ENSG{i:011d}" for i in range(30)], "log2fc_per_decade"].to_numpy()
    slope = np.sum(est * beta[:30]) / np.sum(beta[:30] ** 2)
    assert slope == pytest.approx(1.0, abs=0.2)


def test_pool_covariate_absorbs_pool_batch_effects():
    adata, beta = pseudobulk(168, effect=0.05, pool_sd=0.3, seed=3)
    without, _ = de.differential_expression(adata, **PARAMS, covariates=["sex"])
    with_pool, (s1,) = de.differential_expression(adata, **PARAMS, covariates=["sex", "pool"])
    assert s1.design == "~age_scaled + sex + pool"
    se0 = without["lfcSE"].median()
    se1 = with_pool["lfcSE"].median()
    assert se1 < 0.85 * se0
    assert recall(with_pool, beta) > recall(without, beta)


def test_marker_genes_of_other_cell_types_are_not_tested():
    """A marker of B cells reaching T-cell samples through doublets, more so in the old."""
    adata, _ = pseudobulk(150, types=("T cell", "B cell"), borrowed_trend=0.4, seed=4)
    marker = adata.var_names[-1]
    ratio = de.expression_ratio(adata)
    assert ratio.loc["T cell", marker] < 0.02 and ratio.loc["B cell", marker] == 1.0
    everything, _ = de.differential_expression(adata, **PARAMS)
    t_cells = everything[everything["cell_type"] == "T cell"].set_index("gene_id")
    assert t_cells.loc[marker, "padj"] < 0.05  # a false discovery: T cells do not change
    guarded, summaries = de.differential_expression(adata, **PARAMS, min_expression_ratio=0.02)
    t_cells = guarded[guarded["cell_type"] == "T cell"]
    assert marker not in set(t_cells["gene_id"])
    by = {s.cell_type: s for s in summaries}
    assert by["T cell"].n_genes_borrowed == 1 and by["B cell"].n_genes_borrowed == 0
    assert marker in set(guarded.loc[guarded["cell_type"] == "B cell", "gene_id"])


def test_floor_on_fitted_means_biases_low_counts_when_libraries_shrink_with_age():
    """Fewer cells per sample in old donors: DESeq2's bulk floor (0.5) tilts null slopes."""
    adata, _ = pseudobulk(400, mean_count=1.0, library_trend=-0.4, n_high=20, seed=5)
    floor, _ = de.differential_expression(adata, **PARAMS, min_mu=0.5)
    fixed, _ = de.differential_expression(adata, **PARAMS, min_mu=1e-6)
    low = floor["baseMean"] < floor["baseMean"].quantile(0.4)
    assert floor.loc[low, "stat"].mean() > 1.0  # a bias, not noise (SE of the mean ~0.13)
    assert abs(fixed.loc[low.to_numpy(), "stat"].mean()) < 0.4
    assert np.mean(fixed["pvalue"].dropna() < 0.05) < 0.1


def test_t_distribution_widens_the_tail_with_few_donors():
    adata, _ = pseudobulk(24, seed=6)
    normal, _ = de.differential_expression(adata, **PARAMS)
    student, _ = de.differential_expression(adata, **PARAMS, t_test=True)
    pd.testing.assert_series_equal(normal["stat"], student["stat"])
    from scipy.stats import norm, t

    stat = student["stat"].to_numpy()
    ok = np.isfinite(stat)
    expected = 2 * t.sf(np.abs(stat[ok]), 24 - 3)
    np.testing.assert_allclose(student["pvalue"].to_numpy()[ok], expected)
    np.testing.assert_allclose(normal["pvalue"].to_numpy()[ok], 2 * norm.sf(np.abs(stat[ok])))
    assert (student["pvalue"].to_numpy()[ok] >= normal["pvalue"].to_numpy()[ok]).all()


def test_batched_fits_agree_with_pydeseq2():
    """The batched solver reproduces PyDESeq2's statistics (the project's settings).

    Low counts (a median of 3) so that some dispersions sit at PyDESeq2's lower
    bound, a pool covariate for a wider design, planted effects so that genes are
    called. Tolerances: Spearman of the Wald statistic >= 0.9999, log2 fold changes
    within 1e-3, the same significant calls except where padj is within 10 % of
    alpha.
    """
    from scipy.stats import spearmanr

    adata, _ = pseudobulk(150, effect=0.1, mean_count=3.0, pool_sd=0.1, n_high=20, seed=8)
    opts = {**PARAMS, "covariates": ["sex", "pool"], "min_mu": 1e-6, "t_test": True}
    batched, _ = de.differential_expression(adata, **opts, solver="batched")
    reference, _ = de.differential_expression(adata, **opts, solver="pydeseq2")
    pd.testing.assert_frame_equal(
        batched[["cell_type", "gene_id"]], reference[["cell_type", "gene_id"]]
    )
    assert len(batched) > 140
    assert spearmanr(batched["stat"], reference["stat"])[0] >= 0.9999
    np.testing.assert_allclose(batched["log2FoldChange"], reference["log2FoldChange"], atol=1e-3)
    np.testing.assert_allclose(batched["lfcSE"], reference["lfcSE"], rtol=1e-2)
    called_b, called_r = batched["padj"] < 0.05, reference["padj"] < 0.05
    assert called_r.sum() >= 10
    differ = called_b != called_r
    assert (reference.loc[differ, "padj"].sub(0.05).abs() < 0.005).all()
    assert (batched["padj"].isna() == reference["padj"].isna()).all()


def test_gradient_search_finds_interior_and_boundary_minima():
    from immune_aging.analysis.deseq_batched import _min_log_alpha

    target = np.array([-3.0, 0.5, 9.0, -30.0, 2.0])

    def grad(x, idx):
        return (x - target[idx]) * np.array([1.0, 100.0, 1.0, 0.01, 1e3])[idx]

    x, settled = _min_log_alpha(grad, np.zeros(5), -18.0, 6.0)
    assert settled.all()
    np.testing.assert_allclose(x, [-3.0, 0.5, 6.0, -18.0, 2.0], atol=1e-6)

    def nan_grad(x, idx):
        return np.where(idx == 1, np.nan, x - target[idx])

    x, settled = _min_log_alpha(nan_grad, np.zeros(5), -18.0, 6.0)
    assert settled.tolist() == [True, False, True, True, True]


def test_empirical_null_scale_is_the_central_spread_per_count_stratum():
    rng = np.random.default_rng(7)
    low = rng.standard_normal(800) * 0.8  # narrower than the model: never enlarged
    high = rng.standard_normal(800) * 1.3
    stat = np.concatenate([low, high, [np.nan]])
    base_mean = np.concatenate([np.full(800, 1.0), np.full(800, 50.0), [10.0]])
    scale = deseq.empirical_null_scale(stat, base_mean, min_genes=400, max_strata=2)
    assert (scale[:800] == 1.0).all()
    assert scale[800:1600] == pytest.approx(np.full(800, 1.3), abs=0.08)
    assert np.unique(scale[800:1600]).size == 1
    assert scale[-1] == 1.0
    # a few strong effects do not move the centre's spread
    stat[800:840] = 12.0
    again = deseq.empirical_null_scale(stat, base_mean, min_genes=400, max_strata=2)
    assert again[800] == pytest.approx(scale[800], abs=0.1)
    # fewer genes than a stratum: one scale for all
    one = deseq.empirical_null_scale(stat[:300], base_mean[:300])
    assert np.unique(one).size == 1


def lognormal_null(n_donors: int, n_genes: int, sigma: float, seed: int) -> ad.AnnData:
    """Poisson counts around log-normal donor variation (no age effect), 60 counts per gene."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n_donors).round()
    sex = rng.choice(["female", "male"], n_donors)
    base = np.exp(rng.normal(np.log(60.0), 0.5, n_genes))
    lam = base[None, :] * np.exp(rng.normal(-(sigma**2) / 2, sigma, (n_donors, n_genes)))
    obs = pd.DataFrame(
        {"cell_type": "T cell", "donor_id": [f"D{i:03d}" for i in range(n_donors)]}
    ).assign(age=age, sex=sex, pool="P1", n_cells=30)
    obs.index = obs["donor_id"].astype(str)
    for col in ("cell_type", "donor_id", "sex", "pool"):
        obs[col] = pd.Categorical(obs[col])
    var = pd.DataFrame(
        {"feature_name": [f"G{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    return ad.AnnData(rng.poisson(lam).astype(np.float32), obs=obs, var=var)


def test_empirical_null_corrects_the_spread_of_lognormal_donor_variation():
    """Log-normal donors: the NB standard errors are too small; empirical rescales them."""
    adata = lognormal_null(500, 600, 0.7, seed=8)
    theory, _ = de.differential_expression(adata, **PARAMS, t_test=True)
    empirical, _ = de.differential_expression(adata, **PARAMS, t_test=True, null="empirical")
    z0 = theory["stat"].to_numpy()
    z1 = empirical["stat"].to_numpy()
    assert np.var(z0) > 1.12  # the misfit this option is for
    assert 0.9 < np.var(z1) < 1.06
    ratio = z0 / z1
    assert (ratio >= 1.0 - 1e-12).all() and ratio.max() > 1.05
    # the same fit: fold changes unchanged, standard errors widened by the scale
    pd.testing.assert_series_equal(theory["log2FoldChange"], empirical["log2FoldChange"])
    np.testing.assert_allclose(empirical["lfcSE"] / theory["lfcSE"], ratio, rtol=1e-9)
    from scipy.stats import t

    np.testing.assert_allclose(empirical["pvalue"], 2 * t.sf(np.abs(z1), 500 - 3), rtol=1e-9)
    assert np.mean(empirical["pvalue"] < 0.01) < np.mean(theory["pvalue"] < 0.01)
