"""sae_train.py and features.py on a tiny random model: windows, training paths, metrics, inspection."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomfilter.sae_train import SAETrainConfig, build_token_windows, evaluate_sae, train_sae
from tests.tiny import tiny_sae

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=5))},
                                          {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=8))}]}
            for i in range(200)]
    p = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_token_windows_split_by_sample(tiny_model, corpus):
    tok = tiny_model.tokenizer
    w = build_token_windows([corpus], tok, context_size=32, heldout_fraction=0.1, seed=0)
    assert (w.n_samples, w.n_heldout_samples, w.n_train_samples) == (200, 20, 180)
    assert w.train.shape[1] == w.heldout.shape[1] == 32
    assert (len(w.train) + len(w.heldout)) * 32 <= w.n_tokens < (len(w.train) + len(w.heldout) + 2) * 32
    again = build_token_windows([corpus], tok, context_size=32, heldout_fraction=0.1, seed=0)
    other = build_token_windows([corpus], tok, context_size=32, heldout_fraction=0.1, seed=1)
    assert np.array_equal(w.train, again.train) and not np.array_equal(w.heldout, other.heldout)
    with pytest.raises(ValueError, match="heldout_fraction"):
        SAETrainConfig(corpus=[str(corpus)], out="x", heldout_fraction=0.7)


def test_evaluate_identity_sae_is_perfect(tiny_model):
    """An SAE that reconstructs exactly (x = relu(x) - relu(-x)) scores EV 1 and recovers all CE loss."""
    sae = tiny_sae(d_in=32, d_sae=64)
    eye = torch.eye(32)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    windows = torch.randint(3, 90, (6, 20))
    m = evaluate_sae(tiny_model, sae, HOOK, windows, ce_windows=4, batch_size=4)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_spliced"] == pytest.approx(m["ce_loss_clean"], abs=1e-5)
    if m["ce_loss_zero"] > m["ce_loss_clean"]:
        assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    else:  # zero-ablation does not hurt this random model: the ratio is undefined and reported as NaN
        assert math.isnan(m["ce_loss_recovered"])
    assert m["eval_tokens"] == 6 * 19 and m["ce_eval_tokens"] == 4 * 19
    assert m["dead_fraction"] == 0.0 and 20 < m["l0"] < 44  # about half of each +/- pair is active


def _cfg(corpus, out, **kw):
    return SAETrainConfig(corpus=[str(corpus)], out=str(out), hook=HOOK, d_sae=64, k=4, context_size=32,
                          training_tokens=30_000, batch_tokens=256, store_batch_size=8, lr_warm_up_steps=5,
                          ce_windows=4, progress=False, **kw)


def test_train_topk_both_activation_paths_agree(tiny_model, corpus, tmp_path):
    from geomfilter.saes import check_compatible, load_sae

    m1 = train_sae(_cfg(corpus, tmp_path / "reuse", reuse_activations=True), model=tiny_model)
    m2 = train_sae(_cfg(corpus, tmp_path / "stream", reuse_activations=False), model=tiny_model)
    assert m1["l0"] == pytest.approx(4.0) and m1["architecture"] == "TopKSAE"
    assert m1["explained_variance"] > 0.15  # a random init scores below 0
    # cached activations are the same numbers sae-lens computes when it runs the model itself
    assert m1["explained_variance"] == pytest.approx(m2["explained_variance"], abs=1e-4)
    sae = load_sae(str(tmp_path / "reuse"))
    assert check_compatible(sae, tiny_model) == HOOK and sae.cfg.d_sae == 64
    saved = json.loads((tmp_path / "reuse" / "metrics.json").read_text())
    assert saved["explained_variance"] == m1["explained_variance"] and saved["training_tokens"] == 30_000
    assert json.loads((tmp_path / "reuse" / "train_config.json").read_text())["hook"] == HOOK


def test_features_top_matches_token_level_recompute(tiny_model, chat_file, tmp_path):
    from geomfilter.cache import cache_activations, load_cache
    from geomfilter.data import prepare_dataset
    from geomfilter.features import token_activations, top_samples

    sae = tiny_sae(seed=1)
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    cache_activations(tiny_model, sae, ds, tmp_path / "c", top_k=64, progress=False)
    c = load_cache(tmp_path / "c")
    feat = int(np.argmax(c.dense("max").sum(0)))
    hits = top_samples(c, feat, n=5)
    assert len(hits) == 5 and [v for _, v in hits] == sorted((v for _, v in hits), reverse=True)
    acts = token_activations(tiny_model, sae, ds, [r for r, _ in hits], feat, HOOK)
    for (r, v), a in zip(hits, acts):
        assert a.id == c.ids[r] and max(a.values) == pytest.approx(v, abs=1e-5)
        assert len(a.tokens) == ds.tokenized[r].n_response and "".join(a.tokens) in ds.samples[r].response_text()
    with pytest.raises(ValueError, match="out of range"):
        top_samples(c, 64)


def test_cli_train_sae_and_features_top(tiny_model_dir, corpus, chat_file, tmp_path):
    from geomfilter.cli import app

    out = tmp_path / "sae"
    r = CliRunner().invoke(app, ["train-sae", str(corpus), "--out", str(out), "--model", str(tiny_model_dir),
                                 "--hook", HOOK, "--d-sae", "64", "--k", "4", "--context-size", "32",
                                 "--training-tokens", "4096", "--batch-tokens", "1024", "--no-progress"])  # batch > 16 windows
    assert r.exit_code == 0, r.output
    assert '"l0": 4.0' in r.output and (out / "cfg.json").is_file()
    r = CliRunner().invoke(app, ["features", "top", str(chat_file), "--model", str(tiny_model_dir), "--sae", str(out),
                                 "-f", "0", "-f", "1", "--out", str(tmp_path / "c"), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("["):])
    assert [item["feature"] for item in report] == [0, 1]
    r = CliRunner().invoke(app, ["features", "top", str(chat_file), "--model", str(tiny_model_dir), "--sae", str(out),
                                 "-f", "999", "--out", str(tmp_path / "c"), "--no-progress"])
    assert r.exit_code == 2 and "feature 999 out of range" in r.output
