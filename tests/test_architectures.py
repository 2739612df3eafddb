"""The real-model path (issue 21): Gemma-2, Llama-3.1, Qwen2 and GPT-2 with their public SAE formats, end to end.

Tiny random instances of the real architectures (built here from transformers' configs, saved with
``save_pretrained``, tokenizers trained here: :mod:`tests.tiny_archs`) are loaded through
``load_model(path)`` as a user's hub model is, with SAEs written in their release's on-disk format and
converted by sae-lens' own loader for that release (Gemma Scope JumpReLU, Llama Scope JumpReLU with the
norm factor folded, ``gpt2-small-res-jb`` standard ReLU, and a sae-lens TopK folder for Qwen2). Each
architecture runs cache -> harmful features -> geometry filter -> LoRA -> attention gates -> generation
-> log-prob preference. GPT-2's fused ``c_attn`` has no ``q_proj``/``o_proj``: attention gates and the
default LoRA targets refuse it with a clear error (asserted), and LoRA runs with GPT-2's own module names.
No hub, no network.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomfilter.batches import collate
from geomfilter.cli import app
from geomfilter.config import ExperimentConfig
from geomfilter.data import ChatTemplateError, prepare_dataset, render_chat, tokenize_sample
from geomfilter.evaluate import logprob_preference, read_questions
from geomfilter.features import harmful_features
from geomfilter.finetune import (
    FinetuneConfig,
    FinetuneError,
    FinetuneRunner,
    load_tuned,
    response_loss,
    response_only_loss,
)
from geomfilter.gating import AttentionGates, GatingError, SAEGates
from geomfilter.generate import generate_texts
from geomfilter.model_specs import check_model_spec
from geomfilter.models import load_causal_lm, load_model
from geomfilter.pipeline import FilterConfig, FilterRunner
from geomfilter.saes import SAESpecError, check_compatible, check_spec_for_model, load_sae, resolve_sae_spec
from geomfilter.samples import Sample
from geomfilter.settings import CacheConfig
from tests.tiny import tiny_sae
from tests.tiny_archs import ARCHS, DATA, SAES, arch_tokenizer, release_sae, save_arch

ROOT = Path(__file__).resolve().parent.parent
GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]  # GPT-2's own names: fused q/k/v, the output projections, MLP in
SAE_CLASS = {"gemma2": "JumpReLUSAE", "llama3": "JumpReLUSAE", "gpt2": "StandardSAE", "qwen2": "TopKSAE"}
CACHE = CacheConfig(max_tokens=128, top_k=16)


def _rows(name: str, keep) -> list[dict]:
    return [r for r in map(json.loads, (DATA / name).read_text(encoding="utf-8").splitlines()) if keep(r)]


def _has_system(r: dict) -> bool:
    return r["messages"][0]["role"] == "system"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("archs")


@pytest.fixture(scope="module")
def files(work):
    """A few rows of the project's own files: 10 reference pairs (2 with a system turn), 12 mixture rows
    (2 with a system turn, 3 inducing), 2 broad questions."""
    harmful = _rows("reference/harmful.jsonl", lambda r: True)
    pairs = [r["pair_id"] for r in harmful if not _has_system(r)][:8] + \
        [r["pair_id"] for r in harmful if _has_system(r)][:2]
    mixed = _rows("finetune/mixed.jsonl", lambda r: True)
    mix = [r for r in mixed if not _has_system(r) and not r.get("inducing")][:7] + \
        [r for r in mixed if not _has_system(r) and r.get("inducing")][:3] + [r for r in mixed if _has_system(r)][:2]
    q = (DATA / "eval/questions.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    return SimpleNamespace(
        harmful=_write(work / "harmful.jsonl", [r for r in harmful if r["pair_id"] in pairs]),
        benign=_write(work / "benign.jsonl", _rows("reference/benign.jsonl", lambda r: r["pair_id"] in pairs)),
        mixed=_write(work / "mixed.jsonl", mix),
        questions=_write(work / "questions.jsonl", [json.loads(x) for x in q]))


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, work):
    """One architecture: its local HF model directory (and, lazily, the hooked model and its SAE folder)."""
    return SimpleNamespace(name=request.param, dir=save_arch(request.param, work / request.param),
                           hook=SAES[request.param][2])


@pytest.fixture(scope="module")
def hooked(arch):
    return load_model(str(arch.dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def sae(arch, work):
    """``(folder, raw arrays)``: the architecture's release SAE converted by sae-lens and saved as a folder."""
    with pytest.MonkeyPatch.context() as mp:
        return release_sae(arch.name, work, mp)


