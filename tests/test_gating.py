"""Alignment Gating and fine-tuning on tiny random models: exactness, training, resume, analysis, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomfilter.batches import collate
from geomfilter.cli import app
from geomfilter.finetune import FinetuneConfig, FinetuneError, FinetuneRunner, load_tuned
from geomfilter.gate_analysis import gate_movement, sae_gate_geometry
from geomfilter.gating import AttentionGates, Gate, GatingError, SAEGates, load_gates
from tests.tiny import tiny_llama, tiny_sae

X = torch.tensor([[5, 9, 14, 3, 22, 40, 7, 11], [8, 8, 30, 31, 32, 12, 6, 19]])


def _randomise(gates, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gates.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _logits(model, x=X):
    with torch.no_grad():
        return model(x).logits


def test_open_gates_and_alpha_zero_reproduce_the_base_model_exactly():
    model = tiny_llama()
    base = _logits(model)
    gates = AttentionGates.for_model(model)
    assert gates.layers == [0, 1, 2] and gates.d_out == 32 and gates.n_heads == 4
    with gates.attach(model):
        assert torch.equal(_logits(model), base)  # W = 0, b = 0 -> g == 1 exactly
        _randomise(gates)
        assert not torch.allclose(_logits(model), base, atol=1e-4)  # the learned gates do act
        gates.alpha = 0.0
        assert torch.equal(_logits(model), base)
    assert torch.equal(_logits(model), base)  # detached: the model is untouched

    sae = tiny_sae(hook="blocks.1.hook_resid_post")
    sgates = SAEGates(sae, "tiny")
    with sgates.attach(model):
        assert torch.equal(_logits(model), base)
        _randomise(sgates, scale=0.5)
        assert not torch.allclose(_logits(model), base, atol=1e-4)
        sgates.alpha = 0.0
        assert torch.equal(_logits(model), base)


def test_alpha_minus_one_is_the_mirror_two_minus_g():
    gate = Gate(6, 5)
    _randomise(gate)
    h = torch.randn(3, 4, 6)
    assert torch.allclose(gate(h, -1.0), 2 - gate(h, 1.0), atol=1e-7)
    assert torch.allclose(gate(h, 0.5), 1 + 0.5 * (gate(h, 1.0) - 1), atol=1e-7)
    # end to end: alpha = -1 equals gates whose pre-activation is negated (2 - 2 s(z) = 2 s(-z))
    model = tiny_llama()
    gates = AttentionGates.for_model(model)
    _randomise(gates, seed=1)
    mirror = AttentionGates.for_model(model)
    mirror.load_state_dict({k: -v for k, v in gates.state_dict().items()})
    with gates.attach(model, alpha=-1.0):
        a = _logits(model)
    with mirror.attach(model, alpha=1.0):
        b = _logits(model)
    assert torch.allclose(a, b, atol=1e-5)
    # and the model's output really moves with alpha (amplify vs suppress differ)
    with gates.attach(model, alpha=1.0):
        c = _logits(model)
    assert not torch.allclose(a, c, atol=1e-4)


def test_gates_act_identically_through_the_transformer_lens_bridge(tiny_model):
    hf = tiny_model.hf_model
    gates = AttentionGates.for_model(tiny_model)
    _randomise(gates, seed=2)
    with torch.no_grad():
        plain = tiny_model.bridge(X)
    with gates.attach(tiny_model), torch.no_grad():
        bridged, direct = tiny_model.bridge(X), hf(X).logits
    assert torch.allclose(bridged, direct, atol=1e-5)
    assert not torch.allclose(bridged, plain, atol=1e-4)


def test_save_load_round_trip_and_clear_mismatch_errors(tmp_path):
    model = tiny_llama()
    gates = AttentionGates.for_model(model, layers=[0, 2], model_spec="tiny")
    _randomise(gates)
    gates.save(tmp_path / "g")
    back = load_gates(tmp_path / "g")
    assert back.layers == [0, 2]
    for (k, v), (k2, v2) in zip(gates.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with gates.attach(model):
        a = _logits(model)
    with back.attach(model):
        assert torch.equal(_logits(model), a)
    wider = tiny_llama(d_model=48)
    with pytest.raises(GatingError, match="q_proj takes 48"):
        back.attach(wider)
    with pytest.raises(GatingError, match="no attention layer"):
        AttentionGates.for_model(model, layers=[7])
    with pytest.raises(GatingError, match="not a gates folder"):
        load_gates(tmp_path)
    with pytest.raises(GatingError, match="already attached"):
        back.attach(model).attach(model)
    back.detach()


def test_gate_movement_finds_the_moved_head_and_sae_geometry_finds_planted_latent():
    model = tiny_llama()
    gates = AttentionGates.for_model(model)
    with torch.no_grad():
        gates.gates["1"].proj.bias[16:24] = 2.0  # head 2 of layer 1
    mv = gate_movement(gates, model, [{"input_ids": X, "attention_mask": torch.ones_like(X)}])
    assert mv["top_heads"][0] == {"layer": 1, "head": 2, "mean_abs": pytest.approx(2 * torch.sigmoid(torch.tensor(2.0)).item() - 1, abs=1e-5)}
    assert mv["head_abs"].shape == (3, 4)
    assert not gates.attached

    sae = tiny_sae(d_in=32, d_sae=64, hook="blocks.1.hook_resid_post")
    sg = SAEGates(sae, "tiny")
    mv = gate_movement(sg, model, [{"input_ids": X, "attention_mask": torch.ones_like(X)}])
    assert np.all(mv["latent_effect"] == 0)  # open gates move nothing
    firing = np.flatnonzero(mv["latent_freq"] > 0.2)
    moved = int(firing[0])
    with torch.no_grad():
        sg.gate.proj.bias[moved] = 3.0
    mv = gate_movement(sg, model, [{"input_ids": X, "attention_mask": torch.ones_like(X)}])
    assert int(np.argmax(mv["latent_effect"])) == moved
    # plant: the moved latent's decoder direction is a near copy of a harmful latent's
    d = np.random.default_rng(0).normal(size=(64, 32))
    harmful = [int(i) for i in range(64) if i not in firing][:3]
    d[moved] = d[harmful[0]] + 0.05 * d[moved]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    geo = sae_gate_geometry(mv, d, harmful, top=1, min_freq=0.2)
    assert geo["latents"][0]["latent"] == moved and geo["latents"][0]["nearest_harmful"] == harmful[0]
    assert geo["latents"][0]["cos"] > 0.99 and geo["moved_mean_cos"] > geo["rest_mean_cos"]


def _train_file(tmp_path, n=24):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"say {i}"},
                                          {"role": "assistant", "content": f"the answer is {i % 3} ok"}]}
            for i in range(n)]
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["gates", "lora", "gates-sae"])
def test_training_reduces_loss_and_keeps_base_weights_bit_identical(tiny_model_dir, tmp_path, method):
    from geomfilter.models import load_causal_lm

    data = _train_file(tmp_path)
    sae_spec = None
    if method == "gates-sae":
        sae = tiny_sae(hook="blocks.1.hook_resid_post")
        sae.save_model(str(tmp_path / "sae"))
        sae_spec = str(tmp_path / "sae")
    cfg = FinetuneConfig(data=[str(data)], out=str(tmp_path / "run"), method=method, model=str(tiny_model_dir),
                         max_samples=None, epochs=3, batch_size=4, lr=5e-2, warmup_steps=2, sae=sae_spec,
                         progress=False)
    before, _, _ = load_causal_lm(str(tiny_model_dir), progress=False)
    before = _state(before)
    res = FinetuneRunner(cfg).run()
    assert res.steps == 18 and res.final_loss < res.first_loss - 0.1, (res.first_loss, res.final_loss)
    log = [json.loads(x) for x in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 19))
    after, _, _ = load_causal_lm(str(tiny_model_dir), progress=False)  # the base on disk is untouched ...
    assert all(torch.equal(before[k], v) for k, v in after.state_dict().items())
    tuned = load_tuned(tmp_path / "run")  # ... and only the adapter / gates differ
    if method == "lora":
        assert not all(torch.equal(before[k], v) for k, v in tuned.hf_model.state_dict().items())
    else:
        assert all(torch.equal(before[k], v) for k, v in tuned.hf_model.state_dict().items())
        assert len(tuned.gates) == 1
    # the tuned model really is better on its training data
    batch = collate(__import__("geomfilter.data", fromlist=["prepare_dataset"]).prepare_dataset(
        data, tuned.tokenizer).tokenized[:8], tuned.tokenizer.pad_token_id)
    from geomfilter.finetune import response_loss

    with torch.no_grad():
        tuned_loss = response_loss(tuned.hf_model(input_ids=batch["input_ids"]).logits, batch["labels"])
        tuned.set_gate_scale(0.0)
        off_loss = response_loss(tuned.hf_model(input_ids=batch["input_ids"]).logits, batch["labels"])
    if method == "lora":
        assert tuned_loss == off_loss  # no gates: the scale does nothing
    else:
        assert tuned_loss < off_loss - 0.1
    # a finished run is skipped; a different config in the same folder is refused
    assert FinetuneRunner(cfg).run().skipped
    with pytest.raises(FinetuneError, match="different fine-tune"):
        FinetuneRunner(FinetuneConfig(**{**cfg.__dict__, "seed": 1})).run()


def test_checkpoint_resume_gives_identical_gate_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = _train_file(tmp_path)
    kw = dict(data=[str(data)], method="gates", model=str(tiny_model_dir), max_samples=20, epochs=2,
              batch_size=3, lr=1e-2, warmup_steps=3, checkpoint_every=2, progress=False)
    full = FinetuneRunner(FinetuneConfig(out=str(tmp_path / "full"), **kw)).run()
    first = FinetuneRunner(FinetuneConfig(out=str(tmp_path / "resumed"), **kw)).run(stop_after=5)
    assert first.stopped_early and first.steps == 5
    assert (tmp_path / "resumed/checkpoints/step-000005").is_dir()
    second = FinetuneRunner(FinetuneConfig(out=str(tmp_path / "resumed"), **kw)).run()
    assert second.steps == full.steps == 14 and not second.stopped_early
    a = load_file(str(tmp_path / "full/gates/gates.safetensors"))
    b = load_file(str(tmp_path / "resumed/gates/gates.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.endswith("weight"))
    la = (tmp_path / "full/train_log.jsonl").read_text().splitlines()
    lb = (tmp_path / "resumed/train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]


def test_bad_config_and_data_errors_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(FinetuneError, match="method must be one of"):
        FinetuneConfig(data=["x"], out=str(tmp_path), method="full")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')
    from geomfilter.samples import DataError

    with pytest.raises(DataError, match="bad.jsonl"):
        FinetuneRunner(FinetuneConfig(data=[str(bad)], out=str(tmp_path / "r"), model=str(tiny_model_dir),
                                      progress=False)).run()
    with pytest.raises(FinetuneError, match="not a fine-tune run folder|has not finished"):
        from geomfilter.finetune import read_run

        read_run(tmp_path / "r")


def test_cli_finetune_generate_eval_and_analyze(tiny_model_dir, tmp_path):
    data = _train_file(tmp_path)
    r = CliRunner().invoke(app, ["finetune", str(data), "--out", str(tmp_path / "g"), "--method", "gates",
                                 "--model", str(tiny_model_dir), "--max-samples", "8", "--batch-size", "4",
                                 "--lr", "0.01", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output and (tmp_path / "g/gates/gates.json").is_file()
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "g"), "say 3", "--gate-scale", "-1",
                                 "--max-new-tokens", "5"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("### say 3\n")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "say 1", "aligned": ["the answer is 1 ok"],
                             "misaligned": ["zzzz qqqq"]}) + "\n")
    r = CliRunner().invoke(app, ["eval", "preference", str(tiny_model_dir), "--questions", str(q),
                                 "--gates", str(tmp_path / "g"), "--gate-scale", "1", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p.json").read_text())["n"] == 1
    r = CliRunner().invoke(app, ["gates", "analyze", str(tmp_path / "g"), "--data", str(data),
                                 "--out", str(tmp_path / "ana")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ana/gate_analysis.json").is_file() and (tmp_path / "ana/gate_heads.png").is_file()
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "nope"), "hi"])
    assert r.exit_code == 2 and "unknown model spec" in r.output


def test_length_grouped_epochs_partition_the_samples_and_response_only_loss_is_exact():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from geomfilter.batches import epoch_batches
    from geomfilter.finetune import response_loss, response_only_loss

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(1, 300), min_size=1, max_size=90), st.integers(1, 9), st.integers(0, 5))
    def check(lengths, bs, seed):
        b = epoch_batches(lengths, bs, seed, epoch=0)
        flat = [i for batch in b for i in batch]
        assert sorted(flat) == list(range(len(lengths)))
        assert len(b) == -(-len(lengths) // bs) and all(1 <= len(x) <= bs for x in b)
        assert b == epoch_batches(lengths, bs, seed, epoch=0)

    check()
    model = tiny_llama()
    import pathlib
    import tempfile  # noqa: E401

    from geomfilter.data import prepare_dataset
    from tests.tiny import tiny_tokenizer

    with tempfile.TemporaryDirectory() as d:
        data = _train_file(pathlib.Path(d), n=5)
        rows = prepare_dataset(data, tiny_tokenizer()).tokenized
    batch = collate(rows, 2)
    with torch.no_grad():
        full = response_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        fast = response_only_loss(model, batch)
    assert torch.allclose(full, fast, atol=1e-5)


def test_bounded_and_normalised_sae_gates_stay_in_their_range_and_round_trip(tmp_path):
    """issue 20 (3): gates-sae with gate_bound B keep g and its mirror in (1 - B, 1 + B); a normalised gate reads
    h / rms(h), so scaling a token's residual does not move it; B = 1 without normalising is the paper's gate."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 6) * 40.0
    plain, bounded, normed = Gate(6, 7), Gate(6, 7, bound=0.25), Gate(6, 7, normalize=True)
    for g in (plain, bounded, normed):
        _randomise(g, scale=2.0)
    bounded.load_state_dict(plain.state_dict())
    normed.load_state_dict(plain.state_dict())
    assert torch.equal(plain(h), 2.0 * torch.sigmoid(plain.proj(h)))  # the paper's gate, bit for bit
    for alpha in (1.0, -1.0, 2.0):
        g = bounded(h, alpha)
        assert float((g - 1).abs().max()) <= 0.25 * abs(alpha) + 1e-6
        assert torch.allclose(g - 1, 0.25 * (plain(h, alpha) - 1), atol=1e-6)
    assert float((plain(h) - 1).abs().max()) > 0.9  # unbounded: saturated at this input scale
    assert torch.allclose(normed(h), normed(h * 1000.0), atol=1e-5)  # scale-free
    assert not torch.allclose(plain(h), plain(h * 1000.0), atol=1e-3)
    with pytest.raises(GatingError, match=r"bound must be in \(0, 1\]"):
        Gate(6, 7, bound=1.5)
    # SAE gates carry both options through save/load; older folders (no such keys) load as the paper's gate
    sae = tiny_sae(hook="blocks.1.hook_resid_post")
    gates = SAEGates(sae, "tiny", bound=0.5, normalize=True)
    _randomise(gates, scale=0.5)
    gates.save(tmp_path / "s")
    back = load_gates(tmp_path / "s", sae=sae)
    assert back.gate.bound == 0.5 and back.gate.normalize is True
    model = tiny_llama()
    with gates.attach(model, alpha=-1.0):
        a = _logits(model)
    with back.attach(model, alpha=-1.0):
        assert torch.equal(_logits(model), a)
    cfg = json.loads((tmp_path / "s" / "gates.json").read_text())
    for k in ("bound", "normalize"):
        cfg.pop(k)
    (tmp_path / "s" / "gates.json").write_text(json.dumps(cfg))
    old = load_gates(tmp_path / "s", sae=sae)
    assert old.gate.bound == 1.0 and old.gate.normalize is False


