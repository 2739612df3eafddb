"""scripts/judge_within_question.py: a judge's agreement split between questions and within one, on hand-made
scores; the out-of-replicate ridge fits; which contrasts each replicate gives."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import judge_within_question as jwq  # noqa: E402


def _answers():
    """Four questions, eight answers each: the question sets the mean misalignment (0.1 .. 0.7), the answer moves it
    by -0.2 .. +0.2 around it."""
    groups = np.repeat([f"q{i}" for i in range(4)], 8)
    q_mean = np.repeat([0.1, 0.3, 0.5, 0.7], 8)
    offset = np.tile(np.linspace(-0.2, 0.2, 8), 4)
    return groups, q_mean, offset


def test_a_judge_that_only_knows_the_question_agrees_between_questions_and_not_within():
    groups, q_mean, offset = _answers()
    label = q_mean + offset
    alignment = 100 - 100 * label
    stats = jwq.decompose(q_mean.copy(), label, alignment, groups, n_boot=0)
    assert stats["between_slope"]["value"] == pytest.approx(1.0)
    assert stats["between_spearman"]["value"] == pytest.approx(1.0)
    # its within-question scores are all 0: a within-question difference moves it by nothing, no rank order
    assert stats["within_slope"]["value"] == pytest.approx(0.0) and np.isnan(stats["within_spearman"]["value"])
    sharp = jwq.decompose(q_mean + 0.5 * offset, label, alignment, groups, n_boot=0)
    assert sharp["within_slope"]["value"] == pytest.approx(0.5)  # half the size of a within-question difference
    assert sharp["within_spearman"]["value"] > 0.99  # (ties across questions break by float rounding)


def test_the_within_question_auroc_needs_three_of_each_class_in_a_question():
    groups = np.array(["a"] * 6 + ["b"] * 4)
    alignment = np.array([10, 10, 10, 90, 90, 90, 10, 10, 90, 90], float)
    score = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 1.0])  # b is read backwards but has 2 of each
    fns = jwq.decomposition_fns(score, (100 - alignment) / 100, alignment, groups)
    idx = np.arange(10)
    assert fns["within_auroc"](idx) == pytest.approx(7 / 9)  # only question a: 7 of its 9 pairs in order
    assert fns["pooled_auroc"](idx) < fns["within_auroc"](idx)


def test_ridge_fitted_within_questions_ignores_a_feature_that_only_names_the_question():
    groups, q_mean, offset = _answers()
    groups, q_mean, offset = (np.tile(a, 2) for a in (groups, q_mean, offset))
    replicate = np.repeat(["r0", "r1"], 32)
    rng = np.random.default_rng(0)
    y = q_mean + offset
    x = np.stack([q_mean + 0.01 * rng.normal(size=64), offset + 0.01 * rng.normal(size=64)], axis=1)
    pooled = jwq.ridge_scores(x, y, replicate, groups, within=False, alpha=1.0)
    within = jwq.ridge_scores(x, y, replicate, groups, within=True, alpha=1.0)
    assert np.corrcoef(pooled, y)[0, 1] > 0.99
    # within questions only the answer's own feature moves the score: the questions' means come out about equal
    means = [within[groups == g].mean() for g in np.unique(groups)]
    assert np.ptp(means) < 0.05 and np.corrcoef(within, offset)[0, 1] > 0.99


def test_each_replicate_gives_the_pairs_it_holds_both_sides_of():
    variants = np.array(["d1-geometry-0.50", "d1-random-0.50", "d1-misaligned", "d2-geometry-0.50", "d2-random-0.50",
                         "d1-base"])
    got = jwq.replicate_pairs(variants, jwq.PAIRS)
    assert got == [(("d1-geometry-0.50",), ("d1-random-0.50",)), (("d1-geometry-0.50",), ("d1-misaligned",)),
                   (("d1-random-0.50",), ("d1-misaligned",)), (("d1-misaligned",), ("d1-base",)),
                   (("d2-geometry-0.50",), ("d2-random-0.50",))]


def test_contrast_slopes_read_filter_contrasts_apart_from_the_organism():
    def c(a, b, lab, j):
        return {"a": a, "b": b, "rates": {jwq.LABELS: {"diff": {"mean": lab}}, "j: mean misalignment":
                                          {"diff": {"mean": j}}}}
    cs = [c("d1-geometry-0.50", "d1-random-0.50", -0.04, -0.01), c("d1-misaligned", "d1-base", 0.08, 0.08)]
    s = jwq.contrast_slopes(cs, ["j"])["j"]
    assert s["filter"] == {"slope": pytest.approx(0.25), "n": 1}
    assert s["all"]["n"] == 2 and s["all"]["slope"] == pytest.approx((0.0004 + 0.0064) / (0.0016 + 0.0064))


def test_a_question_the_bootstrap_draws_twice_counts_twice():
    groups = np.repeat(["a", "b", "c"], 2)
    label = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    score = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.5])
    alignment = 100 - 50 * label
    fns = jwq.decomposition_fns(score, label, alignment, groups)
    once, c_twice = np.arange(6), np.array([0, 1, 2, 3, 4, 5, 4, 5])
    assert fns["between_slope"](once) == pytest.approx(np.polyfit([0, 1, 2], [0, 1, 0.5], 1)[0])
    assert fns["between_slope"](c_twice) == pytest.approx(np.polyfit([0, 1, 2, 2], [0, 1, 0.5, 0.5], 1)[0])


def test_malformed_pairs_are_refused():
    with pytest.raises(SystemExit, match="--pairs: give condition pairs A:B"):
        jwq.replicate_pairs(np.array(["d1-a", "d1-b"]), "a:b,geometry-0.50")
