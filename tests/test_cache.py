"""cache.py: pooled values equal a naive per-sample computation; batching, resume, manifests, errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomfilter.cache import CacheIncompleteError, CacheMismatchError, cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.models import HookNameError
from geomfilter.saes import SAECompatibilityError
from tests.tiny import tiny_sae

HOOK = "blocks.1.hook_resid_post"


def naive(model, sae, ds):
    """Per-sample, unbatched reference straight from the HF model's hidden states."""
    out = []
    for t in ds.tokenized:
        with torch.no_grad():
            hs = model.hf_model(torch.tensor([t.input_ids]), output_hidden_states=True).hidden_states[2][0]
        x = hs[torch.tensor(t.response_mask)]
        f = sae.encode(x).detach()
        out.append((x.mean(0), f.mean(0), f.max(0).values))
    return out


@pytest.fixture()
def ds(tiny_model, chat_file):
    return prepare_dataset(chat_file, tiny_model.tokenizer)


def run(model, sae, ds, out, **kw):
    kw = {"shard_size": 5, "max_batch_tokens": 300, "max_batch_size": 4, "progress": False, **kw}
    return cache_activations(model, sae, ds, out, **kw)


def test_pooling_matches_naive_per_sample(tiny_model, ds, tmp_path):
    sae = tiny_sae(seed=0)
    res = run(tiny_model, sae, ds, tmp_path / "c", top_k=64)
    assert (res.n_samples, res.n_shards, res.shards_written) == (23, 5, 5)
    c = load_cache(tmp_path / "c")
    assert c.ids == [t.id for t in ds.tokenized]
    assert [m["label"] for m in c.meta] == [i % 2 for i in range(23)]
    ref = naive(tiny_model, sae, ds)
    resid = np.stack([r[0].numpy() for r in ref])
    mean = np.stack([r[1].numpy() for r in ref])
    mx = np.stack([r[2].numpy() for r in ref])
    np.testing.assert_allclose(c.arrays["resid_mean"], resid, atol=1e-5)
    np.testing.assert_allclose(c.dense("mean"), mean, atol=1e-5)
    np.testing.assert_allclose(c.dense("max"), mx, atol=1e-5)
    assert (c.arrays["n_active"] == (mx > 0).sum(1)).all()
    assert (c.arrays["n_tokens"] == [t.n_response for t in ds.tokenized]).all()


def test_top_k_keeps_the_largest_latents(tiny_model, ds, tmp_path):
    sae = tiny_sae(seed=0)
    run(tiny_model, sae, ds, tmp_path / "c", top_k=5)
    c = load_cache(tmp_path / "c")
    mean = np.stack([r[1].numpy() for r in naive(tiny_model, sae, ds)])
    top = np.sort(mean, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(c.arrays["mean_val"], top, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(mean, c.arrays["mean_idx"].astype(int), 1), c.arrays["mean_val"], atol=1e-5)


def test_batching_does_not_change_results(tiny_model, ds, tmp_path):
    sae = tiny_sae(seed=2)
    run(tiny_model, sae, ds, tmp_path / "a", shard_size=100, max_batch_tokens=10_000, max_batch_size=64)
    run(tiny_model, sae, ds, tmp_path / "b", shard_size=3, max_batch_tokens=60, max_batch_size=2)
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    assert a.ids == b.ids
    for k in ("resid_mean", "mean_val", "max_val", "n_active", "n_tokens"):
        np.testing.assert_allclose(a.arrays[k], b.arrays[k], atol=1e-5, err_msg=k)


def test_resume_after_kill_is_byte_identical(tiny_model, ds, tmp_path):
    sae = tiny_sae()
    run(tiny_model, sae, ds, tmp_path / "full")

    class Killed(Exception):
        pass

    def die_after_two(i, path):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        run(tiny_model, sae, ds, tmp_path / "part", on_shard=die_after_two)
    assert sorted(p.name for p in (tmp_path / "part").glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(CacheIncompleteError, match="3 of 5 shards missing"):
        load_cache(tmp_path / "part")
    res = run(tiny_model, sae, ds, tmp_path / "part")
    assert (res.shards_skipped, res.shards_written) == (2, 3)
    for f in sorted((tmp_path / "full").glob("shard-*")):
        assert f.read_bytes() == (tmp_path / "part" / f.name).read_bytes(), f.name
    assert not list((tmp_path / "part").glob(".*tmp*"))


def test_manifest_mismatch_refuses_to_mix(tiny_model, ds, tmp_path, chat_rows):
    run(tiny_model, tiny_sae(seed=0), ds, tmp_path / "c")
    with pytest.raises(CacheMismatchError, match=r"sae\.weights"):
        run(tiny_model, tiny_sae(seed=1), ds, tmp_path / "c")
    with pytest.raises(CacheMismatchError, match="top_k"):
        run(tiny_model, tiny_sae(seed=0), ds, tmp_path / "c", top_k=3)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in chat_rows[:-1]))
    ds2 = prepare_dataset(other, tiny_model.tokenizer)
    with pytest.raises(CacheMismatchError, match="dataset"):
        run(tiny_model, tiny_sae(seed=0), ds2, tmp_path / "c")