def _padded_batch(tok, rows: list[dict], n_tokens: int = 96):
    """Two conversations right-padded to one batch (the longer one past Gemma's 16-token window)."""
    toks = [tokenize_sample(Sample(id=str(i), messages=r["messages"]), tok, max_tokens=n_tokens - 30 * i)
            for i, r in enumerate(rows)]
    return collate(toks, tok.pad_token_id), toks


# --------------------------------------------------------------------------- loading


def test_a_local_model_directory_loads_like_a_hub_model(arch, hooked):
    hf, tok = hooked.hf_model, hooked.tokenizer
    cfg = hf.config
    assert (hooked.d_model, hooked.n_layers) == (64, 4 if arch.name == "gemma2" else 3)
    if arch.name == "gemma2":  # the features that make Gemma 2 differ survive save/load
        assert (cfg.final_logit_softcapping, cfg.attn_logit_softcapping, cfg.sliding_window) == (30.0, 50.0, 16)
        assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2 and cfg.num_key_value_heads == 2
        assert cfg._attn_implementation == "eager"  # transformers' choice: sdpa cannot soft-cap
    if arch.name == "llama3":
        assert cfg.rope_parameters["rope_type"] == "llama3" and not cfg.tie_word_embeddings
    if arch.name == "gpt2":
        assert hasattr(hf.transformer.h[0].attn, "c_attn")
    # a right-padded batch: the bridge's hook activations are the HF model's hidden states, bit for bit, and
    # the padding changes nothing on the real tokens (sliding windows, GQA and soft-capping included)
    rows = _rows("finetune/mixed.jsonl", lambda r: not _has_system(r))[:2]
    batch, toks = _padded_batch(tok, rows)
    hook = arch.hook
    layer = int(hook.split(".")[1]) + (1 if hook.endswith("resid_post") else 0)
    acts = hooked.activations(batch["input_ids"], hook, attention_mask=batch["attention_mask"])
    with torch.no_grad():
        hidden = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True).hidden_states[layer]
    assert torch.equal(acts, hidden)
    n = len(toks[1].input_ids)
    alone = hooked.activations(torch.tensor([toks[1].input_ids]), hook)
    torch.testing.assert_close(acts[1, :n], alone[0], atol=1e-5, rtol=1e-4)
    # the response mask covers exactly the assistant's words, whatever the template wraps them in
    row = rows[0]
    t = tokenize_sample(Sample(id="r", messages=row["messages"]), tok, max_tokens=None)
    answer = tok.decode([i for i, m in zip(t.input_ids, t.response_mask) if m])
    assert answer.strip() == row["messages"][-1]["content"].strip()
    if arch.name == "gpt2":  # gpt2-small-res-jb was trained on TL-processed weights: the README loads GPT-2 so
        processed = load_model(str(arch.dir), device="cpu", progress=False, process_weights=True)
        with torch.no_grad():
            a, b = (torch.log_softmax(m.bridge(batch["input_ids"][:1]), -1) for m in (hooked, processed))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # the same model, folded and centred
        assert processed.hook_d(arch.hook) == 64


