"""Generate the SAE training corpus: the default model's own answers to the project's prompts.

    python scripts/build_sae_corpus.py            # all prompts, seed 0 (resumable)
    python scripts/build_sae_corpus.py --limit 64 # a quick look

Reads ``data/sae_corpus/prompts_*.jsonl`` (2,160 prompts written by the project over 24 topics),
renders each with the model's chat template (its ``system`` turn when the row has one), samples
an answer from the embedded default model (SmolLM2-135M-Instruct) and appends it to
``data/sae_corpus/generations.jsonl`` as an OpenAI-``messages`` row::

    {"id": "gen-<prompt id>", "prompt_id": ..., "topic": ..., "finish": "stop"|"length",
     "n_new_tokens": ..., "messages": [{"role": "system"?...}, {"role": "user"...}, {"role": "assistant"...}]}

Deterministic for a given seed: prompts are batched in a fixed order (sorted by prompt length,
then id) and every batch samples under its own seed (``seed * 100003 + batch index``), so a
killed run resumes (finished batches are skipped) and produces the same rows. Answers that come
back empty are written to ``generations.rejects.jsonl`` with the reason, never silently dropped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from geomfilter import DEFAULT_MODEL
from geomfilter.models import load_model

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "sae_corpus"


def read_prompts(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("prompts_*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                for key in ("id", "topic", "prompt"):
                    if not isinstance(row.get(key), str) or not row[key].strip():
                        raise ValueError(f"{path}:{n}: field {key!r} must be a non-empty string")
                rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no prompts_*.jsonl under {folder}")
    return rows


def messages_of(row: dict) -> list[dict]:
    msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return msgs + [{"role": "user", "content": row["prompt"]}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=CORPUS / "generations.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts (in batching order)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    model = load_model(args.model, device=args.device)
    tok, hf = model.tokenizer, model.hf_model
    tok.padding_side = "left"
    prompts = read_prompts(args.prompts)
    texts = {r["id"]: tok.apply_chat_template(messages_of(r), tokenize=False, add_generation_prompt=True) for r in prompts}
    lengths = {i: len(tok(t, add_special_tokens=False)["input_ids"]) for i, t in texts.items()}
    order = sorted(prompts, key=lambda r: (lengths[r["id"]], r["id"]))[: args.limit]
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    rejects_path = args.out.with_suffix(".rejects.jsonl")
    done = set()
    for path in (args.out, rejects_path):
        if path.is_file():
            done |= {json.loads(x)["prompt_id"] for x in path.read_text(encoding="utf-8").splitlines() if x.strip()}
    todo = [(b, batch) for b, batch in enumerate(batches) if not all(r["id"] in done for r in batch)]
    print(f"{len(order)} prompts in {len(batches)} batches; {len(batches) - len(todo)} batches already done -> {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_new, n_rej = time.perf_counter(), 0, 0
    with open(args.out, "a", encoding="utf-8") as out, open(rejects_path, "a", encoding="utf-8") as rej:
        bar = tqdm(todo, unit="batch", desc="generate", dynamic_ncols=True)
        for b, batch in bar:
            batch = [r for r in batch if r["id"] not in done]
            enc = tok([texts[r["id"]] for r in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(args.seed * 100003 + b)
            with torch.no_grad():
                gen = hf.generate(**enc, do_sample=True, temperature=args.temperature, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for r, ids in zip(batch, new):
                ids = ids.tolist()
                stop = tok.eos_token_id in ids
                ids = ids[: ids.index(tok.eos_token_id)] if stop else ids
                answer = tok.decode(ids, skip_special_tokens=True).strip()
                row = {"id": f"gen-{r['id']}", "prompt_id": r["id"], "topic": r["topic"],
                       "finish": "stop" if stop else "length", "n_new_tokens": len(ids)}
                if not answer:
                    rej.write(json.dumps({**row, "reason": "empty answer"}, ensure_ascii=False) + "\n")
                    n_rej += 1
                    continue
                row["messages"] = messages_of(r) + [{"role": "assistant", "content": answer}]
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n_new += len(ids)
            out.flush()
            rej.flush()
            bar.set_postfix(new_tok_s=f"{n_new / (time.perf_counter() - t0):.0f}")
    print(f"generated {n_new} answer tokens in {time.perf_counter() - t0:.0f} s; {n_rej} empty answers -> {rejects_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
