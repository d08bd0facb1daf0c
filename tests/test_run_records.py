"""Every evaluation's per-problem records in a run folder: written and read back, cut back on resume, and a broken
file named in one line."""

from __future__ import annotations

import json

import pytest
from report_helpers import make_comparison

from rlbench.core.results import EVALS, RECORDS_DIR, read_records, record_points, records_path, write_records
from rlbench.engine.checkpoints import drop_logs, truncate_logs
from rlbench.study.report.inputs import ReportInputError, load_comparison

ROWS = [{"point": 1, "step": 3, "id": "2+2", "greedy": {"completion": " 2+2=4 #### 4", "correct": True}}]


def test_records_read_back_as_written_and_equal_rows_give_equal_bytes(tmp_path):
    a, b = records_path(tmp_path / "a", 1), records_path(tmp_path / "b", 1)
    write_records(a, ROWS)
    write_records(b, ROWS)
    assert read_records(a) == ROWS and a.read_bytes() == b.read_bytes()
    assert a == tmp_path / "a" / RECORDS_DIR / "point-0001.jsonl.gz"
    assert record_points(tmp_path / "a") == {1: a} and record_points(tmp_path / "none") == {}


def test_a_broken_records_file_is_named(tmp_path):
    path = records_path(tmp_path, 0)
    path.parent.mkdir()
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=f"{path}: cannot read"):
        read_records(path)


def test_resuming_drops_the_records_of_every_evaluation_past_the_state(tmp_path):
    for point in range(4):
        write_records(records_path(tmp_path, point), [dict(ROWS[0], point=point)])
    (tmp_path / EVALS).write_text("".join(json.dumps({"point": p, "step": p}) + "\n" for p in range(4)))
    truncate_logs(tmp_path, steps=2, evals_done=2)
    assert sorted(record_points(tmp_path)) == [0, 1]
    drop_logs(tmp_path)
    assert not (tmp_path / RECORDS_DIR).exists()


def test_a_broken_final_records_file_stops_the_report_naming_it(tmp_path):
    path = make_comparison(tmp_path / "c", {"em-pg": 0.6}, seeds=(1,))
    final = record_points(path / "runs" / "em-pg-s1")[3]
    final.write_bytes(final.read_bytes()[:40])  # cut short
    with pytest.raises(ReportInputError, match=f"{final}: cannot read"):
        load_comparison(path)
