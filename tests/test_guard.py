"""The structural check of h5ad files (immune_aging.guard) and damaged-file cases.

Each bad-input case here follows the catalogue's assertions (tests/test_bad_inputs.py):
exit status 2, exactly one ``error: `` line with the expected text, no traceback,
nothing written. Most run the stage's ``main(argv)`` in this process; one runs
``python -m immune_aging.stages.data`` end to end on the damage that used to hang it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from tests.conftest import REPO, tiny_params, write_params

from immune_aging import guard, h5walk, io
from immune_aging.errors import InputError
from immune_aging.stages import data as data_stage
from immune_aging.stages import filter as filter_stage

EXTERNAL = "data/external/dataset.h5ad"
RAW = "data/raw/dataset.h5ad"
DATA_ARGS = (
    "--external data/external --download-cache data/.download --out data/raw "
    "--metrics metrics/data.json"
).split()
FILTER_ARGS = (
    f"--input {RAW} --out data/filter/selection.h5ad --metrics metrics/filter.json "
    "--plots plots/filter"
).split()
FILTER = {"cutoff_percentile": 1.0, "min_cells_per_celltype": 2, "percent_donors": 0.5}


def dataset(n_cells: int = 400, n_genes: int = 200, *, cellxgene: bool = False) -> ad.AnnData:
    """A small valid dataset; ``cellxgene``: normalised X, counts in raw.X, uns strings."""
    rng = np.random.default_rng(0)
    x = sp.random(
        n_cells,
        n_genes,
        density=0.1,
        format="csr",
        random_state=0,
        data_rvs=lambda k: rng.integers(1, 20, k),
    ).astype(np.float32)
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical([f"D{i % 4}" for i in range(n_cells)]),
            "cell_type": pd.Categorical(
                [("T cell", "B cell")[i // 4 % 2] for i in range(n_cells)]
            ),
            "development_stage": pd.Categorical(["50-year-old stage"] * n_cells),
            "sex": pd.Categorical(["female", "male"] * (n_cells // 2)),
            "pool_number": pd.Categorical([f"P{i % 2}" for i in range(n_cells)]),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"feature_name": [f"G{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    adata = ad.AnnData(X=x, obs=obs, var=var)
    if cellxgene:
        adata.raw = adata.copy()
        adata.X = sp.csr_matrix(np.log1p(x.toarray())).astype(np.float32)
        adata.uns["schema_version"] = "5.0.0"
    return adata


def zero_bytes(path: Path, offset: int, length: int) -> None:
    """Zero ``length`` bytes at ``offset`` in place (a bad disk block, a cut download)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(min(length, path.stat().st_size - offset)))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the working directory) with tiny params."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "data/external").mkdir(parents=True)
    (tmp_path / "data/raw").mkdir(parents=True)
    write_params(
        tmp_path / "params.yaml",
        tiny_params(data={"source": EXTERNAL, "sha256": None}, filter=FILTER),
    )
    return tmp_path


def files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "logs" not in p.parts
    }


