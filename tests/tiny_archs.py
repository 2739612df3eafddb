"""Tiny random instances of the real architectures and SAEs in their public release formats (issue 21).

Nothing here touches the Hugging Face hub:

* :func:`save_arch` writes a local HF model directory (``save_pretrained``) of a tiny random
  Gemma-2 (soft-capping, alternating sliding-window/global layers, GQA, ``query_pre_attn_scalar``),
  Llama-3.1 (GQA, ``rope_type: llama3``, untied head), Qwen2 (GQA, q/k/v biases, tied head) or
  GPT-2 (fused ``c_attn``, learned positions), d_model 64, 3-4 layers, with a tokenizer trained here
  (BPE, 512 tokens, on the project's own rows) that has the family's special tokens, its kind of
  pre-tokenisation (SentencePiece-style ``▁`` for Gemma, byte-level for the others) and its chat
  template (Gemma 2's refuses system turns; Llama 3.1's adds its dated system header; Qwen2's a
  default system turn; GPT-2 has none, so the README's one-line template is saved with it);
* :func:`release_sae` writes an SAE's files exactly as its release stores them on the hub
  (Gemma Scope ``params.npz``; Llama Scope ``hyperparams.json`` + ``checkpoints/final.safetensors``
  in bf16; ``gpt2-small-res-jb`` sae-lens-0.x ``cfg.json`` + ``sae_weights.safetensors`` +
  ``sparsity.safetensors``), random but shaped as the release with d_in = 64, and loads them with
  ``geomfilter.saes.load_sae("release:sae_id")`` -- sae-lens' own conversion of that release, its
  download function pointed at the local files -- then saves the result as the sae-lens folder a
  user passes as ``--sae FOLDER`` on a machine without the hub.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent / "data"
D_MODEL = 64

GEMMA2_TEMPLATE = (  # google/gemma-2-*-it
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
LLAMA3_TEMPLATE = (  # meta-llama/Llama-3.1-8B(-Instruct), without the tool-calling branches
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: 26 Jul 2024\n\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
QWEN2_TEMPLATE = (  # Qwen/Qwen2-*-Instruct
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GPT2_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"  # the README's

ARCHS = ("gemma2", "llama3", "qwen2", "gpt2")

#: per architecture: the SAE release its tests load, the sae id, and the hook that SAE reads
SAES = {
    "gemma2": ("gemma-scope-2b-pt-res-canonical", "layer_1/width_16k/canonical", "blocks.1.hook_resid_post"),
    "llama3": ("llama_scope_lxr_8x", "l1r_8x", "blocks.1.hook_resid_post"),
    "gpt2": ("gpt2-small-res-jb", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre"),
    "qwen2": (None, None, "blocks.1.hook_resid_post"),  # no Qwen2 residual release: a sae-lens TopK folder
}


def corpus_texts(n: int = 80) -> list[str]:
    """Message texts of the project's own rows (what the tiny tokenizers are trained on)."""
    texts = []
    for name in ("reference/harmful.jsonl", "reference/benign.jsonl", "finetune/mixed.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines()[:n]:
            texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def _bpe(byte_level: bool, specials: list[str], vocab: int = 512):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if byte_level:  # GPT-2, Llama 3, Qwen2
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # Gemma: SentencePiece-style, spaces normalised to "▁"
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus_texts() + ["\n", "\t"], trainer)
    return tok


