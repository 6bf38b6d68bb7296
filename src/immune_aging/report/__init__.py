"""The HTML report: one self-contained page of every stage's results.

:mod:`~immune_aging.report.collect` reads the pipeline's outputs,
:mod:`~immune_aging.report.build` turns them into HTML (pure), with captions from
:mod:`~immune_aging.report.captions` and the stylesheet of
:mod:`~immune_aging.report.style`.
"""

from immune_aging.report.build import STAGES, build_report
from immune_aging.report.collect import ReportInputs, read_all

__all__ = ["STAGES", "ReportInputs", "build_report", "read_all"]
