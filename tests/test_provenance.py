"""Provenance of every h5ad a stage writes, and byte-identical reruns.

The stages that write h5ad files (and qc, which preprocess and pseudobulk read)
run as a user would, with the command lines of ``dvc.yaml`` on the tiny preset,
twice: in two different folders at the same time. Each h5ad must carry
``uns['provenance']`` with the stage, its params section, package versions and
the SHA-256 of its inputs, and nothing volatile (no time, host, git revision or
folder of the run); both runs must give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tests.builders import REPO, tiny_params, write_params

from immune_aging import io
from immune_aging.params import as_dict, load_section

#: (stage, arguments) in pipeline order, as in dvc.yaml.
CHAIN = [
    (
        "data",
        "--external data/external --download-cache data/.download --out data/raw "
        "--metrics metrics/data.json",
    ),
    (
        "filter",
        "--input data/raw/dataset.h5ad --out data/filter/filtered.h5ad "
        "--metrics metrics/filter.json --plots plots/filter",
    ),
    (
        "qc",
        "--input data/filter/filtered.h5ad --out data/qc/cells.parquet "
        "--metrics metrics/qc.json --plots plots/qc",
    ),
    (
        "preprocess",
        "--input data/filter/filtered.h5ad --cells data/qc/cells.parquet "
        "--out data/preprocess/pca.h5ad --metrics metrics/preprocess.json "
        "--plots plots/preprocess",
    ),
    (
        "pseudobulk",
        "--filtered data/filter/filtered.h5ad --cells data/qc/cells.parquet "
        "--out data/pseudobulk/pseudobulk.h5ad --metrics metrics/pseudobulk.json "
        "--plots plots/pseudobulk",
    ),
    (
        "dimred",
        "--input data/preprocess/pca.h5ad --out data/dimred/embedding.h5ad "
        "--metrics metrics/dimred.json --plots plots/dimred",
    ),
]
#: The h5ad each stage writes, and the inputs its provenance must list.
H5AD = {
    "data": ("data/raw/dataset.h5ad", []),
    "filter": ("data/filter/filtered.h5ad", ["data/raw/dataset.h5ad"]),
    "preprocess": (
        "data/preprocess/pca.h5ad",
        ["data/filter/filtered.h5ad", "data/qc/cells.parquet"],
    ),
    "dimred": ("data/dimred/embedding.h5ad", ["data/preprocess/pca.h5ad"]),
    "pseudobulk": (
        "data/pseudobulk/pseudobulk.h5ad",
        ["data/filter/filtered.h5ad", "data/qc/cells.parquet"],
    ),
}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
#: a full git revision (not part of a longer hex string such as a SHA-256), or a
#: version with a git suffix (``1.0.dev3+g1a2b3c4``)
GIT_REVISION = re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])|\+g[0-9a-f]{7,}")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def run_chain(root: Path) -> None:
    """Create a project folder at ``root`` and run the stages of :data:`CHAIN` there."""
    (root / "data/external").mkdir(parents=True)
    write_params(root / "params.yaml", tiny_params())
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(
        IMMUNE_AGING_LOG_DIR=str(root / "logs"),
        IMMUNE_AGING_THREADS="1",
        PYTHONPATH=str(REPO / "src"),
    )
    for stage, args in CHAIN:
        proc = subprocess.run(
            [sys.executable, "-m", f"immune_aging.stages.{stage}", *args.split()],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{stage} exited {proc.returncode} in {root}\n{proc.stderr}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs of the chain in different folders (same relative layout)."""
    roots = (
        tmp_path_factory.mktemp("first") / "project",
        tmp_path_factory.mktemp("second") / "project",
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run_chain, roots))
    return roots


def read_uns(path: Path) -> dict[str, Any]:
    adata = io.read_h5ad(path, backed=True)
    try:
        return dict(adata.uns)
    finally:
        adata.file.close()


def strings(value: Any, where: str = "uns") -> Iterator[tuple[str, str]]:
    """Yield ``(location, text)`` for every key and string value, recursively."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}/{key}", str(key)
            yield from strings(item, f"{where}/{key}")
    elif isinstance(value, str | bytes):
        yield where, value.decode() if isinstance(value, bytes) else value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from strings(item, f"{where}[{i}]")
    elif isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        for i, item in enumerate(value.ravel()):
            yield from strings(item, f"{where}[{i}]")


@pytest.mark.parametrize("stage", list(H5AD))
def test_provenance_names_stage_params_packages_and_inputs(runs, stage):
    root = runs[0]
    path, inputs = H5AD[stage]
    prov = read_uns(root / path)["provenance"]
    assert set(prov) == {"stage", "params", "packages", "inputs"}
    assert prov["stage"] == stage
    params = json.loads(prov["params"])
    assert params == as_dict(load_section(stage, root / "params.yaml"))
    assert params == yaml.safe_load((root / "params.yaml").read_text())[stage]
    assert prov["packages"] == io.package_versions()
    for name in ("anndata", "numpy", "scanpy", "h5py", "hdf5plugin"):
        assert prov["packages"][name] == metadata.version(name)
    hashes = json.loads(prov["inputs"])
    assert hashes == {p: io.sha256_file(root / p) for p in inputs}


@pytest.mark.parametrize("stage", list(H5AD))
def test_provenance_holds_nothing_volatile(runs, stage):
    path, _ = H5AD[stage]
    uns = read_uns(runs[0] / path)
    host = re.compile(rf"(?<![\w.-]){re.escape(socket.gethostname())}(?![\w.-])")
    folders = [str(root) for root in runs] + [str(runs[0].parents[1])]  # and pytest's base
    for where, text in strings(uns):
        assert not TIMESTAMP.search(text), f"{where}: timestamp in {text!r}"
        assert not host.search(text), f"{where}: host name in {text!r}"
        assert not GIT_REVISION.search(text), f"{where}: git revision in {text!r}"
        assert not any(f in text for f in folders), f"{where}: run folder in {text!r}"


@pytest.mark.parametrize("stage", list(H5AD))
def test_rerun_gives_a_byte_identical_h5ad(runs, stage):
    path, _ = H5AD[stage]
    first, second = ((root / path).read_bytes() for root in runs)
    assert first == second, f"{path} differs between two runs"


def test_every_output_of_the_two_runs_is_byte_identical(runs):
    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for folder in ("data", "metrics", "plots")
            for p in sorted((root / folder).rglob("*"))
            if p.is_file()
        }

    first, second = (files(root) for root in runs)
    assert sorted(first) == sorted(second)
    differ = [name for name in first if first[name] != second[name]]
    assert differ == []
