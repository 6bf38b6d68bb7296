"""Seeded damage to small valid inputs, and the stages run on each damaged copy.

Used by ``tests/test_fuzz.py`` (a few hundred cases in CI) and ``bench/fuzz.py``
(thousands). A *case* is a seed: it picks an input and a kind of damage
(:data:`KINDS`), damages a copy, and runs the stages that read it, one after the
other, each as ``main(argv)`` of its module in a forked child of this process
(the scientific stack is imported once, here) with a time limit:

- an h5ad (counts in ``X``, or CELLxGENE's normalised ``X`` with counts in
  ``raw.X``) goes to ``data`` (adopted from ``data/external/``), then ``filter``;
- a GMT goes to ``genesets``, then ``ora``.

The outcome of a case is ``ok`` (every stage exited 0 and its output reads back
and validates), ``error`` (a stage exited 2 with exactly one ``error: <stage>:
<file>: ...`` line, no traceback, and wrote nothing: the folder holds the same
files as before apart from the run log) or ``other`` (anything else: a
traceback, a hang, a crash, a second error line, a written output, an output
that does not validate). ``other`` must never happen.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from tests.builders import fork_stage, warm_up

from immune_aging import io, selection, synthetic

REPO = Path(__file__).resolve().parents[1]

#: Damage applied to an h5ad file.
H5AD_KINDS = ("zero", "random", "duplicate", "bitflip", "truncate", "not-anndata")
#: Damage applied to a GMT file.
GMT_KINDS = ("gmt-junk", "gmt-zero", "gmt-truncate")
#: Every kind, in the order seeds cycle through them (h5ad kinds twice: two layouts).
KINDS = (*H5AD_KINDS, *H5AD_KINDS[:-1], *GMT_KINDS)
#: The two layouts of CELLxGENE h5ad files.
LAYOUTS = ("counts-x", "cellxgene-raw")
#: Wall seconds a stage may take on a damaged tiny input before it counts as hung.
STAGE_TIMEOUT_S = 60.0

#: Small simulation: 8 donors, 3 cell types, about 400 cells, 500 genes.
DESIGN = {
    "seed": 0,
    "n_donors": 8,
    "n_cell_types": 3,
    "cells_per_donor": 50,
    "n_genes": 500,
    "doublet_rate": 0.0,
    "dying_rate": 0.0,
    "rbc_rate": 0.0,
}
#: The data stage validates a sample of about 2000 rows, all the rows of these small
#: inputs; scaled down to 60 rows in 3 blocks (``sample_like_a_large_file``), damage
#: outside the sample reaches filter, as it does on a full-size file.
SAMPLE = {"_SAMPLE_ROWS": 60, "_SAMPLE_BLOCKS": 3}
#: Params overrides so that the undamaged inputs pass every stage.
PARAMS = {
    "data": {"source": "data/external/dataset.h5ad", "sha256": None},
    "filter": {"cutoff_percentile": 1.0, "min_cells_per_celltype": 3, "percent_donors": 0.5},
    "genesets": {"sources": ["data/raw/genesets.gmt"]},
    "ora": {"padj": 0.05, "min_size": 2, "max_size": 1000, "backend": "local"},
}


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The valid inputs every case starts from (bytes of each file)."""

    h5ad: dict[str, bytes]
    gmt: bytes
    de_results: bytes
    params: dict[str, Any]


def normalised(x: sp.csr_matrix) -> sp.csr_matrix:
    """Return log1p(counts per 10k), as CELLxGENE stores normalised values in ``X``."""
    scale = 1e4 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)
    return (sp.diags(scale) @ x).tocsr().log1p().astype(np.float32)


