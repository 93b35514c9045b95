"""MetricLogger's columns, a row cut short by a kill, truncation on resume."""

import csv

from robobrain.training.logging import MetricLogger


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_new_metric_widens_the_header_and_keeps_the_old_rows(tmp_path):
    log = MetricLogger(tmp_path, "m", tensorboard=False)
    log.log(1, {"a": 1.0})
    log.log(2, {"a": 2.0, "b": 5.0})
    log.close()
    rows = _rows(tmp_path / "m.csv")
    assert list(rows[0]) == ["step", "a", "b"]
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [("1", "1.0", ""), ("2", "2.0", "5.0")]


def test_a_row_cut_short_is_dropped_and_the_next_row_starts_on_its_own_line(tmp_path):
    log = MetricLogger(tmp_path, "m", tensorboard=False)
    log.log(1, {"a": 1.0})
    log.log(2, {"a": 2.0})
    log.close()
    path = tmp_path / "m.csv"
    path.write_bytes(path.read_bytes() + b"3,3.")  # killed mid-row
    log = MetricLogger(tmp_path, "m", tensorboard=False)
    log.log(3, {"a": 3.5})
    log.close()
    assert [(r["step"], r["a"]) for r in _rows(path)] == [("1", "1.0"), ("2", "2.0"), ("3", "3.5")]


def test_truncate_after_keeps_the_checkpoint_steps_row_and_the_header(tmp_path):
    log = MetricLogger(tmp_path, "m", tensorboard=False)
    for s in range(1, 6):
        log.log(s, {"a": float(s)})
    log.close()
    log = MetricLogger(tmp_path, "m", tensorboard=False)
    log.truncate_after(3)
    log.log(4, {"a": 40.0})
    log.close()
    assert [(r["step"], r["a"]) for r in _rows(tmp_path / "m.csv")] == [
        ("1", "1.0"), ("2", "2.0"), ("3", "3.0"), ("4", "40.0")]  # fmt: skip
