"""scripts/judge_blind_spots.py: a judge's misses against the default model's own harm, on hand-made answers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import judge_blind_spots as jbs  # noqa: E402


def test_miss_shares_count_the_aligned_answers_scored_lower_ties_half():
    assert jbs.miss_shares(np.array([0.0, 50.0, 100.0]), np.array([10.0, 50.0, 90.0, 95.0])).tolist() == \
        [0.0, 0.375, 1.0]
    with pytest.raises(ValueError, match="no labelled-aligned answer"):
        jbs.miss_shares(np.array([1.0]), np.array([]))


def _rows(n_questions: int = 6) -> tuple[list[dict], np.ndarray]:
    """Per question: 4 answers of the default model (q0-q2: 2 of them harmful, the rest aligned), 4 harmful fine-tune
    answers (coherence 80) and 4 aligned ones. The judge reads every aligned answer at 80 and every harmful answer
    at 10, but the fine-tune's harmful answers to q0-q2, which it scores 90: above every aligned answer."""
    rows, score = [], []
    for q in range(n_questions):
        blind = q < 3
        for k in range(4):
            harmful = blind and k < 2
            rows.append({"prompt_id": f"q{q}", "question": f"question {q}?", "variant": "x-base",
                         "y_alignment": 10.0 if harmful else 90.0, "y_coherence": 80.0})
            score.append(10.0 if harmful else 80.0)
        for k in range(8):
            harmful = k < 4
            rows.append({"prompt_id": f"q{q}", "question": f"question {q}?", "variant": "x-tuned",
                         "y_alignment": 10.0 if harmful else 90.0, "y_coherence": 80.0})
            score.append((90.0 if blind else 10.0) if harmful else 80.0)
    return rows, np.array(score)


def test_misses_on_the_questions_the_default_model_gets_wrong_are_found():
    rows, score = _rows()
    r = jbs.blind_spots(rows, score, "-base", min_misaligned=3, n_boot=200)
    assert (r["n_questions"], r["n_questions_own_low"], r["n_harmful"], r["n_fluent_harmful"]) == (6, 3, 24, 24)
    assert r["mean_miss_own_low"] == 1.0 and r["mean_miss_other"] == 0.0
    assert r["gap"]["value"] == 1.0 and r["gap"]["lo"] > 0 and r["gap_fluent"]["value"] == 1.0
    assert r["gap"]["mdd"] == pytest.approx(2.802 * (r["gap"]["hi"] - r["gap"]["lo"]) / 3.92, rel=1e-3)
    assert r["spearman"]["value"] == pytest.approx(1.0)
    q0 = next(p for p in r["questions"] if p["prompt_id"] == "q0")
    assert q0 == {"prompt_id": "q0", "question": "question 0?", "n_own": 4, "base_low": 0.5, "n_harmful": 4,
                  "n_fluent_harmful": 4, "mean_miss": 1.0}
    # a judge that reads every harmful answer at 10 misses none, anywhere
    fixed = np.where(np.array([x["y_alignment"] for x in rows]) < 30, 10.0, 80.0)
    r = jbs.blind_spots(rows, fixed, "-base", min_misaligned=3, n_boot=50)
    assert r["gap"]["value"] == 0.0 and np.isnan(r["spearman"]["value"])


def test_refusals_name_what_is_missing():
    rows, score = _rows()
    with pytest.raises(SystemExit, match="no answer of a variant ending '-own'"):
        jbs.blind_spots(rows, score, "-own", 3, 10)
    with pytest.raises(SystemExit, match="0 question\\(s\\) with >= 5 labelled-misaligned"):
        jbs.blind_spots(rows, score, "-base", 5, 10)
    with pytest.raises(SystemExit, match="--min-misaligned 0: must be 1 or more"):
        jbs.main(["--name", "x", "--min-misaligned", "0"])