def stops_with(capsys, root: Path, main, argv: list[str], expected: str) -> None:
    """Run a stage in-process: exit 2, exactly the expected line, nothing written."""
    before = files(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [expected], err
    assert files(root) == before


# --------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("cellxgene", [False, True], ids=["counts-x", "cellxgene-raw"])
def test_valid_file_passes_and_reads_annotations_whole(tmp_path, cellxgene):
    path = tmp_path / "ok.h5ad"
    dataset(cellxgene=cellxgene).write_h5ad(path)
    result = guard.check_h5ad(path)
    assert result["objects"] > 20
    assert result["read_bytes"] > 0 and result["chunked_only"] == 0
    assert (
        result["cpu_s"] < result["cpu_limit_s"] == round(guard.cpu_limit(path.stat().st_size), 1)
    )


def test_large_matrix_arrays_are_checked_by_chunk_index_only(tmp_path, monkeypatch):
    path = tmp_path / "ok.h5ad"
    io.write_h5ad(dataset(), path)
    monkeypatch.setattr(h5walk, "FULL_READ_MAX_BYTES", 4096)
    result = guard.check_h5ad(path)
    assert result["chunked_only"] >= 2  # X/data, X/indices


def test_cpu_limit_grows_with_file_size():
    assert guard.cpu_limit(0) == guard.CPU_BASE_S
    assert guard.cpu_limit(4 << 30) == pytest.approx(guard.CPU_BASE_S + 4 * guard.CPU_PER_GIB_S)


def test_zeroed_global_heap_fails_within_seconds(tmp_path):
    """The reported damage: 64 KiB zeroed at byte 4096 of a CELLxGENE-layout file.

    HDF5 reads a variable-length string attribute from a global heap of zeros and
    never returns; the check stops it at its CPU limit (the default one, 5 s here).
    """
    path = tmp_path / "x.h5ad"
    dataset(cellxgene=True).write_h5ad(path)
    zero_bytes(path, 4096, 65536)
    t0 = time.monotonic()
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert time.monotonic() - t0 < guard.WALL_FACTOR * guard.cpu_limit(path.stat().st_size) + 30
    assert str(err.value) == (
        f"{path}: corrupt HDF5 file (reading the attribute 'encoding-type' of / did not finish "
        "within the limit of 5 s of CPU time for a file of this size)"
    )


def test_truncated_file_is_not_readable(tmp_path):
    path = tmp_path / "cut.h5ad"
    dataset().write_h5ad(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"cut\.h5ad: not a readable h5ad file \(OSError\)$"):
        guard.check_h5ad(path)


def test_no_hdf5_signature_is_found_without_calling_hdf5(tmp_path):
    path = tmp_path / "text.h5ad"
    path.write_text("donor_id,cell_type\n")
    assert not guard.has_hdf5_signature(path)
    with pytest.raises(InputError, match=r"not an h5ad file \(no HDF5 signature\)$"):
        guard.check_h5ad(path)
    user_block = tmp_path / "user-block.h5"
    with h5py.File(user_block, "w", userblock_size=512) as f:
        f["x"] = 1
    assert guard.has_hdf5_signature(user_block)


def test_hdf5_file_that_is_not_anndata(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_group("matrix").create_dataset("values", data=np.arange(10))
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value) == f"{path}: not an h5ad file (no 'obs' at the top level)"


def test_external_link_is_refused(tmp_path):
    path = tmp_path / "linked.h5ad"
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["uns/elsewhere"] = h5py.ExternalLink("/dev/zero", "/data")
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value) == (
        f"{path}: corrupt HDF5 file (/uns/elsewhere: external link to '/dev/zero' (not followed))"
    )


def test_datasets_stored_in_other_files_are_refused(tmp_path):
    path = tmp_path / "vds.h5ad"
    dataset().write_h5ad(path)
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["v"] = np.arange(4)
    layout = h5py.VirtualLayout(shape=(4,), dtype=np.int64)
    layout[:] = h5py.VirtualSource(str(source), "v", shape=(4,))
    with h5py.File(path, "a") as f:
        f["uns"].create_virtual_dataset("mapped", layout)
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value) == (
        f"{path}: corrupt HDF5 file (/uns/mapped: a virtual dataset, mapping other files"
        " (not followed))"
    )
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["uns"].create_dataset("outside", shape=(4,), dtype="i8", external=[(str(source), 0, 32)])
    with pytest.raises(InputError, match=r"/uns/outside: its data are stored in other files"):
        guard.check_h5ad(path)


def test_names_from_the_file_are_printed_safely(tmp_path):
    path = tmp_path / "names.h5ad"
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["uns"]["bad\x1b[31mname\nx"] = h5py.ExternalLink("other.h5", "/")
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value) == (
        f"{path}: corrupt HDF5 file (/uns/bad?[31mname?x: external link to 'other.h5' (not"
        " followed))"
    )


def test_indptr_and_shape_are_checked(tmp_path):
    path = tmp_path / "indptr.h5ad"
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["X/indptr"][10] = 10**9
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value).startswith(
        f"{path}: corrupt HDF5 file (X/indptr: corrupt sparse matrix (indptr decreases at row 10"
    )
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["X"].attrs["shape"] = np.array([400, 300])
    with pytest.raises(InputError, match=r"\(X: 300 columns, but var has 200\)$"):
        guard.check_h5ad(path)


def test_unknown_matrix_encoding(tmp_path):
    path = tmp_path / "flip.h5ad"
    dataset().write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["X"].attrs["encoding-type"] = "csr_matzix"
    with pytest.raises(InputError, match=r"\(X: unknown matrix encoding 'csr_matzix'\)$"):
        guard.check_h5ad(path)


