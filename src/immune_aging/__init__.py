"""Immune aging: how gene expression in blood immune cells changes with donor age.

Importing the package fixes the thread count of the numeric libraries from the
environment before any of them is loaded (see :mod:`immune_aging.threads`).
"""

from immune_aging.threads import configure_threads

configure_threads()

__all__ = ["configure_threads"]
