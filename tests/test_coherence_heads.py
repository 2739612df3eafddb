"""scripts/coherence_heads.py: out-of-fold tree heads, rank means and paired head comparisons on hand-made data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_heads as ch  # noqa: E402


def _data(n_questions: int = 20, per_question: int = 10, seed: int = 0):
    """A feature whose threshold (not its sign) decides coherence: answers coherent when |x| < 1."""
    rng = np.random.default_rng(seed)
    prompts = np.repeat([f"q{i}" for i in range(n_questions)], per_question)
    x = rng.normal(0, 1.5, (len(prompts), 2))
    y = np.where(np.abs(x[:, 0]) < 1, 80.0, 10.0)
    return x, y, prompts


def test_tree_scores_are_out_of_fold_and_read_a_threshold_a_line_cannot():
    x, y, prompts = _data()
    folds = np.array([int(q[1:]) % 4 for q in prompts])
    bx, by, bp = _data(seed=1)
    bp = np.array([f"b{q}" for q in bp])
    s = ch.tree_scores(x, y, folds, bx, by, prompts, bp)
    incoherent = y <= ch.INCOHERENT_AT
    assert not np.isnan(s).any() and ch.coherence_auroc(s, incoherent) > 0.95
    assert abs(ch.coherence_auroc(x[:, 0], incoherent) - 0.5) < 0.1  # the raw feature, read linearly, is at chance
    # base rows to a held-out question are left out of its fold's trees: naming base rows like the questions of
    # fold 0 removes them from that fold's training only, and the scores stay defined
    s2 = ch.tree_scores(x, y, folds, bx, by, prompts, np.where(np.arange(len(bp)) < 50, "q0", bp))
    assert not np.isnan(s2).any()


def test_rank_mean_and_paired_comparison_by_hand():
    np.testing.assert_allclose(ch.rank_mean(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])), [2, 2, 2])
    incoherent = np.array([True, True, False, False, True, False])
    prompts = np.array(["a", "a", "b", "b", "c", "c"])
    good = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    bad = np.array([0.9, 0.2, 0.1, 0.8, 0.3, 0.7])
    assert ch.coherence_auroc(good, incoherent) == 1.0
    assert ch.coherence_auroc(bad, incoherent) == pytest.approx(4 / 9)
    res = ch.compare_heads({"ref": bad, "good": good}, incoherent, prompts, "ref", n_boot=200)
    assert "minus_reference" not in res["ref"]
    assert res["good"]["minus_reference"]["value"] == pytest.approx(1 - 4 / 9)
    assert res["good"]["auroc"]["n_groups"] == 3
    md = ch.markdown({"command": "cmd", "variants": "v", "n": 6, "n_incoherent": 3, "n_questions": 3, "heads": res})
    assert "| good | 1.000" in md and "| ref |" in md


def test_hold_out_must_name_other_variants(tmp_path):
    import argparse

    la = ch.LabelledAnswers(
        args=argparse.Namespace(hold_out="syc75-*", variants="syc75-*", data=ROOT / "data" / "judge_exp",
                                cache=tmp_path),
        command="", cfg={"blocks": ()}, rows=[{"variant": "syc75-base"}], prompts=np.array(["q"]), folds=np.array([0]),
        n_questions=1, base=[], inputs={}, base_inputs={})
    with pytest.raises(SystemExit, match="also in --variants"):
        ch.with_held_out(la)
    la.args.hold_out = "no-such-variant-*"
    with pytest.raises(SystemExit, match="no labelled answer of variants"):
        ch.with_held_out(la)
    la.args.hold_out = None
    assert ch.with_held_out(la)[3].startswith("5 folds")


def test_scored_set_and_its_line():
    import argparse

    la = ch.LabelledAnswers(args=argparse.Namespace(hold_out="d5-*", variants="d1-*"), command="cmd", cfg={}, rows=[],
                            prompts=np.array([]), folds=np.array([]), n_questions=0, base=[], inputs={}, base_inputs={})
    res = ch.scored_set(la, "the plan", np.array(["q", "q", "r"]), np.array([True, False, True]))
    assert res == {"command": "cmd", "variants": "d1-*", "hold_out": "d5-*", "scored": "d5-*", "plan": "the plan",
                   "n": 3, "n_incoherent": 2, "n_questions": 2}
    assert ch.scored_line(res) == "3 labelled answers of `d5-*` (2 incoherent: label coherence <= 30), 2 questions, the plan"
