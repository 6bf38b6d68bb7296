"""The harness every stage module runs under.

It parses the stage's command line, logs to stderr, turns an
:class:`~immune_aging.errors.InputError` into one line and exit status 2 (no
traceback, nothing written), and appends a timing record to the run log
(:mod:`immune_aging.runlog`).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from immune_aging import runlog
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
        params = load_section(stage, args.params)
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
            stage, started=started, seconds=duration, peak_mb=peak_memory_mb(), status=status
        )
        if status == "ok":
            log.info("done in %.1f s, peak memory %.0f MiB", duration, peak_memory_mb())


def main_for(
    stage: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[argparse.Namespace, Any], None],
) -> Callable[[Sequence[str] | None], int]:
    """Build the ``main(argv)`` of a stage module.

    Parameters
    ----------
    stage
        Stage name.
    description
        One line for ``--help``.
    add_arguments
        Adds the stage's path options to the parser.
    body
        The work, see :func:`run_stage`.

    Returns
    -------
    callable
        ``main(argv=None) -> int``.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        p = parser(stage, description)
        add_arguments(p)
        return run_stage(stage, body, p, argv)

    return main