def test_without_sae_only_residual_means(tiny_model, ds, tmp_path):
    run(tiny_model, None, ds, tmp_path / "c")
    c = load_cache(tmp_path / "c")
    assert set(c.arrays) == {"resid_mean", "n_tokens"} and c.d_sae is None
    assert c.hook == tiny_model.default_hook() == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match="no SAE activations"):
        c.dense()
    sub = c.select(np.array([m["label"] == 1 for m in c.meta]))
    assert len(sub) == 11 and all(m["label"] == 1 for m in sub.meta)


def test_incompatible_sae_and_bad_hooks(tiny_model, ds, tmp_path):
    with pytest.raises(SAECompatibilityError, match="d_in=16 does not match the model's activation width 32"):
        run(tiny_model, tiny_sae(d_in=16), ds, tmp_path / "c")
    with pytest.raises(SAECompatibilityError, match="trained on hook 'blocks.1.hook_resid_post' but hook 'blocks.2.hook_resid_post'"):
        run(tiny_model, tiny_sae(), ds, tmp_path / "c", hook="blocks.2.hook_resid_post")
    with pytest.raises(HookNameError, match=r"no hook 'blocks.1.hook_resid_pst'.*Did you mean: blocks.1.hook_resid_post"):
        run(tiny_model, None, ds, tmp_path / "c", hook="blocks.1.hook_resid_pst")
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_cli_cache_and_info_round_trip(tiny_model_dir, chat_file, tmp_path):
    from geomfilter.cli import app

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["cache", str(chat_file), "--model", str(tiny_model_dir), "--sae", str(sae_dir),
                                 "--out", str(out), "--shard-size", "10", "--top-k", "8", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "cached 23 samples" in r.output and "rows read 23, rejected 0" in r.output
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["n_samples"] == 23 and summary["arrays"]["mean_idx"] == [23, 8] and summary["sae"]["d_sae"] == 64
    # a rerun resumes everything
    r2 = CliRunner().invoke(app, ["cache", str(chat_file), "--model", str(tiny_model_dir), "--sae", str(sae_dir),
                                  "--out", str(out), "--shard-size", "10", "--top-k", "8", "--no-progress"])
    assert "0 shards written, 3 resumed" in r2.output


def test_cli_bad_row_and_skip_invalid(tiny_model_dir, chat_file, tmp_path):
    from geomfilter.cli import app

    bad = tmp_path / "bad.jsonl"
    shutil.copy(chat_file, bad)
    with open(bad, "a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}\n')
    args = ["cache", str(bad), "--model", str(tiny_model_dir), "--sae", "none", "--out", str(tmp_path / "o"), "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and f"{bad}:24: field 'messages[1].content': is empty" in r.output
    r = CliRunner().invoke(app, args + ["--skip-invalid"])
    assert r.exit_code == 0, r.output
    assert "rows read 24, rejected 1" in r.output
    rej = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 24 and rej[0]["field"] == "messages[1].content"
    assert len(load_cache(tmp_path / "o")) == 23
