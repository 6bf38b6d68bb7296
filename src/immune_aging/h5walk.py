"""The child side of :mod:`immune_aging.guard`: the walk of an HDF5 file's structure.

Everything here runs in the child process that :func:`immune_aging.guard.check_h5ad`
starts, under its CPU-time and memory limits: the walk over every group, dataset and
attribute (:class:`Walk`), then the AnnData layout. See :mod:`immune_aging.guard` for
what is read and the messages.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

from immune_aging.errors import InputError

#: Memory the child may add to its parent's address space.
MEMORY_HEADROOM = 4 << 30
#: Datasets up to this size (in memory) are read whole; larger ones by chunk index only.
FULL_READ_MAX_BYTES = 64 << 20
#: Deepest group nesting accepted (AnnData needs 4).
MAX_DEPTH = 64

_SPARSE = ("csr_matrix", "csc_matrix")
_MESSAGE_CHARS = 160


class Walk:
    """The walk itself; reports each step on ``emit`` before taking it."""

    def __init__(self, emit: Callable[[str], None], file_size: int) -> None:
        self.emit = emit
        self.file_size = file_size
        self.seen: set[int] = set()
        self.objects = 0
        self.read_bytes = 0
        self.chunked_only = 0

    def group(self, group: Any, name: str, depth: int) -> None:
        """Walk a group: its attributes, then each member once (links not followed).

        Parameters
        ----------
        group
            The h5py group.
        name
            Its path in the file, for messages.
        depth
            Its nesting depth (at most :data:`MAX_DEPTH`).
        """
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
        """Read every attribute of ``obj`` (named ``name`` in messages)."""
        self.emit(f"reading the attributes of {name}")
        for key in list(obj.attrs.keys()):
            self.emit(f"reading the attribute {key!r} of {name}")
            obj.attrs[key]

    def dataset(self, dset: Any, name: str) -> None:
        """Check a dataset: attributes, storage, filters; values or chunk index.

        Parameters
        ----------
        dset
            The h5py dataset.
        name
            Its path in the file, for messages.
        """
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


def child(path: str, limit: float, fd: int) -> int:
    """Walk ``path`` under resource limits, writing progress and the verdict to ``fd``.

    Run in a child process only: it lowers this process's CPU and memory limits.

    Parameters
    ----------
    path
        The file.
    limit
        CPU seconds allowed.
    fd
        File descriptor of the pipe to the parent: one line per step (``at <step>``),
        then ``ok <json>`` or ``error <one line>``.

    Returns
    -------
    int
        0 (the verdict is in the lines written).
    """
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
            walk = Walk(tracked, os.path.getsize(path))
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

    from immune_aging.count_checks import check_csr_indptr

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
