"""HVGs per donor, blocklist, normalisation, PCA, and the ``preprocess`` stage."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from tests.builders import tiny_params, write_params, write_selected

from immune_aging import executor, io, selection
from immune_aging.analysis import hvg, preprocess, preprocess_batches, preprocess_plots
from immune_aging.errors import InputError
from immune_aging.stages import preprocess as stage

BLOCK = "^(IG[HKL]|TR[ABDG])[VDJC]|^MT-|^RP[SL]"


def counts_dataset(sizes=(60, 50, 40), n_genes=200, seed=0) -> ad.AnnData:
    """Donors of the given sizes, two cell types, NB counts; Ensembl-like var index."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    base = rng.gamma(0.6, 1.0, n_genes)
    profiles = np.stack([base.copy(), base.copy()])
    profiles[0, 10:30] *= 12
    profiles[1, 30:50] *= 12
    # a receptor and an MT gene vary like markers, so that blocking them matters
    profiles[0, 2] = profiles[0, 10]
    profiles[1, 0] = profiles[1, 30]
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = rng.integers(0, 2, n)
    mu = profiles[types] * rng.lognormal(np.log(2000), 0.3, n)[:, None]
    X = rng.negative_binomial(4, 4 / (4 + mu)).astype(np.float32)
    symbols = ["MT-CO1", "RPS3", "TRBV20-1", "IGKC", "HBB"]
    symbols += [f"GENE{i}" for i in range(n_genes - len(symbols))]
    donors = np.repeat([f"d{i + 1}" for i in range(len(sizes))], sizes)
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donors),
            "cell_type": np.where(types == 0, "T cell", "B cell"),
            "development_stage": "50-year-old stage",
            "sex": "female",
        },
        index=[f"cell{i:03d}" for i in range(n)],
    )
    var = pd.DataFrame({"feature_name": symbols}, index=[f"ENSG{i:011d}" for i in range(n_genes)])
    return ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=var)


# --------------------------------------------------------------------------- HVG


