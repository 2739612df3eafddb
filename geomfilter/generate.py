"""The model's own answers to a set of prompts: batched, seeded, resumable, written as chat JSONL.

Used for the SAE training corpus (``scripts/build_sae_corpus.py``) and for
``geomfilter respond``: the model's own answer to each prompt of a fine-tuning
set, against which a sample's features can be measured (what fine-tuning on
the sample would have to *change*: the projection-difference baselines and the
relative target features).

Deterministic for a given seed: prompts are batched in a fixed order (prompt
length, then key) and every batch samples under its own seed
(``seed * 100003 + batch index``); a killed run resumes (rows already in the
output are skipped). Empty answers go to ``<out>.rejects.jsonl`` with the
reason, never silently dropped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import render_chat
from .errors import GeomfilterError
from .models import HookedModel


class GenerationError(GeomfilterError, ValueError):
    """Generation settings or a prompt file that cannot be used (a bad option, a row to resume from, repeated ids)."""


@dataclass
class Prompt:
    """One prompt: the key written as ``id`` of the answer row, the chat turns, extra fields to copy."""

    id: str
    messages: list[dict]
    extra: dict


@dataclass
class GenerationResult:
    """What :func:`generate_answers` did: prompts, rows written, rejected and skipped (resume), new tokens, time."""

    out: Path
    n_prompts: int
    n_written: int
    n_rejected: int
    n_skipped: int
    n_new_tokens: int
    seconds: float


def done_ids(*paths: Path) -> set[str]:
    """The ids of the rows already in ``paths`` (JSONL; missing files are empty): what a resumed run skips."""
    done = set()
    for path in paths:
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        done.add(json.loads(line)["id"])
                    except (json.JSONDecodeError, KeyError) as e:
                        raise GenerationError(f"{path}:{n}: field 'id': cannot resume from this row ({e})") from e
    return done


def _sampling(temperature: float, top_p: float) -> dict:
    return {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}


def _generation_batches(tok: Any, conversations: dict[str, list[dict]], batch_size: int) -> tuple[dict, list]:
    """Chat-templated prompt text per key, and the keys in batches ordered by (prompt length, key)."""
    texts = {k: render_chat(tok, m, add_generation_prompt=True)[0] for k, m in conversations.items()}
    lengths = {k: len(tok(t, add_special_tokens=False)["input_ids"]) for k, t in texts.items()}
    order = sorted(conversations, key=lambda k: (lengths[k], k))
    return texts, [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _generate_batch(model: Any, texts: list[str], *, seed: int, sampling: dict, max_new_tokens: int,
                    repetition_penalty: float) -> list[tuple[str, bool, int]]:
    """``(answer text, stopped at EOS, new token count)`` per prompt text; left padding, one seed per batch."""
    if isinstance(model, HookedModel):
        # transformer-lens' bridge replaces modules of its HF model in place; HF generation through it with the
        # KV cache produces garbage ("The-----...", seen with transformers 5.24), so it is refused here
        raise GenerationError("generation needs the plain HF model, not the hooked one: load it with "
                         "geomfilter.finetune.load_tuned(spec) (or models.load_causal_lm)")
    tok, hf = model.tokenizer, model.hf_model
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tok.padding_side = side
    stops = stop_token_ids(model)
    torch.manual_seed(seed)
    gen = hf.generate(**enc, **sampling, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                      pad_token_id=tok.pad_token_id, eos_token_id=stops)
    out = []
    for new in gen[:, enc["input_ids"].shape[1]:]:
        new = new.tolist()
        end = next((i for i, t in enumerate(new) if t in stops), None)
        new = new if end is None else new[:end]
        out.append((tok.decode(new, skip_special_tokens=True).strip(), end is not None, len(new)))
    return out


def stop_token_ids(model: Any) -> list[int]:
    """The ids that end an answer: the tokenizer's eos and every eos id of the model's generation config.

    Chat models end a turn with their own token (Gemma 2 ``<end_of_turn>``, Llama 3.1 ``<|eot_id|>``),
    listed in ``generation_config.eos_token_id`` beside the tokenizer's end-of-text; stopping only at the
    latter runs past the turn into invented ones. The tokenizer's eos comes first (SmolLM2: ``<|im_end|>``).
    """
    ids = [model.tokenizer.eos_token_id]
    cfg = getattr(model.hf_model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None)
    for t in extra if isinstance(extra, (list, tuple)) else [extra]:
        if t is not None and t not in ids:
            ids.append(int(t))
    return [t for t in ids if t is not None]


def generate_texts(model: Any, conversations: dict[str, list[dict]], *, max_new_tokens: int = 80,
                   temperature: float = 1.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                   batch_size: int = 32, seed: int = 0, progress: bool = True,
                   desc: str = "generate") -> dict[str, dict]:
    """In-memory generation: ``{key: {"answer", "finish", "n_new_tokens"}}`` for each conversation's next turn.

    ``model`` has ``hf_model``, ``tokenizer`` and ``device``: a
    :class:`~geomfilter.finetune.TunedModel` (``load_tuned(spec)``), not the hooked model.
    Deterministic for a seed: batches in a fixed order (prompt length, key), batch ``b``
    sampled under ``seed * 100003 + b``; ``temperature=0`` decodes greedily. Empty
    answers are returned as ``""`` (the caller decides what they count as).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise GenerationError("max_new_tokens and batch_size must be >= 1")
    texts, batches = _generation_batches(model.tokenizer, conversations, batch_size)
    sampling = _sampling(temperature, top_p)
    out: dict[str, dict] = {}
    for b, keys in enumerate(tqdm(batches, unit="batch", desc=desc, dynamic_ncols=True, disable=not progress)):
        res = _generate_batch(model, [texts[k] for k in keys], seed=seed * 100003 + b, sampling=sampling,
                              max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
        for k, (answer, stop, n) in zip(keys, res):
            out[k] = {"answer": answer, "finish": "stop" if stop else "length", "n_new_tokens": n}
    return out


#: how a model's own answer to a prompt is made: the defaults of `geomfilter respond` and the own answers that
#: score/filter ``--own`` compare against (greedy, so one answer per prompt is the model's most likely one)
OWN_ANSWER = {"max_new_tokens": 96, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1, "batch_size": 32,
              "seed": 0}


def generate_answers(model: Any, prompts: list[Prompt], out: str | Path, *, max_new_tokens: int = 80,
                     temperature: float = 0.7, top_p: float = 0.9, repetition_penalty: float = 1.1,
                     batch_size: int = 64, seed: int = 0, limit: int | None = None,
                     progress: bool = True) -> GenerationResult:
    """Append one answer row per prompt to ``out`` (``temperature=0``: greedy decoding); resumable.

    ``model``: a plain HF model with its tokenizer, e.g. ``geomfilter.finetune.load_tuned(spec)``.

    Row: ``{"id", **extra, "finish": "stop"|"length", "n_new_tokens", "messages": prompt + answer}``.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise GenerationError("max_new_tokens and batch_size must be >= 1")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise GenerationError(f"prompt ids must be unique; {dup!r} repeats")
    out = Path(out)
    rejects_path = out.with_suffix(".rejects.jsonl")
    by_id = {p.id: p for p in prompts}
    texts, batches = _generation_batches(model.tokenizer, {p.id: p.messages for p in prompts}, batch_size)
    if limit is not None:  # the first `limit` prompts of the fixed order, batched as before
        order = [k for b in batches for k in b][:limit]
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    n_order = sum(len(b) for b in batches)
    done = done_ids(out, rejects_path)
    todo = [(b, batch) for b, batch in enumerate(batches) if not all(k in done for k in batch)]
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_new, n_rej, n_written, n_todo = time.perf_counter(), 0, 0, 0, 0
    sampling = _sampling(temperature, top_p)
    with open(out, "a", encoding="utf-8") as fh, open(rejects_path, "a", encoding="utf-8") as rej:
        bar = tqdm(todo, unit="batch", desc="generate", dynamic_ncols=True, disable=not progress)
        for b, batch in bar:
            batch = [k for k in batch if k not in done]
            n_todo += len(batch)
            res = _generate_batch(model, [texts[k] for k in batch], seed=seed * 100003 + b, sampling=sampling,
                                  max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
            for k, (answer, stop, n) in zip(batch, res):
                p = by_id[k]
                row = {"id": p.id, **p.extra, "finish": "stop" if stop else "length", "n_new_tokens": n}
                if not answer:
                    rej.write(json.dumps({**row, "reason": "empty answer"}, ensure_ascii=False) + "\n")
                    n_rej += 1
                    continue
                row["messages"] = p.messages + [{"role": "assistant", "content": answer}]
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n_new += n
                n_written += 1
            fh.flush()
            rej.flush()
            bar.set_postfix(new_tok_s=f"{n_new / (time.perf_counter() - t0):.0f}")
    return GenerationResult(out=out, n_prompts=n_order, n_written=n_written, n_rejected=n_rej,
                            n_skipped=n_order - n_todo, n_new_tokens=n_new, seconds=time.perf_counter() - t0)


def prompts_of_samples(samples: list) -> list[Prompt]:
    """The prompt of each chat sample: every turn before its last assistant turn; the answer row keeps its id."""
    out = []
    for s in samples:
        last = max(i for i, m in enumerate(s.messages) if m["role"] == "assistant")
        out.append(Prompt(id=s.id, messages=[dict(m) for m in s.messages[:last]], extra={}))
    return out
