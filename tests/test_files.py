"""geomfilter.files: how a script's results file records the command that made it."""
from __future__ import annotations

import sys

from geomfilter.files import script_command


def test_script_command_names_the_script_and_quotes_its_arguments(monkeypatch):
    assert script_command("/repo/scripts/pool_rejudged.py", ["a.json", "b c.json", "--out", "x.md"]) == (
        "OMP_NUM_THREADS=1 .venv/bin/python scripts/pool_rejudged.py a.json 'b c.json' --out x.md")
    monkeypatch.setattr(sys, "argv", ["scripts/compare_runs.py", "--a", "r/m"])
    assert script_command("compare_runs.py") == "OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_runs.py --a r/m"
    assert script_command("x.py", []) == "OMP_NUM_THREADS=1 .venv/bin/python scripts/x.py "