def test_hvg_matches_scanpy_batched_seurat_v3():
    adata = counts_dataset()
    table, info = hvg.highly_variable_genes(adata, n_top_genes=40, span=0.8)
    ref = sc.pp.highly_variable_genes(
        adata.copy(),
        flavor="seurat_v3",
        n_top_genes=40,
        span=0.8,
        batch_key="donor_id",
        inplace=False,
    )
    assert info == {"batches_used": 3, "batches_skipped": {}}
    assert table["highly_variable"].tolist() == ref["highly_variable"].tolist()
    for col in ("highly_variable_rank", "highly_variable_nbatches", "variances_norm", "means"):
        np.testing.assert_allclose(table[col], ref[col], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(table["variances"], ref["variances"], rtol=1e-5)


def test_hvg_skips_a_donor_too_small_for_loess():
    adata = counts_dataset(sizes=(60, 50, 1))
    before = adata.copy()
    table, info = hvg.highly_variable_genes(adata, n_top_genes=40, span=0.8)
    assert info["batches_used"] == 2
    assert list(info["batches_skipped"]) == ["d3"]
    assert "too few variable genes" in info["batches_skipped"]["d3"]
    assert table["highly_variable"].sum() == 40
    assert (adata.X != before.X).nnz == 0


def test_hvg_no_batch_fits():
    adata = counts_dataset(sizes=(1, 1))
    with pytest.raises(InputError) as err:
        hvg.highly_variable_genes(adata, n_top_genes=40, span=0.8)
    assert str(err.value) == (
        "obs column 'donor_id': no batch allows the seurat_v3 loess fit (2 batches skipped)"
    )


def test_block_genes_by_symbol_and_bad_regex():
    symbols = pd.Series(["MT-CO1", "RPL13A", "TRAC", "IGHV1-2", "CD3E", "HBB"])
    assert preprocess.block_genes(symbols, regex=BLOCK).tolist() == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(InputError) as err:
        preprocess.block_genes(symbols, regex="(")
    assert str(err.value).startswith(
        "preprocess.blocklist_regex: not a valid regular expression (missing ), unterminated"
    )


def test_log_normalise_equals_scanpy_on_selected_columns():
    adata = counts_dataset()
    columns = np.zeros(adata.n_vars, dtype=bool)
    columns[[3, 10, 20, 150]] = True
    ours = preprocess.log_normalise(adata.X, columns=columns, target_sum=1e4)
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(ours.toarray(), ref.X[:, columns].toarray(), rtol=1e-5)
    assert ours.dtype == np.float32


def test_run_pca_needs_fewer_components_than_cells_and_genes():
    data = sparse.csr_matrix(np.random.default_rng(0).poisson(1.0, (30, 8)).astype(np.float32))
    with pytest.raises(InputError) as err:
        preprocess.run_pca(data, n_comps=8, seed=0)
    assert str(err.value) == (
        "preprocess.n_comps=8: needs more cells and PCA genes than components "
        "(have 30 cells, 8 genes)"
    )
    for solver in preprocess.PCA_SOLVERS:
        out = preprocess.run_pca(data, n_comps=3, seed=0, solver=solver)
        assert out["X_pca"].shape == (30, 3)
        assert out["PCs"].shape == (8, 3)


def hvg_like(n_cells=400, n_genes=60, seed=1) -> sparse.csr_matrix:
    """Sparse log-expression with a few planted directions of decreasing strength."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_cells, 6)) * np.array([6.0, 4.0, 3.0, 2.0, 1.5, 1.0])
    signal = factors @ rng.normal(size=(6, n_genes)) / 3 + rng.normal(size=(n_cells, n_genes))
    dense = np.log1p(np.where(rng.random((n_cells, n_genes)) < 0.6, 0.0, np.abs(signal)))
    return sparse.csr_matrix(dense.astype(np.float32))


def test_covariance_pca_matches_dense_pca_and_arpack():
    data = hvg_like()
    x = data.toarray().astype(np.float64)
    centred = x - x.mean(axis=0)
    sing = np.linalg.svd(centred, compute_uv=False)
    k = 5
    cov = preprocess.run_pca(data, n_comps=k, seed=0, solver="covariance")
    arp = preprocess.run_pca(data, n_comps=k, seed=0, solver="arpack")
    variance = sing[:k] ** 2 / (x.shape[0] - 1)
    np.testing.assert_allclose(cov["variance"], variance, rtol=1e-5)
    np.testing.assert_allclose(
        cov["variance_ratio"], variance / centred.var(0, ddof=1).sum(), 1e-5
    )
    np.testing.assert_allclose(cov["variance"], arp["variance"], rtol=1e-4)
    for j in range(k):
        # the same component, with the same sign rule (largest loading positive)
        np.testing.assert_allclose(cov["PCs"][:, j], arp["PCs"][:, j], atol=1e-4)
        assert cov["PCs"][np.argmax(np.abs(cov["PCs"][:, j])), j] > 0
        np.testing.assert_allclose(cov["X_pca"][:, j], centred @ cov["PCs"][:, j], atol=1e-4)
        assert abs(np.corrcoef(cov["X_pca"][:, j], arp["X_pca"][:, j])[0, 1]) >= 0.999
    for key in ("X_pca", "PCs", "variance", "variance_ratio"):
        assert cov[key].dtype == np.float32


def test_covariance_pca_same_bytes_at_any_thread_count():
    import numba

    data = hvg_like(n_cells=700, n_genes=90, seed=3)
    threads = [1, min(numba.config.NUMBA_NUM_THREADS, 4)]
    before = numba.get_num_threads()
    results = []
    try:
        for t in threads:
            numba.set_num_threads(t)
            results.append(preprocess.run_pca(data, n_comps=6, seed=0))
    finally:
        numba.set_num_threads(before)
    for key in ("X_pca", "PCs", "variance", "variance_ratio"):
        assert results[0][key].tobytes() == results[1][key].tobytes()


def test_gene_blocks_split_work_evenly_and_cover_every_gene():
    from immune_aging.analysis.sparse_pca import gene_blocks

    bounds = gene_blocks(np.array([5.0, 1, 1, 1, 1, 1, 5, 0, 0, 1]), n_blocks=4)
    assert bounds.tolist() == [0, 1, 4, 7, 10]
    assert gene_blocks(np.zeros(3), n_blocks=8).tolist() == [0, 1, 2, 3]
    assert gene_blocks(np.ones(100), n_blocks=4).tolist() == [0, 25, 50, 75, 100]


def test_run_pca_rejects_an_unknown_solver():
    data = hvg_like(n_cells=30, n_genes=8)
    with pytest.raises(ValueError, match="unknown PCA solver 'lobpcg'"):
        preprocess.run_pca(data, n_comps=3, seed=0, solver="lobpcg")


def in_memory(X, donors, max_cells):
    """``each_batch`` over counts in memory: batches of whole donors, or one of all cells."""
    labels = np.asarray(donors).astype(str)
    if max_cells is None:
        groups = [np.arange(X.shape[0])]
    else:
        groups = selection.group_batches(labels, max_cells)

    def each_batch(fn, extra):
        for positions in groups:
            yield fn(positions, X[positions], extra(positions))

    return each_batch


def run(adata, keep=None, **kw):
    """Preprocess counts in memory: the kept cells as one batch."""
    params = {
        "target_sum": 1e4,
        "n_top_genes": 50,
        "hvg_span": 0.8,
        "blocklist_regex": BLOCK,
        "n_comps": 5,
        "seed": 0,
        "pca_solver": "covariance",
    }
    cells = adata if keep is None else adata[keep].copy()
    X = cells.X
    before = X.copy()
    result = preprocess.preprocess(
        in_memory(X, cells.obs["donor_id"], None),
        lambda genes: X[:, genes],
        obs=cells.obs,
        var=cells.var,
        **(params | kw),
    )
    assert (X != before).nnz == 0  # the counts read are not modified
    return result


def test_preprocess_result_layout():
    adata = counts_dataset()
    before = adata.copy()
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[:7] = False
    result, info = run(adata, keep)
    assert result.X is None
    assert result.obs_names.tolist() == adata.obs_names[keep].tolist()
    assert result.obs.columns.tolist() == ["donor_id", "cell_type", "sex", "total_counts"]
    np.testing.assert_allclose(result.obs["total_counts"], adata.X[keep].sum(axis=1).A1)
    assert result.var_names.equals(adata.var_names)
    for col in ("feature_name", "highly_variable", "highly_variable_rank", "blocked"):
        assert col in result.var.columns
    var = result.var
    assert var.loc[var["feature_name"] == "TRBV20-1", "highly_variable"].item()
    assert var.loc[var["feature_name"] == "TRBV20-1", "blocked"].item()
    assert not var.loc[var["feature_name"] == "TRBV20-1", "used_for_pca"].item()
    assert (var["used_for_pca"] == (var["highly_variable"] & ~var["blocked"])).all()
    assert result.obsm["X_pca"].shape == (keep.sum(), 5)
    assert result.varm["PCs"].shape == (adata.n_vars, 5)
    assert not result.varm["PCs"][~var["used_for_pca"].to_numpy()].any()
    assert len(result.uns["pca"]["variance_ratio"]) == 5
    assert result.uns["pca"]["params"]["scaled"] is False
    assert info["hvg_found"] == 50
    assert info["hvg_used"] == 50 - info["hvg_blocked"]
    assert info["hvg_blocked"] >= 2
    # PC1 separates the two cell types
    pc1 = result.obsm["X_pca"][:, 0]
    types = result.obs["cell_type"].to_numpy()
    assert abs(pc1[types == "T cell"].mean() - pc1[types == "B cell"].mean()) > pc1.std()
    assert (adata.X != before.X).nnz == 0
    assert adata.obs.equals(before.obs) and adata.var.equals(before.var)


def test_preprocess_blocklist_removing_everything():
    with pytest.raises(InputError) as err:
        run(counts_dataset(), blocklist_regex=".")
    assert str(err.value) == (
        "preprocess.blocklist_regex removes every highly variable gene; none left for PCA"
    )


def test_plots_and_variance_table():
    result, _ = run(counts_dataset())
    table = preprocess_plots.variance_table(result)
    assert table["pc"].tolist() == [1, 2, 3, 4, 5]
    assert table["cumulative"].iloc[-1] == pytest.approx(table["variance_ratio"].sum())
    rows = np.arange(0, result.n_obs, 2)
    assert len(preprocess_plots.plot_pca(result, rows).axes) == 3  # two panels, a colour bar
    assert preprocess_plots.plot_elbow(table).axes[0].get_yscale() == "log"
    figures, tables = preprocess_plots.figures_and_tables(result, seed=0)
    assert sorted(figures) == ["pca.png", "pca_variance_ratio.png"]
    pd.testing.assert_frame_equal(tables["pca_variance_ratio.csv"], table)


# --------------------------------------------------------------------------- stage


def write_inputs(tmp_path, adata, keep):
    write_selected(adata, tmp_path)
    table = pd.DataFrame({"keep": keep}, index=pd.Index(adata.obs_names, name="cell_id"))
    io.write_parquet(table, tmp_path / "cells.parquet")


def run_stage(tmp_path, monkeypatch, **pre_params):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", "logs")
    params = {"n_top_genes": 40, "n_comps": 5} | pre_params
    write_params(tmp_path / "params.yaml", tiny_params(preprocess=params))
    argv = ["--params", "params.yaml", "--selection", "selection.h5ad", "--raw", "dataset.h5ad"]
    argv += [
        "--cells",
        "cells.parquet",
        "--out",
        "out/pca.h5ad",
        "--metrics",
        "out/preprocess.json",
        "--plots",
        "out/plots",
    ]
    return stage.main(argv), tmp_path / "out"


def test_stage_writes_embedding_without_x(tmp_path, monkeypatch):
    adata = counts_dataset()
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[::10] = False
    write_inputs(tmp_path, adata, keep)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 0
    result = io.read_h5ad(out / "pca.h5ad")
    assert result.X is None
    assert result.n_obs == keep.sum()
    assert result.obsm["X_pca"].shape == (keep.sum(), 5)
    assert result.uns["provenance"]["stage"] == "preprocess"
    assert sorted(json.loads(result.uns["provenance"]["inputs"])) == [
        "cells.parquet",
        "dataset.h5ad",
        "selection.h5ad",
    ]
    metrics = json.loads((out / "preprocess.json").read_text())
    assert metrics["cells"] == keep.sum()
    assert metrics["hvg_found"] == 40
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "pca.png",
        "pca_variance_ratio.csv",
        "pca_variance_ratio.png",
    ]
    first = (out / "pca.h5ad").read_bytes()
    code, out = run_stage(tmp_path, monkeypatch)
    assert (out / "pca.h5ad").read_bytes() == first


def test_stage_cells_table_must_match(tmp_path, monkeypatch, capsys):
    adata = counts_dataset()
    write_inputs(tmp_path, adata[:-1].copy(), np.ones(adata.n_obs - 1, dtype=bool))
    write_selected(adata, tmp_path)
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: preprocess: cells.parquet: 1 cells of selection.h5ad are not listed "
        "(e.g. 'cell149'); expected one row per cell"
    )


def test_stage_cells_table_without_keep(tmp_path, monkeypatch, capsys):
    adata = counts_dataset()
    write_selected(adata, tmp_path)
    table = pd.DataFrame({"other": 1}, index=pd.Index(adata.obs_names, name="cell_id"))
    io.write_parquet(table, tmp_path / "cells.parquet")
    code, _ = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: preprocess: cells.parquet: column 'keep' missing"
    )


def test_stage_refuses_a_cells_table_keeping_no_cell(tmp_path, monkeypatch, capsys):
    adata = counts_dataset()
    write_inputs(tmp_path, adata, np.zeros(adata.n_obs, dtype=bool))
    code, out = run_stage(tmp_path, monkeypatch)
    assert code == 2
    assert not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: preprocess: cells.parquet: no cell has keep == True"
    )


def test_stage_too_many_components(tmp_path, monkeypatch, capsys):
    adata = counts_dataset()
    write_inputs(tmp_path, adata, np.ones(adata.n_obs, dtype=bool))
    code, _ = run_stage(tmp_path, monkeypatch, n_comps=60)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: preprocess: preprocess.n_comps=60: needs more cells")


# --------------------------------------------------------------------------- batches


def interleaved(adata):
    """The same cells with the donors' cells interleaved (not contiguous)."""
    return adata[np.random.default_rng(3).permutation(adata.n_obs)].copy()


def donor_batches(adata, max_cells):
    labels = adata.obs["donor_id"].astype(str).to_numpy()
    for positions in selection.group_batches(labels, max_cells):
        yield positions, adata.X[positions]


@pytest.mark.parametrize("max_cells", [1, 70, 1000])
def test_hvg_streamed_equals_one_pass(max_cells):
    # d4 (1 cell) is skipped: the reasons keep the donors' order
    adata = interleaved(counts_dataset(sizes=(60, 50, 40, 1)))
    whole, info = hvg.highly_variable_genes(adata, n_top_genes=40, span=0.8)
    parts, parts_info = hvg.highly_variable_genes_streamed(
        donor_batches(adata, max_cells),
        labels=adata.obs["donor_id"].to_numpy(),
        var_names=adata.var_names,
        n_top_genes=40,
        span=0.8,
    )
    pd.testing.assert_frame_equal(whole, parts, check_exact=True)
    assert info == parts_info and list(info["batches_skipped"]) == ["d4"]


def test_hvg_streamed_refuses_split_donors():
    adata = counts_dataset()
    halves = [np.arange(0, adata.n_obs, 2), np.arange(1, adata.n_obs, 2)]
    with pytest.raises(ValueError, match="split between batches"):
        hvg.highly_variable_genes_streamed(
            ((p, adata.X[p]) for p in halves),
            labels=adata.obs["donor_id"].to_numpy(),
            var_names=adata.var_names,
            n_top_genes=40,
            span=0.8,
        )


def test_column_moments_do_not_depend_on_the_split():
    X = counts_dataset().X
    one = hvg.ColumnMoments(X.shape[1])
    one.add(X)
    whole = one.mean_var()
    dense = X.toarray().astype(np.float64)
    np.testing.assert_allclose(whole[0], dense.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole[1], dense.var(axis=0, ddof=1), rtol=1e-9)
    moments = hvg.ColumnMoments(X.shape[1])
    for lo in (100, 0, 37):  # any order, any split
        moments.add(X[lo : {100: None, 0: 37, 37: 100}[lo]], block=7)
    for a, b in zip(whole, moments.mean_var(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("max_cells", [1, 70, 1000])
def test_preprocess_does_not_depend_on_the_batches(max_cells, monkeypatch):
    adata = interleaved(counts_dataset(sizes=(60, 50, 40)))
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[::7] = False
    whole, info = run(adata, keep)  # one batch, one row chunk
    cells = adata[keep].copy()
    used = whole.var["used_for_pca"].to_numpy()
    # the parts agree with the one-pass steps, each checked against scanpy above
    hvgs, _ = hvg.highly_variable_genes(cells, n_top_genes=50, span=0.8)
    assert whole.var["highly_variable"].tolist() == hvgs["highly_variable"].tolist()
    data = preprocess.log_normalise(cells.X, columns=used, target_sum=1e4)
    np.testing.assert_array_equal(
        whole.obsm["X_pca"], preprocess.run_pca(data, n_comps=5, seed=0)["X_pca"]
    )
    monkeypatch.setattr(preprocess_batches, "SCALE_ROWS", 7)  # several row chunks
    asked = []

    def read_columns(genes):
        asked.append(genes.copy())
        return cells.X[:, genes].copy()

    settings = {
        "obs": cells.obs,
        "var": cells.var,
        "target_sum": 1e4,
        "n_top_genes": 50,
        "hvg_span": 0.8,
        "blocklist_regex": BLOCK,
        "n_comps": 5,
        "seed": 0,
    }
    each_batch = in_memory(cells.X, cells.obs["donor_id"], max_cells)
    parts, parts_info = preprocess.preprocess(each_batch, read_columns, **settings)
    assert info == parts_info
    assert len(asked) == 1 and asked[0].tolist() == used.tolist()
    assert_same_bits(whole, parts)
    # the second pass batch by batch too: the same bits
    batched, batched_info = preprocess.preprocess(each_batch, None, **settings)
    assert batched_info == info
    assert_same_bits(whole, batched)


def assert_same_bits(a, b):
    """Two preprocess results are the same bits (obs, var, embedding, loadings, uns)."""
    pd.testing.assert_frame_equal(a.obs, b.obs, check_exact=True)
    pd.testing.assert_frame_equal(a.var, b.var, check_exact=True)
    np.testing.assert_array_equal(a.obsm["X_pca"], b.obsm["X_pca"])
    np.testing.assert_array_equal(a.varm["PCs"], b.varm["PCs"])
    for key in ("variance", "variance_ratio"):
        np.testing.assert_array_equal(a.uns["pca"][key], b.uns["pca"][key])
    assert a.uns["hvg"] == b.uns["hvg"]


def test_stage_output_does_not_depend_on_the_batch_size(tmp_path, monkeypatch):
    adata = interleaved(counts_dataset())
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[::10] = False
    outputs = []
    for size in ("1", "70", ""):
        monkeypatch.setenv(selection.BATCH_CELLS_ENV, size)
        folder = tmp_path / (size or "default")
        folder.mkdir()
        write_inputs(folder, adata, keep)
        code, out = run_stage(folder, monkeypatch)
        assert code == 0
        outputs.append([(out / n).read_bytes() for n in ("pca.h5ad", "preprocess.json")])
    assert outputs[0] == outputs[1]


def test_column_moments_merge_gives_the_bits_of_one_pass():
    X = counts_dataset().X
    one = hvg.ColumnMoments(X.shape[1])
    one.add(X)
    merged = hvg.ColumnMoments(X.shape[1])
    for lo, hi in ((100, None), (0, 37), (37, 100)):  # any order, any split
        part = hvg.ColumnMoments(X.shape[1])
        part.add(X[lo:hi], block=5)
        merged.merge(part)
    assert merged.n_rows == one.n_rows == X.shape[0]
    np.testing.assert_array_equal(merged.sums, one.sums)
    np.testing.assert_array_equal(merged.squares, one.squares)


def test_stack_rows_puts_the_blocks_back_in_cell_order():
    X = sparse.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [3, 4, 0], [0, 5, 6]], np.float32))
    blocks = [(np.array([1, 3]), X[[1, 3]]), (np.array([0, 2]), X[[0, 2]])]
    stacked = preprocess_batches.stack_rows(iter(blocks), 4)
    assert stacked.dtype == np.float32 and stacked.indices.dtype == np.int32
    np.testing.assert_array_equal(stacked.indptr, X.indptr)
    np.testing.assert_array_equal(stacked.indices, X.indices)
    np.testing.assert_array_equal(stacked.data, X.data)
    with pytest.raises(ValueError, match="miss 2 of 4 cells"):
        preprocess_batches.stack_rows(blocks[:1], 4)
    with pytest.raises(ValueError, match="more than one block"):
        preprocess_batches.stack_rows([blocks[0], blocks[0]], 4)


def test_stage_output_is_the_same_bytes_here_and_on_dask(tmp_path, monkeypatch, capsys):
    # donors interleaved, batches of at most 70 cells: several jobs of whole donors
    adata = interleaved(counts_dataset(sizes=(60, 50, 40, 1)))
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[::10] = False
    monkeypatch.setenv(selection.BATCH_CELLS_ENV, "70")
    outputs = []
    for scheduler in ("", "local:2"):
        monkeypatch.setenv(executor.SCHEDULER_VAR, scheduler)
        folder = tmp_path / (scheduler.replace(":", "") or "here")
        folder.mkdir()
        write_inputs(folder, adata, keep)
        code, out = run_stage(folder, monkeypatch)
        assert code == 0
        outputs.append([(out / n).read_bytes() for n in ("pca.h5ad", "preprocess.json")])
        said = capsys.readouterr().err
        # the batches ran as jobs of the cluster, on Dask only
        assert ("Dask scheduler tcp://127.0.0.1:" in said) == bool(scheduler), said
    assert outputs[0] == outputs[1]
