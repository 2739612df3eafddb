"""Memory of the real-model path, from the shapes alone: prints a markdown table (README, "Recipes for real models").

    python scripts/memory_estimates.py

Per model and SAE width: the activation cache on disk per 1,000 samples, the SAE's weights, the model's weights
in fp32 and bf16, the peak GPU memory of a cache pass, and an estimate of the peak GPU memory of the LoRA
fine-tune (`geomfilter finetune`, batch 4 x 384 tokens) in fp32 (what the fine-tune loads today) and in bf16.
The model shapes are those of the models' HF ``config.json`` (Gemma-2-2B is also transformers' ``Gemma2Config()``
default); every assumption is printed under the table. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

GB, MB = 1e9, 1e6
TOP_K = 64  # CacheConfig.top_k
BATCH, SEQ = 4, 384  # FinetuneConfig.batch_size; configs/gemma2-2b.yaml train.max_tokens
LORA_R = 16
CACHE_BATCH_TOKENS = 2048  # CacheConfig.max_batch_tokens


@dataclass(frozen=True)
class Shape:
    """What the estimates need from a model's config.json."""

    name: str
    d_model: int  # hidden_size
    d_ff: int  # intermediate_size
    n_layers: int  # num_hidden_layers
    n_heads: int  # num_attention_heads
    n_kv: int  # num_key_value_heads
    head_dim: int
    vocab: int
    tied: bool  # tie_word_embeddings
    gated_mlp: bool = True  # gate_proj/up_proj/down_proj (GPT-2: c_fc/c_proj)
    eager_attention: bool = False  # Gemma 2: transformers runs eager attention (sdpa cannot soft-cap)
    norms_per_layer: int = 2

    def params(self) -> int:
        """Weights: embeddings, attention, MLP, norms, (untied) head."""
        q, kv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        attn = self.d_model * (q + 2 * kv) + q * self.d_model
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_ff
        layer = attn + mlp + self.norms_per_layer * self.d_model
        return self.vocab * self.d_model * (1 if self.tied else 2) + self.n_layers * layer + self.d_model

    def lora_params(self) -> int:
        """LoRA rank ``LORA_R`` on q, k, v, o, gate, up, down of every layer: r * (in + out) each."""
        q, kv, d, f = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.d_model, self.d_ff
        shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]
        return self.n_layers * sum(LORA_R * (i + o) for i, o in shapes)

    def saved_per_token_layer(self) -> int:
        """Tensors autograd keeps per token and layer (elements): norm inputs/outputs, q/k/v, attention output,
        MLP intermediates, and for eager attention the scores, capped scores and probabilities of the token's row."""
        q, kv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        attn_rows = 3 * self.n_heads * SEQ if self.eager_attention else 0
        return 10 * self.d_model + (q + 2 * kv) + 2 * q + 4 * self.d_ff + attn_rows


GEMMA2_2B = Shape("gemma-2-2b", 2304, 9216, 26, 8, 4, 256, 256000, True, eager_attention=True, norms_per_layer=4)
GEMMA2_9B = Shape("gemma-2-9b", 3584, 14336, 42, 16, 8, 256, 256000, True, eager_attention=True, norms_per_layer=4)
LLAMA31_8B = Shape("llama-3.1-8b", 4096, 14336, 32, 32, 8, 128, 128256, False)
GPT2_SMALL = Shape("gpt2", 768, 3072, 12, 12, 12, 64, 50257, True, gated_mlp=False)

ROWS = [(GEMMA2_2B, "16k", 16384), (GEMMA2_2B, "65k", 65536), (GEMMA2_9B, "16k", 16384), (GEMMA2_9B, "65k", 65536),
        (LLAMA31_8B, "32k", 32768), (GPT2_SMALL, "24k", 24576)]


def cache_bytes_per_sample(m: Shape) -> int:
    """One cached sample: per pooling (mean, max) top_k int32 ids + float32 values, int32 n_active, int32 n_tokens,
    float32 resid_mean[d_model]. Independent of the SAE's width."""
    return 2 * TOP_K * (4 + 4) + 4 + 4 + 4 * m.d_model


def sae_params(m: Shape, d_sae: int) -> int:
    """W_enc, W_dec, b_enc, threshold (JumpReLU), b_dec."""
    return 2 * m.d_model * d_sae + 2 * d_sae + m.d_model


