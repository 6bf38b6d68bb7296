"""Immune aging: how gene expression in blood immune cells changes with donor age.

Importing the package, before any numeric library is loaded, pins their code
paths so that results are the same bytes on every x86-64-v3 machine and at every
thread count (see :mod:`immune_aging.determinism`), then fixes their thread
count from the environment (see :mod:`immune_aging.threads`).
"""

from immune_aging.determinism import pin_numerics
from immune_aging.threads import configure_threads

pin_numerics()
configure_threads()

__all__ = ["configure_threads", "pin_numerics"]
