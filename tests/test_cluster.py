import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.builders import tiny_params, write_params

from immune_aging import io
from immune_aging.analysis import cluster
from immune_aging.stages import cluster as stage


def two_cliques(n=6, bridge=True):
    """Two cliques of ``n`` cells each, joined by one weak edge; labels T (first) and B."""
    a = np.zeros((2 * n, 2 * n))
    a[:n, :n] = 1.0
    a[n:, n:] = 1.0
    np.fill_diagonal(a, 0.0)
    if bridge:
        a[0, n] = a[n, 0] = 0.05
    conn = sparse.csr_matrix(a)
    obs = pd.DataFrame(
        {"donor_id": ["D1", "D2"] * n, "cell_type": ["T"] * n + ["B"] * n},
        index=[f"cell{i}" for i in range(2 * n)],
    ).astype("category")
    adata = ad.AnnData(obs=obs)
    adata.obsp["connectivities"] = conn
    adata.obsp["distances"] = conn.copy()
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"n_neighbors": n, "method": "umap"},
    }
    rng = np.random.default_rng(0)
    adata.obsm["X_umap"] = np.vstack(
        [rng.normal(0, 0.1, (n, 2)), rng.normal(5, 0.1, (n, 2))]
    ).astype(np.float32)
    return adata


# --------------------------------------------------------------------------- leiden


def test_leiden_finds_two_cliques_without_touching_input():
    adata = two_cliques()
    obs_before = adata.obs.copy()
    conn_before = adata.obsp["connectivities"].copy()
    labels = cluster.leiden(adata, resolution=1.0, n_iterations=2, seed=0)
    assert labels.name == "leiden"
    assert list(labels.index) == list(adata.obs_names)
    assert list(labels.cat.categories) == ["0", "1"]
    assert labels.iloc[:6].nunique() == 1
    assert labels.iloc[6:].nunique() == 1
    assert labels.iloc[0] != labels.iloc[6]
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert (adata.obsp["connectivities"] != conn_before).nnz == 0
    assert "leiden" not in adata.obs and "leiden" not in adata.uns


def test_leiden_is_reproducible():
    adata = two_cliques(n=8)
    a = cluster.leiden(adata, resolution=1.0, n_iterations=-1, seed=3)
    b = cluster.leiden(adata, resolution=1.0, n_iterations=-1, seed=3)
    pd.testing.assert_series_equal(a, b)


def test_relabel_by_size_orders_by_size_then_first_cell():
    labels = pd.Series(["7", "3", "3", "9", "9", "9", "5"], index=list("abcdefg"))
    got = cluster.relabel_by_size(labels)
    assert got.tolist() == ["2", "1", "1", "0", "0", "0", "3"]
    assert list(got.cat.categories) == ["0", "1", "2", "3"]
    assert list(got.index) == list("abcdefg")


# --------------------------------------------------------------------------- agreement


def test_contingency_counts():
    table = cluster.contingency(
        pd.Series(["0", "0", "1", "1", "1"]), pd.Series(["T", "B", "B", "B", "B"])
    )
    assert table.index.name == "leiden" and table.columns.name == "cell_type"
    assert table.loc["0", "T"] == 1 and table.loc["0", "B"] == 1
    assert table.loc["1", "B"] == 3 and table.loc["1", "T"] == 0


def test_contingency_orders_clusters_numerically():
    labels = pd.Series([str(i) for i in range(12)])
    table = cluster.contingency(labels, pd.Series(["a"] * 12))
    assert list(table.index) == [str(i) for i in range(12)]


def test_agreement_perfect_with_permuted_names():
    got = cluster.agreement(pd.Series(["1", "1", "0", "0"]), pd.Series(["T", "T", "B", "B"]))
    assert got["ari"] == 1.0
    assert got["nmi"] == 1.0
    assert got["purity"] == 1.0
    assert got["n_clusters"] == 2
    assert got["n_cells"] == 4
    assert got["cluster_sizes"] == {"0": 2, "1": 2}


