"""Thread count from the environment, never from tracked parameters.

``IMMUNE_AGING_THREADS`` sets the number of threads the numeric libraries may use
(OpenMP, numba, Harmony, gseapy) and the worker processes of the stages that run
groups in parallel (Scrublet per donor, PyDESeq2 per cell type). When it is unset,
all cores available to this process are used. Changing it never invalidates a DVC
cache, because it is not part of ``params.yaml``, and never changes a result:
BLAS, whose sums depend on its thread count, runs on one thread
(:mod:`immune_aging.determinism` pins ``OPENBLAS_NUM_THREADS=1`` first; with
``IMMUNE_AGING_NATIVE=1`` BLAS gets the thread count too). Where those worker
processes run, here or on a Dask cluster, is chosen by ``IMMUNE_AGING_SCHEDULER``
(:mod:`immune_aging.executor`). A stage given an invalid value of either stops
before any work with one line (:func:`check_environment`, called by the harness).
"""

from __future__ import annotations

import os

ENV_VAR = "IMMUNE_AGING_THREADS"
_LIBRARY_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def available_cores() -> int:
    """Return the number of cores this process may run on.

    Returns
    -------
    int
        ``len(os.sched_getaffinity(0))`` where supported, else ``os.cpu_count()``.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def n_threads() -> int:
    """Return the thread count requested by the environment.

    Returns
    -------
    int
        The value of ``IMMUNE_AGING_THREADS`` when set to a positive integer,
        otherwise :func:`available_cores`.

    Raises
    ------
    ValueError
        If ``IMMUNE_AGING_THREADS`` is set but is not a positive integer.
    """
    value = positive_from_env(ENV_VAR, "integer number of threads")
    return available_cores() if value is None else value


def positive_from_env(name: str, what: str) -> int | None:
    """Return the positive integer an environment variable is set to (None when unset).

    Parameters
    ----------
    name
        The variable.
    what
        What it counts, for the message (``"number of cells"``).

    Returns
    -------
    int or None
        The value; None when the variable is unset or blank.

    Raises
    ------
    ValueError
        ``<name>='<value>': expected a positive <what>`` when it is set to anything
        but a positive integer.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r}: expected a positive {what}")
    return value


def configure_threads() -> int:
    """Export the thread count to the numeric libraries' environment variables.

    Variables already set (by the user, or pinned by
    :func:`immune_aging.determinism.pin_numerics`) are left alone. Must run before numpy,
    numba or scipy are imported to take effect, which importing
    :mod:`immune_aging` guarantees.

    Returns
    -------
    int
        The thread count in force; 0 when ``IMMUNE_AGING_THREADS`` is invalid (nothing
        is exported, and the stage harness stops the stage with one line saying why,
        see :func:`check_environment`).
    """
    try:
        count = n_threads()
    except ValueError:
        return 0
    for var in _LIBRARY_VARS:
        os.environ.setdefault(var, str(count))
    return count


def check_environment() -> None:
    """Check the variables that choose a stage's threads and executor, before any work.

    Raises
    ------
    InputError
        If ``IMMUNE_AGING_THREADS`` is not a positive integer, or
        ``IMMUNE_AGING_SCHEDULER`` is not a scheduler address or ``local:N``
        (:func:`immune_aging.executor.scheduler`).
    """
    from immune_aging.errors import InputError
    from immune_aging.executor import scheduler

    try:
        n_threads()
    except ValueError as exc:
        raise InputError(str(exc)) from None
    scheduler()