def test_a_crash_in_the_check_is_reported_and_leaves_no_core_file(tmp_path, monkeypatch):
    path = tmp_path / "ok.h5ad"
    dataset().write_h5ad(path)
    monkeypatch.chdir(tmp_path)

    def crash(self, dset, name):
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(h5walk.Walk, "dataset", crash)
    with pytest.raises(InputError) as err:
        guard.check_h5ad(path)
    assert str(err.value).startswith(
        f"{path}: corrupt HDF5 file (the HDF5 library crashed (SIGSEGV) opening /X/data"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5ad"]


def test_a_check_that_stops_using_cpu_is_killed_at_the_wall_limit(tmp_path, monkeypatch):
    path = tmp_path / "ok.h5ad"
    dataset().write_h5ad(path)
    monkeypatch.setattr(guard, "WALL_FACTOR", 0.0)
    monkeypatch.setattr(guard, "WALL_EXTRA_S", 1.0)
    monkeypatch.setattr(h5walk.Walk, "dataset", lambda self, dset, name: time.sleep(60))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"opening /X/data did not finish within 1 s of wall"):
        guard.check_h5ad(path)
    assert time.monotonic() - t0 < 10


def test_without_fork_the_check_runs_in_a_new_interpreter(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.h5ad", tmp_path / "bad.h5ad"
    dataset().write_h5ad(good)
    dataset().write_h5ad(bad)
    with h5py.File(bad, "a") as f:
        f["X"].attrs["encoding-type"] = "csr_matzix"

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(guard.os, "fork", no_fork)
    assert guard.check_h5ad(good)["objects"] > 20
    with pytest.raises(InputError, match=r"unknown matrix encoding 'csr_matzix'"):
        guard.check_h5ad(bad)


def test_reading_translates_hdf5_errors_only(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.arange(10))
    with pytest.raises(InputError, match=r"x\.h5: corrupt HDF5 file \(X: KeyError: .*nope"):
        with h5py.File(path, "r") as f, guard.reading(path, "X"):
            f["nope"]
    with pytest.raises(ZeroDivisionError):
        with guard.reading(path, "X"):
            1 / 0  # noqa: B018  (a bug keeps its traceback)


def test_damaged_compressed_counts_fail_in_filter_with_one_line(project, capsys, monkeypatch):
    """A chunk of X/data that no longer decompresses, in rows validation does not read.

    The check reads the matrix arrays by chunk index only (as on a large file), the
    validation sample misses the chunk, so the count reader meets the damage.
    """
    from immune_aging import validate

    monkeypatch.setattr(h5walk, "FULL_READ_MAX_BYTES", 1024)
    adata = dataset(n_cells=6000, n_genes=100)
    io.write_h5ad(adata, project / RAW)
    sampled = np.zeros(adata.n_obs, dtype=bool)
    for a, b in validate._sample_starts(adata.n_obs):
        sampled[a:b] = True
    with h5py.File(project / RAW, "r") as f:
        chunks = []
        f["X/data"].id.chunk_iter(chunks.append)
        size = f["X/data"].chunks[0]
    indptr = adata.X.indptr

    def unsampled(info) -> bool:
        first = np.searchsorted(indptr, info.chunk_offset[0], side="right") - 1
        last = np.searchsorted(indptr, info.chunk_offset[0] + size, side="right")
        return not sampled[first : last + 1].any()

    target = next(c for c in chunks if unsampled(c))
    with open(project / RAW, "r+b") as fh:
        fh.seek(target.byte_offset)  # the start of the compressed chunk
        fh.write(b"\xff" * 8)
    stops_with(
        capsys,
        project,
        filter_stage.main,
        FILTER_ARGS,
        f"error: filter: {RAW}: corrupt HDF5 file (X: OSError: Can't synchronously read data"
        " (filter returned failure during read))",
    )


# --------------------------------------------------------------------------- stages


def test_data_stage_on_the_reported_damage_ends_in_seconds_end_to_end(project):
    """``python -m immune_aging.stages.data``, as dvc runs it, on the file that used to hang."""
    path = project / EXTERNAL
    dataset(cellxgene=True).write_h5ad(path)
    zero_bytes(path, 4096, 65536)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), IMMUNE_AGING_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "immune_aging.stages.data", *DATA_ARGS],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: data: {EXTERNAL}: corrupt HDF5 file (reading the attribute 'encoding-type' of"
        " / did not finish within the limit of 5 s of CPU time for a file of this size)"
    ]
    assert not (project / "data/raw/dataset.h5ad").exists()
    assert not (project / "metrics/data.json").exists()
    assert sorted(p.name for p in (project / "data").iterdir()) == ["external", "raw"]
    assert seconds < 120