def cache_pass_peak(m: Shape, d_sae: int) -> float:
    """fp32 model + SAE + one batch's SAE codes ``[2048 tokens, d_sae]`` (with their mean/max) and hidden states."""
    codes = CACHE_BATCH_TOKENS * d_sae * 4 * 2
    hidden = CACHE_BATCH_TOKENS * (4 * m.d_model + 2 * m.d_ff) * 4
    return 4 * (m.params() + sae_params(m, d_sae)) + codes + hidden


def finetune_peak(m: Shape, act_bytes: int) -> float:
    """Frozen weights + LoRA (fp32 weights, grads, two AdamW moments) + saved activations + the LM head on
    every position (upper bound: every token a response token) + 1 GB of CUDA context and workspace."""
    tokens = BATCH * SEQ
    weights = act_bytes * m.params()
    lora = 4 * 4 * m.lora_params()
    acts = act_bytes * m.n_layers * tokens * m.saved_per_token_layer()
    head = tokens * m.vocab * (act_bytes + 3 * 4)  # logits, their fp32 copy, log-softmax, gradient
    return weights + lora + acts + head + 1 * GB


def table() -> str:
    head = ("| model | SAE width | cache on disk per 1k samples | SAE weights (fp32) | model weights fp32 / bf16 "
            "| cache pass peak (fp32) | LoRA fine-tune peak fp32 / bf16 |")
    lines = [head, "|" + "---|" * 7]
    for m, width, d_sae in ROWS:
        lines.append(
            f"| {m.name} | {width} | {cache_bytes_per_sample(m) * 1000 / MB:.1f} MB "
            f"| {4 * sae_params(m, d_sae) / GB:.2f} GB | {4 * m.params() / GB:.1f} / {2 * m.params() / GB:.1f} GB "
            f"| {cache_pass_peak(m, d_sae) / GB:.1f} GB | {finetune_peak(m, 4) / GB:.0f} / {finetune_peak(m, 2) / GB:.0f} GB |")
    return "\n".join(lines)


ASSUMPTIONS = f"""
Shapes (config.json): gemma-2-2b d_model 2304, d_ff 9216, 26 layers, 8 heads / 4 KV heads of 256, vocab 256,000
(tied); gemma-2-9b 3584, 14336, 42 layers, 16 / 8 heads of 256, vocab 256,000 (tied); llama-3.1-8b 4096, 14336,
32 layers, 32 / 8 heads of 128, vocab 128,256 (untied); gpt2 768, 3072, 12 layers, 12 heads of 64, vocab 50,257.
Parameters from these shapes: gemma-2-2b {GEMMA2_2B.params() / 1e9:.2f} B, gemma-2-9b {GEMMA2_9B.params() / 1e9:.2f} B,
llama-3.1-8b {LLAMA31_8B.params() / 1e9:.2f} B, gpt2 {GPT2_SMALL.params() / 1e6:.0f} M.
Cache: {cache_bytes_per_sample(GEMMA2_2B)} B per Gemma-2-2B sample (top_k {TOP_K}; the SAE's width does not
change it), plus the shard's metadata (ids, row hashes, row fields: ~0.1-0.3 kB per sample).
LoRA fine-tune: batch {BATCH} x {SEQ} tokens, rank {LORA_R} on q/k/v/o/gate/up/down of every layer
(gemma-2-2b {GEMMA2_2B.lora_params() / 1e6:.1f} M, gemma-2-9b {GEMMA2_9B.lora_params() / 1e6:.1f} M trainable), LoRA
weights fp32 with gradients and two AdamW moments; no gradient checkpointing (geomfilter does not enable it);
activations kept for backward ~= (10 d_model + q/k/v + 2 q + 4 d_ff) per token and layer, plus 3 rows of
attention scores per head for Gemma 2's eager attention; the LM head on all {BATCH * SEQ} positions (an upper
bound: geomfilter computes it on response positions only) with an fp32 copy, log-softmax and gradient; 1 GB of
CUDA context. `fp32` is what `geomfilter finetune` and the experiment load today; `bf16` is what the same run
would take with weights and activations in bf16 (FinetuneConfig has no dtype setting yet). Estimates, +-20 %.
"""


if __name__ == "__main__":
    print(table())
    print(ASSUMPTIONS.strip())
