"""Tiny random models, tokenizers and SAEs built in the tests (fast, offline).

The tokenizer is character level so response masks can be computed by hand:
every character of a message is one token, and each chat-template special
token (``<|im_start|>``, ``<|im_end|>``) is one token.
"""
from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n\t"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_llama(n_layers: int = 3, d_model: int = 32, vocab_size: int | None = None, seed: int = 0):
    vocab_size = vocab_size or len(tiny_tokenizer())
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def tiny_sae(d_in: int = 32, d_sae: int = 64, hook: str = "blocks.1.hook_resid_post", seed: int = 0):
    """A random sae-lens standard SAE (ReLU) with non-trivial weights."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = "tiny-llama"
    sae = StandardSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * (0.5 + torch.rand(d_sae, 1, generator=g)))
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
    return sae.eval()


def save_tiny_model(path, n_layers: int = 3, d_model: int = 32, seed: int = 0):
    """Write a tiny random Llama + char tokenizer as a local HF model directory."""
    tok = tiny_tokenizer()
    model = tiny_llama(n_layers=n_layers, d_model=d_model, vocab_size=len(tok), seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
