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
  (:func:`immune_aging.counts.check_csr_block`);

then the AnnData layout: ``obs`` and ``var`` at the top level, and for ``X`` and
``raw/X`` a shape matching ``obs``/``var`` (``raw/var``) and, for a sparse matrix,
a consistent ``indptr`` (:func:`immune_aging.counts.check_csr_indptr`).

A file that fails raises :class:`~immune_aging.errors.InputError` with one line:
``<file>: corrupt HDF5 file (<what could not be read>)``, or ``<file>: not a
readable h5ad file (...)`` when HDF5 cannot open it at all, or ``<file>: not an
h5ad file (...)`` for a sound HDF5 file that is not AnnData. ``python -m
immune_aging.guard FILE`` runs the check from the command line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from immune_aging.errors import InputError

#: CPU seconds every check may use, whatever the file size.
CPU_BASE_S = 5.0
#: Further CPU seconds per GiB of file. The walk of a valid file takes far less
#: (bench/results/fuzz.md); the limit only bounds a check that never ends.
CPU_PER_GIB_S = 10.0
#: The wall-clock limit is this multiple of the CPU limit plus :data:`WALL_EXTRA_S`
#: (a loaded machine gives the child a fraction of a core).
WALL_FACTOR = 4.0
WALL_EXTRA_S = 30.0
#: Memory the child may add to its parent's address space.
MEMORY_HEADROOM = 4 << 30
#: Datasets up to this size (in memory) are read whole; larger ones by chunk index only.
FULL_READ_MAX_BYTES = 64 << 20
#: Deepest group nesting accepted (AnnData needs 4).
MAX_DEPTH = 64

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SPARSE = ("csr_matrix", "csc_matrix")
_MESSAGE_CHARS = 160


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
    lines, status = _run_child(path, limit)
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


def _run_child(path: Path, limit: float) -> tuple[list[str], tuple[str, int]]:
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
            code = _child(str(path), limit, write_fd)
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


# --------------------------------------------------------------------------- child side


