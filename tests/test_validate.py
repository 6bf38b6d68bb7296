from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from immune_aging import count_checks, io
from immune_aging.errors import InputError
from immune_aging.validate import counts_location, validate_dataset, validated

P = "data/raw/dataset.h5ad"
COUNTS = np.array(
    [[1, 0, 3], [0, 2, 0], [4, 1, 0], [0, 0, 5]],
    dtype=np.float32,
)


def make(x=COUNTS, *, donors=("d1", "d1", "d2", "d2"), obs_names=None, var_names=None, raw=None):
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donors),
            "cell_type": ["T cell", "B cell", "T cell", "B cell"],
            "development_stage": ["63-year-old stage"] * 2 + ["unknown"] * 2,
            "sex": ["female"] * 2 + ["male"] * 2,
        },
        index=obs_names or ["c1", "c2", "c3", "c4"],
    )
    var = pd.DataFrame(
        {"feature_name": ["CD3E", "MS4A1", "MT-CO1"]},
        index=var_names or ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"],
    )
    adata = ad.AnnData(X=sp.csr_matrix(x) if x is not None else None, obs=obs, var=var)
    if raw is not None:
        adata.raw = ad.AnnData(X=sp.csr_matrix(raw), obs=obs, var=var)
    return adata


def normalised(x=COUNTS):
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)


def message(adata) -> str:
    with pytest.raises(InputError) as err:
        validate_dataset(adata, P)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_counts_in_x():
    assert validate_dataset(make(), P) == "X"


def test_counts_in_raw_when_x_is_normalised():
    assert validate_dataset(make(normalised(), raw=COUNTS), P) == "raw.X"


def test_dense_and_integer_matrices():
    adata = make()
    adata.X = COUNTS.astype(np.int64)
    assert counts_location(adata, P) == "X"
    adata.X = COUNTS.copy()
    assert counts_location(adata, P) == "X"


def test_missing_obs_column():
    adata = make()
    del adata.obs["donor_id"]
    assert message(adata) == (
        f"{P}: obs column 'donor_id' missing "
        "(required: donor_id, cell_type, development_stage, sex)"
    )


def test_missing_feature_name():
    adata = make()
    del adata.var["feature_name"]
    assert message(adata) == f"{P}: var column 'feature_name' (gene symbols) missing"


def test_normalised_x_only():
    assert message(make(normalised())) == (
        f"{P}: X holds non-integer values (e.g. 7.824) and there is no raw.X: "
        "raw counts are required"
    )


def test_negative_counts():
    x = COUNTS.copy()
    x[1, 2] = -1
    assert message(make(x)) == (
        f"{P}: X holds negative values (e.g. -1) and there is no raw.X: raw counts are required"
    )


def test_non_integer_counts_in_x_and_raw():
    raw = COUNTS.copy()
    raw[0, 0] = 1.5
    assert message(make(normalised(), raw=raw)) == (
        f"{P}: neither X nor raw.X holds raw counts (X: non-integer values (e.g. 7.824); "
        "raw.X: non-integer values (e.g. 1.5)): raw counts are required"
    )


def test_non_finite_values():
    x = COUNTS.copy()
    x[2, 1] = np.nan
    assert message(make(x)) == (
        f"{P}: X holds non-finite values (e.g. nan) and there is no raw.X: raw counts are required"
    )


def test_only_zeros():
    assert message(make(np.zeros((4, 3), dtype=np.float32))) == (
        f"{P}: X holds only zeros and there is no raw.X: raw counts are required"
    )


def test_duplicate_cell_names():
    with pytest.warns(UserWarning, match="not unique"):
        adata = make(obs_names=["c1", "c2", "c2", "c4"])
    assert message(adata) == (f"{P}: obs names (cell IDs) are not unique: 'c2' occurs 2 times")


def test_duplicate_gene_names():
    ids = ["ENSG00000000001", "ENSG00000000001", "ENSG00000000003"]
    with pytest.warns(UserWarning, match="not unique"):
        adata = make(var_names=ids)
    assert message(adata) == (
        f"{P}: var names (gene IDs) are not unique: 'ENSG00000000001' occurs 2 times"
    )


def test_single_donor():
    assert message(make(donors=("d1",) * 4)) == (
        f"{P}: obs column 'donor_id' holds 1 donor ('d1'); at least 2 are required"
    )


def test_missing_donor_values():
    adata = make()
    adata.obs["donor_id"] = pd.Categorical(["d1", None, "d2", "d2"])
    assert message(adata) == f"{P}: obs column 'donor_id' has 1 missing values"


def test_raw_genes_must_match_symbols():
    adata = make(normalised())
    raw = ad.AnnData(
        X=sp.csr_matrix(COUNTS), obs=adata.obs, var=pd.DataFrame(index=["a", "b", "c"])
    )
    adata.raw = raw
    assert message(adata) == (
        f"{P}: raw.var has no 'feature_name' column and its genes differ from var"
    )


