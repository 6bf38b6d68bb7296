"""The numeric libraries are pinned to one code path: same bytes at any thread count.

The unit tests call :func:`immune_aging.determinism.pin_numerics` on a literal
environment; the subprocess tests import the package first, as every stage does,
and compare the bytes of BLAS, LAPACK and numpy results computed while the
environment imitates another machine (another OpenBLAS kernel, another thread
count, a CPU without AVX-512).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from immune_aging import determinism
from immune_aging.analysis import hvg

V3 = frozenset(determinism.X86_64_V3_FLAGS)
x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")


@x86_64
def test_pins_before_numeric_imports_on_x86_64_v3(monkeypatch):
    monkeypatch.setattr(determinism.sys, "platform", "linux")
    env = {
        "OPENBLAS_CORETYPE": "SkylakeX",
        "OPENBLAS_NUM_THREADS": "8",
        "NPY_DISABLE_CPU_FEATURES": "AVX512F",
    }
    pinned = determinism.pin_numerics(env, flags=V3 | {"avx512f"}, loaded={})
    assert pinned == dict(determinism.PINS)
    assert env == pinned  # numpy refuses NPY_DISABLE_ and NPY_ENABLE_ together
    assert env["OPENBLAS_CORETYPE"] == "Haswell"  # a user's kernel choice is overridden
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["NPY_ENABLE_CPU_FEATURES"] == "X86_V3"
    assert env["NUMBA_CPU_NAME"] == "haswell"
    assert determinism.state["reason"] == ""


def test_nothing_pinned_once_numpy_is_loaded():
    env: dict[str, str] = {}
    assert determinism.pin_numerics(env, flags=V3, loaded={"numpy": object()}) == {}
    assert env == {}
    assert determinism.state["reason"] == "numpy was imported before immune_aging"


def test_native_switch_pins_nothing():
    env = {determinism.NATIVE_VAR: "1"}
    assert determinism.pin_numerics(env, flags=V3, loaded={}) == {}
    assert env == {determinism.NATIVE_VAR: "1"}
    assert "IMMUNE_AGING_NATIVE" in str(determinism.state["reason"])


@x86_64
def test_cpu_below_x86_64_v3_pins_nothing_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(determinism.sys, "platform", "linux")
    env: dict[str, str] = {}
    assert determinism.pin_numerics(env, flags=V3 - {"avx2", "fma"}, loaded={}) == {}
    assert not any(var in env for var in determinism.PINS)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "below x86-64-v3 (no avx2, fma)" in err
    assert "differ in the last bits" in err
    # a worker process started with this environment does not repeat the warning
    assert determinism.pin_numerics(env, flags=V3 - {"avx2", "fma"}, loaded={}) == {}
    assert capsys.readouterr().err == ""


def test_cpu_flags_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: sse\n")
    assert determinism.cpu_flags(str(info)) == {"fpu", "avx2", "fma"}
    assert determinism.cpu_flags(str(tmp_path / "missing")) == frozenset()


# --------------------------------------------------------------------------- subprocesses

#: computed in a fresh interpreter; prints the md5 of each result as JSON
PROBE = """
import hashlib, json, sys
if sys.argv[1] == "pinned":
    import immune_aging  # noqa: F401  (pins before numpy, as every stage does)
import numpy as np, scipy.linalg
from numpy._core._multiarray_umath import __cpu_features__
from threadpoolctl import threadpool_info
rng = np.random.default_rng(0)
a = rng.standard_normal((257, 300))
b = rng.standard_normal((300, 129))
x = rng.uniform(0.01, 50.0, 100_003)
out = {
    "gemm": a @ b,
    "gemv": a.T @ a[:, 0],
    "dot": np.array([x @ x]),
    "eigh": scipy.linalg.eigh(a.T @ a)[0],
    "log1p_f32": np.log1p(x.astype(np.float32)),
    "exp_f64": np.exp(-x),
    "power_f64": np.power(x, 0.3),
}
digests = {k: hashlib.md5(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in out.items()}
digests["blas"] = sorted({(i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                          if i["user_api"] == "blas"})
digests["numpy_avx512_paths"] = bool(__cpu_features__.get("X86_V4"))
print(json.dumps(digests))
"""

#: what differs between machines, imitated on this one
MACHINES = {
    "1 thread, Haswell kernel": {"IMMUNE_AGING_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell"},
    "2 threads, SkylakeX kernel": {"IMMUNE_AGING_THREADS": "2", "OPENBLAS_CORETYPE": "SkylakeX"},
    "2 threads, Sandybridge kernel, no AVX-512 in numpy": {
        "IMMUNE_AGING_THREADS": "2",
        "OPENBLAS_CORETYPE": "Sandybridge",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    },
}

needs_v3 = pytest.mark.skipif(
    sys.platform != "linux" or not V3 <= determinism.cpu_flags(),
    reason="the pins apply on x86-64-v3 Linux only",
)


def probe(mode: str, machine: dict[str, str]) -> dict[str, object]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENBLAS_", "NPY_", "NUMBA_", "OMP_", "MKL_", "IMMUNE_AGING_"))
    }
    env.update(machine)
    if mode == "native":  # what the libraries do when left alone
        threads = machine["IMMUNE_AGING_THREADS"]
        env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


@needs_v3
def test_pinned_results_are_the_same_bytes_on_every_imitated_machine():
    results = {name: probe("pinned", machine) for name, machine in MACHINES.items()}
    first = next(iter(results.values()))
    assert first["blas"] == [["Haswell", 1]]
    assert first["numpy_avx512_paths"] is False
    for name, result in results.items():
        assert result == first, name


@needs_v3
def test_without_the_pins_the_imitated_machines_differ():
    """The sources are real: left alone, BLAS kernel and thread count change the bits."""
    one = probe("native", MACHINES["1 thread, Haswell kernel"])
    other = probe("native", MACHINES["2 threads, Sandybridge kernel, no AVX-512 in numpy"])
    assert one["blas"] != other["blas"]
    assert one["gemm"] != other["gemm"]
    assert one["eigh"] != other["eigh"]


# --------------------------------------------------------------------------- tie order


def test_hvg_ranks_tied_genes_by_position():
    """Genes with identical counts tie; numpy's default sort orders ties by CPU."""
    rng = np.random.default_rng(0)
    n_cells, half = 240, 300
    mu = rng.gamma(0.8, 2.0, half) * rng.lognormal(0.0, 0.4, (n_cells, 1))
    counts = rng.poisson(mu).astype(np.float32)
    X = np.hstack([counts, counts])  # gene i + half is a copy of gene i
    obs = pd.DataFrame(
        {"donor_id": np.repeat(["d1", "d2", "d3"], n_cells // 3)},
        index=[f"c{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=sparse.csr_matrix(X), obs=obs)
    table, _ = hvg.highly_variable_genes(adata, n_top_genes=2 * half, span=0.8)
    rank = table["highly_variable_rank"].to_numpy()
    first, copy = rank[:half], rank[half:]
    assert np.isfinite(rank).all()
    assert (first < copy).all()  # the earlier gene of each tied pair ranks first
