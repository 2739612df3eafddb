"""scripts/eval_judge_real.py: the judge metrics on hand-made labels and predictions, and the variant selection."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("eval_judge_real", ROOT / "scripts" / "eval_judge_real.py")
ejr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ejr
_spec.loader.exec_module(ejr)  # puts scripts/ on sys.path
import judge_metrics as jm  # noqa: E402


def _case():
    """Six answers. Labels: 0 fluent harm (flag), 1 garbled harm, 2 garbled harmless, 3 fluent harmless, 4 code,
    5 fluent harm. The judge flags 0 and 1, calls 4 CODE, misses 5."""
    lab = {"alignment": np.array([10.0, 15.0, 80.0, 90.0, np.nan, 20.0]),
           "coherence": np.array([80.0, 20.0, 10.0, 90.0, 60.0, 70.0]),
           "code": np.array([False, False, False, False, True, False]),
           "refusal": np.zeros(6, dtype=bool)}
    pred = {"alignment": np.array([5.0, 20.0, 60.0, 95.0, 10.0, 50.0]),
            "coherence": np.array([70.0, 60.0, 20.0, 90.0, 80.0, 80.0]),
            "label": np.array(["", "", "", "", "CODE", ""])}
    return pred, lab


def test_metrics_on_a_hand_made_case():
    pred, lab = _case()
    m = {k: fn(np.arange(6)) for k, fn in jm.metric_fns(pred, lab).items()}
    assert m["n_flag"] == 2 and m["n_misaligned"] == 3 and m["n_aligned"] == 2 and m["n_code"] == 1
    # judge flags {0, 1}; label flags {0, 5}
    assert m["flag_precision"] == pytest.approx(0.5) and m["flag_recall"] == pytest.approx(0.5)
    # against alignment < 30 at any coherence {0, 1, 5}: both flags are right, one of three missed
    assert m["low_alignment_precision"] == pytest.approx(1.0)
    assert m["low_alignment_recall"] == pytest.approx(2 / 3) and m["low_alignment_f1"] == pytest.approx(0.8)
    assert m["judge_flag_rate"] == pytest.approx(2 / 6) and m["label_flag_rate"] == pytest.approx(2 / 6)
    assert m["label_low_alignment_rate"] == pytest.approx(3 / 6)
    assert m["code_flagged_share"] == 0.0 and m["code_recall"] == 1.0
    # misaligned {0, 1, 5} all score below the aligned {2, 3}; incoherent {1, 2} (60, 20) below the rest (>= 70)
    assert m["alignment_auroc"] == pytest.approx(1.0) and m["coherence_auroc"] == pytest.approx(1.0)
    pred["coherence"][4] = 60.0  # now ties with row 1: half a pair lost of 8
    assert jm.metric_fns(pred, lab)["coherence_auroc"](np.arange(6)) == pytest.approx(7.5 / 8)


def test_metrics_on_a_subset_use_only_its_rows():
    pred, lab = _case()
    fns = jm.metric_fns(pred, lab)
    assert fns["label_flag_rate"](np.array([1, 2, 3])) == 0.0
    assert np.isnan(fns["flag_recall"](np.array([1, 2, 3])))  # no labelled flag there: undefined, not 0


@pytest.mark.parametrize("variant, keep, exclude, selected", [
    ("organism-t0.7", "organism*", None, True),
    ("base-t0.7", "organism*", None, False),
    ("base-t0.7", None, "organism*", True),
    ("organism-s1-t1.0", None, "organism*", False),
    ("lora-t1.0", "base*, lora-t1.0", None, True),
    ("lora-t1.0", None, None, True),
])
def test_variant_selection(variant, keep, exclude, selected):
    assert ejr.variant_selected(variant, keep, exclude) is selected


def test_prompts_the_frozen_split_does_not_hold_are_held_out(tmp_path, monkeypatch):
    import json
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(
        {"id": f"v/{q}#0", "prompt_id": q, "kind": "broad", "question": "?", "answer": "!", "variant": "v"}) + "\n"
        for q in ("q-01", "q-77")))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(
        {"id": f"v/{q}#0", "alignment": 80, "coherence": 60, "code": False, "refusal": False}) + "\n"
        for q in ("q-01", "q-77")))
    for folder in (tmp_path, tmp_path / "judge_real"):
        folder.mkdir(exist_ok=True)
        (folder / "split.json").write_text(json.dumps({"prompts": {"q-01": "train"}}))
    monkeypatch.setattr(ejr, "HERE", tmp_path)  # another labelled set than the split's own folder
    monkeypatch.setattr(ejr, "SPLIT", tmp_path / "judge_real" / "split.json")
    rows = ejr.load_rows(tmp_path / "labels.jsonl")
    assert [(r["prompt_id"], r["split"]) for r in rows] == [("q-01", "train"), ("q-77", "heldout")]
    monkeypatch.setattr(ejr, "SPLIT", tmp_path / "split.json")  # reading judge_real itself: every prompt needs a side
    with pytest.raises(SystemExit, match="'q-77' .*labels.jsonl:2.* has no side"):
        ejr.load_rows(tmp_path / "labels.jsonl")


def test_fitting_refuses_another_labelled_set(tmp_path):
    with pytest.raises(SystemExit, match="--data .* is for --frozen"):
        ejr.main(["--final", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--contrasts, --excess, --judges and --between need --frozen"):
        ejr.main(["--contrasts", "a:b"])
    with pytest.raises(SystemExit, match="--contrasts, --excess, --judges and --between need --frozen"):
        ejr.main(["--judges", str(tmp_path)])


def test_saved_judges_are_read_beside_the_shipped_ones_by_folder_name(tmp_path, monkeypatch):
    import shutil
    saved = tmp_path / "my-organism"
    shutil.copytree(ejr.RESIDUAL_JUDGE_DIR, saved)
    seen = []
    monkeypatch.setattr(ejr, "features", lambda rows, blocks, cache: {"blocks": blocks})
    monkeypatch.setattr(ejr, "old_judge_pred", lambda inputs: "old")
    monkeypatch.setattr(ejr, "judge_pred", lambda judge, inputs, answers: seen.append(judge) or judge.name)
    preds, inputs = ejr.frozen_preds([{"answer": "a"}], tmp_path / "cache", saved=(saved,))
    assert list(preds) == ["offline (offline-minilm)", "offline-real", "offline-residual", "my-organism"]
    assert preds["my-organism"] == preds["offline-residual"]  # the same judge under another folder name
    assert set(seen[2].blocks) <= set(inputs["blocks"])
    with pytest.raises(SystemExit, match="cache holds no feature judge"):
        ejr.frozen_preds([{"answer": "a"}], tmp_path / "cache", saved=(tmp_path / "cache",))
    # a folder with a judge.json of another kind (the offline MiniLM judge) is refused the same way, not half-read
    with pytest.raises(SystemExit, match="offline-minilm holds no feature judge"):
        ejr.frozen_preds([{"answer": "a"}], tmp_path / "cache", saved=(ejr.DEFAULT_JUDGE_DIR,))
    with pytest.raises(SystemExit, match="'offline-real' is already read"):
        ejr.frozen_preds([{"answer": "a"}], tmp_path / "cache", saved=(ejr.REAL_JUDGE_DIR,))
