"""scripts/explore_token_probe.py: the token labels and the code/prose regions it reads (issue 19)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import explore_token_probe as tp  # noqa: E402


def test_diff_labels_mark_the_insecure_answers_own_tokens():
    secure = np.array([5, 6, 7, 8, 9, 10])
    insecure = np.array([5, 6, 70, 71, 9, 10, 11])  # 7, 8 replaced by 70, 71; 11 inserted at the end
    assert tp.diff_labels(insecure, secure).tolist() == [0, 0, 1, 1, 0, 0, 1]
    assert tp.diff_labels(secure, secure).sum() == 0  # identical twins: nothing to learn


def test_code_mask_and_region_means():
    fence = 99
    ids = np.array([1, 2, fence, 3, 4, fence, 5])
    assert tp.code_mask(ids, fence).tolist() == [False, False, False, True, True, False, False]
    assert not tp.code_mask(np.array([1, fence, 2]), fence).any()  # an unclosed block holds no code region
    acts = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    assert tp.region_mean(acts, ids, "code", fence).tolist() == [3.5, 3.5]
    assert tp.region_mean(acts, ids, "prose", fence).tolist() == pytest.approx([(0 + 1 + 2 + 5 + 6) / 5] * 2)
    with pytest.raises(SystemExit, match="without code tokens"):
        tp.region_mean(acts, np.array([1, 2, 3, 4, 5, 6, 7]), "code", fence)


def test_pair_auroc_reads_column_zero_as_positive():
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    assert tp.pair_auroc(s, np.arange(3)) == pytest.approx(8 / 9)  # 0.3 loses only to 0.7
    assert tp.pair_auroc(s, np.array([0, 0, 1])) == 1.0
