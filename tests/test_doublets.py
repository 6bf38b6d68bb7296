"""Scrublet per group: agreement with scanpy's implementation, each step, determinism."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from immune_aging.analysis import doublets
from immune_aging.analysis import scrublet as scr


def droplets(n_cells=300, *, n_genes=800, n_types=4, n_doublets=20, seed=0):
    """Negative-binomial counts of a few cell types; the first ``n_doublets`` are doublets.

    Each planted doublet adds a second droplet's expected counts of another type.
    """
    rng = np.random.default_rng(seed)
    profiles = np.tile(rng.gamma(0.4, 1.0, n_genes), (n_types, 1))
    for t in range(n_types):
        profiles[t, rng.choice(n_genes, min(40, n_genes // 4), replace=False)] *= 20
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = rng.integers(0, n_types, n_cells)
    mu = profiles[types] * rng.lognormal(np.log(2000), 0.3, n_cells)[:, None]
    other = (types[:n_doublets] + rng.integers(1, n_types, n_doublets)) % n_types
    mu[:n_doublets] += profiles[other] * rng.lognormal(np.log(2000), 0.3, n_doublets)[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    planted = np.arange(n_cells) < n_doublets
    return sparse.csr_matrix(counts), planted


def scanpy_scrublet(counts, seed=0):
    """Scores from :func:`scanpy.pp.scrublet` with exact neighbours (the reference)."""
    result = sc.pp.scrublet(
        ad.AnnData(counts),
        expected_doublet_rate=0.06,
        random_state=seed,
        threshold=1.0,
        use_approx_neighbors=False,
        verbose=False,
        copy=True,
    )
    obs = result.obs["doublet_score"].to_numpy(dtype=np.float64)
    return obs, np.asarray(result.uns["scrublet"]["doublet_scores_sim"])


# --------------------------------------------------------------------- the whole method


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scanpy's summary rate at threshold 1
def test_scores_equal_scanpy_scrublet():
    counts, _ = droplets(300, seed=3)
    ours = scr.scrublet(counts, expected_doublet_rate=0.06, seed=0)
    obs, sim = scanpy_scrublet(counts)
    assert ours.obs.shape == obs.shape and ours.sim.shape == sim.shape
    # the same neighbour counts for nearly every droplet (rounding may move one)
    assert np.mean(ours.obs == obs) >= 0.98
    assert spearmanr(ours.obs, obs)[0] > 0.99
    assert ours.n_neighbors == round(round(0.5 * np.sqrt(300)) * 3)
    # scanpy's simulated doublets count themselves in some groups, not in others
    # (floating-point ties decide); ours never do: scanpy's equal ours or one step more
    higher = one_step_higher(ours.sim, ours.n_neighbors)
    assert max(np.mean(ours.sim == sim), np.mean(np.isclose(higher, sim, rtol=1e-9))) >= 0.98


def one_step_higher(sim, k_adj, rate=0.06, ratio=2.0):
    """Scrublet scores with one more simulated neighbour (inverts the score's formula)."""
    a, b = rate / ratio, 1 - rate - rate / ratio
    q = sim * (1 - rate) / (a + sim * b) + 1 / (k_adj + 2.0)
    return q * a / (1 - rate - q * b)


def test_one_step_higher_is_one_more_simulated_neighbour():
    scores = scr._doublet_scores(np.arange(0, 61), 60, 2.0, 0.06)
    np.testing.assert_allclose(one_step_higher(scores[:-1], 60), scores[1:], rtol=1e-12)


def test_planted_doublets_score_higher():
    counts, planted = droplets(400, n_doublets=30, seed=1)
    result = scr.scrublet(counts, expected_doublet_rate=0.06, seed=0)
    assert roc_auc_score(planted, result.obs) > 0.95
    threshold = doublets.doublet_threshold(result.sim)
    called = result.obs > threshold
    assert called[planted].mean() > 0.5 and called[~planted].mean() < 0.05


def test_scores_are_reproducible_and_input_untouched():
    counts, _ = droplets(200, seed=2)
    before = counts.copy()
    first = scr.scrublet(counts, expected_doublet_rate=0.06, seed=0)
    second = scr.scrublet(counts.astype(np.float64), expected_doublet_rate=0.06, seed=0)
    assert first.obs.tobytes() == second.obs.tobytes()
    assert first.sim.tobytes() == second.sim.tobytes()
    assert (counts != before).nnz == 0 and counts.dtype == np.float32
    other = scr.scrublet(counts, expected_doublet_rate=0.06, seed=1)
    assert other.sim.tobytes() != first.sim.tobytes()  # the seed draws other pairs


def test_too_few_variable_genes_raise():
    counts, _ = droplets(100, n_genes=20)
    with pytest.raises(ValueError, match="variable genes and 100 droplets: PCA needs more"):
        scr.scrublet(counts, expected_doublet_rate=0.06, seed=0)


# --------------------------------------------------------------------- the steps


def test_filter_genes_then_cells_as_scanpy():
    # gene 0 in 2 cells (dropped); cell 3 has 3 genes but one is gene 0 -> 2 left (dropped)
    X = np.array(
        [
            [1, 1, 2, 0, 1],
            [0, 3, 1, 1, 0],
            [0, 1, 0, 2, 1],
            [4, 0, 1, 1, 0],
            [2, 1, 0, 0, 0],
            [0, 0, 1, 1, 2],
        ],
        dtype=np.float32,
    )
    X[4, 0] = 0  # gene 0 now in cells 0 and 3 only
    cells, keep = scr._filter(sparse.csr_matrix(X))
    assert keep.tolist() == [False, True, True, True, True]
    assert cells.tolist() == [0, 1, 2, 5]  # cell 3: genes 2, 3; cell 4: gene 1 only
    adata = ad.AnnData(sparse.csr_matrix(X))
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.filter_cells(adata, min_genes=3)
    assert adata.obs_names.astype(int).tolist() == cells.tolist()


def test_variable_genes_equal_scanpy_seurat_flavor():
    counts, _ = droplets(300, seed=4)
    cells, keep = scr._filter(counts)
    ours = scr._variable_genes(counts[cells], keep)
    adata = ad.AnnData(counts)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.filter_cells(adata, min_genes=3)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata)
    expected = adata.var_names[adata.var["highly_variable"]].astype(int)
    assert 30 < len(ours) < keep.sum()
    assert ours.tolist() == expected.tolist()


