"""Learning-curve plot of an online run: success rate and return against env steps."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any


def _column(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        try:
            xv, yv = float(r[x]), float(r[y])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(yv):
            xs.append(xv)
            ys.append(yv)
    return xs, ys


def plot_learning_curve(csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> Path:
    """Read ``train.csv`` of an online run and write a two-panel PNG: success (evaluation and the
    exploring training episodes) and return (the same two), both against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, what in ((ax_s, "success"), (ax_r, "return")):
        for key, label, style in (
            (f"eval_{what}", "evaluation", "o-"),
            (f"train_{what}", "training episodes", ".:"),
        ):
            xs, ys = _column(rows, "env_steps", key)
            if xs:
                ax.plot(xs, ys, style, label=label)
        if ax.lines:
            ax.legend(loc="upper left", fontsize=8)
        else:  # (an env that reports no success: its column is NaN; matplotlib warned of no artists)
            ax.text(0.5, 0.5, f"no {what} reported", ha="center", va="center", transform=ax.transAxes)
    ax_s.set(xlabel="env steps", ylabel="success rate", ylim=(-0.05, 1.05), title="success")
    ax_r.set(xlabel="env steps", ylabel="mean return", title="return")
    for ax in (ax_s, ax_r):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(png_path)
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


class LearningCurveCallback:
    """Online-loop callback: redraws ``<run>/learning_curve.png`` after every evaluation."""

    def on_iteration(self, state: Any, metrics: dict[str, float], run_dir: Path) -> None:
        if "eval_success" in metrics:
            plot_learning_curve(run_dir / "train.csv", run_dir / "learning_curve.png")
