"""Shared test builders: tiny params, stage runs, project copies and tiny data.

Everything here is a plain function (the fixtures that use them are in
``tests/conftest.py``). Stage names and command lines come from the repository's
``dvc.yaml``, never from copies kept in the tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = REPO / "tests" / "presets" / "tiny.yaml"
#: what a temporary project copy holds (everything dvc.yaml and the stages need)
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", "src", "data/external")
#: The thread count of the tests' stage runs (as :func:`project_env` sets it), and
#: another one for the thread-count test.
THREADS = os.environ.get("IMMUNE_AGING_THREADS", "1")
OTHER_THREADS = "2" if THREADS == "1" else "1"
#: options of a stage's command line that name what it writes
OUTPUT_OPTIONS = ("--out", "--metrics", "--plots")

# --------------------------------------------------------------------------- params


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``over`` merged in, recursively."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_params(**sections: Mapping[str, Any]) -> dict[str, Any]:
    """Return params.yaml merged with the tiny preset and any further overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, yaml.safe_load(TINY.read_text()))
    return deep_merge(params, sections)


def write_params(path: Path, params: Mapping[str, Any]) -> Path:
    """Write a params mapping as YAML."""
    path.write_text(yaml.safe_dump(dict(params), sort_keys=False))
    return path


def set_param(root: Path, dotted: str, value: Any) -> None:
    """Set one key (``section.key``) of ``root/params.yaml``."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    *parents, key = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# --------------------------------------------------------------------------- dvc.yaml


def dvc_stages(root: Path = REPO) -> dict[str, dict[str, Any]]:
    """The ``stages`` mapping of ``root/dvc.yaml``, in pipeline order."""
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def stage_names(root: Path = REPO) -> list[str]:
    """The stage names of ``root/dvc.yaml``, in pipeline order."""
    return list(dvc_stages(root))


def entry_paths(entries: list[Any] | None) -> list[str]:
    """The paths of a dvc.yaml ``deps``/``outs``/``metrics``/``plots`` list."""
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def stage_outputs(stage: str, root: Path = REPO, *, cached_only: bool = False) -> list[str]:
    """The paths ``stage`` declares as outs, metrics and plots in ``root/dvc.yaml``.

    With ``cached_only``, those declared ``cache: false`` (committed to git) are left out.
    """
    spec = dvc_stages(root)[stage]
    entries = [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]
    return [
        path
        for path, opts in (
            next(iter(e.items())) if isinstance(e, dict) else (str(e), {}) for e in entries
        )
        if not (cached_only and (opts or {}).get("cache") is False)
    ]


def stage_command(stage: str, root: Path = REPO) -> list[str]:
    """The command line of ``stage`` in ``root/dvc.yaml``, run by this venv's python."""
    argv = shlex.split(dvc_stages(root)[stage]["cmd"])
    assert argv[:3] == ["python", "-m", f"immune_aging.stages.{stage}"], argv
    return [sys.executable, *argv[1:]]


def command_outputs(command: list[str]) -> list[str]:
    """The paths a stage command line names after --out, --metrics and --plots."""
    return [command[i + 1] for i, arg in enumerate(command) if arg in OUTPUT_OPTIONS]


# --------------------------------------------------------------------------- running


def project_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for running dvc and stages in the project folder ``root``.

    The folder's own ``src`` comes first on ``PYTHONPATH`` when it has one (so that
    an edit there is what runs; the editable install points at the main checkout),
    else the repository's.
    """
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    src = root / "src"
    env["PYTHONPATH"] = str(src if src.is_dir() else REPO / "src")
    env["IMMUNE_AGING_LOG_DIR"] = str(root / "logs")
    env.setdefault("IMMUNE_AGING_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(var, None)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.org"
    env.update(extra)
    return env


def run(root: Path, *cmd: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a command in ``root`` with :func:`project_env`; raise with its output on failure."""
    proc = subprocess.run(
        cmd, cwd=root, env=project_env(root, **env), capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}"
        )
    return proc


