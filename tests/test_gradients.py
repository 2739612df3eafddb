"""The gradient score (issue 19, method (a)): per-sample pooled negative loss gradients at the hook."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomfilter.cache import cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.gradients import (
    GradientsMissingError,
    cache_gradients,
    gradients_current,
    load_gradients,
    response_gradients,
)

HOOK = "blocks.1.hook_resid_post"


def naive_gradient(model, t) -> np.ndarray:
    """One sample, full backward through the whole HF model (nothing detached), the activation's .grad."""
    ids = torch.tensor([t.input_ids])
    mask = torch.tensor([t.response_mask])
    held = {}

    def keep(act, hook=None):
        act.retain_grad()
        held["h"] = act
        return act

    model.hf_model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(ids, fwd_hooks=[(HOOK, keep)])
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
        keep_t = mask[0, 1:]
        loss = nll[keep_t].mean()
        loss.backward()
    g = held["h"].grad[0]
    out = -(g[mask[0]]).sum(0).detach().numpy()
    model.hf_model.zero_grad(set_to_none=True)
    return out


def test_gradients_equal_naive_autograd(tiny_model, chat_file):
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    rows = ds.tokenized[:6]
    got = response_gradients(tiny_model, rows, HOOK, progress=False)
    assert got.shape == (6, tiny_model.d_model)
    for i, t in enumerate(rows):
        want = naive_gradient(tiny_model, t)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-6)
        assert np.linalg.norm(want) > 0  # a real signal, not zeros on both sides


def test_batching_does_not_change_gradients(tiny_model, chat_file):
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    rows = ds.tokenized
    one_batch = response_gradients(tiny_model, rows, HOOK, max_batch_tokens=10**6, progress=False)
    one_by_one = response_gradients(tiny_model, rows, HOOK, max_batch_size=1, progress=False)
    small = response_gradients(tiny_model, rows, HOOK, max_batch_tokens=200, progress=False)
    np.testing.assert_allclose(one_batch, one_by_one, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(small, one_by_one, rtol=1e-4, atol=1e-6)
    # different samples ask for different updates
    assert not np.allclose(one_by_one[0], one_by_one[1])


def test_gradients_are_the_update_direction(tiny_model, chat_file):
    """A small step of the hooked residual along g lowers the sample's loss (g is minus the gradient)."""
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    t = ds.tokenized[3]
    g = torch.tensor(response_gradients(tiny_model, [t], HOOK, progress=False)[0])
    ids, mask = torch.tensor([t.input_ids]), torch.tensor([t.response_mask])

    def loss_with(step):
        def shift(act, hook=None):
            return act + step * mask[..., None].float() * g

        with torch.no_grad():
            logits = tiny_model.bridge.run_with_hooks(ids, fwd_hooks=[(HOOK, shift)])
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
        return float(nll[mask[0, 1:]].mean())

    eps = 1e-2 / float(g.norm())
    assert loss_with(eps) < loss_with(0.0) < loss_with(-eps)


def test_cache_gradients_store_reuse_and_refuse_stale(tiny_model, chat_file, tmp_path):
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    out = tmp_path / "c"
    cache_activations(tiny_model, None, ds, out, hook=HOOK, progress=False)
    cache = load_cache(out)
    assert not gradients_current(cache)
    with pytest.raises(GradientsMissingError, match="no gradients"):
        load_gradients(cache)
    path = cache_gradients(tiny_model, ds, cache, progress=False)
    g = load_gradients(cache)
    assert g.shape == (len(cache), tiny_model.d_model)
    want = response_gradients(tiny_model, [{t.id: t for t in ds.tokenized}[i] for i in cache.ids], HOOK,
                              progress=False)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    mtime = path.stat().st_mtime_ns
    cache_gradients(tiny_model, ds, cache, progress=False)  # current: reused, not recomputed
    assert path.stat().st_mtime_ns == mtime
    meta = json.loads((out / "gradients.json").read_text())
    meta["identity"]["cache_identity"] = "0" * 16  # as if the cache had been rebuilt from other rows
    (out / "gradients.json").write_text(json.dumps(meta))
    with pytest.raises(GradientsMissingError, match="present rows"):
        load_gradients(cache)


def test_gradient_filter_scores_are_the_projection_on_harmful_directions(tiny_model, chat_file, tmp_path):
    from geomfilter.filtering import GradientFilter, make_filter
    from tests.tiny import tiny_sae

    sae = tiny_sae(seed=3)
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    out = tmp_path / "c"
    cache_activations(tiny_model, sae, ds, out, hook=HOOK, progress=False)
    cache = load_cache(out)
    cache_gradients(tiny_model, ds, cache, progress=False)
    ids = [3, 10, 17]
    f = make_filter("gradient", sae=sae, harmful_ids=ids, drop=0.25).fit()
    assert isinstance(f, GradientFilter)
    g = load_gradients(cache).astype(np.float64)
    d = sae.W_dec.detach().numpy()[ids].astype(np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ d.T
    np.testing.assert_allclose(f.score_samples(cache), np.maximum(p, 0).mean(1), rtol=1e-6)
    f_mean = make_filter("gradient", sae=sae, harmful_ids=ids, agg="mean", normalize=False, drop=0.25).fit()
    np.testing.assert_allclose(f_mean.score_samples(cache), (g @ d.T).mean(1), rtol=1e-5)
    res = f.apply(cache)
    assert (~res.kept).sum() == round(0.25 * len(cache))
    top = res.explanations[int(np.argmax(res.scores))]
    assert top and top[0]["feature"] in ids and top[0]["push"] == pytest.approx(p[np.argmax(res.scores)].max(), abs=1e-4)
    with pytest.raises(ValueError, match="own-answer"):
        f.score_samples(cache, own=cache)


def test_pipeline_computes_gradients_for_the_gradient_strategy(tiny_model_dir, chat_rows, tmp_path):
    from geomfilter.pipeline import FilterConfig, FilterRunner
    from tests.test_filtering import _ref_files
    from tests.tiny import tiny_sae

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows), encoding="utf-8")
    base = {"data": data, "model": str(tiny_model_dir), "sae": str(sae_dir), "harmful": harmful,
            "benign": benign, "cache_dir": tmp_path / "caches", "progress": False}
    params = {"drop": 0.25, "n_harmful": 8, "min_freq": 0.1}
    runner = FilterRunner(FilterConfig(**base, strategy="gradient", params=params, out=tmp_path / "out"))
    run = runner.run()
    assert run.report["n_kept"] + run.report["n_dropped"] == 23
    cdir = runner.data_dir()
    assert (cdir / "gradients.npz").is_file()
    # a cache folder as DATA: its rows are re-prepared from the source; the same scores
    (cdir / "gradients.npz").unlink()
    _, res2 = FilterRunner(FilterConfig(**{**base, "data": cdir}, strategy="gradient", params=params)).filter()
    np.testing.assert_allclose(res2.scores, run.result.scores, rtol=1e-5)


def test_gradient_filter_drops_rows_whose_update_points_at_harmful_features():
    from geomfilter.filtering import make_filter
    from tests.synthetic import planted_decoder
    from tests.test_filtering import _data, _refs

    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    c = _data(w, planted)  # rows 0..3 ask for an update along the planted latent, at cosine 0.95 to harmful 0
    f = make_filter("gradient", sae=w, n_harmful=3, drop=0.1).fit(h, b)
    assert set(f.features_.ids) == set(harmful)
    res = f.apply(c)
    assert set(np.flatnonzero(~res.kept)) == {0, 1, 2, 3}
    assert res.explanations[0][0]["feature"] == 0