class _Walk:
    """The walk itself; reports each step on ``emit`` before taking it."""

    def __init__(self, emit: Callable[[str], None], file_size: int) -> None:
        self.emit = emit
        self.file_size = file_size
        self.seen: set[int] = set()
        self.objects = 0
        self.read_bytes = 0
        self.chunked_only = 0

    def group(self, group: Any, name: str, depth: int) -> None:
        import h5py

        if depth > MAX_DEPTH:
            raise _Problem(f"{name}: groups nested deeper than {MAX_DEPTH} levels")
        self.attributes(group, name)
        self.emit(f"listing the members of {name}")
        members = list(group.keys())
        for key in members:
            child = f"{name.rstrip('/')}/{key}"
            self.emit(f"reading the link {child}")
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise _Problem(f"{child}: external link to {link.filename!r} (not followed)")
            if isinstance(link, h5py.SoftLink):
                continue
            self.emit(f"opening {child}")
            obj = group[key]
            ident = hash(obj.id)
            if ident in self.seen:
                continue
            self.seen.add(ident)
            self.objects += 1
            if isinstance(obj, h5py.Group):
                self.group(obj, child, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                self.dataset(obj, child)

    def attributes(self, obj: Any, name: str) -> None:
        self.emit(f"reading the attributes of {name}")
        for key in list(obj.attrs.keys()):
            self.emit(f"reading the attribute {key!r} of {name}")
            obj.attrs[key]

    def dataset(self, dset: Any, name: str) -> None:
        import h5py

        self.attributes(dset, name)
        self.emit(f"reading the type and shape of {name}")
        dtype, shape = dset.dtype, dset.shape
        plist = dset.id.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise _Problem(f"{name}: a virtual dataset, mapping other files (not followed)")
        if plist.get_external_count():
            raise _Problem(f"{name}: its data are stored in other files (not followed)")
        for i in range(plist.get_nfilters()):
            code, _, _, label = plist.get_filter(i)
            if not h5py.h5z.filter_avail(code):
                text = label.decode(errors="replace") if isinstance(label, bytes) else label
                raise _Problem(
                    f"{name}: compressed with HDF5 filter {code} ({text}), which is not available"
                )
        n_items = math.prod(shape) if shape else (0 if shape is None else 1)
        nbytes = n_items * dtype.itemsize
        if nbytes <= FULL_READ_MAX_BYTES:
            self.emit(f"reading the values of {name}")
            dset[()]
            self.read_bytes += nbytes
            return
        self.chunked_only += 1
        self.emit(f"reading the chunk index of {name}")
        if dset.chunks is not None:
            dset.id.chunk_iter(lambda info: self._chunk(info, name))
        else:
            offset = dset.id.get_offset()
            if offset is not None and offset + dset.id.get_storage_size() > self.file_size:
                raise _Problem(f"{name}: its data lie beyond the end of the file")

    def _chunk(self, info: Any, name: str) -> None:
        if info.byte_offset + info.size > self.file_size:
            raise _Problem(
                f"{name}: chunk at {info.chunk_offset} lies beyond the end of the file"
                f" (bytes {info.byte_offset}-{info.byte_offset + info.size},"
                f" file {self.file_size})"
            )


class _Problem(Exception):
    """A defect the walk found itself (reported as a corrupt file)."""


class _NotAnnData(Exception):
    """A sound HDF5 file whose layout is not AnnData's."""


def _child(path: str, limit: float, fd: int) -> int:
    """Walk ``path``, writing progress and the verdict as lines to ``fd``."""
    _limit_resources(limit)
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")

    def say(kind: str, text: str) -> None:  # one line each: names may hold newlines
        out.write(f"{kind} {text.replace(chr(10), '?').replace(chr(13), '?')}\n")

    def emit(step: str) -> None:
        say("at", step)

    t0 = time.process_time()
    step = ["opening it"]

    def tracked(text: str) -> None:
        step[0] = text
        emit(text)

    try:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the filters the stages can read)

        try:
            fh = h5py.File(path, "r")
        except Exception as exc:  # HDF5 cannot open it at all (truncated, bad superblock)
            say("error", f"not a readable h5ad file ({type(exc).__name__})")
            return 0
        with fh:
            walk = _Walk(tracked, os.path.getsize(path))
            walk.group(fh, "/", 0)
            tracked("checking the AnnData layout")
            _check_layout(fh)
        result = {
            "objects": walk.objects,
            "read_bytes": walk.read_bytes,
            "chunked_only": walk.chunked_only,
            "cpu_s": round(time.process_time() - t0, 3),
            "cpu_limit_s": round(limit, 1),
        }
        say("ok", json.dumps(result))
    except _NotAnnData as exc:
        say("error", f"not an h5ad file ({exc})")
    except InputError as exc:
        say("error", f"corrupt HDF5 file ({exc})")
    except _Problem as exc:
        say("error", f"corrupt HDF5 file ({exc})")
    except MemoryError:
        say("error", f"corrupt HDF5 file ({step[0]} needed more memory than allowed)")
    except Exception as exc:  # anything the HDF5 library raises for a damaged file
        say("error", f"corrupt HDF5 file ({step[0]}: {describe(exc)})")
    out.flush()
    return 0


def _limit_resources(limit: float) -> None:
    """CPU time (SIGXCPU, then SIGKILL), no core file, bounded extra memory."""
    import faulthandler

    faulthandler.disable()  # a crash is reported by the parent, not dumped here
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    soft = math.ceil(limit)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * resource.getpagesize()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = vm + MEMORY_HEADROOM
        if hard == resource.RLIM_INFINITY or cap < hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError):  # no /proc: the CPU limit still bounds the check
        pass


