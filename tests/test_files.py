"""geomfilter.files: how a script's results file records the command that made it."""
from __future__ import annotations

import sys

from geomfilter.files import script_command


def test_script_command_names_the_script_and_quotes_its_arguments(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert script_command("/repo/scripts/pool_rejudged.py", ["a.json", "b c.json", "--out", "x.md"]) == (
        "OMP_NUM_THREADS=1 .venv/bin/python scripts/pool_rejudged.py a.json 'b c.json' --out x.md")
    monkeypatch.setattr(sys, "argv", ["scripts/compare_runs.py", "--a", "r/m"])
    assert script_command("compare_runs.py") == "OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_runs.py --a r/m"
    assert script_command("x.py", []) == "OMP_NUM_THREADS=1 .venv/bin/python scripts/x.py"  # no trailing space


def test_script_command_records_the_thread_setting_it_ran_with(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert script_command("x.py", ["--a"]) == "OMP_NUM_THREADS=2 .venv/bin/python scripts/x.py --a"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert script_command("x.py", ["--a"]) == ".venv/bin/python scripts/x.py --a"


def test_write_jsonl_round_trips_keeps_non_ascii_and_makes_the_folder(tmp_path):
    import json

    import numpy as np

    from geomfilter.files import write_jsonl

    rows = [{"text": "café — naïve", "score": np.float32(0.25)}, {"n": 1, "path": tmp_path}]
    path = write_jsonl(tmp_path / "new" / "rows.jsonl", rows)
    text = path.read_text(encoding="utf-8")
    assert "café — naïve" in text and text.endswith("\n") and len(text.splitlines()) == 2
    back = [json.loads(x) for x in text.splitlines()]
    assert back[0]["score"] == "0.25" and back[1] == {"n": 1, "path": str(tmp_path)}
    write_jsonl(path, rows[:1], default=float)  # numpy scalars as numbers; the file replaced whole
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["score"] == 0.25
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind
    write_jsonl(path, iter([]))
    assert path.read_text(encoding="utf-8") == ""
