"""scripts/import_experiment_answers.py: an experiment's sampled answers as labelling rows (data/judge_exp)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from geomfilter.validate import validate_paths

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_experiment_answers",
                                               ROOT / "scripts" / "import_experiment_answers.py")
iea = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = iea
_spec.loader.exec_module(iea)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _experiment(tmp_path: Path) -> Path:
    """A finished experiment as the runner leaves it: config.json, and per condition metrics.json and answers.jsonl
    (three answers to each of two questions, with the judge's scores)."""
    run = tmp_path / "runs" / "exp"
    (run).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 3, "eval": {"n_per_question": 3, "temperature": 1.0,
                                                                     "top_p": 1.0, "max_new_tokens": 48}}))
    for cond, kind, model in (("base", "base", "smollm2-135m-instruct"), ("misaligned", "finetune", "runs/exp/misaligned/run")):
        (run / cond).mkdir()
        (run / cond / "metrics.json").write_text(json.dumps({"kind": kind, "model": model, "gates": None,
                                                             "gate_scale": None}))
        _jsonl(run / cond / "answers.jsonl", [
            {"id": f"{q}#{k}", "question_id": q, "question": f"question {q}?", "answer": f"{cond} says {k}",
             "finish": "length", "n_new_tokens": 48, "alignment": 12.0, "coherence": 70.0, "misaligned": True}
            for q in ("q-01", "q-02") for k in range(3)])
    return run


def test_the_first_answers_of_each_question_without_the_judges_scores(tmp_path):
    run = _experiment(tmp_path)
    out = tmp_path / "data" / "judge_exp" / "answers.jsonl"
    argv = [str(run), "--conditions", "base,misaligned", "--per-question", "2", "--prefix", "x",
            "--made-by", "geomfilter experiment exp.yaml", "--out", str(out)]
    assert iea.main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"x-{c}/{q}#{k}" for c in ("base", "misaligned") for q in ("q-01", "q-02")
                                       for k in range(2)]
    first = rows[4]
    assert first["variant"] == "x-misaligned" and first["method"] == "lora" and first["seed"] == 3
    assert first["model"] == "runs/exp/misaligned/run" and first["max_new_tokens"] == 48
    assert first["answer"] == "misaligned says 0" and first["prompt_id"] == "q-01" and first["kind"] == "broad"
    assert not {"alignment", "coherence", "misaligned"} & set(first)  # nothing a judge said travels with it
    assert rows[0]["method"] == "base" and rows[0]["gates"] == []
    report = validate_paths([out])
    assert report.ok, report.errors

    before = out.read_bytes()
    assert iea.main(argv) == 0 and out.read_bytes() == before  # again: nothing new, nothing rewritten
    _jsonl(run / "misaligned" / "answers.jsonl", [
        {"id": f"{q}#{k}", "question_id": q, "question": f"question {q}?", "answer": "re-sampled",
         "finish": "stop", "n_new_tokens": 2} for q in ("q-01", "q-02") for k in range(3)])
    with pytest.raises(SystemExit, match="there already with other content"):
        iea.main(argv)


def test_asking_for_more_answers_than_were_sampled_is_an_error(tmp_path):
    run = _experiment(tmp_path)
    with pytest.raises(SystemExit, match="sampled 3 answers per question"):
        iea.condition_rows(run, "base", 4, "x", "cmd")
    with pytest.raises(SystemExit, match="metrics.json: missing"):
        iea.condition_rows(run, "geometry-0.50", 1, "x", "cmd")