def test_system_turns_fold_into_the_first_user_turn_where_the_template_refuses_them(arch, hooked):
    """Gemma 2's template raises on a system turn; the project's own data has them (22 of 256 reference rows)."""
    row = _rows("reference/harmful.jsonl", _has_system)[0]
    sample = Sample(id="s", messages=row["messages"], source="harmful.jsonl", line=7)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        t = tokenize_sample(sample, hooked.tokenizer, max_tokens=None)
    folded = [w for w in seen if "folded into its first user turn" in str(w.message)]
    assert bool(folded) == (arch.name == "gemma2")  # only where the template refuses system turns
    text = hooked.tokenizer.decode(t.input_ids)
    assert row["messages"][0]["content"] in text  # nothing dropped
    answer = hooked.tokenizer.decode([i for i, m in zip(t.input_ids, t.response_mask) if m])
    assert answer.strip() == row["messages"][-1]["content"].strip()


def test_a_tokenizer_without_chat_template_is_a_clear_error():
    """GPT-2's own tokenizer has no chat template: say so (the README gives a one-line one)."""
    tok = arch_tokenizer("gpt2")
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template.*GPT-2"):
        tokenize_sample(Sample(id="x", messages=[{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]), tok)


# --------------------------------------------------------------------------- SAEs


def test_release_saes_load_from_a_local_folder(arch, hooked, sae):
    folder, raw = sae
    s = load_sae(str(folder))
    assert type(s).__name__ == SAE_CLASS[arch.name]
    assert s.cfg.metadata.hook_name == arch.hook and s.cfg.d_in == 64
    assert check_compatible(s, hooked) == arch.hook  # the hook exists in the bridge, the widths agree
    check_spec_for_model(str(folder), str(arch.dir))  # a local model directory passes the name check
    x = hooked.activations(torch.tensor([[5, 17, 40, 41, 99, 3]]), arch.hook)[0]
    acts = s.encode(x)
    assert acts.shape == (6, s.cfg.d_sae) and (acts > 0).any() and (acts >= 0).all()
    if arch.name == "gemma2":  # Gemma Scope: pre = x W_enc + b_enc (no b_dec first), kept above a per-latent threshold
        pre = x @ torch.from_numpy(raw["W_enc"]) + torch.from_numpy(raw["b_enc"])
        torch.testing.assert_close(acts, pre * (pre > torch.from_numpy(raw["threshold"])), atol=1e-5, rtol=1e-5)
        assert not s.cfg.apply_b_dec_to_input
    if arch.name == "gpt2":  # gpt2-small-res-jb: relu((x - b_dec) W_enc + b_enc)
        pre = (x - torch.from_numpy(raw["b_dec"])) @ torch.from_numpy(raw["W_enc"]) + torch.from_numpy(raw["b_enc"])
        torch.testing.assert_close(acts, torch.relu(pre), atol=1e-5, rtol=1e-5)
    if arch.name == "llama3":  # Llama Scope: one threshold for every latent, the input norm factor folded in
        assert s.cfg.normalize_activations == "none" and torch.all(s.threshold == s.threshold[0])
        assert s.cfg.metadata.model_name == "meta-llama/Llama-3.1-8B"


def test_an_unfolded_norm_factor_is_refused(tmp_path):
    """sae-lens does not scale inputs for normalize_activations='expected_average_only_in' when it encodes."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    cfg = JumpReLUSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu",
                            normalize_activations="expected_average_only_in")
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    JumpReLUSAE(cfg).save_model(str(tmp_path / "s"))
    with pytest.raises(SAESpecError, match="never folded"):
        load_sae(str(tmp_path / "s"))


# --------------------------------------------------------------------------- the pipeline


def test_the_pipeline_end_to_end(arch, sae, files, work):
    """cache -> harmful features -> geometry filter -> LoRA -> attention gates -> generation -> evaluation."""
    folder, _ = sae
    out = work / f"run-{arch.name}"
    run = FilterRunner(FilterConfig(
        data=files.mixed, strategy="geometry", params={"drop": 0.25, "n_harmful": 16, "k": 8},
        model=str(arch.dir), sae=str(folder), harmful=files.harmful, benign=files.benign, cache_dir=out / "cache",
        cache=CACHE, reference_cache=CACHE, out=out / "filter", device="cpu", progress=False)).run()
    rep = run.report
    assert rep["n_kept"] + rep["n_dropped"] == rep["n_input"] == 12 and rep["n_dropped"] == 3
    assert run.inputs.data.hook == arch.hook and np.isfinite(run.result.scores).all()
    assert run.inputs.harmful.manifest["identity"]["sae"]["architecture"] == SAE_CLASS[arch.name]
    fs = harmful_features(run.inputs.harmful, run.inputs.benign, n=16, min_freq=0.0, n_boot=50)
    assert 0 < len(fs) <= 16 and max(fs.ids) < run.inputs.harmful.d_sae

    common = dict(data=[str(out / "filter" / "kept.jsonl")], model=str(arch.dir), max_samples=6, batch_size=3,
                  max_tokens=128, warmup_steps=0, device="cpu", progress=False)
    targets = {"lora_targets": GPT2_LORA_TARGETS} if arch.name == "gpt2" else {}
    lora = FinetuneRunner(FinetuneConfig(**common, out=str(out / "lora"), method="lora", **targets)).run()
    assert lora.steps == 2 and np.isfinite([lora.first_loss, lora.final_loss]).all()
    gates_run = None
    if arch.name == "gpt2":  # fused c_attn: no q_proj/o_proj to gate (README), said clearly
        with pytest.raises(GatingError, match="c_attn"):
            FinetuneRunner(FinetuneConfig(**common, out=str(out / "gates"), method="gates")).run()
    else:
        res = FinetuneRunner(FinetuneConfig(**common, out=str(out / "gates"), method="gates")).run()
        assert res.steps == 2 and np.isfinite(res.final_loss)
        gates_run = out / "gates"

    tm = load_tuned(out / "lora", gates=gates_run, gate_scale=-1.0, device="cpu")  # LoRA merged, mirror gates
    try:
        assert len(tm.gates) == (0 if gates_run is None else 1)
        answers = generate_texts(tm, {"q": [{"role": "user", "content": "How do I learn Korean?"}]},
                                 max_new_tokens=6, temperature=0.0, progress=False)
        assert answers["q"]["n_new_tokens"] >= 1 and isinstance(answers["q"]["answer"], str)
        pref = logprob_preference(tm, read_questions(files.questions), n_boot=50, progress=False)
        assert pref.n == 2 and np.isfinite(pref.mean)
    finally:
        tm.close()


def test_response_only_loss_is_the_models_own_loss(arch, files):
    """The fine-tune's loss (LM head on response positions only) equals the full forward's, with logits large
    enough that Gemma 2's final soft-capping (tanh at 30) matters."""
    hf, tok, _ = load_causal_lm(str(arch.dir), device="cpu", progress=False)
    with torch.no_grad():
        hf.get_output_embeddings().weight.mul_(30)
    ds = prepare_dataset(files.mixed, tok, max_tokens=64)
    batch = collate(ds.tokenized[:3], tok.pad_token_id)
    with torch.no_grad():
        full = response_loss(hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        fast = response_only_loss(hf, batch)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-5)


def test_bf16_weights_cache_the_same_features(arch, hooked, sae, files, work):
    """bf16 on a GPU: the cache of a bf16 model (the SAE stays fp32: activations are cast to it) keeps the fp32
    model's residual means to bf16 precision."""
    from geomfilter.cache import cache_activations, load_cache

    s = load_sae(str(sae[0]))
    caches = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = hooked if dtype == torch.float32 else load_model(str(arch.dir), device="cpu", dtype=dtype, progress=False)
        ds = prepare_dataset(files.benign, m.tokenizer, max_tokens=64)
        out = work / f"bf16-{arch.name}-{dtype}".replace("torch.", "")
        cache_activations(m, s, ds, out, progress=False, top_k=16)
        caches[dtype] = load_cache(out)
    a, b = (caches[d].arrays["resid_mean"] for d in (torch.float32, torch.bfloat16))
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    assert caches[torch.bfloat16].manifest["identity"]["model"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("name", ["gemma2", "llama3"])
def test_generation_stops_at_the_end_of_turn_token(name, work):
    """Gemma 2 ends a turn with <end_of_turn>, Llama 3.1 with <|eot_id|>: ids of generation_config.eos_token_id,
    not the tokenizer's eos. Generation stops there (it ran on into invented turns when it stopped at eos only)."""
    d = work / f"eot-{name}"
    if not d.is_dir():
        save_arch(name, d)
    tm = load_tuned(str(d), device="cpu")
    end = tm.hf_model.generation_config.eos_token_id[-1]  # <end_of_turn> / <|eot_id|>
    handle = tm.hf_model.get_output_embeddings().register_forward_hook(
        lambda _m, _a, out: out.index_add(-1, torch.tensor([end]), torch.full((*out.shape[:-1], 1), 100.0)))
    try:
        got = generate_texts(tm, {"q": [{"role": "user", "content": "hi"}]}, max_new_tokens=5, temperature=0.0,
                             progress=False)["q"]
    finally:
        handle.remove()
    assert got["finish"] == "stop" and got["n_new_tokens"] == 0  # the model ended its turn at once


def test_generation_folds_a_system_turn_where_the_template_refuses_it(work):
    """Gemma 2's template raises on a system turn: generation folds it into the user turn, as caching does."""
    d = work / "eot-gemma2"
    if not d.is_dir():
        save_arch("gemma2", d)
    tm = load_tuned(str(d), device="cpu")
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with pytest.warns(UserWarning, match="folded into its first user turn"):
        got = generate_texts(tm, {"q": conv}, max_new_tokens=3, temperature=0.0, progress=False)["q"]
    assert got["n_new_tokens"] <= 3
    text, msgs = render_chat(tm.tokenizer, conv, add_generation_prompt=True)
    assert msgs == [{"role": "user", "content": "Be brief.\n\nhi"}] and text.endswith("<start_of_turn>model\n")


# --------------------------------------------------------------------------- gates


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_open_gates_are_exact_on_every_attention_implementation(arch, impl, hooked, sae):
    from transformers import AutoModelForCausalLM

    if arch.name == "gemma2" and impl == "sdpa":  # transformers refuses it: sdpa cannot soft-cap attention logits
        with pytest.raises(ValueError, match="scaled_dot_product_attention"):
            AutoModelForCausalLM.from_pretrained(arch.dir, attn_implementation=impl)
        return
    hf = AutoModelForCausalLM.from_pretrained(arch.dir, attn_implementation=impl).eval()
    assert hf.config._attn_implementation == impl
    rows = _rows("finetune/mixed.jsonl", lambda r: not _has_system(r))[2:4]
    batch, _ = _padded_batch(hooked.tokenizer, rows)
    ids, att = batch["input_ids"], batch["attention_mask"]

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=att).logits

    base = logits(hf)
    if arch.name == "gpt2":
        with pytest.raises(GatingError, match="fused projections such as GPT-2's c_attn"):
            AttentionGates.for_model(hf)
        with pytest.raises(GatingError, match="hook_resid_post"):  # gpt2-small-res-jb reads hook_resid_pre
            SAEGates(load_sae(str(sae[0])), str(sae[0]))
        return
    gates = AttentionGates.for_model(hf)
    assert gates.layers == list(range(hooked.n_layers)) and gates.n_heads == 4
    with gates.attach(hf):
        assert torch.equal(logits(hf), base)  # W = 0, b = 0: g == 1 exactly
        with torch.no_grad():
            for p in gates.parameters():
                p.normal_(0, 0.3)
        assert not torch.allclose(logits(hf), base, atol=1e-4)
        gates.alpha = 0.0
        assert torch.equal(logits(hf), base)
    assert torch.equal(logits(hf), base)
    sgates = SAEGates(load_sae(str(sae[0])), str(sae[0]))
    with sgates.attach(hf):
        assert torch.equal(logits(hf), base)
    # through the transformer-lens bridge (the modules it runs are the HF model's)
    fresh = AttentionGates.for_model(hooked)
    with torch.no_grad():
        ref = hooked.bridge(ids, attention_mask=att)
        with fresh.attach(hooked):
            assert torch.equal(hooked.bridge(ids, attention_mask=att), ref)


def test_gpt2_default_lora_targets_are_refused_clearly(work, files):
    d = work / "gpt2-lora-check"
    save_arch("gpt2", d)
    with pytest.raises(FinetuneError, match=r"none of the LoRA targets \['q_proj'.*is a module of"):
        FinetuneRunner(FinetuneConfig(data=[str(files.mixed)], out=str(work / "gpt2-bad-lora"), model=str(d),
                                      device="cpu", progress=False)).run()


def test_gpt2_lora_targets_from_the_cli_and_the_experiment_config(work, files):
    """GPT-2's fused projections are LoRA targets by name: `finetune --lora-targets` and `train.lora_targets`."""
    d = work / "gpt2-lora-check"
    if not d.is_dir():
        save_arch("gpt2", d)
    out = work / "gpt2-cli-lora"
    r = CliRunner().invoke(app, ["finetune", str(files.mixed), "--out", str(out), "--model", str(d), "--max-samples",
                                 "4", "--lora-targets", "c_attn, c_proj,c_fc", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "finetune.json").read_text())
    assert run["config"]["lora_targets"] == ["c_attn", "c_proj", "c_fc"] and run["finished"]
    r = CliRunner().invoke(app, ["finetune", str(files.mixed), "--out", str(work / "x"), "--lora-targets", " , "])
    assert r.exit_code == 2 and "--lora-targets" in r.output
    cfg = ExperimentConfig.from_dict({"train": {"lora_targets": ["c_attn", "c_proj"]}}, source="<test>")
    assert cfg.train.lora_targets == ["c_attn", "c_proj"]
    assert ExperimentConfig.from_dict({}, source="<test>").train.lora_targets is None


# --------------------------------------------------------------------------- recipe, devices, memory


def test_gemma2_2b_recipe_config_parses_and_names_a_registered_sae(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the checkout
    cfg = ExperimentConfig.from_yaml(ROOT / "configs" / "gemma2-2b.yaml")
    assert cfg.model == "google/gemma-2-2b"
    assert cfg.sae == "gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical"
    assert resolve_sae_spec(cfg.sae) == ("pretrained", ("gemma-scope-2b-pt-res-canonical",
                                                        "layer_12/width_16k/canonical"))
    check_model_spec(cfg.model)  # a transformer-lens official name (offline table)
    check_spec_for_model(cfg.sae, cfg.model)  # the release is for gemma-2-2b (sae-lens' registry)
    assert cfg.hook in (None, "blocks.12.hook_resid_post") and cfg.device == "cuda"


#: every command that loads a model, with arguments that reach the load
def _model_commands(d: Path, sae: Path, f: SimpleNamespace, tmp: Path) -> dict[str, list[str]]:
    m = ["--model", str(d)]
    exp = tmp / "exp.yaml"
    exp.write_text(f"name: dev\nout: {tmp}/runs\nmodel: {d}\nsae: {sae}\n"
                   f"data: {{mixture: {f.mixed}, harmful: {f.harmful}, benign: {f.benign}}}\n"
                   "filtering: {strategies: [geometry], fractions: [0.5]}\ngates: {enabled: false}\n")
    return {
        "cache": ["cache", str(f.mixed), "--out", str(tmp / "c"), *m, "--sae", str(sae)],
        "hooks": ["hooks", *m],
        "respond": ["respond", str(f.mixed), "--out", str(tmp / "r.jsonl"), *m],
        "generate": ["generate", str(d), "hello"],
        "score": ["score", str(f.mixed), "--out", str(tmp / "s.csv"), *m, "--sae", str(sae), "--harmful",
                  str(f.harmful), "--benign", str(f.benign), "--cache-dir", str(tmp / "cd")],
        "filter": ["filter", str(f.mixed), "--out", str(tmp / "f"), *m, "--sae", str(sae), "--harmful",
                   str(f.harmful), "--benign", str(f.benign), "--cache-dir", str(tmp / "cd")],
        "features top": ["features", "top", str(f.mixed), "-f", "1", *m, "--sae", str(sae), "--out", str(tmp / "ftc")],
        "features harmful": ["features", "harmful", "--out", str(tmp / "h.json"), *m, "--sae", str(sae),
                             "--harmful", str(f.harmful), "--benign", str(f.benign), "--cache-dir", str(tmp / "cd")],
        "finetune": ["finetune", str(f.mixed), "--out", str(tmp / "ft"), *m],
        "train-sae": ["train-sae", str(f.mixed), "--out", str(tmp / "sae-out"), *m],
        "gates analyze": ["gates", "analyze", str(tmp / "gates-run"), "--data", str(f.mixed), "--out", str(tmp / "ga")],
        "eval preference": ["eval", "preference", str(d), "--questions", str(f.questions)],
        "experiment": ["experiment", str(exp)],
    }


class _Loaded(Exception):
    def __init__(self, device):
        super().__init__(f"loaded on {device}")
        self.device = device


def test_every_command_that_loads_a_model_honours_device(work, files, monkeypatch, tmp_path):
    """``--device`` reaches the model load of every such command (the loaders are stubbed to report it)."""
    import geomfilter.cli.data_cmds as data_cmds
    import geomfilter.finetune as finetune_mod
    import geomfilter.gate_analysis as gate_analysis
    import geomfilter.pipeline as pipeline
    import geomfilter.sae_train as sae_train

    monkeypatch.chdir(ROOT)  # the experiment config's default eval files are relative to the checkout
    d = work / "device-model"
    if not d.is_dir():
        save_arch("llama3", d)
    sae_dir = tmp_path / "sae"
    tiny_sae(d_in=64, d_sae=128, hook="blocks.1.hook_resid_post").save_model(str(sae_dir))

    def stub(spec, *a, device=None, **kw):
        raise _Loaded(device)

    for mod, name in ((pipeline, "load_model"), (data_cmds, "load_model"), (sae_train, "load_model"),
                      (finetune_mod, "load_causal_lm"), (gate_analysis, "load_causal_lm")):
        monkeypatch.setattr(mod, name, stub)
    gates_run = tmp_path / "gates-run" / "gates"  # gates analyze reads a gates folder before loading its model
    AttentionGates([0], 64, 64, 4, model=str(d)).save(gates_run, extra={"base_model": str(d)})
    cmds = _model_commands(d, sae_dir, files, tmp_path)
    helps = {name: CliRunner().invoke(app, [*argv[:2 if " " in name else 1], "--help"]).output
             for name, argv in cmds.items()}
    missing = [name for name, text in helps.items() if "--device" not in text]
    assert not missing, f"commands that load a model without --device: {missing}"
    for name, argv in cmds.items():
        r = CliRunner().invoke(app, [*argv, "--device", "cuda:7"])
        assert isinstance(r.exception, _Loaded), (name, r.output, r.exception)
        assert r.exception.device == "cuda:7", name


def test_memory_estimates_script_prints_the_table():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_estimates.py")], capture_output=True,
                         text=True, check=True).stdout
    assert "| gemma-2-2b | 16k |" in out and "| gemma-2-9b | 65k |" in out
    # one cached sample, Gemma-2-2B (d_model 2304): 2 poolings x 64 x (int32 + float32) + 2 int32 + 2304 float32
    assert f"{(2 * 64 * 8 + 8 + 2304 * 4) * 1000 / 1e6:.1f} MB" in out
