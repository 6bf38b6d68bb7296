"""Which stage's own output changes with the machine? Each stage run in isolation.

Usage::

    python bench/determinism_stages.py REFERENCE WORK [--stages a,b] [--runs N] \
        [--env VAR=VALUE ...]

``REFERENCE`` is a project where ``dvc repro`` has run (for example a copy of
this repository after ``make repro``, or one made by ``bench/determinism.sh``).
For every stage of its ``dvc.yaml``, in order, the stage's command runs in a copy
``WORK`` whose inputs are the reference's, with the given environment; the
stage's outputs are compared file by file with the reference and then put back,
so the next stage again reads the reference's inputs. A difference is therefore
caused by the stage itself under that environment, never inherited from upstream.

With ``--save DIR`` each stage's outputs are also kept in ``DIR``; a later run
with ``--compare DIR`` compares with those instead of the reference's, so two
environments can be compared on the same inputs (the reference's).

Prints one line per stage: the wall time and the CPU time (user + system, the
stage and its workers) of its command, each the minimum of ``--runs``, then
``same`` or the files that differ. For h5ad and parquet files that differ, the
float arrays that differ are named with their largest relative difference, to
tell a last-bit difference from a changed result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def stage_outputs(spec: dict) -> list[str]:
    """Every output path a stage declares (outs, metrics, plots)."""
    return _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))


def file_digests(root: Path, rel: str) -> dict[str, str]:
    """md5 of a file, or of every file under a folder, keyed by relative path."""
    path = root / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in files
        if p.exists()
    }


def _float_arrays(path: Path) -> dict[str, object]:
    import numpy as np

    out: dict[str, object] = {}
    if path.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        for col in df.columns:
            if df[col].dtype.kind == "f":
                out[str(col)] = df[col].to_numpy()
    elif path.suffix == ".h5ad":
        import h5py
        import hdf5plugin  # noqa: F401 - the zstd filter of the project's h5ad files

        def visit(name: str, node: object) -> None:
            if isinstance(node, h5py.Dataset) and node.dtype.kind == "f":
                out[name] = np.asarray(node[()])

        with h5py.File(path, "r") as f:
            f.visititems(visit)
    return out


def largest_difference(a: Path, b: Path, *, show: int = 3) -> str:
    """The float arrays that differ between two files, largest relative difference first."""
    import numpy as np

    try:
        xa, xb = _float_arrays(a), _float_arrays(b)
    except Exception as exc:  # a diagnostic, never fatal
        return f"({type(exc).__name__}: {exc})"
    found = []
    for key in sorted(xa.keys() & xb.keys()):
        u, v = np.asarray(xa[key], float), np.asarray(xb[key], float)
        if u.shape != v.shape:
            found.append((float("inf"), f"{key} shape {u.shape} vs {v.shape}"))
            continue
        if u.tobytes() == v.tobytes():
            continue
        scale = max(float(np.nanmax(np.abs(u), initial=0.0)), 1e-300)
        same_nan = np.isnan(u) == np.isnan(v)
        rel = float(np.nanmax(np.abs(u - v), initial=0.0)) / scale if same_nan.all() else np.inf
        found.append((rel, f"{key} {rel:.1e}"))
    if not found:
        return "no float array differs"
    found.sort(reverse=True)
    more = f" +{len(found) - show} more" if len(found) > show else ""
    return "max rel diff: " + ", ".join(text for _, text in found[:show]) + more


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--stages", default="", help="comma-separated subset (default: all)")
    p.add_argument("--runs", type=int, default=1, help="runs per stage; the fastest is shown")
    p.add_argument(
        "--env", nargs="*", default=[], help="VAR=VALUE set for the stages; VAR= unsets VAR"
    )
    p.add_argument(
        "--compare",
        type=Path,
        help="compare outputs with this folder (saved by --save) instead of REFERENCE",
    )
    p.add_argument("--save", type=Path, help="keep each stage's outputs in this folder")
    args = p.parse_args()
    ref, work = args.reference.resolve(), args.work.resolve()
    expected = (args.compare or ref).resolve()
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(
        ref, work, symlinks=True, ignore=shutil.ignore_patterns(".dvc", ".git", "scratch")
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work / "src")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["IMMUNE_AGING_LOG_DIR"] = str(work / "logs")
    for var, value in (kv.split("=", 1) for kv in args.env):
        if value:
            env[var] = value
        else:
            env.pop(var, None)
    stages = yaml.safe_load((ref / "dvc.yaml").read_text())["stages"]
    chosen = [s for s in args.stages.split(",") if s] or list(stages)
    print(f"# env: {' '.join(args.env) or '(inherited)'}", flush=True)
    for name in chosen:
        spec = stages[name]
        outs = stage_outputs(spec)
        times = []
        for _ in range(max(1, args.runs)):
            for rel in outs:  # run on a clean slate, as dvc does
                target = work / rel
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(
                spec["cmd"], shell=True, cwd=work, env=env, capture_output=True, text=True
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            times.append((wall, cpu))
            if proc.returncode != 0:
                print(f"{name:11s} FAILED\n{proc.stderr[-3000:]}", flush=True)
                return 1
        want, got = {}, {}
        for rel in outs:
            want |= file_digests(expected, rel)
            got |= file_digests(work, rel)
        differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        detail = []
        for rel in differ:
            if rel.endswith((".h5ad", ".parquet")):
                detail.append(f"{rel} [{largest_difference(expected / rel, work / rel)}]")
            else:
                detail.append(rel)
        verdict = "same" if not differ else "DIFF " + "; ".join(detail)
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        print(f"{name:11s} {wall:6.1f} s {cpu:6.1f} s cpu  {verdict}", flush=True)
        for rel in outs:
            if args.save:
                keep = args.save / rel
                keep.parent.mkdir(parents=True, exist_ok=True)
                if keep.is_dir():
                    shutil.rmtree(keep)
                if (work / rel).is_dir():
                    shutil.copytree(work / rel, keep)
                elif (work / rel).exists():
                    shutil.copy2(work / rel, keep)
        for rel in outs:  # put the reference back for the next stage
            target = work / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (ref / rel).is_dir():
                shutil.copytree(ref / rel, target)
            elif (ref / rel).exists():
                shutil.copy2(ref / rel, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
