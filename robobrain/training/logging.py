"""Metric logging: CSV always, TensorBoard when it is installed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class MetricLogger:
    """Appends rows of scalars to ``<run_dir>/<name>.csv`` (and TensorBoard events, if available)."""

    def __init__(
        self, run_dir: str | os.PathLike[str], name: str = "metrics", tensorboard: bool = True
    ) -> None:
        self.path = Path(run_dir) / f"{name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self._fields = next(csv.reader(f), None)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                self._tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        if self._fields is None:
            self._fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
