"""A structural check of an HDF5 (h5ad) file, run where a hang or a crash cannot spread.

A damaged HDF5 file can do worse than raise: a zeroed global heap makes the HDF5
library loop for ever reading a variable-length string, and a bad object header
can crash it. No Python code can interrupt a loop inside the C library, so
:func:`check_h5ad` walks the file in a child process (a fork of this one; a new
interpreter where forking fails) under a CPU-time limit that grows with the file
size (:func:`cpu_limit`), plus a wall-clock limit for a child that stops without
using CPU. The walk reads

- every group: its attributes and its links (an external link, which would open
  another file, is refused, and so are virtual datasets and external storage);
- every dataset: its type, shape, creation properties (an HDF5 filter that is not
  available is reported) and attributes, including every variable-length string;
- the values of every dataset up to :data:`FULL_READ_MAX_BYTES` (all annotations:
  ``obs``, ``var``, ``uns``, names, categories, ``indptr``);
- of larger datasets (the matrices' ``data`` and ``indices``) only the chunk
  index, checking that every chunk lies inside the file: their values are read by
  the stages, which turn a read failure into one line (:func:`reading`) and check
  the sparse structure block by block
  (:func:`immune_aging.count_checks.check_csr_block`);

then the AnnData layout: ``obs`` and ``var`` at the top level, and for ``X`` and
``raw/X`` a shape matching ``obs``/``var`` (``raw/var``) and, for a sparse matrix,
a consistent ``indptr`` (:func:`immune_aging.count_checks.check_csr_indptr`).

A file that fails raises :class:`~immune_aging.errors.InputError` with one line:
``<file>: corrupt HDF5 file (<what could not be read>)``, or ``<file>: not a
readable h5ad file (...)`` when HDF5 cannot open it at all, or ``<file>: not an
h5ad file (...)`` for a sound HDF5 file that is not AnnData. ``python -m
immune_aging.guard FILE`` runs the check from the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from immune_aging.errors import InputError
from immune_aging.h5walk import child, describe

#: CPU seconds every check may use, whatever the file size.
CPU_BASE_S = 5.0
#: Further CPU seconds per GiB of file. The walk of a valid file takes far less
#: (bench/results/fuzz.md); the limit only bounds a check that never ends.
CPU_PER_GIB_S = 10.0
#: The wall-clock limit is this multiple of the CPU limit plus :data:`WALL_EXTRA_S`
#: (a loaded machine gives the child a fraction of a core).
WALL_FACTOR = 4.0
WALL_EXTRA_S = 30.0

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------- public API


def cpu_limit(size_bytes: int) -> float:
    """Return the CPU seconds the check of a file of ``size_bytes`` may use.

    Parameters
    ----------
    size_bytes
        File size.

    Returns
    -------
    float
        :data:`CPU_BASE_S` plus :data:`CPU_PER_GIB_S` per GiB.
    """
    return CPU_BASE_S + CPU_PER_GIB_S * size_bytes / 2**30


def has_hdf5_signature(path: str | os.PathLike[str]) -> bool:
    """Return whether a file carries the HDF5 signature where HDF5 looks for it.

    The signature is at byte 0, or at 512, 1024, 2048, ... after a user block.
    Plain reads only: the HDF5 library is not called.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    bool
        True when the signature is found.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def check_h5ad(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the structure of an h5ad file in a child process with a time limit.

    Parameters
    ----------
    path
        The file (its existence and HDF5 signature are checked first).

    Returns
    -------
    dict
        What the walk saw: ``objects`` (groups and datasets), ``read_bytes``
        (dataset values read whole), ``chunked_only`` (datasets checked by chunk
        index only), ``cpu_s`` (CPU time of the walk) and ``cpu_limit_s``.

    Raises
    ------
    InputError
        One line naming the file and what is wrong (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not has_hdf5_signature(path):
        raise InputError(f"{path}: not an h5ad file (no HDF5 signature)")
    limit = cpu_limit(path.stat().st_size)
    lines, status = _runchild(path, limit)
    return _verdict(path, limit, lines, status)


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn an HDF5 read failure in the block into one :class:`InputError` line.

    Only exceptions raised inside h5py are translated; any other exception (a bug)
    keeps its traceback.

    Parameters
    ----------
    path
        The file, named in the message.
    what
        What is being read (``"X"``, ``"raw.X"``), named in the message.

    Yields
    ------
    None
        Run the reads in the ``with`` block.

    Raises
    ------
    InputError
        ``<file>: corrupt HDF5 file (<what>: <HDF5's reason>)``.
    """
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if not _raised_by_h5py(exc):
            raise
        raise InputError(f"{path}: corrupt HDF5 file ({what}: {describe(exc)})") from None


# --------------------------------------------------------------------------- parent side


def _runchild(path: Path, limit: float) -> tuple[list[str], tuple[str, int]]:
    """Run the walk in a child; return its output lines and how it ended."""
    wall = WALL_FACTOR * limit + WALL_EXTRA_S
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no memory to fork a large process: start a fresh interpreter
        os.close(read_fd)
        os.close(write_fd)
        return _run_subprocess(path, limit, wall)
    if pid == 0:  # child: never returns into the caller's code
        code = 3
        try:
            os.close(read_fd)
            code = child(str(path), limit, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    lines, killed = _collect(read_fd, pid, wall)
    _, status = os.waitpid(pid, 0)
    if killed:
        return lines, ("wall", round(wall))
    if os.WIFSIGNALED(status):
        return lines, ("signal", os.WTERMSIG(status))
    return lines, ("exit", os.WEXITSTATUS(status))


def _run_subprocess(path: Path, limit: float, wall: float) -> tuple[list[str], tuple[str, int]]:
    cmd = [sys.executable, "-m", "immune_aging.guard", "--child", str(limit), str(path)]
    # the same package as this process, whatever the new interpreter would find first
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    fd = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    lines, killed = _collect(fd, proc.pid, wall)
    code = proc.wait()
    if killed:
        return lines, ("wall", round(wall))
    if code < 0:
        return lines, ("signal", -code)
    return lines, ("exit", code)


def _collect(fd: int, pid: int, wall: float) -> tuple[list[str], bool]:
    """Read the child's lines until it closes the pipe or the wall limit passes."""
    deadline = time.monotonic() + wall
    buf = b""
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    return buf.decode("utf-8", "replace").splitlines(), killed


def _verdict(
    path: Path, limit: float, lines: list[str], status: tuple[str, int]
) -> dict[str, Any]:
    """Turn the child's output and end into a result, or raise the one-line error."""
    last_step = "opening it"
    for line in lines:
        kind, _, text = line.partition(" ")
        text = _printable(text)
        if kind == "ok" and status == ("exit", 0):
            return json.loads(text)
        if kind == "error":
            raise InputError(f"{path}: {text}")
        if kind == "at":
            last_step = text
    how, value = status
    if how == "wall":
        raise InputError(
            f"{path}: corrupt HDF5 file ({last_step} did not finish within {value} s of"
            " wall-clock time)"
        )
    if how == "signal" and value in (signal.SIGXCPU, signal.SIGKILL):
        raise InputError(
            f"{path}: corrupt HDF5 file ({last_step} did not finish within the limit of"
            f" {limit:.0f} s of CPU time for a file of this size)"
        )
    if how == "signal":
        try:
            name = signal.Signals(value).name
        except ValueError:
            name = f"signal {value}"
        raise InputError(
            f"{path}: corrupt HDF5 file (the HDF5 library crashed ({name}) {last_step})"
        )
    raise InputError(f"{path}: corrupt HDF5 file ({last_step} failed: exit status {value})")


# --------------------------------------------------------------------------- helpers


def _printable(text: str, limit: int = 400) -> str:
    """Names read from a damaged file may hold control characters or be very long."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raised_by_h5py(exc: BaseException) -> bool:
    """Whether the innermost frames of ``exc`` are h5py's (or anndata reading through it)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any("h5py" in Path(f.filename).parts for f in frames[-3:])


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m immune_aging.guard FILE``; prints the verdict.

    Parameters
    ----------
    argv
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the file passes, 2 when it does not.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--child":  # the fallback when fork fails
        return child(argv[2], float(argv[1]), sys.stdout.fileno())
    if len(argv) != 1:
        print("usage: python -m immune_aging.guard FILE", file=sys.stderr)
        return 2
    try:
        result = check_h5ad(argv[0])
    except InputError as exc:
        print(f"error: guard: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