def make_inputs(folder: Path) -> Inputs:
    """Write the valid inputs into ``folder`` and return their bytes.

    ``counts-x`` is written by the pipeline's writer (gzip); ``cellxgene-raw``
    (normalised ``X``, raw counts in ``raw.X``, ``uns`` strings) by anndata's
    defaults, uncompressed, as CELLxGENE's files are.
    """
    from tests.conftest import deep_merge, tiny_params

    folder.mkdir(parents=True, exist_ok=True)
    design = synthetic.design_simulation(**DESIGN)
    adata = synthetic.simulate(design)
    io.write_h5ad(adata, folder / "counts-x.h5ad")
    cxg = adata.copy()
    cxg.raw = adata.copy()
    cxg.X = normalised(adata.X)
    cxg.uns["schema_version"] = "5.0.0"
    cxg.uns["title"] = "Simulated PBMCs in the CELLxGENE layout"
    cxg.write_h5ad(folder / "cellxgene-raw.h5ad")
    sets = synthetic.gene_set_library(design)
    io.write_gmt(sets, folder / "genesets.gmt")
    genes = sorted({g for members in sets.values() for g in members})
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "cell_type": "T cell",
            "gene": genes,
            "log2FoldChange": rng.normal(0, 1, len(genes)),
            "padj": rng.uniform(0, 0.2, len(genes)),
        }
    )
    io.write_parquet(table, folder / "de.parquet")
    params = deep_merge(tiny_params(), PARAMS)
    warm_up()
    return Inputs(
        h5ad={name: (folder / f"{name}.h5ad").read_bytes() for name in LAYOUTS},
        gmt=(folder / "genesets.gmt").read_bytes(),
        de_results=(folder / "de.parquet").read_bytes(),
        params=params,
    )


def sample_like_a_large_file(setattr: Callable[[Any, str, Any], None]) -> None:
    """Scale the validation sample down to :data:`SAMPLE` (``setattr`` e.g. monkeypatch's)."""
    from immune_aging import validate

    for name, value in SAMPLE.items():
        setattr(validate, name, value)


# --------------------------------------------------------------------------- damage


