"""Metric logging: CSV always, TensorBoard when it is installed."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from robobrain.data.store import fsync_dir

log = logging.getLogger(__name__)


class MetricLogger:
    """Appends rows of scalars to ``<run_dir>/<name>.csv`` (and TensorBoard events, if available)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        name: str = "metrics",
        tensorboard: bool = True,
        step_key: str = "step",
    ) -> None:
        self.path = Path(run_dir) / f"{name}.csv"
        self.step_key = step_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):  # a row cut short by a kill: dropped, not appended to
                os.truncate(self.path, data.rfind(b"\n") + 1)
            with open(self.path, newline="") as f:
                self._fields = next(csv.reader(f), None)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
                self._writer_class = SummaryWriter
            except ImportError:
                log.info("no tensorboard installed (pip install robobrain[tensorboard]): %s.csv only", name)
                self._tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {self.step_key: step, **metrics}
        if self._fields is None:
            self._rewrite(list(row), [])
        elif set(row) - set(self._fields):
            # A new column: rewrite the file with the wider header (old rows get empty cells).
            self._rewrite(self._fields + [k for k in row if k not in self._fields], self._rows())
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self._fields, extrasaction="ignore").writerow(row)
            _sync(f)  # (on disk before the checkpoint that follows it: a power loss lost the row for good)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def amend(self, step: int, metrics: dict[str, float]) -> None:
        """Add ``metrics`` to the last row logged at ``step`` (a new row if there is none), e.g. an
        evaluation that came after the row was written."""
        rows = self._rows() if self._fields is not None else []
        at = [i for i, r in enumerate(rows) if float(r[self.step_key]) == step]
        if not at:
            self.log(step, metrics)
            return
        rows[at[-1]].update({k: str(v) for k, v in metrics.items()})
        assert self._fields is not None
        self._rewrite(self._fields + [k for k in metrics if k not in self._fields], rows)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def _rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, fields: list[str], rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            _sync(f)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)  # (the rename survives a power loss too)
        self._fields = fields

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run re-does what followed its checkpoint), in
        the CSV and in TensorBoard (whose reader then drops the events past ``step``)."""
        if self._fields is not None:
            self._rewrite(self._fields, [r for r in self._rows() if float(r[self.step_key]) <= step])
        if self._tb is not None:
            log_dir = self._tb.log_dir
            self._tb.close()
            self._tb = self._writer_class(log_dir, purge_step=step + 1)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