def test_agreement_on_literal_labels():
    clusters = pd.Series(["0", "0", "0", "1", "1", "1"])
    types_ = pd.Series(["a", "a", "b", "b", "b", "c"])
    got = cluster.agreement(clusters, types_)
    # clusters' majority types: 0 -> a (2 of 3), 1 -> b (2 of 3)
    assert got["purity"] == pytest.approx(4 / 6)
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    assert got["ari"] == pytest.approx(adjusted_rand_score(types_, clusters), abs=1e-6)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(types_, clusters), abs=1e-6)


def test_agreement_one_cluster_for_two_types():
    got = cluster.agreement(pd.Series(["0"] * 4), pd.Series(["a", "a", "b", "b"]))
    assert got["ari"] == 0.0
    assert got["purity"] == 0.5


def test_agreement_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        cluster.agreement(pd.Series(["0", "1"]), pd.Series(["a"]))


def test_plot_contingency():
    table = cluster.contingency(pd.Series(["0", "1", "1"]), pd.Series(["b", "a", "a"]))
    fig = cluster.plot_contingency(table, title="t")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["b", "a"]


# --------------------------------------------------------------------------- stage


def run_stage(tmp_path, adata, monkeypatch, **cluster_params):
    """Run the stage in ``tmp_path`` with relative paths, as dvc does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    write_params(tmp_path / "params.yaml", tiny_params(cluster=cluster_params))
    if adata is not None:
        io.write_h5ad(adata, "embedding.h5ad")
    argv = [
        "--params",
        "params.yaml",
        "--input",
        "embedding.h5ad",
        "--out",
        "out/clusters.parquet",
        "--metrics",
        "out/cluster.json",
        "--plots",
        "out/plots",
    ]
    return stage.main(argv), tmp_path / "out"


def test_stage_writes_clusters_metrics_and_figures(tmp_path, monkeypatch):
    code, out = run_stage(tmp_path, two_cliques(), monkeypatch)
    assert code == 0
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert list(clusters.columns) == ["cell_id", "leiden", "cell_type"]
    assert clusters["cell_id"].tolist() == [f"cell{i}" for i in range(12)]
    assert clusters["leiden"].nunique() == 2
    metrics = json.loads((out / "cluster.json").read_text())
    assert metrics["n_clusters"] == 2
    assert metrics["ari"] == 1.0
    assert metrics["purity"] == 1.0
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "contingency.csv",
        "contingency.png",
        "umap_leiden.png",
    ]
    table = pd.read_csv(out / "plots" / "contingency.csv", index_col=0)
    assert int(table.to_numpy().sum()) == 12
    first = (out / "clusters.parquet").read_bytes()
    assert run_stage(tmp_path, two_cliques(), monkeypatch)[0] == 0
    assert (out / "clusters.parquet").read_bytes() == first


def test_stage_resolution_changes_clusters(tmp_path, monkeypatch):
    code, out = run_stage(tmp_path, two_cliques(), monkeypatch, resolution=50.0)
    assert code == 0
    assert json.loads((out / "cluster.json").read_text())["n_clusters"] > 2


def test_stage_missing_graph(tmp_path, monkeypatch, capsys):
    adata = two_cliques()
    del adata.obsp["connectivities"]
    code, out = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cluster: embedding.h5ad: obsp 'connectivities' missing "
        "(expected the dimred stage's graph)"
    )
    assert not out.exists()


def test_stage_missing_cell_type(tmp_path, monkeypatch, capsys):
    adata = two_cliques()
    del adata.obs["cell_type"]
    code, out = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cluster: embedding.h5ad: obs column 'cell_type' missing"
    )
    assert not out.exists()


def test_stage_missing_neighbors_uns(tmp_path, monkeypatch, capsys):
    adata = two_cliques()
    del adata.uns["neighbors"]
    code, _ = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cluster: embedding.h5ad: uns 'neighbors' missing "
        "(expected the dimred stage's graph)"
    )


def test_stage_missing_umap(tmp_path, monkeypatch, capsys):
    adata = two_cliques()
    del adata.obsm["X_umap"]
    code, _ = run_stage(tmp_path, adata, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cluster: embedding.h5ad: obsm 'X_umap' missing"
    )


def test_stage_input_not_h5ad(tmp_path, monkeypatch, capsys):
    (tmp_path / "embedding.h5ad").write_text("not hdf5")
    code, _ = run_stage(tmp_path, None, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cluster: embedding.h5ad: not an h5ad file (no HDF5 signature)"
    )
