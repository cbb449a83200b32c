"""Compose docs/img/report.png from four figures of a demo report folder.

Usage::

    .venv/bin/python docs/img/compose_report_png.py REPORT_DIR "TITLE" docs/img/report.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = ("loss_vs_compute.png", "el_vs_compute.png", "isoflop.png", "el_vs_activation.png")


def main(report: str, title: str, out: str) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4))
    for ax, name in zip(axes.flat, FIGURES, strict=True):
        ax.imshow(mpimg.imread(Path(report) / name))
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:4])