def arch_tokenizer(arch: str):
    """A trained tiny tokenizer with the family's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    if arch == "gemma2":
        sp = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]  # Gemma's ids 0..3 first
        fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(False, sp), pad_token=sp[0], eos_token=sp[1],
                                       bos_token=sp[2], unk_token=sp[3], additional_special_tokens=sp[4:])
        fast.chat_template = GEMMA2_TEMPLATE
    elif arch == "llama3":  # no pad token (load_causal_lm pads with eos)
        sp = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(True, sp), bos_token=sp[0], eos_token=sp[1],
                                       additional_special_tokens=sp[2:])
        fast.chat_template = LLAMA3_TEMPLATE
    elif arch == "qwen2":
        sp = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(True, sp), pad_token=sp[0], eos_token=sp[2],
                                       additional_special_tokens=sp[1:])
        fast.chat_template = QWEN2_TEMPLATE
    elif arch == "gpt2":
        sp = ["<|endoftext|>"]
        fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(True, sp), bos_token=sp[0], eos_token=sp[0],
                                       unk_token=sp[0])
        fast.chat_template = GPT2_TEMPLATE
    else:
        raise ValueError(arch)
    return fast


def arch_model(arch: str, tok, seed: int = 0):
    """A tiny random causal LM of the architecture, shaped like the real configs scaled down."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=2 * D_MODEL, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024)
    if arch == "gemma2":  # layers alternate sliding (window 16 << the 128-token rows) and global attention
        cfg = Gemma2Config(**common, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                           attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
        model = Gemma2ForCausalLM(cfg)
    elif arch == "llama3":
        cfg = LlamaConfig(**common, num_hidden_layers=3, tie_word_embeddings=False, rms_norm_eps=1e-5,
                          rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64},
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(**common, num_hidden_layers=3, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=D_MODEL, n_layer=3, n_head=4, n_positions=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    if arch in ("gemma2", "llama3"):  # as their generation_config.json: a chat turn ends before the eos token
        end = "<end_of_turn>" if arch == "gemma2" else "<|eot_id|>"
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(end)]
    return model.eval()


def save_arch(arch: str, path: Path) -> Path:
    """Write the tiny model and its tokenizer as a local HF model directory (what ``--model DIR`` takes)."""
    tok = arch_tokenizer(arch)
    arch_model(arch, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- SAE release formats


def _weights(d_in: int, d_sae: int, seed: int) -> dict[str, np.ndarray]:
    """Random SAE weights with a useful share of latents firing on the tiny models' activations."""
    g = np.random.default_rng(seed)
    return {"W_enc": (g.standard_normal((d_in, d_sae)) / d_in**0.5).astype(np.float32),
            "W_dec": (g.standard_normal((d_sae, d_in)) * (0.5 + g.random((d_sae, 1))) / d_in**0.5).astype(np.float32),
            "b_enc": (g.standard_normal(d_sae) * 0.05).astype(np.float32),
            "b_dec": (g.standard_normal(d_in) * 0.05).astype(np.float32)}


def write_gemma_scope(hub: Path, folder: str, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``google/gemma-scope-2b-pt-res/<folder>/params.npz``: W_enc, W_dec, b_enc, b_dec, threshold (float32)."""
    w = _weights(D_MODEL, d_sae, seed)
    w["threshold"] = np.random.default_rng(seed + 1).uniform(0.0, 0.3, d_sae).astype(np.float32)
    out = hub / "google/gemma-scope-2b-pt-res" / folder
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **w)
    return w


def write_llama_scope(hub: Path, folder: str, hook: str, norm_factor: float, seed: int = 0) -> None:
    """``fnlp/Llama3_1-8B-Base-LXR-8x/<folder>/``: hyperparams.json and checkpoints/final.safetensors (bf16,
    encoder/decoder as nn.Linear weights). The average input norm makes sae-lens' two scalings agree."""
    from safetensors.torch import save_file

    d_sae = 8 * D_MODEL
    w = _weights(D_MODEL, d_sae, seed)
    out = hub / "fnlp/Llama3_1-8B-Base-LXR-8x" / folder
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    hyper = {"d_model": D_MODEL, "d_sae": d_sae, "expansion_factor": 8, "hook_point_in": hook, "hook_point_out": hook,
             "act_fn": "jumprelu", "jump_relu_threshold": 0.002, "top_k": 50, "norm_activation": "dataset-wise",
             "dataset_average_activation_norm": {"in": D_MODEL**0.5 / norm_factor, "out": D_MODEL**0.5 / norm_factor},
             "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False, "sparsity_include_decoder_norm": True,
             "model_name": "meta-llama/Llama-3.1-8B", "dtype": "torch.bfloat16"}
    (out / "hyperparams.json").write_text(json.dumps(hyper, indent=2))
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    save_file({"encoder.weight": t["W_enc"].T.contiguous().bfloat16(), "encoder.bias": t["b_enc"].bfloat16(),
               "decoder.weight": t["W_dec"].T.contiguous().bfloat16(), "decoder.bias": t["b_dec"].bfloat16()},
              str(out / "checkpoints" / "final.safetensors"))


def write_gpt2_res_jb(hub: Path, hook: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``jbloom/GPT2-Small-SAEs-Reformatted/<hook>/``: the sae-lens 0.x cfg.json (``hook_point``,
    ``dtype: torch.float32``, ...), sae_weights.safetensors and sparsity.safetensors."""
    from safetensors.torch import save_file

    d_sae = 32 * D_MODEL
    w = _weights(D_MODEL, d_sae, seed)
    out = hub / "jbloom/GPT2-Small-SAEs-Reformatted" / hook
    out.mkdir(parents=True, exist_ok=True)
    layer = int(hook.split(".")[1])
    cfg = {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer, "hook_point_head_index": None,
           "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": 128,
           "use_cached_activations": False, "d_in": D_MODEL, "n_batches_in_buffer": 128,
           "total_training_tokens": 300000000, "store_batch_size": 32, "device": "mps", "seed": 42,
           "dtype": "torch.float32", "b_dec_init_method": "geometric_median", "expansion_factor": 32,
           "from_pretrained_path": None, "l1_coefficient": 8e-05, "lr": 0.0004, "lr_scheduler_name": None,
           "lr_warm_up_steps": 5000, "train_batch_size": 4096, "use_ghost_grads": False,
           "feature_sampling_window": 1000, "dead_feature_window": 5000, "dead_feature_threshold": 1e-08,
           "log_to_wandb": True, "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5", "n_checkpoints": 10,
           "checkpoint_paths": [], "d_sae": d_sae, "tokens_per_buffer": 67108864,
           "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08"}
    (out / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: torch.from_numpy(v) for k, v in w.items()}, str(out / "sae_weights.safetensors"))
    save_file({"sparsity": torch.full((d_sae,), -3.0)}, str(out / "sparsity.safetensors"))
    return w


def local_hub(monkeypatch, hub: Path, shapes: dict | None = None) -> None:
    """Point sae-lens' release loaders at ``hub/<repo_id>/...`` instead of the Hugging Face hub.

    ``shapes``: config overrides for releases whose loader hard-codes the real model's width (Gemma
    Scope's ``d_in`` 2304 and ``width_16k``), so the release's own conversion runs at d_in = 64.
    """
    import sae_lens.loading.pretrained_sae_loaders as loaders
    import sae_lens.saes.sae as sae_module
    from huggingface_hub.utils import EntryNotFoundError

    import geomfilter.saes

    def download(repo_id, filename, subfolder=None, **_kw):
        path = hub / repo_id / (subfolder or "") / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{repo_id}/{subfolder or ''}/{filename} is not in the local hub {hub}")
        return str(path)

    overrides = sae_module.get_config_overrides
    monkeypatch.setattr(loaders, "hf_hub_download", download)
    monkeypatch.setattr(sae_module, "get_config_overrides", lambda r, i: {**overrides(r, i), **(shapes or {})})
    monkeypatch.setattr(geomfilter.saes, "_hub_unreachable_reason", lambda: None)


def release_sae(arch: str, work: Path, monkeypatch) -> tuple[Path, dict | None]:
    """The SAE of ``arch``'s release, converted by sae-lens from the release's files and saved as a folder.

    Returns the folder and the release's raw arrays (where the test checks the encoder against them).
    """
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from geomfilter.saes import load_sae

    release, sae_id, hook = SAES[arch]
    folder = work / f"sae-{arch}"
    if release is None:  # a sae-lens TopK folder, as `geomfilter train-sae` or SAE.save_model writes it
        cfg = TopKSAEConfig(d_in=D_MODEL, d_sae=8 * D_MODEL, k=16, dtype="float32", device="cpu")
        cfg.metadata.hook_name, cfg.metadata.model_name = hook, "Qwen/Qwen2-0.5B-Instruct"
        sae = TopKSAE(cfg)
        with torch.no_grad():
            for k, v in _weights(D_MODEL, 8 * D_MODEL, 3).items():
                getattr(sae, k).copy_(torch.from_numpy(v))
        sae.save_model(str(folder))
        return folder, None
    hub, raw, shapes = work / "hub", None, None
    entry = get_pretrained_saes_directory()[release]
    path = entry.saes_map[sae_id]
    if arch == "gemma2":
        raw = write_gemma_scope(hub, path, d_sae=8 * D_MODEL)
        shapes = {"d_in": D_MODEL, "d_sae": 8 * D_MODEL}
    elif arch == "llama3":
        write_llama_scope(hub, path, hook, norm_factor=entry.norm_scaling_factor[sae_id])
    else:
        raw = write_gpt2_res_jb(hub, path)
    local_hub(monkeypatch, hub, shapes)
    sae = load_sae(f"{release}:{sae_id}")  # geomfilter's path for a release spec, sae-lens' conversion
    sae.save_model(str(folder))
    return folder, raw
