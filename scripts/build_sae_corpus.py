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
from pathlib import Path

from geomfilter import DEFAULT_MODEL
from geomfilter.finetune import load_tuned
from geomfilter.generate import Prompt, generate_answers

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

    model = load_tuned(args.model, device=args.device)  # plain HF model: generation needs no hooks
    prompts = [Prompt(id=f"gen-{r['id']}", messages=messages_of(r), extra={"prompt_id": r["id"], "topic": r["topic"]})
               for r in read_prompts(args.prompts)]
    res = generate_answers(model, prompts, args.out, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, repetition_penalty=args.repetition_penalty, batch_size=args.batch_size,
                           seed=args.seed, limit=args.limit)
    print(f"{res.n_prompts} prompts: {res.n_skipped} already done, {res.n_written} answers written "
          f"({res.n_new_tokens} tokens in {res.seconds:.0f} s), {res.n_rejected} empty -> "
          f"{args.out.with_suffix('.rejects.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