def test_not_an_h5ad_file(tmp_path):
    path = tmp_path / "dataset.h5ad"
    path.write_text("donor_id,cell_type\n")
    with pytest.raises(InputError) as err, validated(path):
        pass
    assert str(err.value) == f"{path}: not an h5ad file (no HDF5 signature)"


def test_backed_file_reads_raw_counts(tmp_path):
    path = tmp_path / "dataset.h5ad"
    io.write_h5ad(make(normalised(), raw=COUNTS), path)
    with validated(path) as (adata, location):
        assert adata.isbacked and location == "raw.X"
    assert not adata.file.is_open  # closed after the block


def test_sample_of_zeros_reads_on_and_finds_values(tmp_path):
    """The sampled rows hold only zeros: the scan goes on to the rows with values."""
    n = 3000
    x = sp.lil_matrix((n, 3), dtype=np.float32)
    x[2999, 1] = 0.5  # one normalised value, outside the sampled blocks
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame(
            {
                "donor_id": ["a", "b"] * (n // 2),
                "cell_type": "T",
                "development_stage": "unknown",
                "sex": "male",
            },
            index=[f"c{i}" for i in range(n)],
        ),
        var=pd.DataFrame({"feature_name": ["A", "B", "C"]}, index=["g1", "g2", "g3"]),
    )
    assert message(adata).startswith(f"{P}: X holds non-integer values (e.g. 0.5)")
    adata.X = sp.csr_matrix(adata.X * 2)
    assert validate_dataset(adata, P) == "X"


# --------------------------------------------------------------------------- raw.X rule


def test_raw_x_is_chosen_when_x_is_integer_valued_too(caplog):
    """CELLxGENE's rule: raw.X holds the raw counts when present, even if X looks like counts."""
    doubled = COUNTS * 2  # integer-valued, but not the raw counts
    with caplog.at_level("INFO", logger="immune_aging.validate"):
        assert validate_dataset(make(doubled, raw=COUNTS), P) == "raw.X"
    assert "X and raw.X both hold integer values; raw counts are taken from raw.X" in caplog.text


def test_x_is_taken_over_a_raw_x_without_counts_with_a_warning(caplog):
    """A raw.X of normalised values (scanpy's habit) and counts in X: X, said loudly."""
    with caplog.at_level("WARNING", logger="immune_aging.validate"):
        assert validate_dataset(make(COUNTS, raw=normalised()), P) == "X"
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        f"{P}: raw.X holds non-integer values (e.g. 7.824), so the raw counts are taken from X "
        "(CELLxGENE keeps them in raw.X when it exists)"
    )


# --------------------------------------------------------------------------- sparse structure


def csr_error(*args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        count_checks.check_csr_block(*args, where=f"{P}: X", **kwargs)
    return str(err.value)


def test_sound_csr_block_passes():
    count_checks.check_csr_block(np.array([0, 2, 2, 3]), np.array([0, 4, 1]), 5, where="x")
    count_checks.check_csr_block(np.array([0]), np.array([], dtype=np.int32), 5, where="x")


def test_column_index_out_of_range():
    assert csr_error(np.array([0, 2, 3]), np.array([0, -3, 1]), 5) == (
        f"{P}: X: corrupt sparse matrix (column index -3 outside 0..4)"
    )
    assert csr_error(np.array([0, 2, 3]), np.array([0, 5, 1]), 5) == (
        f"{P}: X: corrupt sparse matrix (column index 5 outside 0..4)"
    )


def test_indptr_defects():
    assert csr_error(np.array([0, 3, 2]), np.array([0, 1]), 5) == (
        f"{P}: X: corrupt sparse matrix (indptr decreases at row 1: 3 then 2)"
    )
    assert csr_error(np.array([1, 2]), np.array([0, 1]), 5) == (
        f"{P}: X: corrupt sparse matrix (indptr starts at 1, not 0)"
    )
    assert csr_error(np.array([0, 1]), np.array([0, 1]), 5) == (
        f"{P}: X: corrupt sparse matrix (indptr ends at 1, but there are 2 stored entries)"
    )
    with pytest.raises(InputError, match=r"indptr has 3 entries for 4 rows, expected 5\)$"):
        count_checks.check_csr_indptr(np.array([0, 1, 2]), 4, 2, where="x")
    with pytest.raises(InputError, match=r"indptr is not a 1-D integer array\)$"):
        count_checks.check_csr_indptr(np.array([0.0, 1.0]), 1, 1, where="x")


def test_validation_sample_checks_column_indices(tmp_path):
    """The data stage's sample already stops a file whose sampled rows have bad indices."""
    path = tmp_path / "dataset.h5ad"
    x = sp.csr_matrix(COUNTS)
    x.indices[1] = 7
    adata = make()
    adata.X = x
    io.write_h5ad(adata, path)
    with pytest.raises(InputError) as err, validated(path):
        pass
    assert str(err.value) == f"{path}: X: corrupt sparse matrix (column index 7 outside 0..2)"