def test_gate_bound_options_belong_to_gates_sae(tiny_model_dir, tmp_path):
    with pytest.raises(FinetuneError, match="are options of method gates-sae, not lora"):
        FinetuneConfig(data=["x.jsonl"], out=str(tmp_path), gate_bound=0.5)
    with pytest.raises(FinetuneError, match=r"gate_bound must be in \(0, 1\]"):
        FinetuneConfig(data=["x.jsonl"], out=str(tmp_path), method="gates-sae", gate_bound=0.0)
    # the default options leave a run's identity as it was before they existed (old runs still resume)
    ident = FinetuneConfig(data=["x.jsonl"], out=str(tmp_path), method="gates-sae").identity()
    assert "gate_bound" not in ident and "gate_normalize" not in ident
    ident = FinetuneConfig(data=["x.jsonl"], out=str(tmp_path), method="gates-sae", gate_bound=0.5).identity()
    assert ident["gate_bound"] == 0.5


def test_sae_gates_stay_open_on_attention_sink_tokens(tmp_path):
    """gates-sae with sink_ratio R: a token whose residual norm is above R times its sequence's median (the first
    token of the default model is ~150x the others) keeps g = 1, the others are gated as before."""
    sae = tiny_sae(hook="blocks.1.hook_resid_post")
    gates = SAEGates(sae, "tiny", sink_ratio=10.0)
    _randomise(gates, scale=0.5)
    x = torch.randn(2, 6, sae.cfg.d_in)
    x[0, 0] *= 500.0  # a sink in the first sequence only
    g = gates.gate(x)
    opened = gates._open_at_sinks(x, g)
    assert torch.equal(opened[0, 0], torch.ones_like(g[0, 0]))
    assert torch.equal(opened[0, 1:], g[0, 1:]) and torch.equal(opened[1], g[1])
    one = x[:, :1]  # one new token at a time (generation with a KV cache): never a sink by this rule
    assert torch.equal(gates._open_at_sinks(one, gates.gate(one)), gates.gate(one))
    gates.save(tmp_path / "s")
    assert load_gates(tmp_path / "s", sae=sae).sink_ratio == 10.0
    with pytest.raises(GatingError, match="sink_ratio must be > 1"):
        SAEGates(sae, "tiny", sink_ratio=0.5)
    # end to end on the tiny model: with a huge R nothing counts as a sink, so the output is the plain gates'
    model = tiny_llama()
    wide = SAEGates(sae, "tiny", sink_ratio=1e9)
    wide.load_state_dict(gates.state_dict())
    plain = SAEGates(sae, "tiny")
    plain.load_state_dict(gates.state_dict())
    with plain.attach(model, alpha=-1.0):
        a = _logits(model)
    with wide.attach(model, alpha=-1.0):
        assert torch.equal(_logits(model), a)
