"""Reliability diagrams with their counts: the training card's, `omni-mev evaluate --png` and `omni-mev quality
--png` draw the same picture.

Top: observed success rate against mean confidence per bin, one line per
model, each point labelled with its count. Bottom: how many predictions fell
in each bin. A point on the diagonal backed by 12 outcomes says little; the
counts make that visible.
"""
from __future__ import annotations

from pathlib import Path

# (mean confidence, observed success rate, count) per non-empty bin: omni_mev.evaluation.reliability_curve.
Curve = list[tuple[float, float, int]]


def reliability_png(curves: dict[str, Curve], path: Path, title: str, threshold: float | None = None) -> None:
    """Write the diagram of `curves` (name -> bins) to `path` (its folder made if missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (diagram, counts) = plt.subplots(2, 1, figsize=(6.4, 7.6), dpi=100, sharex=True,
                                             gridspec_kw={"height_ratios": [3, 1]})
    diagram.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    width = 0.8 / max(len(curves), 1) / 15  # side by side within a 1/15 bin
    for offset, (name, bins) in enumerate(curves.items()):
        if not bins:
            continue
        total = sum(count for _, _, count in bins)
        line, = diagram.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", markersize=3,
                             label=f"{name} (n={total:,})")
        for confidence, rate, count in bins:
            # Alternate curves label below and above their points, so coinciding curves stay readable.
            diagram.annotate(f"{count:,}", (confidence, rate), textcoords="offset points",
                             xytext=(4, -10) if offset % 2 == 0 else (-4, 5), ha="left" if offset % 2 == 0 else "right",
                             fontsize=6, color=line.get_color())
        counts.bar([b[0] + (offset - (len(curves) - 1) / 2) * width for b in bins], [b[2] for b in bins],
                   width=width, color=line.get_color(), alpha=0.7)
    if threshold is not None:
        for axis in (diagram, counts):
            axis.axvline(threshold, color="red", linewidth=0.8, linestyle="--")
        diagram.plot([], [], color="red", linewidth=0.8, linestyle="--", label=f"threshold {threshold:g}")
    diagram.set_xlim(0, 1)
    diagram.set_ylim(0, 1)
    diagram.set_ylabel("observed success rate")
    diagram.set_title(title, fontsize=10)
    diagram.legend(loc="upper left", fontsize=7)
    counts.set_yscale("log")
    counts.set_xlabel("mean confidence in the bin")
    counts.set_ylabel("predictions")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
