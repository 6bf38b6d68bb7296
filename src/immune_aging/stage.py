"""The harness every stage module runs under.

It parses the stage's command line, logs to stderr, turns an
:class:`~immune_aging.errors.InputError` into one line and exit status 2 (no
traceback, nothing written), and appends a timing record to the run log
(:mod:`immune_aging.runlog`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immune_aging import runlog, threads
from immune_aging.errors import InputError
from immune_aging.params import DEFAULT_PARAMS, load_section

EXIT_INPUT_ERROR = 2


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    """Return an argument parser with the options every stage shares.

    Parameters
    ----------
    stage
        Stage name (also the params section).
    description
        One line for ``--help``.

    Returns
    -------
    argparse.ArgumentParser
        With ``--params`` already added; the stage adds its paths.
    """
    p = argparse.ArgumentParser(
        prog=f"python -m immune_aging.stages.{stage}", description=description
    )
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    return p


def cpu_seconds() -> float:
    """Return the CPU time (user + system) of this process and its finished children.

    Returns
    -------
    float
        Seconds, all threads together.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 2)


def peak_memory_mb() -> float:
    """Return the peak resident memory of this process and its children, in MiB.

    Returns
    -------
    float
        ``max(ru_maxrss)`` of self and children (Linux reports KiB).
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def run_stage(
    stage: str,
    body: Callable[[argparse.Namespace, Any], None],
    arg_parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Run one stage: parse arguments, load its params section, call ``body``.

    Parameters
    ----------
    stage
        Stage name, equal to its params section.
    body
        ``body(args, params)`` does the work and writes outputs through
        :class:`immune_aging.io.Outputs`.
    arg_parser
        Parser from :func:`parser` with the stage's paths added.
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on an input error.
    """
    args = arg_parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {stage}: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    log = logging.getLogger("immune_aging")
    started = time.time()
    t0 = time.perf_counter()
    status = "ok"
    try:
        import matplotlib

        matplotlib.use("Agg")  # figures are files; never open a window
        params = load_section(stage, args.params)
        threads.check_environment()  # a bad thread count or scheduler: one line, no work
        body(args, params)
        return 0
    except InputError as exc:
        status = "input error"
        print(f"error: {stage}: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except BaseException:
        status = "failed"
        raise
    finally:
        duration = time.perf_counter() - t0
        runlog.append(
            stage,
            started=started,
            seconds=duration,
            cpu_s=cpu_seconds(),
            peak_mb=peak_memory_mb(),
            status=status,
        )
        if status == "ok":
            log.info("done in %.1f s, peak memory %.0f MiB", duration, peak_memory_mb())


@dataclass(frozen=True)
class Many:
    """A path option taking one or more paths (``nargs='+'``, or ``'*'`` when optional).

    Parameters
    ----------
    help
        One line for ``--help``.
    optional
        Accept zero paths.
    """

    help: str
    optional: bool = False


#: A stage's path options: option name (without ``--``) to its help text, or :class:`Many`.
Paths = Mapping[str, "str | Many"]


def add_paths(p: argparse.ArgumentParser, paths: Paths) -> None:
    """Add a stage's path options to its parser.

    Parameters
    ----------
    p
        The parser from :func:`parser`.
    paths
        Option name to help text (a required path) or :class:`Many`.
    """
    for name, spec in paths.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(spec, Many):
            nargs = "*" if spec.optional else "+"
            p.add_argument(flag, type=Path, nargs=nargs, default=[], help=spec.help)
        else:
            p.add_argument(flag, type=Path, required=True, help=spec)


def main_for(
    stage: str,
    doc: str | None,
    paths: Paths,
    body: Callable[[argparse.Namespace, Any], None],
) -> Callable[[Sequence[str] | None], int]:
    """Build the ``main(argv)`` of a stage module.

    Every stage module has the same shape: a ``NAME`` equal to its params section,
    a ``PATHS`` mapping of its path options (all given by ``dvc.yaml``), and a
    ``body(args, params)`` that reads, calls analysis and writes through
    :class:`immune_aging.io.Outputs`.

    Parameters
    ----------
    stage
        Stage name.
    doc
        The module docstring; its first line is the ``--help`` description.
    paths
        The stage's path options, see :func:`add_paths`.
    body
        The work, see :func:`run_stage`.

    Returns
    -------
    callable
        ``main(argv=None) -> int``.
    """
    description = (doc or stage).strip().splitlines()[0]

    def main(argv: Sequence[str] | None = None) -> int:
        p = parser(stage, description)
        add_paths(p, paths)
        return run_stage(stage, body, p, argv)

    return main


# --------------------------------------------------------------------------- input checks

_KINDS = {
    "obs": ("obs column", lambda a: a.obs.columns),
    "var": ("var column", lambda a: a.var.columns),
    "obsm": ("obsm", lambda a: a.obsm),
    "obsp": ("obsp", lambda a: a.obsp),
    "uns": ("uns", lambda a: a.uns),
    "columns": ("column", lambda a: a.columns),
}


def require(
    data: Any,
    path: str | os.PathLike[str],
    *,
    hint: str = "",
    notna: Sequence[str] = (),
    **needed: Sequence[str],
) -> None:
    """Check that an input holds what a stage reads; raise one line naming the first gap.

    Parameters
    ----------
    data
        An AnnData (keywords ``obs``, ``var``, ``obsm``, ``obsp``, ``uns``) or a
        DataFrame (keyword ``columns``).
    path
        The file it came from, named in the message.
    hint
        Appended to the message, e.g. ``" (expected the dimred stage's graph)"``.
    notna
        ``obs`` columns (AnnData) or columns (DataFrame) that must have no missing value.
    **needed
        Kind to the names that must be present.

    Raises
    ------
    InputError
        ``<path>: obs column 'donor_id' missing<hint>`` and the like, or
        ``<path>: obs column 'donor_id' has missing values``.

    Examples
    --------
    >>> require(adata, "pca.h5ad", obs=["donor_id"], obsm=["X_pca"])  # doctest: +SKIP
    """
    for kind, names in needed.items():
        label, members = _KINDS[kind]
        present = members(data)
        for name in names:
            if name not in present:
                raise InputError(f"{path}: {label} {name!r} missing{hint}")
    table = data.obs if hasattr(data, "obs") else data
    label = "obs column" if hasattr(data, "obs") else "column"
    for name in notna:
        if table[name].isna().any():
            raise InputError(f"{path}: {label} {name!r} has missing values")


@contextlib.contextmanager
def about(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name ``path`` in the message of an :class:`InputError` raised inside the block.

    Analysis functions check their inputs without knowing where they came from;
    the stage says which file the fault is in.

    Parameters
    ----------
    path
        The input file the block reads.
    """
    try:
        yield
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
