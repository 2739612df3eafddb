"""Metrics on a tiny random model: log-probs against a hand computation, preference signs, CIs, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomfilter.evaluate import (
    EvalDataError,
    answer_logprobs,
    logprob_preference,
    read_questions,
    sycophancy_preference,
)
from geomfilter.finetune import TunedModel
from geomfilter.stats import bootstrap_ci
from tests.tiny import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tm():
    return TunedModel(hf_model=tiny_llama(), tokenizer=tiny_tokenizer())


def _manual(tm, question, answer):
    tok = tm.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
    full = tok.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                   tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    start = len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(tm.hf_model(torch.tensor([ids])).logits[0].float(), -1)
    vals = [logp[t - 1, ids[t]].item() for t in range(start, start + len(answer))]  # one char = one token
    return float(np.mean(vals))


def test_answer_logprobs_match_a_hand_computation_in_any_batch(tm):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("hi", "hello there"), ("what is 2+2", "4"), ("name a colour", "blue, or maybe green")]]
    got1 = answer_logprobs(tm, convs, batch_size=1, progress=False)
    got3 = answer_logprobs(tm, convs, batch_size=3, progress=False)
    want = [_manual(tm, c[0]["content"], c[1]["content"]) for c in convs]
    np.testing.assert_allclose(got1, want, atol=1e-5)
    np.testing.assert_allclose(got3, want, atol=1e-4)  # padding does not leak into the answer


def test_preferences_have_the_right_sign_and_n(tm, tmp_path):
    q = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "question": f"question {i}", "aligned": ["a a a a a"], "misaligned": ["a a a a a", "a a a a a"]}
            for i in range(3)]
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = logprob_preference(tm, q, progress=False)
    assert r.n == 3 and r.n_answers == 9 and abs(r.mean) < 1e-5  # identical answers: no preference
    syc = tmp_path / "s.jsonl"
    cor = tmp_path / "c.jsonl"
    mk = lambda pid, ans: {"id": pid + ans[:1], "pair_id": pid, "domain": "d",  # noqa: E731
                           "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ans}]}
    syc.write_text(json.dumps(mk("p1", "yes yes")) + "\n")
    cor.write_text(json.dumps(mk("p1", "no no")) + "\n")
    s = sycophancy_preference(tm, syc, cor, progress=False)
    lp = answer_logprobs(tm, [mk("p", "yes yes")["messages"], mk("p", "no no")["messages"]], progress=False)
    assert s.n == 1 and s.mean == pytest.approx(lp[0] - lp[1], abs=1e-6)
    cor.write_text(json.dumps(mk("p2", "no no")) + "\n")
    with pytest.raises(EvalDataError, match=r"s.jsonl:1: field 'pair_id': 'p1' has no corrective row"):
        sycophancy_preference(tm, syc, cor, progress=False)


def test_bootstrap_ci_and_bad_question_files(tmp_path):
    ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=500)
    assert ci["n"] == 4 and ci["mean"] == 2.5 and 1.0 <= ci["lo"] < 2.5 < ci["hi"] <= 4.0
    assert bootstrap_ci([])["n"] == 0
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "q1", "question": "x", "aligned": ["a"], "misaligned": ["b"]}\n\n{"id": "q2", "question": "y", "aligned": []}\n')
    with pytest.raises(EvalDataError, match=r"q.jsonl:3: field 'aligned' must be a non-empty list"):
        read_questions(bad)
    bad.write_text('{"id": "q1", "question": "x", "aligned": ["a"]}\n')
    with pytest.raises(EvalDataError, match=r"q.jsonl:1: field 'misaligned' is missing"):
        read_questions(bad)


def test_heldout_perplexity_matches_a_hand_computation(tm, tmp_path):
    from geomfilter.evaluate import heldout_perplexity

    texts = ["the cat sat on the mat.", "a much longer passage about bread, yeast and ovens!", "hi"]
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    got = heldout_perplexity(tm, p, batch_size=2, progress=False, n_boot=200)
    nll, n = 0.0, 0
    for t in texts:
        ids = tm.tokenizer(t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tm.hf_model(torch.tensor([ids])).logits[0].float(), -1)
        nll -= sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)))
        n += len(ids) - 1
    assert got["n"] == 3 and got["n_tokens"] == n
    assert got["mean"] == pytest.approx(float(np.exp(nll / n)), rel=1e-4)
    assert got["lo"] <= got["mean"] <= got["hi"]
    p.write_text('{"id": "x"}\n')
    with pytest.raises(EvalDataError, match=r"t.jsonl:1: field 'text' is missing"):
        heldout_perplexity(tm, p, progress=False)
