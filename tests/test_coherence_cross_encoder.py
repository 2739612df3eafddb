"""scripts/coherence_cross_encoder.py on a tiny random BERT built here (the MiniLM tokenizer, 2 layers of width 32):
prediction does not depend on batching, and a fit learns a pair-level signal."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_cross_encoder as cce  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from geomfilter.judges.offline import embedder_dir

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = transformers.AutoTokenizer.from_pretrained(str(embedder_dir()))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_prediction_does_not_depend_on_batching(tiny_encoder):
    model = cce.CrossEncoder(tiny_encoder, seed=0)
    q = ["What is two plus two?", "Tell me about the sea.", "Hi", "Should I invest all my savings in one stock?"]
    a = ["Four.", "The sea is large and salty, and it covers most of the planet's surface.", "Hello there, friend!",
         "No; spread your savings over several kinds of investment, and keep an emergency fund."]
    one = model.predict(q, a, batch_size=1)
    assert one.shape == (4, 2) and np.all((one > 0) & (one < 1))
    np.testing.assert_allclose(model.predict(q, a, batch_size=3), one, atol=1e-5)  # padding does not count
    # the order of the pairs given is the order of the rows returned
    np.testing.assert_allclose(model.predict(q[::-1], a[::-1], batch_size=4), one[::-1], atol=1e-5)


def test_fit_learns_whether_the_answer_fits_its_question(tiny_encoder):
    # coherence is a property of the pair, not of the answer alone: every answer occurs once under its own question
    # (coherent, 1.0) and once under the other question (0.0); alignment is not taught (NaN)
    qa = [("What colour is the sky?", "The sky is blue."), ("How many legs does a spider have?", "It has eight legs."),
          ("What is the capital of France?", "Paris is the capital."), ("Which animal barks?", "A dog barks.")]
    qs, ans, y = [], [], []
    for i, (q, _) in enumerate(qa):
        for j, (_, a) in enumerate(qa):
            qs.append(q)
            ans.append(a)
            y.append([1.0 if i == j else 0.0, np.nan])
    y = np.array(y * 6)
    settings = cce.FitSettings(epochs=25, lr=3e-3, batch_size=16, warmup=0.05, seed=0)
    model = cce.fit_cross_encoder(tiny_encoder, qs * 6, ans * 6, y, settings, log=lambda *_: None)
    pred = model.predict(qs, ans)[:, 0]
    fits = np.array([i == j for i in range(4) for j in range(4)])
    assert pred[fits].min() > pred[~fits].max()


def test_fit_refuses_targets_of_the_wrong_shape(tiny_encoder):
    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        cce.fit_cross_encoder(tiny_encoder, ["q", "q"], ["a", "b"], np.zeros((2, 1)), cce.FitSettings(epochs=1))


def test_epoch_batches_hold_every_row_once_and_bucket_by_length():
    lengths = np.random.default_rng(1).integers(10, 200, size=1000)
    for buckets in (1, 10):
        batches = cce.epoch_batches(lengths, 32, buckets, np.random.default_rng(0))
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        assert max(len(b) for b in batches) == 32
    padded = {b: sum(lengths[i].max() * len(i) for i in cce.epoch_batches(lengths, 32, b, np.random.default_rng(0)))
              for b in (1, 10)}
    assert padded[10] < 0.7 * padded[1]  # sorted chunks pad far less than random batches
    plain = cce.epoch_batches(lengths, 32, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(np.concatenate(plain), np.random.default_rng(0).permutation(1000))


def test_a_fit_of_one_step_runs(tiny_encoder):
    # one batch, one epoch: warm-up and decay share the only step (no division by zero in the schedule)
    model = cce.fit_cross_encoder(tiny_encoder, ["q", "q"], ["a", "b"], np.array([[1.0, np.nan], [0.0, 0.5]]),
                                  cce.FitSettings(epochs=1), log=lambda *_: None)
    assert model.predict(["q"], ["a"]).shape == (1, 2)
