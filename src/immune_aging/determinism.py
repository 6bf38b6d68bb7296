"""Same bytes on every machine: one code path for the numeric libraries.

The numeric libraries pick code for the CPU they find and split work over the
threads they are given, and each choice changes the last bits of floating-point
results, which iterative methods (ARPACK, Harmony, UMAP, PyDESeq2's fits) then
amplify. Every source found, and what this module does about it:

=====================================  ============================================
source                                 pin (environment, set before import)
=====================================  ============================================
OpenBLAS kernel chosen per CPU         ``OPENBLAS_CORETYPE=Haswell`` (numpy's and
(SkylakeX, Haswell, Sandybridge...)    SciPy's bundled OpenBLAS both read it)
OpenBLAS threads (gemm, gemv, dot and  ``OPENBLAS_NUM_THREADS=1``: BLAS always runs
LAPACK split sums across threads)      on one thread; parallelism comes from
                                       processes, OpenMP and numba
                                       (``IMMUNE_AGING_THREADS``)
numpy's SIMD dispatch (exp, log,       ``NPY_ENABLE_CPU_FEATURES=X86_V3``: the
log1p, power... differ between its     AVX2 code paths on every machine
AVX-512, AVX2 and baseline code)
numba compiling for the host CPU       ``NUMBA_CPU_NAME=haswell``
(UMAP's layout changes)
=====================================  ============================================

Together they fix a hardware floor: **x86-64-v3** (AVX2 and FMA: Intel Core and
Xeon since Haswell, 2013; AMD since Excavator, 2015, and every Zen). On every such CPU glibc
also picks the same (FMA) variants of ``exp``/``log``/``pow``, which harmonypy,
PyDESeq2 and numpy's float64 functions call. On a CPU below the floor nothing is
pinned (a forced Haswell kernel would stop the process with an illegal
instruction) and a one-line warning says that results will differ in the last
bits from a run on an x86-64-v3 machine. What stays unpinned: glibc itself (its
``libm`` is not part of the lock file).

Set ``IMMUNE_AGING_NATIVE=1`` to skip the pins (this CPU's own code paths,
multi-threaded BLAS). Results then differ from the committed ones in the last
bits, which the iterative steps amplify (on the default data: a few other doublet
calls, a slightly different HVG set and so another UMAP, DE p-values within about
1e-2 relative), so ``dvc.lock`` changes. On 2 cores the pins cost no measurable time.
``bench/results/determinism.md`` measures each source and the cost of each pin.
The order numpy's SIMD sorts give tied values also depends on the CPU; the
project's own sorts are stable where ties occur, the pin covers the libraries'.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

NATIVE_VAR = "IMMUNE_AGING_NATIVE"
#: environment set before numpy/scipy/numba are imported (values override the user's)
PINS: Mapping[str, str] = {
    "OPENBLAS_CORETYPE": "Haswell",
    "OPENBLAS_NUM_THREADS": "1",
    "NPY_ENABLE_CPU_FEATURES": "X86_V3",
    "NUMBA_CPU_NAME": "haswell",
}
#: removed from the environment: numpy refuses to start when both of its variables are set
UNSET = ("NPY_DISABLE_CPU_FEATURES",)
#: /proc/cpuinfo flags of x86-64-v3 (numpy's X86_V3 target, OpenBLAS Haswell, LLVM haswell)
X86_64_V3_FLAGS = frozenset(
    {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "xsave", "sse4_2", "popcnt"}
)
_WARNED_VAR = "IMMUNE_AGING_UNPINNED_WARNED"
#: modules that read the pinned variables once, when first imported
_READERS = ("numpy", "scipy", "numba")

#: what :func:`pin_numerics` did: ``pinned`` (the variables set) and ``reason`` when not
state: dict[str, object] = {"pinned": {}, "reason": "not run"}


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """Return the CPU feature flags the kernel reports (empty when unknown).

    Parameters
    ----------
    path
        The cpuinfo file.

    Returns
    -------
    frozenset of str
        The ``flags`` of the first processor.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def pin_numerics(
    environ: MutableMapping[str, str] | None = None,
    *,
    flags: frozenset[str] | None = None,
    loaded: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """Pin BLAS kernel and threads, numpy's SIMD level and numba's CPU target.

    Runs when :mod:`immune_aging` is imported, before the numeric libraries are.
    The pinned variables override values already set (a user's
    ``OPENBLAS_CORETYPE`` or ``OPENBLAS_NUM_THREADS`` would otherwise change the
    results), and ``NPY_DISABLE_CPU_FEATURES`` is removed.

    Parameters
    ----------
    environ
        The environment to change (default: ``os.environ``).
    flags
        CPU flags (default: :func:`cpu_flags`).
    loaded
        Imported modules (default: ``sys.modules``). If numpy, SciPy or numba is
        already imported nothing is pinned, so that worker processes started
        later compute exactly like this one.

    Returns
    -------
    dict
        The variables set (empty when nothing was pinned); the reason is in
        :data:`state`.
    """
    env = os.environ if environ is None else environ
    modules = sys.modules if loaded is None else loaded
    reason = ""
    if env.get(NATIVE_VAR, "").strip() not in ("", "0"):
        reason = f"{NATIVE_VAR} is set"
    elif any(name in modules for name in _READERS):
        late = next(name for name in _READERS if name in modules)
        reason = f"{late} was imported before immune_aging"
    elif sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
        reason = "not x86-64 Linux"
    else:
        missing = X86_64_V3_FLAGS - (cpu_flags() if flags is None else flags)
        if missing:
            reason = f"CPU below x86-64-v3 (no {', '.join(sorted(missing))})"
            if not env.get(_WARNED_VAR):  # once per stage, not again in its workers
                env[_WARNED_VAR] = "1"
                sys.stderr.write(
                    f"warning: immune_aging: {reason}: numeric code paths are not pinned, "
                    "so results differ in the last bits from the committed dvc.lock\n"
                )
    if reason:
        state.update(pinned={}, reason=reason)
        return {}
    for var in UNSET:
        env.pop(var, None)
    env.update(PINS)
    state.update(pinned=dict(PINS), reason="")
    return dict(PINS)
