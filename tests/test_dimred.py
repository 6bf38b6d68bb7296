import json
import types

import anndata as ad
import harmonypy
import numpy as np
import pandas as pd
import pytest
from tests.builders import tiny_params, write_params

from immune_aging import io
from immune_aging.analysis import dimred, neighbors, plots
from immune_aging.stages import dimred as stage


def pca_cells(n_per_group=30, seed=0):
    """Two cell types x two donors in 6 components; donor D2 is shifted on PCs 3 and 4."""
    rng = np.random.default_rng(seed)
    centres = {"T cell": [10.0, 0, 0, 0, 0, 0], "B cell": [0, 10.0, 0, 0, 0, 0]}
    shifts = {"D1": [0.0, 0, 0, 0, 0, 0], "D2": [0, 0, 3.0, 3.0, 0, 0]}
    rows, obs = [], []
    for ct, centre in centres.items():
        for donor, shift in shifts.items():
            mean = np.add(centre, shift)
            rows.append(mean + rng.normal(0, 0.5, size=(n_per_group, 6)))
            obs += [(donor, ct)] * n_per_group
    x = np.vstack(rows).astype(np.float32)
    frame = pd.DataFrame(obs, columns=["donor_id", "cell_type"])
    frame.index = [f"cell{i}" for i in range(len(frame))]
    adata = ad.AnnData(obs=frame.astype("category"))
    adata.obsm["X_pca"] = x
    return adata


# --------------------------------------------------------------------------- orientation


def test_check_orientation_accepts_cells_by_components():
    z = np.zeros((5, 3))
    assert dimred.check_orientation(z, n_cells=5, n_comps=3) is z


def test_check_orientation_transposes_components_by_cells():
    z = np.arange(15.0).reshape(3, 5)
    got = dimred.check_orientation(z, n_cells=5, n_comps=3)
    assert got.shape == (5, 3)
    np.testing.assert_array_equal(got, z.T)


def test_check_orientation_rejects_other_shapes():
    with pytest.raises(RuntimeError) as err:
        dimred.check_orientation(np.zeros((4, 3)), n_cells=5, n_comps=3)
    assert str(err.value) == (
        "Harmony returned a matrix of shape (4, 3); expected 5 cells x 3 components "
        "(or its transpose)"
    )


def fake_harmony(z_corr):
    def run_harmony(data_mat, meta_data, vars_use, **kwargs):
        return types.SimpleNamespace(
            Z_corr=z_corr(np.asarray(data_mat)),
            objective_harmony=[10.0, 9.99],
            kmeans_rounds=[4],
        )

    return run_harmony


def test_harmony_integrate_fixes_a_transposed_result(monkeypatch):
    adata = pca_cells()
    monkeypatch.setattr(harmonypy, "run_harmony", fake_harmony(lambda x: (x + 1.0).T))
    corrected, info = dimred.harmony_integrate(adata, max_iter=5, seed=0)
    assert corrected.shape == adata.obsm["X_pca"].shape
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected, adata.obsm["X_pca"] + 1.0)
    assert info["iterations"] == 1
    assert info["converged"] is True


def test_harmony_integrate_rejects_a_wrong_shape(monkeypatch):
    adata = pca_cells()
    monkeypatch.setattr(harmonypy, "run_harmony", fake_harmony(lambda x: x[:-1]))
    with pytest.raises(RuntimeError, match=r"Harmony returned a matrix of shape \(119, 6\)"):
        dimred.harmony_integrate(adata, max_iter=5, seed=0)


# --------------------------------------------------------------------------- harmony


def test_harmony_integrate_removes_the_donor_shift_and_keeps_input():
    adata = pca_cells()
    before = adata.obsm["X_pca"].copy()
    corrected, info = dimred.harmony_integrate(adata, max_iter=10, seed=0)
    np.testing.assert_array_equal(adata.obsm["X_pca"], before)
    assert corrected.shape == before.shape
    donors = adata.obs["donor_id"].to_numpy()
    gap_before = np.abs(before[donors == "D1"].mean(0) - before[donors == "D2"].mean(0)).mean()
    gap_after = np.abs(
        corrected[donors == "D1"].mean(0) - corrected[donors == "D2"].mean(0)
    ).mean()
    assert gap_after < gap_before / 4
    assert 1 <= info["iterations"] <= 10
    assert len(info["objective"]) == info["iterations"] + 1
    again, _ = dimred.harmony_integrate(adata, max_iter=10, seed=0)
    np.testing.assert_array_equal(corrected, again)


# --------------------------------------------------------------------------- graph and UMAP


def test_neighbors_umap_adds_graph_and_layout_without_touching_input():
    adata = pca_cells()
    adata.obsm["X_pca_harmony"] = adata.obsm["X_pca"].copy()
    out = neighbors.neighbors_umap(
        adata,
        use_rep="X_pca_harmony",
        n_neighbors=10,
        n_pcs=4,
        min_dist=0.5,
        seed=0,
        exact_max_cells=1000,
    )
    assert "distances" not in adata.obsp and "X_umap" not in adata.obsm
    assert out.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert out.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert out.uns["neighbors"]["params"]["n_pcs"] == 4
    assert out.uns["neighbors"]["params"]["knn"] == "exact"
    # each cell's neighbours (n_neighbors - 1 besides itself) are of its own cell type
    dist = out.obsp["distances"].tocsr()
    types_ = adata.obs["cell_type"].to_numpy()
    for i in range(adata.n_obs):
        assert (types_[dist[i].indices] == types_[i]).all()


