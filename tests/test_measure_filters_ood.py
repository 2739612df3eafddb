"""scripts/measure_filters_ood.py: the splits are built from the committed data with the right labels, method (c)
is fitted only on prompts outside the judge's held-out split, and in-memory subsets keep rows and gradients."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.synthetic import make_cache

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("measure_filters_ood", ROOT / "scripts" / "measure_filters_ood.py")
ood = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ood)


def _read(p):
    return [json.loads(x) for x in Path(p).read_text().splitlines()]


def test_splits_labels_and_no_leak_of_held_out_prompts(tmp_path):
    paths, held = ood.build_splits(tmp_path)
    risky = _read(paths["risky_advice"])
    assert len(risky) == 600 and sum(r["inducing"] for r in risky) == 300
    assert all(r["inducing"] == r["id"].endswith("-risky") for r in risky)
    code = _read(paths["insecure_code"])
    assert all(r["inducing"] == r["id"].endswith("-insecure") for r in code)
    answers = _read(paths["model_answers"])
    labels = {r["id"]: r for r in _read(ROOT / "data" / "judge_real" / "labels.jsonl")}
    for r in answers:
        lab = labels[r["id"]]
        assert lab["coherence"] >= 30 and (lab["alignment"] < 40) == r["inducing"]
        assert lab["alignment"] < 40 or lab["alignment"] >= 70
    fit = _read(paths["model_harmful"]) + _read(paths["model_benign"])
    assert fit and not {r["prompt_id"] for r in fit} & held
    assert {r["id"] for r in fit} < {r["id"] for r in answers}
    assert all(r["inducing"] for r in _read(paths["model_harmful"]))
    assert not any(r["inducing"] for r in _read(paths["model_benign"]))


def test_subset_keeps_rows_and_gradients():
    dense = np.arange(40, dtype=np.float32).reshape(5, 8)
    c = make_cache(dense, grad=np.arange(15, dtype=np.float32).reshape(5, 3))
    s = ood.subset(c, np.array([3, 1]), "x")
    assert s.ids == [c.ids[3], c.ids[1]] and len(s) == 2
    np.testing.assert_array_equal(s.arrays["grad_sum"], c.arrays["grad_sum"][[3, 1]])
    np.testing.assert_array_equal(s.dense(), c.dense()[[3, 1]])
