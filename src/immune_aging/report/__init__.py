"""The HTML report: one self-contained page of every stage's results.

:mod:`~immune_aging.report.collect` reads the pipeline's outputs and
:mod:`~immune_aging.report.page` assembles the page (pure) from the stage list of
:mod:`~immune_aging.report.config`, the HTML primitives of
:mod:`~immune_aging.report.markup`, the tables of :mod:`~immune_aging.report.tables`
and :mod:`~immune_aging.report.top`, the goals of :mod:`~immune_aging.report.goals`,
the captions of :mod:`~immune_aging.report.captions` and the stylesheet of
:mod:`~immune_aging.report.style`.
"""

from immune_aging.report.collect import ReportInputs, read_all
from immune_aging.report.config import STAGES
from immune_aging.report.page import build_report

__all__ = ["STAGES", "ReportInputs", "build_report", "read_all"]
