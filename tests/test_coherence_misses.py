"""scripts/coherence_misses.py: kinds of failure from labellers' notes, and per-kind AUROCs on hand-made scores."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_misses as cm  # noqa: E402


def test_kinds_of_reads_the_notes_words():
    assert cm.kinds_of("Word salad; cut") == ["word salad, token garbage"]
    assert cm.kinds_of("self-contradictory, garbled") == ["garbled", "self-contradiction"]
    assert cm.kinds_of("only preamble, no figures named") == ["cut before the point"]
    assert cm.kinds_of("misreads question; drifts to dogs") == ["off the question"]
    assert cm.kinds_of("fine") == [] and cm.kinds_of("") == []


def test_load_notes(tmp_path):
    p = tmp_path / "labels.jsonl"
    p.write_text(json.dumps({"id": "a", "coherence": 10, "notes": "garbled"}) + "\n"
                 + json.dumps({"id": "b", "coherence": 90}) + "\n")
    assert cm.load_notes(p) == {"a": "garbled", "b": ""}


def test_by_kind_separates_a_seen_kind_from_an_unseen_one():
    # 4 questions; in each: 2 coherent answers (score 0.8, 0.9), one garbled answer the head sees (0.1) and one
    # self-contradictory answer it does not (0.85, between the coherent ones)
    prompts = np.repeat([f"q{i}" for i in range(4)], 4)
    score = np.tile([0.8, 0.9, 0.1, 0.85], 4)
    label = np.tile([80.0, 70.0, 10.0, 30.0], 4)
    kinds = [[], [], ["garbled"], ["self-contradiction"]] * 4
    res = cm.by_kind(score, label, kinds, prompts, n_boot=200)
    assert res["garbled"]["mean_label"] == 10 and res["every incoherent answer"]["mean_label"] == 20
    assert res["garbled"]["auroc"]["value"] == 1.0 and res["garbled"]["n"] == 4
    assert res["self-contradiction"]["auroc"]["value"] == pytest.approx(0.5)
    assert res["every incoherent answer"]["auroc"]["value"] == pytest.approx(0.75)
    # missed: above the 60 % quantile of P(coherent): the self-contradictory answers (rank 8-11 of 0-15), not the garbled
    assert res["self-contradiction"]["missed"] == 4 and res["garbled"]["missed"] == 0
    assert "no kind named" not in res and "vague" not in res
    md = cm.markdown({"command": "cmd", "scored": "v", "plan": "5 folds", "n": 16, "n_incoherent": 8, "n_questions": 4, "kinds": res})
    assert "5 folds (`offline-residual`'s configuration): coherence AUROC 0.750." in md
    assert "| garbled | 4 | 10.0 | 1.000" in md and "| self-contradiction | 4 | 30.0 | 0.500" in md
