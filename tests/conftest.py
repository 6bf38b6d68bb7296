"""Shared fixtures: temporary git+DVC repositories of this project on the tiny preset.

The builders they use (and that tests import) are in :mod:`tests.builders`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import (  # noqa: F401  (names tests used to import from here)
    REPO,
    TINY,
    VENV_BIN,
    cache_is_intact,
    clone_reproduced,
    deep_merge,
    downstream,
    dvc,
    make_project,
    pipeline_graph,
    project_env,
    ran_stages,
    run,
    tiny_params,
    write_params,
)


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
