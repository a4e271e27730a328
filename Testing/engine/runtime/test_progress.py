"""runtime.progress.Progress: JSON records with extra fields, bar lines in a log file, the ETA of a resumed run."""

from __future__ import annotations

import io
import json

import pytest

from lungddpm.runtime.progress import Progress


def test_json_records_carry_the_fields_and_an_eta_counted_from_the_start_step(monkeypatch):
    clock = iter([100.0, 110.0])  # constructed at 100 s, step 15 reported at 110 s
    monkeypatch.setattr("lungddpm.runtime.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    Progress("json", out, start_step=10)(15, 20, {"event": "training", "loss": 0.5})
    record = json.loads(out.getvalue())
    # 5 steps in 10 s since the resumed start at step 10, 5 steps left: 10 s
    assert record == {"event": "training", "loss": 0.5, "step": 15, "total": 20, "elapsed_s": 10.0, "eta_s": 10.0}


def test_bar_lines_to_a_file_are_one_line_each_named_by_their_event():
    out = io.StringIO()  # not a terminal: a job's log file
    progress = Progress("bar", out, label="training")
    progress(1, 4, {"event": "training", "loss": 0.123456})
    progress(2, 4, {"event": "validation", "val_loss": 0.25}, keep=True)
    progress(3, 4)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert lines[0].startswith("\rtraining [") and " 1/4 " in lines[0] and lines[0].endswith("loss=0.1235")
    assert lines[1].startswith("\rvalidation [") and lines[1].endswith("val_loss=0.25")
    assert lines[2].startswith("\rtraining [") and " 3/4 " in lines[2]


def test_bar_on_a_terminal_redraws_in_place_except_kept_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = Progress("bar", out)
    progress(1, 3)
    progress(2, 3, keep=True)
    progress(3, 3)
    assert out.getvalue().count("\r") == 3 and out.getvalue().count("\n") == 2  # step 2 kept, step 3 the last


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="must be one of"):
        Progress("tqdm")
