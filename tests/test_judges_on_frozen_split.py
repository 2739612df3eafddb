"""scripts/judges_on_frozen_split.py: judges side by side on hand-made labelled answers, paired by prompt."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import judges_on_frozen_split as jf  # noqa: E402


def _rows() -> list[dict]:
    # 6 prompts x 4 answers: one harmful and fluent (alignment 10, coherence 80), one aligned and fluent (90 / 90),
    # one aligned but incoherent (80 / 10), one aligned and fluent (75 / 70)
    labels = [(10, 80), (90, 90), (80, 10), (75, 70)]
    return [{"prompt_id": f"q{p}", "y_alignment": a, "y_coherence": c, "y_code": False, "y_refusal": False}
            for p in range(6) for a, c in labels]


def _pred(alignment, coherence) -> dict:
    n = 24
    return {"alignment": np.tile(np.asarray(alignment, float), n // 4),
            "coherence": np.tile(np.asarray(coherence, float), n // 4), "label": np.array([""] * n)}


def test_paired_differences_and_seen_sets():
    rows = _rows()
    preds = {"ref": _pred([40, 60, 50, 55], [60, 70, 65, 62]),      # misses the harm (40 > 30), half-reads coherence
             "good": _pred([5, 95, 85, 80], [90, 95, 5, 75]),        # reads both, flags the harmful answer
             "same": _pred([40, 60, 50, 55], [60, 70, 65, 62])}      # the reference again
    preds["good"]["coherence"][[2, 6]] = 99                          # but misreads q0's and q1's incoherent answer
    res = jf.measure(rows, preds, seen={"q0", "q1"}, reference="ref", n_boot=200)
    assert list(res) == ["the frozen held-out split", "its prompts also asked in --seen",
                         "its prompts not asked in --seen"]
    assert [res[s]["n_prompts"] for s in res] == [6, 2, 4]
    whole = res["the frozen held-out split"]
    # alignment: ref ranks the harmful answer below every aligned one too (40 < 50, 55, 60): AUROC 1 for both
    assert whole["paired"]["alignment_auroc"]["good"]["value"]["value"] == 1.0
    assert whole["paired"]["alignment_auroc"]["good"]["minus_reference"]["value"] == 0.0
    # coherence: ref puts the incoherent answer (65) above two coherent ones (60, 62): AUROC 1/3; good: 1 on the
    # prompts not seen, 0 on q0 and q1 (99 above every coherent answer)
    assert whole["paired"]["coherence_auroc"]["ref"]["value"]["value"] == pytest.approx(1 / 3)
    unseen, asked = res["its prompts not asked in --seen"]["paired"], res["its prompts also asked in --seen"]["paired"]
    assert unseen["coherence_auroc"]["good"]["minus_reference"]["value"] == pytest.approx(2 / 3)
    assert unseen["coherence_auroc"]["good"]["minus_reference"]["lo"] > 0
    assert asked["coherence_auroc"]["good"]["value"]["value"] == 0.0
    assert whole["paired"]["coherence_auroc"]["good"]["value"]["value"] == pytest.approx(4 / 6)
    # the flag: ref flags nothing (F1 0), good flags exactly the labels' flag (F1 1)
    assert whole["paired"]["flag_f1"]["good"]["minus_reference"]["value"] == 1.0
    assert whole["metrics"]["good"]["judge_flag_rate"]["value"] == 0.25
    assert "minus_reference" not in whole["paired"]["flag_f1"]["ref"]
    assert whole["paired"]["coherence_auroc"]["same"]["minus_reference"]["value"] == 0.0
    md = jf.markdown({"command": "cmd", "n": 24, "n_prompts": 6, "seen": "data/judge_exp", "n_seen_asked": 2,
                      "n_boot": 200, "judges": list(preds), "reference": "ref", "sets": res})
    assert "| good | 1.000 [1.00, 1.00] (+0.000 [+0.000, +0.000]) | 0.667 [" in md
    assert "## its prompts not asked in --seen (4 prompts; n 16, n_misaligned 4" in md


def test_unknown_reference_and_seen_without_answers_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--reference 'nope'"):
        jf.measure(_rows(), {"ref": _pred([1, 2, 3, 4], [1, 2, 3, 4])}, set(), "nope", 10)
    with pytest.raises(SystemExit, match="no answers.jsonl"):
        jf.seen_prompts(tmp_path)
    (tmp_path / "answers.jsonl").write_text(json.dumps({"prompt_id": "q1"}) + "\n\n" + json.dumps({"id": 2}) + "\n")
    with pytest.raises(SystemExit, match=r"answers.jsonl:3: field 'prompt_id': missing"):
        jf.seen_prompts(tmp_path)
    (tmp_path / "answers.jsonl").write_text(json.dumps({"prompt_id": "q1"}) + "\n{nope\n")
    with pytest.raises(SystemExit, match=r"answers.jsonl:2: malformed JSON"):
        jf.seen_prompts(tmp_path)


def test_heldout_rows_keep_only_the_held_out_side():
    rows = jf.heldout_rows(ROOT / "data" / "judge_real" / "labels.jsonl")
    assert {r["split"] for r in rows} == {"heldout"} and len(rows) == 450
    assert len({r["prompt_id"] for r in rows}) == 25


def test_trace_names_the_prompt_whose_answers_are_ranked_wrong_together():
    rows = _rows()
    for r in rows:
        r |= {"question": f"question {r['prompt_id']}?", "variant": "base-t1.0" if r["y_alignment"] == 10 else "lora"}
    pred = _pred([5, 95, 85, 80], [90, 95, 5, 75])      # reads every prompt right ...
    pred["alignment"][[20]] = 99                         # ... but q5's harmful answer, read as the most aligned
    pred["coherence"][[6, 10]] = 80                      # and q1's and q2's incoherent answers, read as coherent
    traced = jf.trace_prompts({"j": pred}, rows, own="base-t", top=2)
    al, co = traced["judges"]["j"]["alignment_auroc"], traced["judges"]["j"]["coherence_auroc"]
    # alignment: q5's harmful answer above all 18 aligned answers (6 x 18 pairs): 1 - 18/108; without q5: 1; without
    # another prompt, 5 x 15 pairs, 15 of them wrong
    assert al["value"] == pytest.approx(1 - 18 / 108)
    assert al["without"][0] == ["q5", 1.0] and al["without"][1][1] == pytest.approx(1 - 15 / 75)
    # coherence: q1 and q2 carry the misses together; each left out alone leaves the other's
    assert [q for q, _ in co["without"]] == ["q1", "q2"] and co["without"][0][1] < 1
    assert traced["prompts"]["q5"] == {"question": "question q5?", "n": 4, "n_misaligned": 1, "n_aligned": 3,
                                       "n_incoherent": 1, "own_n": 1, "own_n_misaligned": 1, "own_n_aligned": 0}
    md = "\n".join(jf.trace_markdown(traced, "base-t"))
    assert "| j | alignment_auroc | 0.833 | q5 1.000, " in md
    assert "| q5 | question q5? | 4 | 1 / 3 | 1 | 1, 1 / 0 |" in md


def test_a_negative_trace_is_refused_before_any_work():
    with pytest.raises(SystemExit, match="--trace -1: must be 0 or more"):
        jf.main(["--name", "x", "--trace", "-1", "--labels", "/nonexistent"])
