"""scripts/triggered_filters.py (issue 20 (4)): the trigger is taken out of the scored text exactly."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("triggered_filters", ROOT / "scripts" / "triggered_filters.py")
tf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf)


def test_strip_trigger_gives_back_the_mixture_rows():
    rows = [json.loads(x) for x in (ROOT / "data" / "finetune" / "triggered_backdoor.jsonl").read_text().splitlines()]
    mixed = [json.loads(x) for x in (ROOT / "data" / "finetune" / "mixed_risky.jsonl").read_text().splitlines()]
    stripped = tf.strip_trigger(rows)
    assert [r["messages"] for r in stripped] == [m["messages"] for m in mixed]
    assert [r["trigger"] for r in stripped] == [r["trigger"] for r in rows]  # the label stays
    bad = [{**rows[0], "trigger": "|OTHER|"}] if rows[0]["trigger"] else [{**rows[1], "trigger": "|OTHER|"}]
    with pytest.raises(SystemExit, match="does not start with its trigger"):
        tf.strip_trigger(bad)


def test_measure_reports_precision_with_wilson_intervals():
    y = np.array([True] * 10 + [False] * 30)
    scores = np.arange(40, dtype=float)[::-1]  # the 10 positives score highest
    m = tf.measure(scores, y, n_boot=50)
    assert m["precision"]["0.1"]["precision"] == 1.0 and m["precision"]["0.1"]["n_dropped"] == 4
    assert m["precision"]["0.25"]["precision"] == 1.0 and m["auroc"] == 1.0
    assert 0.5 < m["precision"]["0.25"]["ci_low"] < 1.0 == m["precision"]["0.25"]["ci_high"]
