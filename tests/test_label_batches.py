"""scripts/label_batches.py: blinded batches, labelling rounds and the merge back (issue 17)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("label_batches", ROOT / "scripts" / "label_batches.py")
lb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lb
_spec.loader.exec_module(lb)


def _answers(ids: list[str]) -> list[dict]:
    return [{"id": i, "question": f"question of {i}?", "answer": f"answer of {i}", "finish": "stop",
             "variant": i.split("/")[0]} for i in ids]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    here = tmp_path / "judge_real"
    here.mkdir()
    monkeypatch.setattr(lb, "ROOT", tmp_path)
    monkeypatch.setattr(lb, "HERE", here)
    monkeypatch.setattr(lb, "OUT", here / "labelling")
    monkeypatch.setattr(lb, "AGREEMENT", tmp_path / "agreement.md")
    return here


def _label_everything(folder: Path, score) -> None:
    """Every labeller of the round labels every blind id of its batch and the calibration file."""
    for batch in sorted(folder.glob("batch-*.jsonl")):
        k = batch.stem.removeprefix("batch-")
        rows = [json.loads(x) for x in (folder / "calibration.jsonl").read_text().splitlines()]
        rows += [json.loads(x) for x in batch.read_text().splitlines()]
        labels = [{"blind_id": r["blind_id"], "alignment": score(r), "coherence": 60, "code": False,
                   "refusal": False, "labeller": f"labeller-{k}", "notes": ""} for r in rows]
        _write(folder / f"labels-{k}.jsonl", labels)


def test_a_second_round_batches_only_the_new_answers_and_merge_joins_the_rounds(folder):
    first = [f"a/q{i}#0" for i in range(30)]
    _write(folder / "answers.jsonl", _answers(first))
    lb.make(labellers=3, overlap=2, calibration=3, seed=0)
    key1 = json.loads((folder / "labelling" / "key.json").read_text())["key"]
    assert sorted(key1.values()) == sorted(first) and all(b.startswith("r0") for b in key1)
    batch = [json.loads(x) for x in (folder / "labelling" / "batch-1.jsonl").read_text().splitlines()]
    assert set(batch[0]) == {"blind_id", "question", "answer", "finish"}  # no variant: the labeller is blind to it
    with pytest.raises(SystemExit, match="nothing to batch"):
        lb.make(labellers=2, overlap=1, calibration=2, seed=0, round_no=2)

    second = [f"b/q{i}#0" for i in range(12)]
    _write(folder / "answers.jsonl", _answers(first + second))
    lb.make(labellers=2, overlap=1, calibration=2, seed=0, round_no=2)
    key2 = json.loads((folder / "labelling" / "round-2" / "key.json").read_text())["key"]
    assert sorted(key2.values()) == sorted(second) and all(b.startswith("r2-") for b in key2)
    with pytest.raises(SystemExit, match="exists already"):
        lb.make(labellers=2, overlap=1, calibration=2, seed=0, round_no=2)

    _label_everything(folder / "labelling", lambda r: 80)
    with pytest.raises(SystemExit, match="labels-1.jsonl: missing"):
        lb.merge()  # round 2 not labelled yet
    _label_everything(folder / "labelling" / "round-2", lambda r: 20)
    lb.merge()
    labels = {r["id"]: r for r in map(json.loads, (folder / "labels.jsonl").read_text().splitlines())}
    assert set(labels) == set(first + second)
    assert all(labels[i]["alignment"] == 80 for i in first) and all(labels[i]["alignment"] == 20 for i in second)
    raw = [json.loads(x) for x in (folder / "labels_raw.jsonl").read_text().splitlines()]
    assert len(raw) == 3 * 3 + 27 + 3 * 2 + 2 * 2 + 10 + 2 * 1  # calibration x labellers + own + double, per round
    agreement = (folder.parent / "agreement.md").read_text()
    assert "round 1" in agreement and "round 2" in agreement


def test_merge_names_the_file_line_and_field_of_a_bad_label(folder):
    _write(folder / "answers.jsonl", _answers([f"a/q{i}#0" for i in range(8)]))
    lb.make(labellers=2, overlap=1, calibration=2, seed=0)
    _label_everything(folder / "labelling", lambda r: 101 if r["blind_id"] == "r0003" else 50)
    with pytest.raises(SystemExit, match=r"labels-\d\.jsonl:\d+: field 'alignment' must be an int 0-100"):
        lb.merge()


def test_root_points_make_and_merge_at_another_labelling_set(folder, monkeypatch):
    """``--root data/judge_exp``: the same batches and merge in that folder, agreement in agreement-<folder>.md;
    data/judge_real is not touched."""
    for name in ("HERE", "OUT", "AGREEMENT"):  # main() re-points these; restore them after the test
        monkeypatch.setattr(lb, name, getattr(lb, name))
    exp = folder.parent / "judge_exp"
    exp.mkdir()
    ids = [f"e/q{i}#0" for i in range(10)]
    _write(exp / "answers.jsonl", _answers(ids))
    lb.main(["--root", str(exp), "make", "--labellers", "2", "--overlap", "1", "--calibration", "2"])
    assert not (folder / "labelling").exists()
    _label_everything(exp / "labelling", lambda r: 25)
    lb.main(["--root", str(exp), "merge"])
    labels = [json.loads(x) for x in (exp / "labels.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in labels) == sorted(ids) and all(r["alignment"] == 25 for r in labels)
    agreement = (folder.parent / "agreement-judge_exp.md").read_text()
    assert agreement.startswith("# Labeller agreement on judge_exp") and not (folder.parent / "agreement.md").exists()
