"""Provenance of every h5ad a stage writes, and byte-identical reruns.

The tiny pipeline has run twice under ``dvc repro``, as a user runs it: once in
the session's ``reproduced`` project and again, forced (``dvc repro -f``), in a
copy of it in another folder (the session's ``rerun``). Each h5ad must carry
``uns['provenance']`` with the stage, its params section, package versions and
the SHA-256 of its inputs, and nothing volatile (no time, host, git revision or
folder of the run); both runs must give byte-identical files.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tests.builders import (
    dvc_stages,
    entry_paths,
    output_files,
    pipeline_inputs,
    stage_outputs,
)

from immune_aging import io, provenance
from immune_aging.params import as_dict, load_section

pytestmark = pytest.mark.integration


def h5ad_checkpoints() -> dict[str, tuple[str, str]]:
    """Every h5ad file dvc.yaml names, with the stage writing it: ``{path: (stage, out)}``."""
    stages = dvc_stages()
    named = {
        path
        for spec in stages.values()
        for key in ("deps", "outs")
        for path in entry_paths(spec.get(key))
        if path.endswith(".h5ad")
    }
    writers = {}
    for path in sorted(named):
        for stage in stages:
            for out in stage_outputs(stage):
                if path == out or path.startswith(out.rstrip("/") + "/"):
                    writers[path] = (stage, out)
    assert sorted(writers) == sorted(named), "an h5ad that no stage writes"
    return writers


#: The h5ad each stage writes, and the inputs its provenance must list (its deps that
#: another stage writes), by stage.
H5AD = {stage: (path, pipeline_inputs(stage)) for path, (stage, _) in h5ad_checkpoints().items()}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
#: a full git revision (not part of a longer hex string such as a SHA-256), or a
#: version with a git suffix (``1.0.dev3+g1a2b3c4``)
GIT_REVISION = re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])|\+g[0-9a-f]{7,}")


@pytest.fixture(scope="module")
def runs(reproduced: Path, rerun: tuple[Path, str]) -> tuple[Path, Path]:
    """The two runs of the tiny pipeline, in different folders (same relative layout)."""
    return reproduced, rerun[0]


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


def test_every_h5ad_written_is_a_checkpoint_named_in_dvc_yaml(runs):
    written = {name for name in output_files(runs[0]) if name.endswith(".h5ad")}
    assert written == {path for path, _ in H5AD.values()}


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
    assert prov["packages"] == provenance.package_versions()
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
            for folder in ("data", "metrics", "plots", "reports")
            for p in sorted((root / folder).rglob("*"))
            if p.is_file()
        }

    first, second = (files(root) for root in runs)
    assert set(output_files(runs[0])) <= set(first)
    assert sorted(first) == sorted(second)
    differ = [name for name in first if first[name] != second[name]]
    assert differ == []
