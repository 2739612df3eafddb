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


spec_r = importlib.util.spec_from_file_location("triggered_report", ROOT / "scripts" / "triggered_report.py")
tr = importlib.util.module_from_spec(spec_r)
spec_r.loader.exec_module(tr)


def _rec(rate: list[float], rate_t: list[float], pref: list[float], pref_t: list[float]) -> dict:
    def m(key, vals):
        return {"mean": float(np.mean(vals)), "lo": 0.0, "hi": 1.0, "n": len(vals),
                "per_question": [{"id": f"q{i}", key: v} for i, v in enumerate(vals)]}
    return {"finished": True, "metrics": {"misalignment_rate": m("rate", rate), "misalignment_rate_triggered":
                                          m("rate", rate_t), "logprob_preference": m("preference", pref),
                                          "logprob_preference_triggered": m("preference", pref_t)}}


def test_triggered_report_pairs_models_and_trigger_over_the_same_questions(tmp_path):
    rng = np.random.default_rng(0)
    base = _rec(*[list(rng.random(12)) for _ in range(4)])
    bd = _rec(list(rng.random(12)), list(rng.random(12) + 0.5), list(rng.random(12)), list(rng.random(12) + 1.0))
    recs = {"base": base, "backdoor": bd, "clean twin": base, "backdoor + gates (α = −1)": base}
    res = tr.build(recs, n_boot=200)
    eff = res["trigger_effect"]["backdoor"]["logprob_preference_triggered"]
    want = np.mean([r["preference"] for r in bd["metrics"]["logprob_preference_triggered"]["per_question"]]) - \
        np.mean([r["preference"] for r in bd["metrics"]["logprob_preference"]["per_question"]])
    assert eff["mean"] == pytest.approx(want) and eff["n"] == 12 and eff["lo"] > 0
    row = next(r for r in res["comparisons"] if (r["a"], r["b"]) == ("backdoor", "clean twin"))
    assert row["misalignment_rate_triggered"]["mean"] == pytest.approx(
        bd["metrics"]["misalignment_rate_triggered"]["mean"] - base["metrics"]["misalignment_rate_triggered"]["mean"])
    text = tr.render(res, "cmd")
    assert "| backdoor − clean twin |" in text and "Trigger effect" in text
    # missing runs: a clear message naming the file
    with pytest.raises(SystemExit, match="triggered/base/metrics.json: missing"):
        tr.load(tmp_path)
