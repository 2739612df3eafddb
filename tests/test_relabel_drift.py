"""scripts/relabel_drift.py: blind batches of already labelled answers, and new readings against the old labels, on
a hand-made labelling set."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import relabel_drift as rd  # noqa: E402


def _set(tmp_path: Path) -> Path:
    """Six base answers (old alignment 90) and six fine-tuned ones (old alignment 60), all coherence 50."""
    answers, labels = [], []
    for v in ("base", "ft"):
        for i in range(6):
            aid = f"{v}/q-{i}#0"
            answers.append({"id": aid, "variant": v, "prompt_id": f"q-{i}", "question": f"question {i}",
                            "answer": f"{v} answer {i}", "finish": "length"})
            labels.append({"id": aid, "alignment": 90 if v == "base" else 60, "coherence": 50, "code": False,
                           "refusal": False, "labeller": "old", "notes": ""})
    for name, rows in (("answers.jsonl", answers), ("labels.jsonl", labels)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_make_draws_each_variant_blind_and_never_rewrites(tmp_path):
    root = _set(tmp_path)
    folder = rd.make(root, "d1", {"base": 4, "ft": 2}, labellers=2, seed=0)
    meta = json.loads((folder / "key.json").read_text())
    assert sorted(meta["key"]) == [f"d1-{i:04d}" for i in range(1, 7)]
    assert sorted(aid.split("/")[0] for aid in meta["key"].values()) == ["base"] * 4 + ["ft"] * 2
    rows = [json.loads(x) for k in (1, 2) for x in (folder / f"batch-{k}.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"blind_id", "question", "answer", "finish"} for r in rows)
    with pytest.raises(SystemExit, match="exists already"):
        rd.make(root, "d1", {"base": 1}, labellers=1, seed=0)
    with pytest.raises(SystemExit, match="only 6 labelled answers"):
        rd.make(root, "d2", {"base": 7}, labellers=1, seed=0)


def test_compare_reads_drift_per_variant_and_against_the_base(tmp_path):
    root = _set(tmp_path)
    folder = rd.make(root, "d1", {"base": 6, "ft": 6}, labellers=1, seed=0)
    key = json.loads((folder / "key.json").read_text())["key"]
    # the new reader scores base answers as before and fine-tuned ones 10 points lower (misalignment +0.10)
    new = [{"blind_id": b, "alignment": 90 if aid.startswith("base") else 50, "coherence": 50, "code": False,
            "refusal": False, "labeller": "new", "notes": ""} for b, aid in key.items()]
    (folder / "labels-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    res = rd.compare(root, "d1", n_boot=200)
    base, ft = res["by_variant"]["base"]["mean misalignment"], res["by_variant"]["ft"]["mean misalignment"]
    assert (base["old"], base["new"], base["diff"]["mean"]) == pytest.approx((0.1, 0.1, 0.0))
    assert (ft["old"], ft["new"], ft["diff"]["mean"]) == pytest.approx((0.4, 0.5, 0.1))
    assert res["drift_vs_base"]["ft"]["mean misalignment"]["mean"] == pytest.approx(0.1)
    assert res["by_variant"]["ft"]["mean coherence"]["diff"]["mean"] == pytest.approx(0.0)
    assert "| ft | mean misalignment | 0.400 | 0.500 | +0.100" in rd.markdown(res, "cmd")


def test_compare_refuses_a_missing_or_short_labels_file(tmp_path):
    root = _set(tmp_path)
    folder = rd.make(root, "d1", {"base": 2}, labellers=1, seed=0)
    with pytest.raises(SystemExit, match="labeller 1 has not finished"):
        rd.compare(root, "d1", n_boot=10)
    b = next(iter(json.loads((folder / "key.json").read_text())["key"]))
    (folder / "labels-1.jsonl").write_text(json.dumps({"blind_id": b, "alignment": 90, "coherence": 50, "code": False,
                                                       "refusal": False, "labeller": "x", "notes": ""}) + "\n")
    with pytest.raises(SystemExit, match="1 answers not labelled"):
        rd.compare(root, "d1", n_boot=10)


def test_sample_spec_is_checked():
    assert rd.parse_sample("a:3, b:1") == {"a": 3, "b": 1}
    for bad in ("a", "a:0", "a:x", ""):
        with pytest.raises(SystemExit, match="--sample"):
            rd.parse_sample(bad)


def _read_again(root: Path, name: str, sample: dict, base_shift: int, ft_shift: int, seed: int) -> None:
    """Round ``name``: the new reader scores base answers ``base_shift`` and fine-tuned ones ``ft_shift`` alignment
    points lower than their first reading."""
    folder = rd.make(root, name, sample, labellers=1, seed=seed)
    key = json.loads((folder / "key.json").read_text())["key"]
    new = [{"blind_id": b, "alignment": (90 - base_shift) if aid.startswith("base") else (60 - ft_shift),
            "coherence": 50, "code": False, "refusal": False, "labeller": name, "notes": ""} for b, aid in key.items()]
    (folder / "labels-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))


def test_pool_keeps_each_round_a_stratum(tmp_path):
    """Round 1 reads everything 10 points harsher, round 2 reads base as before and fine-tuned answers 4 points
    harsher: the base drift pooled is the mean over its answers, the fine-tuned drift minus its round's base's is
    0 in round 1 and +0.04 in round 2, weighted by the rounds' fine-tuned answers (2 and 4): +0.04 * 4 / 6. A naive
    pool of all fine-tuned against all base answers would read the rounds' levels instead."""
    root = _set(tmp_path)
    _read_again(root, "r1", {"base": 4, "ft": 2}, 10, 10, seed=0)
    _read_again(root, "r2", {"base": 2, "ft": 4}, 0, 4, seed=1)
    res = rd.pool(root, ["r1", "r2"], n_boot=200)
    assert res["base"] == "base" and res["n_tuned"] == {"r1": 2, "r2": 4}
    b = res["base_drift"]["mean misalignment"]
    assert b["mean"] == pytest.approx((4 * 0.1 + 2 * 0.0) / 6) and b["n"] == 6
    d = res["tuned_minus_base"]["mean misalignment"]
    assert d["mean"] == pytest.approx(0.04 * 4 / 6) and (d["n_a"], d["n_b"], d["n_strata"]) == (6, 6, 2)
    assert res["tuned_minus_base"]["mean coherence"]["mean"] == pytest.approx(0.0)
    assert "| mean misalignment | +0.067 [" in rd.pool_markdown(res, "cmd")
    _read_again(root, "r3", {"ft": 2, "base": 2}, 0, 0, seed=2)
    with pytest.raises(SystemExit, match="different bases"):
        rd.pool(root, ["r1", "r3"], n_boot=10)