def _block(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """A random (offset, length) inside ``size`` bytes: 1 B to 64 KiB, log-uniform."""
    length = int(min(size, 2 ** rng.uniform(0, 16)))
    return int(rng.integers(0, max(1, size - length + 1))), max(1, length)


def zero_block(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Zero a block, as a bad disk block or a hole in a cut download leaves."""
    buf = bytearray(data)
    at, n = _block(rng, len(buf))
    buf[at : at + n] = bytes(n)
    return bytes(buf), f"{n} zero bytes at {at}"


def random_block(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Overwrite a block with random bytes."""
    buf = bytearray(data)
    at, n = _block(rng, len(buf))
    buf[at : at + n] = rng.bytes(n)
    return bytes(buf), f"{n} random bytes at {at}"


def duplicate_block(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Copy a block of the file over another place of it (misordered writes)."""
    buf = bytearray(data)
    src, n = _block(rng, len(buf))
    dst = int(rng.integers(0, max(1, len(buf) - n + 1)))
    buf[dst : dst + n] = data[src : src + n]
    return bytes(buf), f"{n} bytes from {src} copied to {dst}"


def bit_flips(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Flip 1-16 bits in the first MiB, where HDF5 keeps most metadata."""
    buf = bytearray(data)
    k = int(rng.integers(1, 17))
    offsets = rng.integers(0, min(len(buf), 1 << 20), size=k)
    for at in offsets:
        buf[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf), f"{k} bit flips at {sorted(int(a) for a in offsets)[:4]}..."


def truncate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Cut the file at a random length (an interrupted copy)."""
    n = int(rng.integers(0, len(data)))
    return data[:n], f"truncated to {n} of {len(data)} bytes"


def not_anndata(path: Path, rng: np.random.Generator) -> str:
    """Write a valid HDF5 file that is not AnnData (some groups, datasets, attributes)."""
    with h5py.File(path, "w") as f:
        names = ["obs", "var", "X", "data", "matrix", "raw", "uns", "cells"]
        for i in range(int(rng.integers(1, 6))):
            name = str(rng.choice(names)) + ("" if i == 0 else f"_{i}")
            if rng.random() < 0.5:
                g = f.create_group(name)
                g.attrs["encoding-type"] = str(rng.choice(["dataframe", "csr_matrix", "dict"]))
                g.create_dataset("values", data=rng.integers(0, 100, int(rng.integers(0, 50))))
            else:
                f.create_dataset(name, data=rng.normal(size=(int(rng.integers(1, 20)), 3)))
    return "a valid HDF5 file that is not AnnData"


def gmt_junk(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Insert a block of binary junk into a GMT file."""
    at = int(rng.integers(0, len(data) + 1))
    n = int(rng.integers(1, 512))
    return data[:at] + rng.bytes(n) + data[at:], f"{n} junk bytes inserted at {at}"


DAMAGE: dict[str, Callable[[bytes, np.random.Generator], tuple[bytes, str]]] = {
    "zero": zero_block,
    "random": random_block,
    "duplicate": duplicate_block,
    "bitflip": bit_flips,
    "truncate": truncate,
    "gmt-junk": gmt_junk,
    "gmt-zero": zero_block,
    "gmt-truncate": truncate,
    "none": lambda data, rng: (data, "undamaged"),
}


# --------------------------------------------------------------------------- cases


@dataclass
class Result:
    """What happened to one case."""

    seed: int
    kind: str
    layout: str
    damage: str
    outcome: str = "ok"
    detail: str = ""
    stages: list[tuple[str, int, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "kind": self.kind,
            "layout": self.layout,
            "damage": self.damage,
            "outcome": self.outcome,
            "detail": self.detail,
            "stages": self.stages,
        }


def case_plan(seed: int) -> tuple[str, str]:
    """Return ``(kind, layout)`` of case ``seed`` (kinds cycle; layouts alternate)."""
    kind = KINDS[seed % len(KINDS)]
    if kind in GMT_KINDS:
        return kind, "gmt"
    return kind, LAYOUTS[(seed // len(KINDS) + KINDS.index(kind)) % 2]


def prepare(seed: int, root: Path, inputs: Inputs, plan: tuple[str, str] | None = None) -> Result:
    """Create the case folder: params, the damaged input and what its stages need.

    ``plan`` overrides the ``(kind, layout)`` of the seed; kind ``"none"`` leaves
    the input undamaged (a control).
    """
    kind, layout = plan or case_plan(seed)
    rng = np.random.default_rng([seed, 7])
    root.mkdir(parents=True)
    (root / "data/external").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(inputs.params, sort_keys=False))
    if layout == "gmt":
        damaged, what = DAMAGE[kind](inputs.gmt, rng)
        (root / "data/raw").mkdir(parents=True)
        (root / "data/raw/genesets.gmt").write_bytes(damaged)
        (root / "data/de").mkdir(parents=True)
        (root / "data/de/results.parquet").write_bytes(inputs.de_results)
    elif kind == "not-anndata":
        what = not_anndata(root / "data/external/dataset.h5ad", rng)
    else:
        damaged, what = DAMAGE[kind](inputs.h5ad[layout], rng)
        (root / "data/external/dataset.h5ad").write_bytes(damaged)
    return Result(seed=seed, kind=kind, layout=layout, damage=what)


def _files(root: Path) -> set[str]:
    """Every file under ``root`` except the run log (empty parent folders do not count)."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if "logs" not in p.parts and not p.is_dir()
    }


def run_stage(
    stage: str, root: Path, timeout: float = STAGE_TIMEOUT_S
) -> tuple[int | None, str, float]:
    """Run a stage's ``main`` in a forked child in ``root`` (:func:`tests.builders.fork_stage`).

    Returns
    -------
    tuple
        ``(exit status or None when killed for running past timeout, stderr, seconds)``;
        a child killed by a signal gets ``-signal``.
    """
    t0 = time.monotonic()
    proc = fork_stage(stage, root, timeout=timeout)
    return proc.returncode, proc.stderr, time.monotonic() - t0


def check_error(stage: str, stderr: str) -> str | None:
    """Return what is wrong with a stage's stderr for an input error, or None."""
    if "Traceback" in stderr:
        return "traceback"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if len(errors) != 1:
        return f"{len(errors)} error lines"
    if not errors[0].startswith(f"error: {stage}: "):
        return f"error line does not name the stage: {errors[0]!r}"
    return None


def validate_output(stage: str, root: Path) -> str | None:
    """Return why a stage's output does not validate, or None when it does."""
    try:
        if stage == "data":
            metrics = json.loads((root / "metrics/data.json").read_text())
            if not (root / "data/raw/dataset.h5ad").is_file():
                return "data/raw/dataset.h5ad missing"
            if metrics["counts"] not in ("X", "raw.X"):
                return f"metrics counts = {metrics['counts']!r}"
        elif stage == "filter":
            metrics = json.loads((root / "metrics/filter.json").read_text())
            chosen = selection.read_selection(
                root / "data/filter/selection.h5ad", root / "data/raw/dataset.h5ad"
            )
            adata = ad.AnnData(X=chosen.read(), obs=chosen.obs, var=chosen.var)
            x = adata.X
            if not sp.isspmatrix_csr(x) or x.dtype != np.float32:
                return f"X is {type(x).__name__} {x.dtype}"
            if x.nnz and (x.data.min() < 0 or not np.all(x.data == np.rint(x.data))):
                return "X holds values that are not counts"
            if x.nnz and (x.indices.min() < 0 or x.indices.max() >= x.shape[1]):
                return "X has column indices out of range"
            if adata.shape != (metrics["cells_out"], metrics["genes_out"]):
                return f"shape {adata.shape} differs from the metrics"
            for col in ("donor_id", "cell_type", "development_stage", "sex"):
                if col not in adata.obs.columns:
                    return f"obs column {col!r} missing"
        elif stage == "genesets":
            sets = io.read_gmt(root / "data/genesets/genesets.gmt")
            json.loads((root / "metrics/genesets.json").read_text())
            if not sets:
                return "no gene set"
        elif stage == "ora":
            table = io.read_parquet(root / "data/ora/results.parquet", ("term", "padj"))
            json.loads((root / "metrics/ora.json").read_text())
            if table["padj"].isna().any():
                return "NaN padj"
    except Exception as exc:
        return f"output does not read back: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def run_case(
    seed: int, workdir: Path, inputs: Inputs, plan: tuple[str, str] | None = None
) -> Result:
    """Prepare case ``seed`` under ``workdir`` and run its stages in turn.

    The case folder is removed unless the outcome is ``other`` (kept to inspect).
    """
    root = workdir / f"case-{seed:05d}" if plan is None else workdir / f"{plan[0]}-{plan[1]}"
    result = prepare(seed, root, inputs, plan)
    stages = ("genesets", "ora") if result.layout == "gmt" else ("data", "filter")
    for stage in stages:
        before = _files(root)
        code, stderr, seconds = run_stage(stage, root)
        result.stages.append((stage, code if code is not None else -999, round(seconds, 2)))
        after = _files(root)
        if code == 0:
            problem = validate_output(stage, root)
            if problem:
                result.outcome, result.detail = "other", f"{stage}: exit 0 but {problem}"
                break
            continue
        if code == 2:
            problem = check_error(stage, stderr)
            if problem is None and after != before:
                problem = f"wrote {sorted(after - before)[:3]}"
            if problem:
                result.outcome, result.detail = "other", f"{stage}: exit 2 but {problem}"
            else:
                result.outcome = "error"
                result.detail = next(
                    line for line in stderr.splitlines() if line.startswith("error: ")
                )
            break
        what = "timed out" if code is None else f"exit {code}"
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        result.outcome, result.detail = "other", f"{stage}: {what}: {tail[:400]}"
        break
    if result.outcome != "other":
        shutil.rmtree(root, ignore_errors=True)
    return result


def run_cases(
    seeds: Sequence[int],
    workdir: Path,
    inputs: Inputs,
    *,
    workers: int = 2,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run cases, ``workers`` at a time, each in its own forked process.

    A case process runs the case's stages (each in a further child) and sends its
    result back as one JSON line.
    """
    pending = list(seeds)
    running: dict[int, tuple[int, int, float]] = {}  # fd -> (pid, seed, started)
    buffers: dict[int, bytes] = {}
    results: list[Result] = []
    case_timeout = 4 * STAGE_TIMEOUT_S
    while pending or running:
        while pending and len(running) < workers:
            seed = pending.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    os.setpgid(0, 0)  # its stage children die with it on a timeout
                    os.close(r)
                    res = run_case(seed, workdir, inputs)
                    os.write(w, (json.dumps(res.as_dict()) + "\n").encode())
                except BaseException:
                    os.write(w, (json.dumps({"crash": traceback.format_exc()}) + "\n").encode())
                    code = 1
                finally:
                    os._exit(code)
            os.close(w)
            running[r] = (pid, seed, time.monotonic())
            buffers[r] = b""
        ready, _, _ = select.select(list(running), [], [], 1.0)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                buffers[fd] += chunk
                continue
            pid, seed, _ = running.pop(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            results.append(_decode(seed, buffers.pop(fd)))
            if on_result:
                on_result(results[-1])
        now = time.monotonic()
        for pid, _, started in list(running.values()):
            if now - started > case_timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    return sorted(results, key=lambda r: r.seed)


def _decode(seed: int, raw: bytes) -> Result:
    kind, layout = case_plan(seed)
    try:
        payload = json.loads(raw.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Result(seed, kind, layout, "?", "other", "the case process died")
    if "crash" in payload:
        return Result(seed, kind, layout, "?", "other", f"harness: {payload['crash'][-400:]}")
    stages = [tuple(s) for s in payload.pop("stages")]
    return Result(**payload, stages=stages)


def tally(results: Sequence[Result]) -> dict[str, int]:
    """Count outcomes: ``ok``, ``error`` and ``other``."""
    counts = {"ok": 0, "error": 0, "other": 0}
    for r in results:
        counts[r.outcome] += 1
    return counts
