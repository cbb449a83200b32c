"""Sweep reports: the presentation of :func:`moescale.fit.measure_leverage`'s result.

``build_report(store, out_dir)`` writes ``report.html`` (self-contained), ``summary.md``,
``analysis.json`` and the figures as PNG files; ``summary_text(analysis)`` is the printable
account (every number with its interval). See :mod:`moescale.report.analysis`.
"""

from moescale.report.analysis import Analysis, analyze
from moescale.report.build import Report, build_report
from moescale.report.data import load_runs
from moescale.report.summary import analysis_json, headline, summary_lines, summary_text

__all__ = ["Analysis", "analyze", "Report", "build_report", "headline", "summary_lines",
           "summary_text", "analysis_json", "load_runs"]
