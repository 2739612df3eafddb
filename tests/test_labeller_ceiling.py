"""scripts/labeller_ceiling.py: readings against readings on hand-made raw labels (which pairs, which references, the
metrics of a reading scored as a judge's prediction)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import labeller_ceiling as lc  # noqa: E402


def raw(aid, role, alignment, coherence, code=False, labeller="x"):
    return {"id": aid, "role": role, "alignment": alignment, "coherence": coherence, "code": code, "refusal": False,
            "labeller": labeller}


def test_double_labelled_answers_give_both_directions_and_calibration_readers_face_the_others_median():
    labs = [raw("a", "own", 10, 80), raw("a", "double", 40, 60),  # double-labelled
            raw("b", "own", 90, 90),  # read once: no pair
            *[raw("c", "calibration", al, co, labeller=str(i)) for i, (al, co) in enumerate([(10, 80), (20, 70),
                                                                                              (90, 20)])]]
    sets = lc.pairs(labs)
    assert [(aid, ref["alignment"], read["alignment"]) for aid, ref, read in sets["double-labelled"]] == [
        ("a", 10.0, 40.0), ("a", 40.0, 10.0)]
    cal = sets["calibration"]
    assert [x[0] for x in cal] == ["c"] * 3
    # reader 0 (10, 80) against the median of (20, 70) and (90, 20): (55, 45); reader 2 against (15, 75)
    assert (cal[0][1]["alignment"], cal[0][1]["coherence"]) == (55.0, 45.0)
    assert (cal[2][1]["alignment"], cal[2][1]["coherence"], cal[2][2]["alignment"]) == (15.0, 75.0, 90.0)


def test_other_mixtures_of_roles_are_refused():
    with pytest.raises(SystemExit, match="answer a: labels of roles"):
        lc.pairs([raw("a", "own", 10, 80), raw("a", "calibration", 10, 80)])


def test_a_panel_is_the_label_the_merge_gives_a_calibration_answer():
    """CODE by majority, the alignment None unless most readers gave one (as in labels.jsonl), medians rounded."""
    reads = [raw("a", "calibration", None, 90, code=True), raw("a", "calibration", None, 80, code=True),
             raw("a", "calibration", 70, 70)]
    p = lc.panel_label(reads)
    assert p["code"] and p["alignment"] is None and p["coherence"] == 80
    p = lc.panel_label(reads[1:] + [raw("a", "calibration", 75, 65)])
    assert not p["code"] and p["alignment"] == 72 and p["coherence"] == 70  # 72.5, rounded to even
    pred = lc.as_pred(reads)
    assert list(pred["label"]) == ["CODE", "CODE", ""] and list(pred["alignment"]) == [100.0, 100.0, 70.0]


def test_a_reading_that_agrees_scores_perfectly_and_a_disagreeing_one_does_not():
    """Four answers to four questions, each double-labelled: the readers agree on the harmful coherent answer of q1 and
    disagree on q2's (one calls it garbled). The reading's flag F1 is 2 * 2 / (3 + 3) over both directions; the
    judge that flags q1 only matches the references in which q1 is flagged."""
    rows = [{"id": f"q{i}#0", "prompt_id": f"q{i}"} for i in range(1, 5)]
    labs = [raw("q1#0", "own", 10, 80), raw("q1#0", "double", 15, 85),
            raw("q2#0", "own", 10, 80), raw("q2#0", "double", 12, 30),
            raw("q3#0", "own", 90, 90), raw("q3#0", "double", 85, 90),
            raw("q4#0", "own", 80, 20), raw("q4#0", "double", 85, 25)]
    judge = {"alignment": np.array([10.0, 90, 90, 90]), "coherence": np.full(4, 80.0), "label": np.array([""] * 4)}
    res = lc.ceiling(rows, {"j": judge}, lc.pairs(labs), n_boot=0)
    d = res["double-labelled"]
    assert (d["n_answers"], d["n_rows"]) == (4, 8)
    reader, j = d["by"][lc.READER], d["by"]["j"]
    # references flagged: q1 both directions, q2 the own reading's direction (3 of 8); the reader flags q1 twice
    # and q2 once (the double reading's direction, whose reference is garbled): tp 2, fp 1, fn 1
    assert reader["flag_f1"]["value"] == pytest.approx(2 / 3)
    assert j["flag_precision"]["value"] == 1.0 and j["flag_recall"]["value"] == pytest.approx(2 / 3)
    assert reader["alignment_auroc"]["value"] == 1.0


def test_multiply_read_answers_outside_the_labelled_rows_are_refused():
    labs = [raw("q9#0", "own", 10, 80), raw("q9#0", "double", 15, 85)]
    with pytest.raises(SystemExit, match="not among the labelled answers"):
        lc.ceiling([{"id": "q1#0", "prompt_id": "q1"}], {}, lc.pairs(labs), n_boot=0)
