"""The HTML report: one self-contained page of every stage's results.

:mod:`~immune_aging.report.collect` (with :mod:`~immune_aging.report.provenance`)
reads the pipeline's outputs and :mod:`~immune_aging.report.page` assembles the page
(pure). It opens with the findings per cell type (:mod:`~immune_aging.report.findings`,
the summary figure of :mod:`~immune_aging.report.heatmap`, what was removed before DE
from :mod:`~immune_aging.report.removed`), then the check against a planted truth
when there is one (:mod:`~immune_aging.report.goals`), then a section per stage of
:mod:`~immune_aging.report.config` with the tables of :mod:`~immune_aging.report.tables`
and :mod:`~immune_aging.report.top`. Cut-offs come from the run
(:mod:`~immune_aging.report.recorded`); HTML primitives live in
:mod:`~immune_aging.report.markup`, captions in :mod:`~immune_aging.report.captions`
and the stylesheet in :mod:`~immune_aging.report.style`.
"""

from immune_aging.report.collect import ReportInputs, read_all
from immune_aging.report.config import STAGES
from immune_aging.report.page import build_report

__all__ = ["STAGES", "ReportInputs", "build_report", "read_all"]
