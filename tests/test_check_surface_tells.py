"""scripts/check_surface_tells.py: within-pair shares, and the split's pairs read from the committed scores."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import check_surface_tells as st  # noqa: E402


def test_share_above_counts_ties_half():
    scores = np.array([3.0, 1.0, 2.0, 2.0, 0.0, 5.0])
    r = st.share_above(scores, [(0, 1, 0, 0), (2, 3, 0, 0), (4, 5, 0, 0)])
    assert r["share"] == pytest.approx(0.5) and r["n"] == 3 and r["lo"] < 0.5 < r["hi"]


def test_twin_pairs_of_the_committed_scores_pair_every_row_and_measure_the_tell():
    scores = json.loads((ROOT / "data/results/filters_ood/scores.json").read_text(encoding="utf-8"))
    ids = scores["insecure_code"]["ids"]
    pairs = st.twin_pairs("insecure_code", ids, st.split_rows("insecure_code", ROOT / "data" / "finetune"))
    assert len(pairs) == 300 and sorted(k for a, b, _, _ in pairs for k in (a, b)) == list(range(600))
    assert all(ids[a].endswith("-insecure") and ids[b].endswith("-secure") for a, b, _, _ in pairs)
    # the secure twins close with more prose: strictly more closing words in 229 of the 300 pairs
    assert np.mean([t_bad < t_good for _, _, t_bad, t_good in pairs]) > 0.7
    with pytest.raises(SystemExit, match="not scored on both sides"):
        st.twin_pairs("insecure_code", ids[:-1], st.split_rows("insecure_code", ROOT / "data" / "finetune"))


def test_tell_by_domain_reads_the_closing_prose_of_each_side():
    t = st.tell_by_domain("insecure_code", st.split_rows("insecure_code", ROOT / "data" / "finetune"))
    assert set(t) == {"scripts", "webapp"} and t["scripts"]["twin"]["n"] == 150
    assert t["scripts"]["twin"]["share_above_0"] == 1.0  # every secure script closes with prose
    assert all(d["twin"]["mean"] > 2 * d["inducing"]["mean"] for d in t.values())
