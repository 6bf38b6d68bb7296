"""Shared fixtures: temporary git+DVC repositories of this project on the tiny preset.

The tiny pipeline runs under ``dvc repro`` once per session (``reproduced``), and
again, forced, in two copies of it: at the same thread count (``rerun``) and at
another one (``rerun_threads``). These runs are single-core work lasting tens of
seconds, so they start in the background as the session starts, while the tests
that do not need them run on the other core; those that do need them run last
(see :func:`pytest_collection_modifyitems`), and wait for them if they must.

The builders the fixtures use (and that tests import) are in :mod:`tests.builders`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.builders import (  # noqa: F401  (names tests used to import from here)
    OTHER_THREADS,
    REPO,
    THREADS,
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

#: The forced reruns of the reproduced project: fixture name -> thread count.
RERUNS = {"rerun": THREADS, "rerun_threads": OTHER_THREADS}


@dataclass
class Background:
    """The session's pipeline runs, each a future, and the processes they started."""

    reproduced: Future[Path] | None = None
    #: what ``dvc repro`` printed in the reproduced project
    repro_output: str = ""
    reruns: dict[str, Future[tuple[Path, str]]] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def dvc(self, root: Path, *args: str, **env: str) -> str:
        """Run ``dvc`` in ``root`` as :func:`tests.builders.dvc` does; return its stdout."""
        cmd = [str(VENV_BIN / "dvc"), *args]
        with self._lock:
            if self._closed:
                raise RuntimeError("the test session is over")
            proc = subprocess.Popen(
                cmd,
                cwd=root,
                env=project_env(root, **env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            self._procs.append(proc)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode} in {root}\n--- stdout\n{out}"
                f"\n--- stderr\n{err}"
            )
        return out

    def close(self) -> None:
        """Stop whatever still runs (only when the session ends early)."""
        with self._lock:
            self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

    def wait(self) -> None:
        """Wait until every background run has finished."""
        for future in [self.reproduced, *self.reruns.values()]:
            if future is not None:
                future.exception()


def _uses(item: pytest.Item, names: object) -> bool:
    return not set(getattr(item, "fixturenames", ())).isdisjoint(names)  # type: ignore[arg-type]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that need the background runs last, in the order they are ready.

    First the tests that need none, then those that need ``reproduced``, then those
    that need a forced rerun, and last those that want the machine to themselves
    (``idle_machine``); the order within each group is kept.
    """

    def rank(item: pytest.Item) -> int:
        if _uses(item, ["idle_machine"]):
            return 3
        if _uses(item, RERUNS):
            return 2
        return 1 if _uses(item, ["reproduced"]) else 0

    items.sort(key=rank)


def _reproduce(background: Background, root: Path, clones: dict[str, Path]) -> Path:
    make_project(root)
    background.repro_output = background.dvc(root, "repro")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", "tiny pipeline reproduced")
    for dest in clones.values():  # before any test may run dvc in ``root``
        clone_reproduced(root, dest)
    return root


def _forced_rerun(background: Background, root: Path, threads: str) -> tuple[Path, str]:
    background.reproduced.result()  # type: ignore[union-attr]
    return root, background.dvc(root, "repro", "-f", IMMUNE_AGING_THREADS=threads)


@pytest.fixture(scope="session", autouse=True)
def background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Background]:
    """Start the pipeline runs the selected tests need, in background threads."""
    needed = set()
    for item in request.session.items:
        needed |= set(item.fixturenames) & {"reproduced", *RERUNS}
    runs = Background()
    pool = ThreadPoolExecutor(max_workers=1 + len(RERUNS), thread_name_prefix="pipeline")
    if needed:
        clones = {
            name: tmp_path_factory.mktemp(name) / "project" for name in RERUNS if name in needed
        }
        root = tmp_path_factory.mktemp("reproduced") / "project"
        runs.reproduced = pool.submit(_reproduce, runs, root, clones)
        for name, dest in clones.items():
            runs.reruns[name] = pool.submit(_forced_rerun, runs, dest, RERUNS[name])
    yield runs
    runs.close()
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project copy on the tiny preset, nothing run yet."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def reproduced(background: Background) -> Path:
    """A project copy where the whole tiny pipeline has run once and been committed.

    Read-only for tests: copy it with :func:`clone_reproduced` to change anything.
    """
    assert background.reproduced is not None
    return background.reproduced.result()


@pytest.fixture(scope="session")
def repro_output(background: Background, reproduced: Path) -> str:
    """What the first ``dvc repro`` printed in ``reproduced``."""
    return background.repro_output


@pytest.fixture(scope="session")
def rerun(background: Background, reproduced: Path) -> tuple[Path, str]:
    """A copy of ``reproduced``, in another folder, after ``dvc repro -f``.

    Every stage ran a second time there, on the same inputs and at the same thread
    count. Returns the folder and the output of ``dvc repro -f``. Read-only for tests.
    """
    return background.reruns["rerun"].result()


@pytest.fixture(scope="session")
def rerun_threads(background: Background, reproduced: Path) -> tuple[Path, str]:
    """Like ``rerun``, with another ``IMMUNE_AGING_THREADS`` (:data:`OTHER_THREADS`)."""
    return background.reruns["rerun_threads"].result()


@pytest.fixture
def idle_machine(background: Background) -> None:
    """Wait until no background run is left (for a test sensitive to timing)."""
    background.wait()
