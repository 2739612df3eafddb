"""scripts/crossfit_judge.py: folds by question, and no judge scores an answer to a question it was fitted on."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
_spec = importlib.util.spec_from_file_location("crossfit_judge", ROOT / "scripts" / "crossfit_judge.py")
cj = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cj
_spec.loader.exec_module(cj)
ejr = cj.ejr

from geomfilter.judges.feature_judge import HeadSpec, block_names  # noqa: E402
from geomfilter.stats import auroc  # noqa: E402


def test_question_folds_deal_every_question_once_and_evenly():
    prompts = np.array([f"q{i % 7}" for i in range(40)])
    f = cj.question_folds(prompts, 3, seed=0)
    assert sorted(f) == sorted({f"q{i}" for i in range(7)}) and set(f.values()) == {0, 1, 2}
    sizes = np.bincount(list(f.values()))
    assert sizes.max() - sizes.min() <= 1
    assert cj.question_folds(prompts, 3, seed=0) == f and cj.question_folds(prompts, 3, seed=1) != f
    for bad in (1, 8):
        with pytest.raises(SystemExit, match="--folds"):
            cj.question_folds(prompts, bad, seed=0)


def _rows(prefix: str, questions: list[str], per_q: int, rng) -> tuple[list[dict], np.ndarray]:
    """Answers whose first text feature carries the alignment label (misaligned answers high), the second the
    coherence label, the rest noise."""
    rows, x = [], []
    for q in questions:
        for j in range(per_q):
            bad = j % 3 == 0
            rows.append({"id": f"{prefix}/{q}#{j}", "prompt_id": q, "kind": "broad", "question": f"question {q}?",
                         "answer": f"answer {j} to {q}.", "variant": prefix, "split": "train",
                         "y_alignment": 10.0 if bad else 85.0, "y_coherence": 20.0 if j % 2 else 70.0, "y_code": False,
                         "y_refusal": False})
            v = rng.normal(size=len(block_names("text")))
            v[0] += 6.0 if bad else 0.0
            v[1] += 6.0 if j % 2 else 0.0
            x.append(v)
    return rows, np.array(x)


def _cfg() -> dict:
    """A judge configuration on the text block alone (the shipped one reads blocks these rows lack)."""
    return {"blocks": ("text",), "emb_weight": 1.0, "old_weight": 1.0, "alignment": HeadSpec("logistic", 50.0, 1.0),
            "coherence": HeadSpec("logistic", 30.0, 1.0), "code_threshold": 0.6, "refusal_max_words": 80}


def test_no_judge_scores_a_question_it_was_fitted_on(monkeypatch):
    rng = np.random.default_rng(0)
    rows, x = _rows("exp", [f"q{i}" for i in range(10)], 6, rng)
    base, bx = _rows("real", ["q0", "q1", "r0", "r1"], 6, rng)  # two questions shared with the experiment answers
    cfg = _cfg()
    fitted: list[set] = []
    real_fit = ejr.fit

    def spy(fit_rows, inputs, c):
        fitted.append({(r["variant"], r["prompt_id"]) for r in fit_rows})
        assert len(inputs["text"]) == len(fit_rows)
        return real_fit(fit_rows, inputs, c)
    monkeypatch.setattr(ejr, "fit", spy)
    fold_of = cj.question_folds(ejr.col(rows, "prompt_id"), 5, seed=0)
    folds = np.array([fold_of[q] for q in ejr.col(rows, "prompt_id")])
    pred = cj.crossfit_preds(rows, base, {"text": x}, {"text": bx}, cfg, folds)
    assert len(fitted) == 5 and not np.isnan(pred["alignment"]).any()
    for k, seen in enumerate(fitted):
        held = {q for q, f in fold_of.items() if f == k}
        assert not {q for _, q in seen} & held  # neither the experiment's nor the base's answers to them
        assert {("real", "r0"), ("real", "r1")} <= seen
        assert {("exp", q) for q in fold_of if q not in held} <= seen
    y = ejr.col(rows, "y_alignment")
    assert auroc(-pred["alignment"][y < 30], -pred["alignment"][y >= 70]) > 0.9  # it learned, out of fold
    fitted.clear()
    cj.crossfit_preds(rows, base, {"text": x}, {"text": bx}, cfg, folds, with_base=False)
    assert all(v == "exp" for seen in fitted for v, _ in seen)


def test_held_out_variants_are_scored_by_one_judge_fitted_on_everything_else(monkeypatch):
    """--hold-out: a new experiment's answers (variant "new") against a judge fitted on every other answer, to the
    same questions too (a new experiment is asked the same evaluation questions)."""
    rng = np.random.default_rng(1)
    old, ox = _rows("old", [f"q{i}" for i in range(6)], 6, rng)
    new, nx = _rows("new", [f"q{i}" for i in range(6)], 6, rng)
    base, bx = _rows("real", ["q0", "r0"], 6, rng)
    rows, x = old + new, np.concatenate([ox, nx])
    cfg = _cfg()
    fitted: list[set] = []
    real_fit = ejr.fit
    monkeypatch.setattr(ejr, "fit", lambda r, i, c: (fitted.append({(a["variant"], a["prompt_id"]) for a in r}),
                                                      real_fit(r, i, c))[1])
    folds = np.array([0 if r["variant"] == "new" else -1 for r in rows])
    pred = cj.crossfit_preds(rows, base, {"text": x}, {"text": bx}, cfg, folds, base_questions_out=False)
    (seen,) = fitted
    assert seen == {("old", f"q{i}") for i in range(6)} | {("real", "q0"), ("real", "r0")}
    assert np.isnan(pred["alignment"][: len(old)]).all() and not np.isnan(pred["alignment"][len(old):]).any()


def test_the_shipped_configuration_is_read_from_the_judge(tmp_path):
    cfg = cj.shipped_config()
    assert "residual" in cfg["blocks"] and isinstance(cfg["alignment"], HeadSpec)
    (tmp_path / "judge.json").write_text('{"metrics": {}}')
    with pytest.raises(SystemExit, match="no metrics.config"):
        cj.shipped_config(tmp_path)
    with pytest.raises(SystemExit, match="the fitting base itself"):
        cj.main(["--name", "x", "--data", str(ejr.SPLIT.parent), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--hold-out 'nothing-\\*' selects 0 of"):
        cj.main(["--name", "x", "--hold-out", "nothing-*", "--out", str(tmp_path)])


def test_a_judge_fitted_on_every_answer_is_saved_and_loads_with_the_same_scores(tmp_path, monkeypatch):
    from geomfilter.judges import load_judge

    rng = np.random.default_rng(2)
    rows, x = _rows("exp", [f"q{i}" for i in range(6)], 6, rng)
    base, bx = _rows("real", ["q0", "r0"], 6, rng)
    cfg = _cfg()
    fitted = []
    real_fit = ejr.fit
    monkeypatch.setattr(ejr, "fit", lambda r, i, c: (fitted.append(len(r)), real_fit(r, i, c))[1])
    cj.save_fitted(rows, base, {"text": x}, {"text": bx}, cfg, tmp_path / "mine", {"data": "test"})
    assert fitted == [len(rows) + len(base)]
    judge = load_judge(str(tmp_path / "mine"))
    assert judge.name == "mine" and judge.metrics["data"] == "test" and judge.metrics["config"]["blocks"] == ["text"]
    scores = judge.score_inputs({"text": x}, [r["answer"] for r in rows])
    y = ejr.col(rows, "y_alignment")
    al = np.array([s.alignment for s in scores])
    assert al[y < 30].mean() < al[y >= 70].mean()  # fitted on them: it separates them


def test_fit_question_subset_keeps_the_held_answers_and_k_drawn_questions():
    rng = np.random.default_rng(3)
    old, _ = _rows("old", [f"q{i}" for i in range(8)], 3, rng)
    new, _ = _rows("new", [f"q{i}" for i in range(8)], 2, rng)
    rows = old + new
    held = np.array([r["variant"] == "new" for r in rows])
    kept = cj.fit_question_subset(rows, held, 5, seed=0)
    assert [r for r in kept if r["variant"] == "new"] == new  # every held answer, to every question
    drawn = {r["prompt_id"] for r in kept if r["variant"] == "old"}
    assert len(drawn) == 5 and sum(r["variant"] == "old" for r in kept) == 5 * 3  # all answers of each drawn one
    assert cj.fit_question_subset(rows, held, 5, seed=0) == kept
    assert {r["prompt_id"] for r in cj.fit_question_subset(rows, held, 5, seed=1) if r["variant"] == "old"} != drawn
    for bad in (4, 9):
        with pytest.raises(SystemExit, match="--fit-questions"):
            cj.fit_question_subset(rows, held, bad, seed=0)
    with pytest.raises(SystemExit, match="leave --fit-questions out"):
        cj.main(["--name", "x", "--hold-out", "syc75d2-*", "--fit-questions", "8", "--save", "/tmp/never"])


def test_plan_folds_on_the_labelled_experiment_answers():
    """Both plans on data/judge_exp itself: hold-out scores exactly the held variants (fitting on the others, on
    --fit-questions of them when given); by question every answer is scored once, folds by question."""
    here = ROOT / "data" / "judge_exp"
    rows = ejr.load_rows(here / "labels.jsonl", here=here)
    kept, folds, how, about = cj.plan_folds(rows, "syc75d2-*", None, 5, 0, "judge_exp")
    held = np.array([r["variant"].startswith("syc75d2-") for r in kept])
    assert kept == rows and held.any() and (folds[held] == 0).all() and (folds[~held] == -1).all()
    assert "held out" in how and "every other labelled answer" in about
    kept, folds, _, about = cj.plan_folds(rows, "syc75d2-*", 8, 5, 0, "judge_exp")
    other = [r for r, f in zip(kept, folds) if f == -1]
    assert len({r["prompt_id"] for r in other}) == 8 and (folds == 0).sum() == held.sum() and "to 8 questions" in about
    kept, folds, how, _ = cj.plan_folds(rows, None, None, 5, 0, "judge_exp")
    assert kept == rows and set(folds.tolist()) == set(range(5)) and "folds by question" in how
    by_q: dict = {}
    for r, f in zip(rows, folds):
        by_q.setdefault(r["prompt_id"], set()).add(int(f))
    assert all(len(f) == 1 for f in by_q.values())  # a question's answers share one fold
    with pytest.raises(SystemExit, match="needs --hold-out"):
        cj.plan_folds(rows, None, 8, 5, 0, "judge_exp")


def test_fit_sets_leave_out_the_scored_fold_and_its_questions_base_rows():
    prompts = np.array(["a", "a", "b", "c", "c", "d"])
    folds = np.array([0, 0, 1, 0, 0, -1])
    base_prompts = np.array(["a", "b", "x", "c"])
    sets = {k: (b.tolist(), r.tolist(), t.tolist()) for k, b, r, t in cj.fit_sets(prompts, base_prompts, folds)}
    assert set(sets) == {0, 1}  # fold -1 is fitted on, never scored
    assert sets[0] == ([1, 2], [2, 5], [0, 1, 3, 4])  # base rows to a and c left out
    assert sets[1] == ([0, 2, 3], [0, 1, 3, 4, 5], [2])
    assert list(cj.fit_sets(prompts, np.array([]), folds))[0][1].tolist() == []  # no base rows
    assert list(cj.fit_sets(prompts, base_prompts, folds, with_base=False))[0][1].tolist() == []
    assert list(cj.fit_sets(prompts, base_prompts, folds, base_questions_out=False))[0][1].tolist() == [0, 1, 2, 3]