def test_umap_rows_all_or_a_seeded_sorted_sample():
    assert neighbors.umap_rows(5, 0, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert neighbors.umap_rows(5, 5, seed=0).tolist() == [0, 1, 2, 3, 4]
    rows = neighbors.umap_rows(1000, 100, seed=3)
    assert len(rows) == 100 == len(set(rows.tolist()))
    assert (np.diff(rows) > 0).all() and rows[-1] < 1000
    np.testing.assert_array_equal(rows, neighbors.umap_rows(1000, 100, seed=3))
    assert not np.array_equal(rows, neighbors.umap_rows(1000, 100, seed=4))


def test_neighbors_umap_on_a_sample_keeps_the_whole_graph():
    adata = pca_cells(n_per_group=40)
    adata.obsm["X_pca_harmony"] = adata.obsm["X_pca"].copy()
    kw = {"use_rep": "X_pca_harmony", "n_neighbors": 10, "n_pcs": 4, "min_dist": 0.5, "seed": 0}
    full = neighbors.neighbors_umap(adata, exact_max_cells=1000, **kw)
    part = neighbors.neighbors_umap(adata, exact_max_cells=1000, umap_max_cells=60, **kw)
    # the graph clustering reads is the same: every cell, the same neighbours
    for key in ("distances", "connectivities"):
        assert (full.obsp[key] != part.obsp[key]).nnz == 0
    assert full.uns["umap"]["cells"] == adata.n_obs
    assert part.uns["umap"]["cells"] == 60
    rows = neighbors.umap_rows(adata.n_obs, 60, seed=0)
    laid_out = np.isfinite(part.obsm["X_umap"]).all(axis=1)
    assert laid_out.sum() == 60
    np.testing.assert_array_equal(np.flatnonzero(laid_out), rows)
    assert np.isnan(part.obsm["X_umap"][~laid_out]).all()
    assert part.obsm["X_umap"].dtype == np.float32
    # the sample's layout still separates the two cell types
    xy = part.obsm["X_umap"][rows]
    types_ = adata.obs["cell_type"].to_numpy()[rows]
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    assert (types_[dist.argmin(axis=1)] == types_).all()


def test_figures_draw_the_laid_out_cells_only():
    adata = pca_cells(n_per_group=40)
    adata.obsm["X_pca_harmony"] = adata.obsm["X_pca"].copy()
    work = neighbors.neighbors_umap(
        adata,
        use_rep="X_pca_harmony",
        n_neighbors=10,
        n_pcs=4,
        min_dist=0.5,
        seed=0,
        umap_max_cells=60,
    )
    figs = dimred.figures(dimred.embedding_anndata(work), seed=0)
    ax = figs["umap_cell_type.png"].axes[0]
    assert ax.get_title() == "UMAP by cell type, 60 of 160 cells"
    assert len(ax.collections[0].get_offsets()) == 60
    assert "60 of 160 cells" in figs["umap_donor.png"].axes[0].get_title()


def test_donor_mixing_on_separated_and_mixed_donors():
    donors = np.array(["A"] * 4 + ["B"] * 4)
    separated = np.array([[0.0], [0.1], [0.2], [0.3], [10.0], [10.1], [10.2], [10.3]])
    mixed = np.array([[0.0], [0.2], [0.4], [0.6], [0.1], [0.3], [0.5], [0.7]])
    got = dimred.donor_mixing(
        {"sep": separated, "mix": mixed}, donors, n_neighbors=1, max_cells=100, seed=0
    )
    assert got["cells"] == 8
    assert got["n_neighbors"] == 1
    assert got["sep"] == 0.0
    assert got["mix"] == 1.0
    assert got["expected"] == pytest.approx(4 / 7)


def test_donor_mixing_subsamples():
    donors = np.repeat(["A", "B"], 50)
    x = np.random.default_rng(0).normal(size=(100, 3))
    got = dimred.donor_mixing({"x": x}, donors, n_neighbors=5, max_cells=40, seed=1)
    assert got["cells"] == 40
    assert 0.0 <= got["x"] <= 1.0


def test_embedding_anndata_has_no_genes():
    adata = pca_cells()
    adata.obsm["X_pca_harmony"] = adata.obsm["X_pca"].copy()
    graph = neighbors.neighbors_umap(
        adata, use_rep="X_pca_harmony", n_neighbors=5, n_pcs=3, min_dist=0.5, seed=0
    )
    emb = dimred.embedding_anndata(graph)
    assert emb.shape == (adata.n_obs, 0)
    assert emb.X is None
    assert list(emb.obs.columns) == ["donor_id", "cell_type"]
    assert sorted(emb.obsm) == ["X_pca_harmony", "X_umap"]
    assert sorted(emb.obsp) == ["connectivities", "distances"]
    assert "neighbors" in emb.uns


@pytest.mark.parametrize("legend", ["right", "on data", "none"])
def test_plot_embedding(legend):
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    fig = plots.plot_embedding(coords, ["a", "b", "a"], title="t", legend=legend)
    assert fig.axes[0].get_title() == "t"


def test_plot_embedding_leaves_out_cells_without_coordinates():
    coords = np.array([[0.0, 0.0], [np.nan, np.nan], [2.0, 0.5], [1.0, 1.0]])
    fig = plots.plot_embedding(coords, ["a", "b", "a", "c"], title="t", legend="on data")
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 3
    # "b" has no drawn cell, so no label; the others sit at their cells' medians
    assert sorted((t.get_text(), t.get_position()) for t in ax.texts) == [
        ("a", (1.0, 0.25)),
        ("c", (1.0, 1.0)),
    ]


def test_category_colours_distinct():
    for n in (3, 15, 48):
        colours = plots.category_colours(n)
        assert colours.shape == (n, 4)
        assert len({tuple(c) for c in colours}) == n


# --------------------------------------------------------------------------- stage


def run_stage(tmp_path, adata, monkeypatch, **dimred_params):
    """Run the stage in ``tmp_path`` with relative paths, as dvc does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    params = tiny_params(dimred={"n_neighbors": 10, "n_pcs": 4, **dimred_params})
    write_params(tmp_path / "params.yaml", params)
    if adata is not None:
        io.write_h5ad(adata, "pca.h5ad")
    argv = [
        "--params",
        "params.yaml",
        "--input",
        "pca.h5ad",
        "--out",
        "out/embedding.h5ad",
        "--metrics",
        "out/dimred.json",
        "--plots",
        "out/plots",
    ]
    return stage.main(argv), tmp_path / "out"


def test_stage_writes_embedding_metrics_and_figures(tmp_path, monkeypatch):
    adata = pca_cells()
    code, out = run_stage(tmp_path, adata, monkeypatch)
    assert code == 0
    emb = io.read_h5ad(out / "embedding.h5ad")
    assert emb.shape == (adata.n_obs, 0)
    assert list(emb.obs_names) == list(adata.obs_names)
    assert emb.obsm["X_pca_harmony"].shape == (adata.n_obs, 6)
    assert emb.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert emb.uns["provenance"]["stage"] == "dimred"
    metrics = json.loads((out / "dimred.json").read_text())
    assert metrics["cells"] == adata.n_obs
    assert metrics["donors"] == 2
    assert metrics["n_pcs"] == 4
    assert metrics["n_pcs_available"] == 6
    assert metrics["knn"] == "exact"
    assert metrics["umap_cells"] == adata.n_obs
    assert metrics["donor_mixing_harmony"] > metrics["donor_mixing_pca"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "umap_cell_type.png",
        "umap_donor.png",
    ]
    first = (out / "embedding.h5ad").read_bytes()
    assert run_stage(tmp_path, adata, monkeypatch)[0] == 0
    assert (out / "embedding.h5ad").read_bytes() == first


def test_stage_lays_umap_out_on_a_sample(tmp_path, monkeypatch):
    adata = pca_cells(n_per_group=40)
    code, out = run_stage(tmp_path, adata, monkeypatch, umap_max_cells=100)
    assert code == 0
    emb = io.read_h5ad(out / "embedding.h5ad")
    assert np.isfinite(emb.obsm["X_umap"]).all(axis=1).sum() == 100
    assert emb.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert json.loads((out / "dimred.json").read_text())["umap_cells"] == 100


def test_stage_missing_donor_column(tmp_path, monkeypatch, capsys):
    adata = pca_cells()
    del adata.obs["donor_id"]
    code, out = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: dimred: pca.h5ad: obs column 'donor_id' missing"
    assert not out.exists()


def test_stage_missing_pca(tmp_path, monkeypatch, capsys):
    adata = pca_cells()
    del adata.obsm["X_pca"]
    code, out = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: dimred: pca.h5ad: obsm 'X_pca' missing (expected the PCA of the preprocess stage)"
    )
    assert not out.exists()


def test_stage_too_few_components(tmp_path, monkeypatch, capsys):
    code, out = run_stage(tmp_path, pca_cells(), monkeypatch, n_pcs=8)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: dimred: pca.h5ad: obsm 'X_pca' has 6 components; dimred.n_pcs asks for 8"
    )
    assert not out.exists()


def test_stage_non_finite_pca(tmp_path, monkeypatch, capsys):
    adata = pca_cells()
    adata.obsm["X_pca"][3, 2] = np.nan
    code, _ = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: dimred: pca.h5ad: obsm 'X_pca' holds NaN or infinite values"
    )


def test_stage_too_few_cells(tmp_path, monkeypatch, capsys):
    adata = pca_cells(n_per_group=2)
    code, _ = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: dimred: pca.h5ad: 8 cells; dimred.n_neighbors = 10 needs more"
    )


def test_stage_missing_input(tmp_path, monkeypatch, capsys):
    code, _ = run_stage(tmp_path, None, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: dimred: pca.h5ad: file not found"
    )