@pytest.mark.parametrize("n_cells", [120, 400])  # Gram (cells < genes) and covariance
def test_principal_components_equal_pca(n_cells):
    counts, _ = droplets(n_cells, n_genes=300, seed=5)
    detected = np.flatnonzero(counts.getnnz(axis=0) >= 10)[:200]
    R = sparse.csr_matrix(counts[:, detected], dtype=np.float64)
    totals = np.asarray(R.sum(axis=1)).ravel()
    ours = scr._principal_components(R, totals, 10, seed=0)
    dense = R.toarray() / totals[:, None] * 1e6
    Z = (dense - dense.mean(axis=0)) / dense.std(axis=0, ddof=1)
    expected = PCA(10, svd_solver="full").fit_transform(Z)
    # each component equal up to its sign (float32 product: close, not bit-equal)
    signs = np.sign(np.sum(ours * expected, axis=0))
    np.testing.assert_allclose(ours * signs, expected, atol=1e-3 * np.abs(expected).max())


def test_simulated_doublet_is_weighted_average_of_parents():
    counts, _ = droplets(150, n_genes=200, seed=6)
    R = counts[:, counts.getnnz(axis=0) >= 10].toarray().astype(np.float64)
    pairs = scr._doublet_pairs(150, 300, seed=0)
    assert len({tuple(p) for p in pairs}) == 300  # no pair twice
    doublet = R[pairs[:, 0]] + R[pairs[:, 1]]  # built explicitly, as scanpy does

    def normalised(M):
        return M / M.sum(axis=1, keepdims=True) * 1e6

    obs, sim = normalised(R), normalised(doublet)
    mean, sd = obs.mean(axis=0), obs.std(axis=0, ddof=1)
    pca = PCA(10, svd_solver="full").fit((obs - mean) / sd)
    parents = pca.transform((obs - mean) / sd)
    totals = R.sum(axis=1)
    w = scr._parent_weights(totals[pairs[:, 0]], totals[pairs[:, 1]])
    shortcut = w[:, None] * parents[pairs[:, 0]] + (1 - w)[:, None] * parents[pairs[:, 1]]
    np.testing.assert_allclose(shortcut, pca.transform((sim - mean) / sd), atol=1e-8)


def test_neighbour_counts_equal_exact_knn():
    rng = np.random.default_rng(7)
    points = rng.normal(size=(500, 5))
    points[300:] += 0.5
    for k in (1, 10, 33):
        ours = scr._count_neighbors(points, 300, k)
        nearest = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(return_distance=False)
        assert ours.tolist() == (nearest >= 300).sum(axis=1).tolist()


def test_doublet_score_grows_with_simulated_neighbours():
    scores = scr._doublet_scores(np.arange(0, 61), 60, 2.0, 0.06)
    assert np.all(np.diff(scores) > 0)
    # no simulated neighbour: (1/62) * 0.06 / 2 / (1 - 0.06 - (1/62) * (1 - 0.06 - 0.03))
    assert scores[0] == pytest.approx(0.03 / 62 / (0.94 - 0.91 / 62))


# --------------------------------------------------------------------- per group


def grouped():
    blocks = [droplets(150, seed=s)[0] for s in (11, 12, 13)] + [droplets(40, seed=14)[0]]
    X = sparse.vstack(blocks).tocsr()
    labels = np.repeat(["a", "b", "c", "small"], [150, 150, 150, 40])
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(X.shape[0])])
    return ad.AnnData(X=X, obs=obs), pd.Series(labels)


def test_parallel_equals_serial(monkeypatch):
    adata, groups = grouped()
    kwargs = dict(
        groups=groups,
        eligible=np.ones(adata.n_obs, dtype=bool),
        expected_doublet_rate=0.06,
        min_cells=100,
        seed=0,
    )
    serial = doublets.detect_doublets(adata, n_jobs=1, **kwargs)
    monkeypatch.setattr(doublets, "PARALLEL_MIN_CELLS", 0)
    parallel = doublets.detect_doublets(adata, n_jobs=2, **kwargs)
    pd.testing.assert_frame_equal(serial[0], parallel[0])
    pd.testing.assert_frame_equal(serial[1], parallel[1])
    assert serial[1]["scored"].tolist() == [True, True, True, False]
    assert serial[0]["doublet_score"].iloc[-40:].isna().all()
    # a group's scores do not depend on the other groups
    alone = scr.scrublet(adata.X[150:300], expected_doublet_rate=0.06, seed=0)
    assert serial[0]["doublet_score"].iloc[150:300].to_numpy().tobytes() == alone.obs.tobytes()
