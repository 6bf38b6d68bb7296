"""Shared fixtures: tiny params, and temporary git+DVC repositories of this project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = REPO / "tests" / "presets" / "tiny.yaml"
#: what a temporary project copy holds (everything dvc.yaml and the stages need)
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", "src", "data/external")


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


def project_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for running dvc and stages in the project copy ``root``.

    The copy's own ``src`` comes first on ``PYTHONPATH`` so that an edit there is
    what runs (the editable install points at the main checkout).
    """
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root / "src")
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


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project copy on the tiny preset, nothing run yet."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy where the whole tiny pipeline has run once and been committed.

    Read-only for tests: copy it with :func:`clone_reproduced` to change anything.
    """
    root = make_project(tmp_path_factory.mktemp("reproduced") / "project")
    dvc(root, "repro")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", "tiny pipeline reproduced")
    return root


def clone_reproduced(reproduced: Path, dest: Path) -> Path:
    """Copy the reproduced project (work tree, .git and DVC cache) to ``dest``."""
    shutil.copytree(reproduced, dest, symlinks=True)
    remote = dest.parent / f"{dest.name}-remote"
    dvc(dest, "remote", "modify", "--local", "local", "url", str(remote))
    return dest


def ran_stages(output: str) -> set[str]:
    """Return the stages a ``dvc repro`` / ``dvc exp run`` output says it ran."""
    import re

    return set(re.findall(r"Running stage '([\w-]+)'", output))


def _paths(entries: list[Any]) -> list[str]:
    out = []
    for entry in entries or []:
        out.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return out


def pipeline_graph(root: Path) -> dict[str, set[str]]:
    """Map each stage of ``root/dvc.yaml`` to the stages that read one of its outputs."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = {
        name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
        for name, s in stages.items()
    }
    graph: dict[str, set[str]] = {name: set() for name in stages}
    for reader, spec in stages.items():
        for dep in _paths(spec.get("deps")):
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


def cache_is_intact(root: Path) -> list[str]:
    """Return the DVC cache objects whose content does not match their md5 name."""
    import hashlib

    bad = []
    files = root / ".dvc" / "cache" / "files" / "md5"
    for obj in files.rglob("*"):
        if not obj.is_file() or obj.suffix in (".tmp", ".lock"):
            continue
        digest = hashlib.md5(obj.read_bytes()).hexdigest()
        if digest != obj.parent.name + obj.name.removesuffix(".dir"):
            bad.append(str(obj.relative_to(root)))
    return bad
