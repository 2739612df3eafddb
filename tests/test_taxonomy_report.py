"""scripts/taxonomy_report.py: kappa, Wilson intervals, catch rates per class from a filter's scores."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("taxonomy_report", ROOT / "scripts" / "taxonomy_report.py")
tax = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tax)


def test_kappa_and_wilson():
    assert tax.cohen_kappa(list("aabb"), list("aabb")) == 1.0
    assert tax.cohen_kappa(list("abab"), list("baba")) == pytest.approx(-1.0)
    assert np.isnan(tax.cohen_kappa(list("aaaa"), list("aaaa")))
    p, lo, hi = tax.wilson(5, 10)
    assert p == 0.5 and 0.23 < lo < 0.24 and 0.76 < hi < 0.77
    assert tax.wilson(0, 20)[1] == 0.0


def test_labels_cover_the_data_and_catch_rates_follow_the_scores():
    train, probes, double = tax.load_labels()
    assert len(train) == 640 and len(probes) == 70 and set(double) <= set(train) | set(probes)
    mixed = [json.loads(x) for x in (ROOT / "data" / "finetune" / "mixed.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in mixed]
    # a score that ranks exactly the high-severity sycophantic rows first catches all of them at 25 %
    high = {r["id"] for r in mixed if r["inducing"] and train[r["id"]]["severity"] == "high"}
    assert 0 < len(high) <= 200
    scores = {"ids": ids, "oracle-high": [1.0 if i in high else 0.0 for i in ids], "flat": [0.0] * len(ids)}
    out = tax.catch_rates(scores, train)
    assert out["oracle-high"]["severity=high"]["rate"] == 1.0
    assert out["oracle-high"]["overall"]["n"] == 200
    # ties broken by row order: the flat score drops the first 200 rows
    first = set(ids[:200])
    syc = [r["id"] for r in mixed if r["inducing"]]
    assert out["flat"]["overall"]["rate"] == pytest.approx(sum(i in first for i in syc) / 200)