def _index_length(group: Any, name: str) -> int | None:
    """Rows of an AnnData dataframe group (``obs``, ``var``), or None if unknown."""
    import h5py

    if not isinstance(group, h5py.Group):
        return None  # legacy layouts are left to anndata
    index = group.attrs.get("_index")
    if isinstance(index, bytes):
        index = index.decode(errors="replace")
    if not isinstance(index, str) or index not in group:
        raise _NotAnnData(f"{name} has no index ('_index' attribute)")
    node = group[index]
    if not isinstance(node, h5py.Dataset) or node.ndim != 1:
        raise _NotAnnData(f"{name}/{index} is not a one-dimensional array")
    return int(node.shape[0])


def _check_layout(fh: Any) -> None:
    """Check AnnData's top-level layout and the matrices' shapes and sparse structure."""
    import h5py

    for key in ("obs", "var"):
        if key not in fh:
            raise _NotAnnData(f"no {key!r} at the top level")
    n_obs = _index_length(fh["obs"], "obs")
    n_vars = _index_length(fh["var"], "var")
    if "X" in fh:
        _check_matrix(fh["X"], "X", n_obs, n_vars)
    raw = fh.get("raw")
    if isinstance(raw, h5py.Group) and "X" in raw:
        raw_vars = _index_length(raw["var"], "raw/var") if "var" in raw else None
        _check_matrix(raw["X"], "raw/X", n_obs, raw_vars)


def _check_matrix(node: Any, name: str, n_obs: int | None, n_vars: int | None) -> None:
    import h5py

    from immune_aging.counts import check_csr_indptr

    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise _Problem(f"{name}: a dense matrix needs two dimensions, not {node.ndim}")
        shape = tuple(int(s) for s in node.shape)
        encoding = None
    else:
        encoding = node.attrs.get("encoding-type")
        if isinstance(encoding, bytes):
            encoding = encoding.decode(errors="replace")
        if encoding not in _SPARSE:
            raise _Problem(f"{name}: unknown matrix encoding {encoding!r}")
        raw_shape = node.attrs.get("shape")
        try:
            shape = tuple(int(s) for s in raw_shape)
        except TypeError:
            shape = ()
        if len(shape) != 2 or min(shape) < 0:
            raise _Problem(f"{name}: attribute 'shape' is {raw_shape!r}, not two counts")
    expected = (n_obs, n_vars)
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if want is not None and got != want:
            what = ("rows", "columns")[axis]
            source = ("obs", "raw/var" if name.startswith("raw") else "var")[axis]
            raise _Problem(f"{name}: {got} {what}, but {source} has {want}")
    if encoding is None:
        return
    parts = {}
    for key in ("data", "indices", "indptr"):
        part = node.get(key)
        if not isinstance(part, h5py.Dataset) or part.ndim != 1:
            raise _Problem(f"{name}/{key}: missing or not a one-dimensional array")
        parts[key] = part
    if parts["indices"].dtype.kind not in "iu" or parts["indptr"].dtype.kind not in "iu":
        raise _Problem(f"{name}: indices and indptr must be integers")
    if parts["data"].dtype.kind not in "biuf":
        raise _Problem(f"{name}/data: values of type {parts['data'].dtype} are not numbers")
    nnz = int(parts["data"].shape[0])
    if int(parts["indices"].shape[0]) != nnz:
        raise _Problem(f"{name}: {parts['indices'].shape[0]} column indices for {nnz} values")
    major = shape[0] if encoding == "csr_matrix" else shape[1]
    check_csr_indptr(parts["indptr"][()], major, nnz, where=f"{name}/indptr")


# --------------------------------------------------------------------------- helpers


def _printable(text: str, limit: int = 400) -> str:
    """Names read from a damaged file may hold control characters or be very long."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """Return one short line for an exception: its type and its message's first line.

    Parameters
    ----------
    exc
        The exception.

    Returns
    -------
    str
        ``"Type: first line"`` (at most about 160 characters of message).
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        return _child(argv[2], float(argv[1]), sys.stdout.fileno())
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
