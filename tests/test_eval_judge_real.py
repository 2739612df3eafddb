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
_spec.loader.exec_module(ejr)


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
    m = {k: fn(np.arange(6)) for k, fn in ejr.metric_fns(pred, lab).items()}
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
    assert ejr.metric_fns(pred, lab)["coherence_auroc"](np.arange(6)) == pytest.approx(7.5 / 8)


def test_metrics_on_a_subset_use_only_its_rows():
    pred, lab = _case()
    fns = ejr.metric_fns(pred, lab)
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
    assert ejr._variant_selected(variant, keep, exclude) is selected