def test_column_indices_out_of_range_stop_filter(project, capsys):
    """The second reported damage: random bytes in the counts' column indices."""
    adata = dataset(cellxgene=True)
    x = adata.raw.X.copy()
    x.indices[x.indptr[350] + 1] = -7
    adata.raw = ad.AnnData(X=x, obs=adata.obs, var=adata.raw.var)
    adata.write_h5ad(project / RAW)
    stops_with(
        capsys,
        project,
        filter_stage.main,
        FILTER_ARGS,
        f"error: filter: {RAW}: raw.X: corrupt sparse matrix (column index -7 outside 0..199)",
    )


def test_column_indices_out_of_range_unsampled_stop_filter(project, capsys, monkeypatch):
    """Bad indices only in rows the data stage's sample skips: filter reads every row."""
    from immune_aging import validate

    monkeypatch.setattr(validate, "_SAMPLE_ROWS", 100)
    adata = dataset(n_cells=2000)
    sampled = np.zeros(adata.n_obs, dtype=bool)
    for a, b in validate._sample_starts(adata.n_obs):
        sampled[a:b] = True
    row = int(np.flatnonzero(~sampled)[0])
    x = adata.X.copy()
    x.indices[x.indptr[row]] = 500
    adata.X = x
    io.write_h5ad(adata, project / EXTERNAL)
    assert data_stage.main(DATA_ARGS) == 0  # adopted: the sample does not see it
    stops_with(
        capsys,
        project,
        filter_stage.main,
        FILTER_ARGS,
        f"error: filter: {RAW}: X: corrupt sparse matrix (column index 500 outside 0..199)",
    )


def test_gmt_with_binary_junk(project, capsys):
    from immune_aging.stages import genesets as genesets_stage

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["genesets"]["sources"] = ["data/raw/genesets.gmt"]
    write_params(project / "params.yaml", params)
    (project / "data/raw/genesets.gmt").write_bytes(
        b"SET_A\t\tCD3E\tCD8A\nSET_B\t\t\xc3\x28\x00\n"
    )
    stops_with(
        capsys,
        project,
        genesets_stage.main,
        "--allowed data/raw data/external --cache data/external/genesets "
        "--out data/genesets/genesets.gmt --metrics metrics/genesets.json".split(),
        "error: genesets: genesets.sources[0]: data/raw/genesets.gmt: not a text gene-set "
        "file: NUL byte at offset 26 (line 2); binary or damaged",
    )
    (project / "data/raw/genesets.gmt").write_bytes(b"SET_A\t\tCD3E\tCD8A\nSET_B\t\t\xc3\x28\n")
    stops_with(
        capsys,
        project,
        genesets_stage.main,
        "--allowed data/raw data/external --cache data/external/genesets "
        "--out data/genesets/genesets.gmt --metrics metrics/genesets.json".split(),
        "error: genesets: genesets.sources[0]: data/raw/genesets.gmt: not a UTF-8 text "
        "gene-set file: byte 0xc3 at offset 24 (line 2) is not UTF-8; binary or damaged",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"filter: {cutoff_percentile: \x00\xff}\n", "not a UTF-8 text file"),
        (b"filter: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ],
    ids=["binary", "deep"],
)
def test_params_file_damage(project, capsys, text, expected):
    (project / "params.yaml").write_bytes(text)
    before = files(project)
    code = filter_stage.main(FILTER_ARGS)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: filter: params.yaml: ") and expected in line
    assert files(project) == before


def test_huge_aliased_params_value_is_shown_shortened(project, capsys):
    """A YAML alias bomb in a checked key must not be printed in full."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):
        lines.append(
            f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 9) + "]"
        )
    params = yaml.safe_load((project / "params.yaml").read_text())
    text = yaml.safe_dump(params).replace("cutoff_percentile: 1.0", "cutoff_percentile: *l11")
    (project / "params.yaml").write_text("\n".join(lines) + "\n" + text)
    t0 = time.monotonic()
    code = filter_stage.main(FILTER_ARGS)
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 10
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line.startswith(
        "error: filter: params.yaml: filter.cutoff_percentile: expected a number >= 0.0 and"
    )
    assert len(line) < 300
