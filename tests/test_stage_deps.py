"""dvc.yaml declares, for every stage, exactly the project modules that shape its outputs.

A stage's deps must list its stage module and every module of the project it
imports, directly or through other project modules, so that editing that code
reruns the stage; and nothing more, so that editing other code does not. The
harness modules that never shape an output (the stage template, parameter
parsing, errors, threads, determinism settings, the executor, the run log and the
guard against damaged files, which can only refuse an input) are not listed, and
their own imports are not followed.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "immune_aging"
#: Modules that run stages but never shape their outputs.
HARNESS = {
    "immune_aging",
    "immune_aging.stage",
    "immune_aging.params",
    "immune_aging.schema",
    "immune_aging.errors",
    "immune_aging.threads",
    "immune_aging.executor",
    "immune_aging.runlog",
    "immune_aging.guard",
    "immune_aging.h5walk",
    "immune_aging.determinism",
    "immune_aging.analysis",
    "immune_aging.stages",
}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path:
    path = SRC / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def is_module(name: str) -> bool:
    return module_file(name).is_file()


@cache
def imports(name: str) -> frozenset[str]:
    """Project modules ``name`` imports anywhere in its text (functions included)."""
    tree = ast.parse(module_file(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                package = (
                    name if module_file(name).name == "__init__.py" else name.rsplit(".", 1)[0]
                )
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{base}" if base else package
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub) else base)
    # a package's own __init__ (e.g. immune_aging.report) imports its modules
    return frozenset(m for m in found if is_module(m))


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current not in HARNESS or current == name:
            todo.extend(imports(current))
    return seen


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_list_exactly_the_code_the_stage_runs(stage):
    deps = [str(d) for d in STAGES[stage].get("deps", [])]
    used = closure(f"{PACKAGE}.stages.{stage}") - HARNESS
    files = {module_file(m).relative_to(REPO).as_posix() for m in used}
    missing = sorted(f for f in files if not covered(f, deps))
    assert not missing, f"{stage}: imports but does not depend on {missing}"
    code_deps = [d for d in deps if d.startswith("src/")]
    unused = [d for d in code_deps if not any(covered(f, [d]) for f in files)]
    assert not unused, f"{stage}: depends on code it does not import: {unused}"


def test_every_stage_runs_its_own_module():
    for name, spec in STAGES.items():
        assert spec["cmd"].split()[:3] == ["python", "-m", f"{PACKAGE}.stages.{name}"], name


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_metrics_and_figures_are_committed_to_git_as_metrics_and_plots(stage):
    """metrics/ and plots/ are ``cache: false`` stage metrics/plots, never plain outs.

    Git carries them, so a fresh clone's ``dvc metrics diff`` and ``dvc plots diff``
    read HEAD without a remote; an uncached plain out would also stop DVC from saving
    the stage in its run-cache.
    """
    spec = STAGES[stage]
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            top = str(path).split("/")[0]
            if top in ("metrics", "plots"):
                assert kind == top, f"{stage}: {path} is declared under {kind}, not {top}"
                assert (opts or {}).get("cache") is False, f"{stage}: {path} is cached"
            else:
                assert kind == "outs", f"{stage}: {path} is declared under {kind}"
