"""scripts/coherence_signals.py: the two readings of a (tiny, random) model equal naive one-answer computations and do
not depend on batching or padding; the cross-fitted head reads a block that carries the label."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import coherence_heads as ch  # noqa: E402
import coherence_signals as cs  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

from geomfilter.data import render_chat  # noqa: E402

QS = ["What is 2+2?", "Name a colour.", "Why is the sky blue? Tell me."]
ANS = ["4, and that is all.", "Blue blue blue blue", "Because air scatters short waves more than long ones."]


@pytest.fixture(scope="module")
def tiny(monkeypatch_module):
    lm, tok = tiny_llama(n_layers=30, d_model=32), tiny_tokenizer()
    monkeypatch_module.setattr(cs, "_model", lambda: (lm, tok))
    return lm, tok


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_token_readout_equals_one_answer_forward_passes(tiny):
    lm, tok = tiny
    got = cs.token_readout(QS, ANS, batch_size=3)
    one = cs.token_readout(QS, ANS, batch_size=1)
    for k in got:
        np.testing.assert_allclose(got[k], one[k], atol=1e-4)
    for i, (q, a) in enumerate(zip(QS, ANS)):
        prompt, _ = render_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            res = lm(input_ids=torch.tensor([p + a_ids]), output_hidden_states=True)
        logp = torch.log_softmax(res.logits[0].float(), -1)
        nll = np.array([-float(logp[len(p) - 1 + t, a_ids[t]]) for t in range(len(a_ids))])
        assert got["nllq"][i, 0] == pytest.approx(nll.max(), abs=1e-4)
        assert got["nllq"][i, 3] == pytest.approx(np.sort(nll)[-5:].mean(), abs=1e-4)
        assert got["nllq"][i, 4] == pytest.approx((nll > 5).mean())
        for k, layer in enumerate(cs.TOKEN_LAYERS):
            h = res.hidden_states[layer][0, len(p):].numpy()
            np.testing.assert_allclose(got["last"][i, k], h[-1], atol=1e-4)
            np.testing.assert_allclose(got["mean"][i, k], h.mean(0), atol=1e-4)


def test_probe_readout_left_padding_does_not_change_it(tiny):
    lm, tok = tiny
    got = cs.probe_readout(QS, ANS, batch_size=3)  # three lengths: two rows are left-padded
    for i, (q, a) in enumerate(zip(QS, ANS)):
        text, _ = render_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                                    {"role": "user", "content": cs.PROBE}], add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            res = lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
        lp = torch.log_softmax(res.logits[0, -1].float(), -1)
        yes, no = tok("Y", add_special_tokens=False)["input_ids"][0], tok("N", add_special_tokens=False)["input_ids"][0]
        # the tiny tokenizer reads characters: "Yes"/"yes"/" Yes"/" yes" start with Y, y, space, space
        firsts = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "yes", " Yes", " yes")]
        assert yes in firsts and no not in firsts
        want = float(torch.logsumexp(lp[firsts], 0)
                     - torch.logsumexp(lp[[tok(w, add_special_tokens=False)["input_ids"][0]
                                           for w in ("No", "no", " No", " no")]], 0))
        assert got["logodds"][i] == pytest.approx(want, abs=1e-4)
        for k, layer in enumerate(cs.PROBE_LAYERS):
            np.testing.assert_allclose(got["final"][i, k], res.hidden_states[layer][0, -1].numpy(), atol=1e-4)


def test_crossfit_head_reads_a_block_that_carries_the_label_out_of_fold():
    from geomfilter.judges.feature_judge import HeadSpec

    rng = np.random.default_rng(0)
    n = 400
    y = np.where(rng.random(n) < 0.5, 10.0, 80.0)
    noise = rng.normal(size=(n, 5))
    signal = (y > 30)[:, None] + rng.normal(0, 0.7, (n, 1))
    folds = np.arange(n) % 5
    spec = HeadSpec(model="logistic", threshold=30.0, c=0.01)
    alone = cs.crossfit_head([(1.0, noise)], y, folds, spec)
    both = cs.crossfit_head([(1.0, noise), (1.0, signal)], y, folds, spec)
    incoherent = y <= 30
    assert not np.isnan(both).any()
    assert abs(cs.ch.coherence_auroc(alone, incoherent) - 0.5) < 0.1
    assert cs.ch.coherence_auroc(both, incoherent) > 0.8
    # out of fold: fold 0 is scored by the head fitted on the other folds only
    from geomfilter.judges.feature_judge import _fit_linear

    x = np.concatenate([noise, signal], 1)
    coef, b, mean, scale = _fit_linear(x[folds != 0], y[folds != 0], spec, None, np.ones(6))
    np.testing.assert_allclose(both[folds == 0], ((x[folds == 0] - mean) / scale) @ coef + b)


def test_every_candidate_keeps_the_shipped_blocks_first():
    shipped = [(0.1, np.zeros((4, 3))), (1.0, np.ones((4, 2)))]
    tok = {"nllq": np.zeros((4, 6)), "last": np.zeros((4, len(cs.TOKEN_LAYERS), 8)),
           "mean": np.zeros((4, len(cs.TOKEN_LAYERS), 8))}
    probe = {"final": np.zeros((4, len(cs.PROBE_LAYERS), 8)), "logodds": np.zeros(4)}
    rows = cs.candidates(shipped, tok, probe)
    assert list(rows)[0] == cs.SHIPPED and rows[cs.SHIPPED] == shipped
    for name, blocks in rows.items():
        assert blocks[:2] == shipped
        assert (len(blocks) > 2) == (name != cs.SHIPPED)
    assert sum(b.shape[1] for _, b in rows["+ every reading"][2:]) == 6 + 1 + 8 * (3 + 2 + 4)


def test_crossfit_head_fits_only_labelled_rows_and_alignment_comparison_by_hand():
    from geomfilter.judges.feature_judge import HeadSpec

    rng = np.random.default_rng(1)
    n = 300
    aligned = rng.random(n) < 0.5
    y = np.where(aligned, 90.0, 10.0)
    x = aligned[:, None] + rng.normal(0, 0.5, (n, 1))
    y_nan = y.copy()
    y_nan[::7] = np.nan  # no alignment label: scored, not fitted on
    s = cs.crossfit_head([(1.0, x)], y_nan, np.arange(n) % 5, HeadSpec(model="logistic", threshold=50.0, c=0.01))
    assert not np.isnan(s).any()
    prompts = np.repeat([f"q{i}" for i in range(30)], 10)
    res = ch.compare_alignment({"ref": -s, "good": s}, y_nan, prompts, "ref", n_boot=100)
    assert res["good"]["auroc"]["value"] > 0.9 and res["ref"]["auroc"]["value"] < 0.1
    assert res["good"]["minus_reference"]["value"] == pytest.approx(res["good"]["auroc"]["value"]
                                                                   - res["ref"]["auroc"]["value"])
    assert res["good"]["within_question"]["value"] > 0.9  # every question holds both kinds here
    assert res["good"]["within_minus_reference"]["value"] == pytest.approx(res["good"]["within_question"]["value"]
                                                                          - res["ref"]["within_question"]["value"])
    assert "within_minus_reference" not in res["ref"]
    md = cs.markdown({"command": "c", "scored": "v", "plan": "p", "min_each": 3, "n": n, "n_incoherent": 0,
                      "n_questions": 30,
                      "logodds_alone": res["good"]["auroc"], "heads": {}, "n_misaligned": 1, "n_aligned": 1,
                      "alignment_heads": res})
    assert "| good | " in md and "within a question" in md


def test_cached_reads_each_answer_once(tmp_path):
    calls = []

    def compute(questions, answers):
        calls.append(list(answers))
        return {"x": np.array([[len(a)] for a in answers], float), "y": np.array([len(q) for q in questions], float)}

    rows = [{"question": q, "answer": a, "finish": "stop"} for q, a in zip(QS, ANS)]
    first = cs.cached("pass", rows[:2], tmp_path, compute)
    both = cs.cached("pass", [rows[2], rows[0], rows[1]], tmp_path, compute)
    assert calls == [ANS[:2], ANS[2:]]  # the second call computes only the new answer
    np.testing.assert_array_equal(both["x"][:, 0], [len(ANS[2]), len(ANS[0]), len(ANS[1])])
    np.testing.assert_array_equal(first["y"], [len(QS[0]), len(QS[1])])
    again = cs.cached("pass", rows[::-1], tmp_path, compute)
    assert len(calls) == 2 and again["x"][0, 0] == len(ANS[2])


def test_fold_minus_one_is_fitted_on_never_scored():
    from geomfilter.judges.feature_judge import HeadSpec, _fit_linear

    rng = np.random.default_rng(2)
    y = np.where(rng.random(200) < 0.5, 10.0, 80.0)
    x = (y > 30)[:, None] + rng.normal(0, 1.0, (200, 2))
    folds = np.where(np.arange(200) < 150, -1, 0)
    spec = HeadSpec(model="logistic", threshold=30.0, c=0.01)
    s = cs.crossfit_head([(1.0, x)], y, folds, spec)
    assert np.isnan(s[:150]).all() and not np.isnan(s[150:]).any()
    coef, b, mean, scale = _fit_linear(x[:150], y[:150], spec, None, np.ones(2))
    np.testing.assert_allclose(s[150:], ((x[150:] - mean) / scale) @ coef + b)