def dvc(root: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``dvc`` in the project copy ``root``."""
    return run(root, str(VENV_BIN / "dvc"), *args, check=check, **env)


def run_stage(
    stage: str,
    root: Path,
    params: Mapping[str, Any] | Literal[False] | None = None,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 600,
    **overrides: Mapping[str, Any],
) -> subprocess.CompletedProcess:
    """Run ``stage`` in ``root`` as ``dvc repro`` would, without DVC.

    The command line is the stage's ``cmd`` in the repository's ``dvc.yaml``, run
    with this venv's python; paths in it are relative to ``root``.

    Parameters
    ----------
    stage
        A stage of ``dvc.yaml``.
    root
        The project folder to run in (its inputs already in place).
    params
        What ``root/params.yaml`` holds: by default the tiny preset; a mapping to
        write instead; ``False`` to keep the file already there.
    env
        Variables set (or, with ``None``, removed) on top of :func:`project_env`.
    timeout
        Seconds the stage may take.
    **overrides
        Params sections merged over ``params`` (e.g. ``de={"min_donors": 3}``).

    Returns
    -------
    subprocess.CompletedProcess
        The finished process, its ``args`` the command line, output captured as text.
    """
    if params is False:
        assert not overrides, "overrides need a params mapping to merge into"
    else:
        write_params(root / "params.yaml", deep_merge(params or tiny_params(), overrides))
    environment = project_env(root)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run(
        stage_command(stage),
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fork_stage(
    stage: str,
    root: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``stage`` in ``root`` like :func:`run_stage`, in a forked child of this process.

    The child runs the stage module's ``main`` with the arguments of its ``dvc.yaml``
    command, so it skips the seconds a new interpreter spends importing the
    scientific stack (imported once, here, by :func:`warm_up`). Everything that the
    command line does after import is the same: the harness, the one ``error:`` line
    and the exit status. The environment is :func:`project_env` plus ``env``, as for
    :func:`run_stage`; settings read at import time (the thread pins of
    ``immune_aging``) keep this process's values, so cases about those use
    :func:`run_stage`.

    Returns
    -------
    subprocess.CompletedProcess
        ``returncode`` is the exit status, ``-signal`` for a killed child, or
        ``None`` when it ran past ``timeout`` seconds and was killed.
    """
    import importlib
    import signal
    import tempfile
    import time
    import traceback
    import warnings

    argv = stage_command(stage)[3:]
    module = importlib.import_module(f"immune_aging.stages.{stage}")
    environment = project_env(root)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test runner
            code = 1
            try:
                os.chdir(root)
                os.environ.clear()
                os.environ.update(environment)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                # the Python streams too: under pytest's capture they write elsewhere
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                warnings.resetwarnings()  # as on the command line, not pytest's errors
                warnings.simplefilter("default")
                try:
                    code = module.main(argv)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        deadline = time.monotonic() + timeout
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            else:
                time.sleep(0.01)
        if status is None:
            code = None
        elif os.WIFSIGNALED(status):
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(stream.read().decode(errors="replace"))
    return subprocess.CompletedProcess(
        [sys.executable, "-m", module.__name__, *argv], code, *texts
    )


def warm_up() -> None:
    """Import and initialise what stages load lazily, once, before forking stage runs."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import anndata  # noqa: F401
    import matplotlib.pyplot as plt
    import pyarrow.parquet  # noqa: F401
    import scanpy  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.svm  # noqa: F401

    fig = plt.figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    fig.savefig(_io.BytesIO(), format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- projects


def make_project(dest: Path, params: Mapping[str, Any] | None = None) -> Path:
    """Create a git repository at ``dest`` holding this project on the tiny preset.

    DVC is initialised with analytics off, a cache inside ``dest`` and a local
    remote beside it (in ``.dvc/config.local``, so it is not committed); one
    commit is made (``dvc exp`` needs one).
    """
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    write_params(dest / "params.yaml", params or tiny_params())
    run(dest, "git", "init", "-q", "-b", "main")
    dvc(dest, "init", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "config", "cache.type", "reflink,hardlink,copy")
    remote = dest.parent / f"{dest.name}-remote"
    dvc(dest, "remote", "add", "--local", "-d", "local", str(remote))
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-q", "-m", "project on the tiny preset")
    return dest


def clone_reproduced(reproduced: Path, dest: Path) -> Path:
    """Copy a reproduced project (work tree, .git and DVC cache) to ``dest``.

    The copy's local remote is a folder beside it, as :func:`make_project` makes it
    (the URL is replaced in ``.dvc/config.local``, what ``dvc remote modify --local``
    would write, without starting dvc).
    """
    shutil.copytree(reproduced, dest, symlinks=True)
    config = dest / ".dvc" / "config.local"
    old = f"url = {reproduced.parent / f'{reproduced.name}-remote'}\n"
    text = config.read_text()
    assert text.count(old) == 1, text
    config.write_text(text.replace(old, f"url = {dest.parent / f'{dest.name}-remote'}\n"))
    return dest


def ran_stages(output: str) -> set[str]:
    """Return the stages a ``dvc repro`` / ``dvc exp run`` output says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def pipeline_graph(root: Path) -> dict[str, set[str]]:
    """Map each stage of ``root/dvc.yaml`` to the stages that read one of its outputs."""
    stages = dvc_stages(root)
    outs = {
        name: entry_paths(s.get("outs"))
        + entry_paths(s.get("metrics"))
        + entry_paths(s.get("plots"))
        for name, s in stages.items()
    }
    graph: dict[str, set[str]] = {name: set() for name in stages}
    for reader, spec in stages.items():
        for dep in entry_paths(spec.get("deps")):
            for writer, paths in outs.items():
                if any(
                    dep == p
                    or dep.startswith(p.rstrip("/") + "/")
                    or p.startswith(dep.rstrip("/") + "/")
                    for p in paths
                ):
                    graph[writer].add(reader)
    return graph


def downstream(root: Path, stage: str) -> set[str]:
    """Return ``stage`` and every stage that depends on it, transitively."""
    graph = pipeline_graph(root)
    seen, todo = {stage}, [stage]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def pipeline_inputs(stage: str, root: Path = REPO) -> list[str]:
    """The files ``stage`` reads that another stage writes (its deps inside their outs)."""
    stages = dvc_stages(root)
    written = [p for name in stages if name != stage for p in stage_outputs(name, root)]
    return [
        dep
        for dep in entry_paths(stages[stage].get("deps"))
        if any(dep == p or dep.startswith(p.rstrip("/") + "/") for p in written)
    ]


def output_files(root: Path) -> dict[str, bytes]:
    """Every file under the outs and metrics of ``root/dvc.yaml``, by relative path."""
    out = {}
    for stage in dvc_stages(root):
        for name in stage_outputs(stage, root):
            path = root / name
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


def cache_is_intact(root: Path) -> list[str]:
    """Return the DVC cache objects whose content does not match their md5 name."""
    bad = []
    files = root / ".dvc" / "cache" / "files" / "md5"
    for obj in files.rglob("*"):
        if not obj.is_file() or obj.suffix in (".tmp", ".lock"):
            continue
        digest = hashlib.md5(obj.read_bytes()).hexdigest()
        if digest != obj.parent.name + obj.name.removesuffix(".dir"):
            bad.append(str(obj.relative_to(root)))
    return bad


# --------------------------------------------------------------------------- tiny data


@cache
def _tiny_dataset() -> ad.AnnData:
    from immune_aging import synthetic

    sim = tiny_params()["data"]["synthetic"]
    design = synthetic.design_simulation(**{k: v for k, v in sim.items() if k != "chunk_cells"})
    return synthetic.simulate(design)


def tiny_dataset() -> ad.AnnData:
    """A fresh copy of the simulated dataset of the tiny preset (raw counts in X)."""
    return _tiny_dataset().copy()


#: the cell type of :func:`make_pseudobulk`
CT = "central memory CD4-positive, alpha-beta T cell"


def make_pseudobulk(
    n_donors: int = 10,
    n_genes: int = 30,
    *,
    seed: int = 0,
    effect: float = 1.0,
    unknown_age: int = 0,
    extra: bool = True,
) -> ad.AnnData:
    """Pseudobulk of one cell type with gene 0 up and gene 1 down with age.

    ``effect`` is log2 fold change per decade. With ``extra``, a cell type with a
    single donor and an unused category ("empty") are added.
    """
    rng = np.random.default_rng(seed)
    age = np.linspace(22, 85, n_donors)
    sex = np.array(["female", "male"] * (n_donors // 2) + ["female"] * (n_donors % 2))
    base = rng.uniform(50, 400, n_genes)
    lfc = np.zeros(n_genes)
    lfc[0], lfc[1] = effect, -effect
    mu = base[None, :] * 2 ** (lfc[None, :] * (age[:, None] - 50) / 10)
    counts = rng.negative_binomial(20, 20 / (20 + mu)).astype(np.float32)
    cts = [CT] * n_donors
    donors = [f"D{i}" for i in range(n_donors)]
    ages = age.copy()
    ages[:unknown_age] = np.nan
    sexes = list(sex)
    categories = [CT, "empty", "natural killer cell"] if extra else [CT]
    if extra:
        counts = np.vstack([counts, rng.poisson(100, (1, n_genes)).astype(np.float32)])
        cts.append("natural killer cell")
        donors.append("D0")
        ages = np.append(ages, 40.0)
        sexes.append("male")
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cts, categories=categories),
            "donor_id": pd.Categorical(donors),
            "n_cells": 20,
            "sex": pd.Categorical(sexes),
            "development_stage": [f"{a}-year-old stage" for a in range(len(cts))],
            "age": ages,
        },
        index=[f"{c}|{d}" for c, d in zip(cts, donors, strict=True)],
    )
    var = pd.DataFrame(
        {"feature_name": [f"GENE{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def write_selected(
    adata: ad.AnnData,
    folder: Path | str = ".",
    *,
    source: ad.AnnData | None = None,
    raw: str = "dataset.h5ad",
    selection: str = "selection.h5ad",
) -> tuple[Path, Path]:
    """Write an input file and a filter selection of the cells and genes of ``adata``.

    The input is ``source`` (which holds the cells and genes of ``adata`` among
    others), or ``adata`` itself. The selection is the ``filter`` stage's format
    (obs with ``row``, var with ``column``, ``uns['selection']``), carrying every
    obs and var column of ``adata``. Returns the paths ``(raw, selection)``.
    """
    from immune_aging import io
    from immune_aging.selection import COLUMN, ROW, SELECTION_UNS

    source = adata if source is None else source
    folder = Path(folder)
    for path in (folder / raw, folder / selection):
        path.parent.mkdir(parents=True, exist_ok=True)
    io.write_h5ad(source, folder / raw)
    rows = source.obs_names.get_indexer(adata.obs_names).astype(np.int64)
    columns = source.var_names.get_indexer(adata.var_names).astype(np.int64)
    assert (rows >= 0).all() and (columns >= 0).all()
    chosen = ad.AnnData(
        obs=adata.obs.assign(**{ROW: rows}), var=adata.var.assign(**{COLUMN: columns})
    )
    chosen.uns[SELECTION_UNS] = {"location": "X", "n_obs": source.n_obs, "n_vars": source.n_vars}
    io.write_h5ad(chosen, folder / selection)
    return folder / raw, folder / selection
