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

import torch
from tqdm.auto import tqdm

from .models import HookedModel


@dataclass
class Prompt:
    """One prompt: the key written as ``id`` of the answer row, the chat turns, extra fields to copy."""

    id: str
    messages: list[dict]
    extra: dict


@dataclass
class GenerationResult:
    out: Path
    n_prompts: int
    n_written: int
    n_rejected: int
    n_skipped: int
    n_new_tokens: int
    seconds: float


def _done_ids(*paths: Path) -> set[str]:
    done = set()
    for path in paths:
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        done.add(json.loads(line)["id"])
                    except (json.JSONDecodeError, KeyError) as e:
                        raise ValueError(f"{path}:{n}: field 'id': cannot resume from this row ({e})") from e
    return done


def generate_answers(model: HookedModel, prompts: list[Prompt], out: str | Path, *, max_new_tokens: int = 80,
                     temperature: float = 0.7, top_p: float = 0.9, repetition_penalty: float = 1.1,
                     batch_size: int = 64, seed: int = 0, limit: int | None = None,
                     progress: bool = True) -> GenerationResult:
    """Append one answer row per prompt to ``out`` (``temperature=0``: greedy decoding).

    Row: ``{"id", **extra, "finish": "stop"|"length", "n_new_tokens", "messages": prompt + answer}``.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prompt ids must be unique; {dup!r} repeats")
    out = Path(out)
    rejects_path = out.with_suffix(".rejects.jsonl")
    tok, hf = model.tokenizer, model.hf_model
    side = tok.padding_side
    tok.padding_side = "left"
    texts = {p.id: tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts}
    lengths = {i: len(tok(t, add_special_tokens=False)["input_ids"]) for i, t in texts.items()}
    order = sorted(prompts, key=lambda p: (lengths[p.id], p.id))[:limit]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    done = _done_ids(out, rejects_path)
    todo = [(b, batch) for b, batch in enumerate(batches) if not all(p.id in done for p in batch)]
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_new, n_rej, n_written = time.perf_counter(), 0, 0, 0
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    try:
        with open(out, "a", encoding="utf-8") as fh, open(rejects_path, "a", encoding="utf-8") as rej:
            bar = tqdm(todo, unit="batch", desc="generate", dynamic_ncols=True, disable=not progress)
            for b, batch in bar:
                batch = [p for p in batch if p.id not in done]
                enc = tok([texts[p.id] for p in batch], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
                torch.manual_seed(seed * 100003 + b)
                with torch.no_grad():
                    gen = hf.generate(**enc, **sampling, repetition_penalty=repetition_penalty,
                                      max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id)
                for p, new in zip(batch, gen[:, enc["input_ids"].shape[1]:]):
                    new = new.tolist()
                    stop = tok.eos_token_id in new
                    new = new[: new.index(tok.eos_token_id)] if stop else new
                    answer = tok.decode(new, skip_special_tokens=True).strip()
                    row = {"id": p.id, **p.extra, "finish": "stop" if stop else "length", "n_new_tokens": len(new)}
                    if not answer:
                        rej.write(json.dumps({**row, "reason": "empty answer"}, ensure_ascii=False) + "\n")
                        n_rej += 1
                        continue
                    row["messages"] = p.messages + [{"role": "assistant", "content": answer}]
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n_new += len(new)
                    n_written += 1
                fh.flush()
                rej.flush()
                bar.set_postfix(new_tok_s=f"{n_new / (time.perf_counter() - t0):.0f}")
    finally:
        tok.padding_side = side
    return GenerationResult(out=out, n_prompts=len(order), n_written=n_written, n_rejected=n_rej,
                            n_skipped=len(order) - sum(len([p for p in bt if p.id not in done]) for _, bt in todo),
                            n_new_tokens=n_new, seconds=time.perf_counter() - t0)


def prompts_of_samples(samples: list) -> list[Prompt]:
    """The prompt of each chat sample: every turn before its last assistant turn; the answer row keeps its id."""
    out = []
    for s in samples:
        last = max(i for i, m in enumerate(s.messages) if m["role"] == "assistant")
        out.append(Prompt(id=s.id, messages=[dict(m) for m in s.messages[:last]], extra={}))
    return out
