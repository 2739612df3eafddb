"""scripts/measure_filters_ood.py: the splits are built from the committed data with the right labels, method (c)
is fitted only on prompts outside the judge's held-out split, and fold selections keep rows and gradients."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_cache

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("measure_filters_ood", ROOT / "scripts" / "measure_filters_ood.py")
ood = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ood)


def _read(p):
    return [json.loads(x) for x in Path(p).read_text().splitlines()]


def test_splits_labels_and_no_leak_of_held_out_prompts(tmp_path):
    paths, held = ood.build_splits(tmp_path)
    risky = _read(paths["risky_advice"])
    assert len(risky) == 600 and sum(r["inducing"] for r in risky) == 300
    assert all(r["inducing"] == r["id"].endswith("-risky") for r in risky)
    code = _read(paths["insecure_code"])
    assert all(r["inducing"] == r["id"].endswith("-insecure") for r in code)
    for split, data in (("model_answers", "judge_real"), ("organism_answers", "judge_exp")):
        labels = {r["id"]: r for r in _read(ROOT / "data" / data / "labels.jsonl")}
        for r in _read(paths[split]):
            lab = labels[r["id"]]
            assert lab["coherence"] >= 30 and (lab["alignment"] < 40) == r["inducing"]
            assert lab["alignment"] < 40 or lab["alignment"] >= 70
    # method (c) on model_answers selects its features split by row, as first made; the organism fits by question
    assert not any("pair_id" in r for r in _read(paths["model_answers"]))
    organism = _read(paths["organism_answers"])
    assert all(r["pair_id"] == r["prompt_id"] for r in organism)
    for refs, split in (("model", "model_answers"), *((r, "organism_answers") for r in ood.ORGANISM_FITS)):
        answers = _read(paths[split])
        fit = _read(paths[f"{refs}_harmful"]) + _read(paths[f"{refs}_benign"])
        assert fit and not {r["prompt_id"] for r in fit} & held[refs]
        assert {r["id"] for r in fit} < {r["id"] for r in answers}
        assert all(r["inducing"] for r in _read(paths[f"{refs}_harmful"]))
        assert not any(r["inducing"] for r in _read(paths[f"{refs}_benign"]))
    prompts = {r["prompt_id"] for r in organism}
    assert held["organism"] < prompts and len(held["organism"]) == len(prompts) // 2 and sum(r["inducing"] for r in organism) >= 600
    assert ood.organism_answer_rows()[1] == held["organism"]  # seeded: the same half every run
    variants = {refs: {r["variant"] for r in _read(paths[f"{refs}_harmful"]) + _read(paths[f"{refs}_benign"])}
                for refs in ood.ORGANISM_FITS}
    assert variants["organism-sycophancy"] | variants["organism-risky"] == variants["organism"]
    assert all(v.startswith("syc75") for v in variants["organism-sycophancy"])  # never the risky organism's answers
    assert {v for v in variants["organism-risky"] if not v.startswith("r64")} == {"syc75-base"}
    assert not any("," in label for label in ood.STRATEGY_ROWS)  # --strategies splits its list on commas
    assert held["refs+organism"] == held["organism"]  # the joined fit leaves out the same questions


def test_scored_rows_hold_out_the_fitted_questions_of_the_results_seed(tmp_path):
    rows, held_rows = ood.scored_rows(tmp_path / "w", organism_seed=1)
    _, held = ood.build_splits(tmp_path / "v", organism_seed=1)
    organism = rows["organism_answers"]
    assert held_rows["organism_answers"] == {i for i, r in organism.items() if r["prompt_id"] in held["organism"]}
    assert 0 < len(held_rows["organism_answers"]) < len(organism)
    assert ood.results_seed(tmp_path) == 0  # a folder without results.json: made before the option
    (tmp_path / "results.json").write_text('{"organism_seed": 1}')
    assert ood.results_seed(tmp_path) == 1


def test_another_organism_seed_draws_another_half_into_other_files(tmp_path):
    paths0, held0 = ood.build_splits(tmp_path / "a")
    paths1, held1 = ood.build_splits(tmp_path / "b", organism_seed=1)
    assert held1["organism"] != held0["organism"] and len(held1["organism"]) == len(held0["organism"])
    assert held1["model"] == held0["model"]  # model_answers' split is the judge's, not drawn
    assert paths1["organism_harmful"].name == "organism_harmful-seed1.jsonl"  # its own cache folder
    assert paths1["model_harmful"].name == paths0["model_harmful"].name == "model_harmful.jsonl"
    fit = _read(paths1["organism_harmful"]) + _read(paths1["organism_benign"])
    assert not {r["prompt_id"] for r in fit} & held1["organism"]


def test_summarize_reads_within_a_question_for_answer_splits():
    """Scores that only tell the questions apart: a pooled AUROC well above chance, within a question 0.5."""
    groups = np.repeat(np.array(["q1", "q2", "q3", "q4"]), 8)
    y = np.array(([True] * 3 + [False] * 5) * 2 + ([True] * 5 + [False] * 3) * 2)
    scores = np.where(np.isin(groups, ["q3", "q4"]), 1.0, 0.0)
    out = ood.summarize(scores, y, n_boot=50, groups=groups)
    assert out["auroc"] == 0.625 and "within_question" not in ood.summarize(scores, y, n_boot=50)
    assert out["within_question"]["value"] == 0.5 and out["within_question"]["n_groups"] == 4
    y[:6] = False  # q1 keeps 0 positives: it no longer counts
    assert ood.summarize(scores, y, n_boot=20, groups=groups)["within_question"]["n_questions"] == 3


def test_fold_selections_keep_rows_and_gradients():
    """The leave-one-category-out folds are ``ActivationCache.select`` views: the gradient strategy needs their
    ``grad_sum`` rows too."""
    dense = np.arange(40, dtype=np.float32).reshape(5, 8)
    c = make_cache(dense, grad=np.arange(15, dtype=np.float32).reshape(5, 3))
    s = c.select(np.array([False, True, False, True, False]))
    assert s.ids == [c.ids[1], c.ids[3]] and len(s) == 2
    np.testing.assert_array_equal(s.arrays["grad_sum"], c.arrays["grad_sum"][[1, 3]])
    np.testing.assert_array_equal(s.dense(), c.dense()[[1, 3]])


def test_own_answers_one_generation_per_prompt_with_the_rows_ids(tmp_path, monkeypatch):
    """Method (b)'s own-answer file: every row gets the model's greedy answer to its prompt under the row's id;
    rows sharing a prompt share one generation; a second call generates nothing."""
    from types import SimpleNamespace

    from geomfilter.finetune import TunedModel
    from tests.tiny import tiny_llama, tiny_tokenizer

    calls = []
    tm = TunedModel(hf_model=tiny_llama(), tokenizer=tiny_tokenizer())
    monkeypatch.setattr(ood, "_plain_model", lambda spec: calls.append(spec) or tm)
    monkeypatch.setitem(ood.OWN_ANSWER, "max_new_tokens", 6)
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": q},
                                         {"role": "assistant", "content": f"answer {i}"}]}
            for i, q in enumerate(["hello there", "what is up", "hello there", "what is up", "hello there"])]
    data = ood.write_jsonl(tmp_path / "split.jsonl", rows)
    builder = SimpleNamespace(model_spec="tiny")
    out = ood.own_answers(data, tmp_path / "own" / "split.jsonl", builder, progress=False)
    own = _read(out)
    assert [r["id"] for r in own] == [r["id"] for r in rows]
    assert [r["messages"][:-1] for r in own] == [r["messages"][:-1] for r in rows]
    assert all(r["messages"][-1]["role"] == "assistant" for r in own)
    assert own[0]["messages"][-1] == own[2]["messages"][-1] == own[4]["messages"][-1]  # one generation per prompt
    assert own[1]["messages"][-1] == own[3]["messages"][-1]
    assert len(_read(tmp_path / "own" / "split.unique.jsonl")) == 2 and calls == ["tiny"]
    ood.own_answers(data, tmp_path / "own" / "split.jsonl", builder, progress=False)  # resumed: nothing to do
    assert calls == ["tiny"] and len(_read(tmp_path / "own" / "split.unique.jsonl")) == 2


def test_persona_corpus_prompts_are_seeded_disjoint_and_per_persona():
    pspec = importlib.util.spec_from_file_location("build_persona_corpus", ROOT / "scripts" / "build_persona_corpus.py")
    pc = importlib.util.module_from_spec(pspec)
    pspec.loader.exec_module(pc)
    from collections import Counter

    from geomfilter.personas import MISALIGNED_PERSONAS, PERSONAS

    rows = pc.persona_prompts(ROOT / "data" / "sae_corpus", 20, seed=0)
    assert Counter(r["id"].split("-p-")[0] for r in rows) == {p: 20 for p in MISALIGNED_PERSONAS}
    assert all(r["system"] == PERSONAS[r["id"].split("-p-")[0]] for r in rows)
    assert len({r["prompt"] for r in rows}) == len(rows)  # disjoint across personas
    assert rows == pc.persona_prompts(ROOT / "data" / "sae_corpus", 20, seed=0)
    assert rows != pc.persona_prompts(ROOT / "data" / "sae_corpus", 20, seed=1)
    committed = _read(ROOT / "data" / "sae_corpus_persona" / "prompts_persona.jsonl")
    assert committed == pc.persona_prompts(ROOT / "data" / "sae_corpus", 300, seed=0)  # the committed file's recipe


def test_compare_filters_ood_pairs_rows_and_folds_and_writes_the_table(tmp_path):
    spec2 = importlib.util.spec_from_file_location("compare_filters_ood", ROOT / "scripts" / "compare_filters_ood.py")
    cmp = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(cmp)
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    good = y + rng.normal(0, 0.5, 100)
    rows = {"ids": [f"r{i}" for i in range(100)], "good": good.tolist(), "same": (2 * good).tolist(),
            "noise": rng.normal(0, 1, 100).tolist()}
    labels = {f"r{i}": bool(v) for i, v in enumerate(y)}
    d = cmp.compare_rows(rows, labels, "good", "noise", n_boot=200)
    assert d["ci_low"] > 0.2 and d["n_pos"] == 40 and d["n_neg"] == 60
    assert cmp.compare_rows(rows, labels, "good", "same", n_boot=50)["diff"] == 0
    folds = {"folds": {c: {"good": {"pos": (1 + rng.normal(0, .5, 10)).tolist(), "neg": rng.normal(0, .5, 30).tolist()},
                           "noise": {"pos": rng.normal(0, 1, 10).tolist(), "neg": rng.normal(0, 1, 30).tolist()}}
                       for c in ("a", "b", "c")}}
    f = cmp.compare_folds(folds, "good", "noise", n_boot=200)
    assert f["n_pos"] == 30 and f["n_neg"] == 90 and f["min_fold"] <= f["diff"] and f["min_fold_category"] in "abc"
    text = cmp.render({"a": "good", "b": ["noise"], "scores": "s.json", "command": "cmd", "n": {"x": "40/60", "y": "30/90"},
                       "splits": {"x": {"noise": d}, "y": {"noise": f}}})
    assert "| noise | **+" in text and "worst fold" in text and "AUROC(good)" in text


def test_paired_comparison_keeps_to_the_held_out_prompts_where_a_strategy_was_fitted():
    """scripts/compare_filters_ood.py: a pair with an answer-fitted strategy is compared on the rows of the split's
    held-out prompts only (the others were its training rows); other pairs on every row."""
    spec = importlib.util.spec_from_file_location("compare_filters_ood", ROOT / "scripts" / "compare_filters_ood.py")
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    assert ood.fitted_on("ensemble (o/risky)", "organism_answers") and ood.fitted_on("activation (c)", "model_answers")
    assert not ood.fitted_on("ensemble (o/risky)", "mixed") and not ood.fitted_on("ensemble", "organism_answers")
    assert ood.fitted_on("ensemble (+o)", "organism_answers")
    ids = [f"r{i}" for i in range(8)]
    labels = {i: k % 2 == 0 for k, i in enumerate(ids)}
    # a ranks every row right; b ranks the first four rows (the fitted ones) right and the held-out four wrong
    scores = {"ids": ids, "a": [1.0, 0, 1, 0, 1, 0, 1, 0], "b": [1.0, 0, 1, 0, 0, 1, 0, 1]}
    everything = cmp.compare_rows(scores, labels, "a", "b", n_boot=50)
    held = cmp.compare_rows(scores, labels, "a", "b", n_boot=50, keep={"r4", "r5", "r6", "r7"})
    assert everything["diff"] == 0.5 and held["diff"] == 1.0 and (held["n_pos"], held["n_neg"]) == (2, 2)
    # the table's header gives the split's own n, not the held-out n of a first pair compared on part of it
    assert cmp.split_n(scores, labels, held) == "4/4"
    assert cmp.split_n({"folds": {}}, labels, {"n_pos": 3, "n_neg": 9}) == "3/9"


def test_a_refused_ensemble_is_a_cell_of_the_table_not_a_crash():
    """References that give an ensemble member no scale (e.g. answers of some fitted questions) refuse the ensemble
    with MemberScaleError; the table shows the refusal and the worst split skips it."""
    from geomfilter.features import split_by_pair
    from geomfilter.filtering import make_filter
    from geomfilter.filtering.ensemble import MemberScaleError

    dense = np.ones((8, 6), dtype=np.float32)
    meta = [{"pair_id": f"p{i}"} for i in range(8)]
    half = split_by_pair(make_cache(dense, meta=meta))  # the ensemble's cross-fitting halves
    # harmful above benign along one axis in one half, below it in the other: each half's direction reverses the other
    x = np.zeros((8, 8), dtype=np.float32)
    x[:, 0] = np.where(half, 1.0, -1.0)
    harmful = make_cache(dense, resid=x, meta=meta, ids=[f"h{i}" for i in range(8)])
    benign = make_cache(dense, resid=-x, meta=[dict(m) for m in meta], ids=[f"b{i}" for i in range(8)])
    f = make_filter("ensemble", members=("projection",), drop=0.25)
    with pytest.raises(MemberScaleError, match="no scale"):
        f.fit(harmful, benign)
    cell = {"auroc": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n_pos": 4, "n_neg": 4}
    r = {"command": "cmd", "sae": "s", "seconds": 1, "strategies": {"ensemble": {}, "activation": {}},
         "splits": {"mixed": {"ensemble": {"refused": "no scale"}, "activation": cell}}}
    text = ood.render(r)
    assert "| ensemble | refused (no scale) | – |" in text and "| activation | **0.70 [0.60, 0.80]** | 0.70 |" in text
