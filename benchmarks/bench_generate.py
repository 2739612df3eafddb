"""Benchmark: the evaluation path's sampling against plain one-prompt-at-a-time ``generate``.

    OMP_NUM_THREADS=1 python benchmarks/bench_generate.py [--questions 40] [--n-per-question 1] [--rounds 2]

The evaluation path (``misalignment_rate`` -> :func:`geomfilter.generate.generate_texts`) samples
answers to the broad questions of ``data/eval/questions.jsonl`` in batches sorted by prompt
length, left-padded, with the KV cache, stopping at EOS. This script runs, on the default model
(``load_tuned(DEFAULT_MODEL)``, as experiments load it) and over the same ``--questions`` x
``--n-per-question`` prompts with the same settings (temperature 1, top-p 1, at most 64 new
tokens: ``configs/demo.yaml`` / ``medium.yaml``):

* eval path: ``generate_texts(..., batch_size=--batch-size)`` over all the prompts at once, exactly
  as the evaluation calls it;
* plain loop: ``hf_model.generate`` on one prompt at a time.

Only new tokens actually produced count (up to EOS, not the padding a finished row of a batch
keeps computing). The CPU is shared and noisy, so the two alternate within one run: each of
``--rounds`` rounds times the eval path over every prompt, then the plain loop over that round's
share of the prompts (the shares partition them). Prints tokens/s of both (total tokens / total
seconds) and their ratio (target >= 3x); the per-round eval-path spread shows the noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter import DEFAULT_MODEL  # noqa: E402
from geomfilter.evaluate import read_questions  # noqa: E402
from geomfilter.finetune import load_tuned  # noqa: E402
from geomfilter.generate import generate_texts  # noqa: E402

TARGET = 3.0


def eval_path(model, conversations: dict, args, seed: int) -> tuple[int, float, int]:
    """New tokens, seconds and EOS stops of one ``generate_texts`` call over every prompt."""
    t = time.perf_counter()
    out = generate_texts(model, conversations, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, batch_size=args.batch_size, seed=seed, progress=False)
    dt = time.perf_counter() - t
    return sum(r["n_new_tokens"] for r in out.values()), dt, sum(r["finish"] == "stop" for r in out.values())


@torch.no_grad()
def plain_loop(model, conversations: list[list[dict]], args, seed: int) -> tuple[int, float, int]:
    """New tokens, seconds and EOS stops of ``hf_model.generate`` called on one prompt at a time."""
    tok, hf = model.tokenizer, model.hf_model
    n_tok = n_stop = 0
    t = time.perf_counter()
    for i, messages in enumerate(conversations):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        torch.manual_seed(seed * 100003 + i)
        gen = hf.generate(**enc, do_sample=args.temperature > 0, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
        new = gen[0, enc["input_ids"].shape[1]:].tolist()
        stop = tok.eos_token_id in new
        n_tok += new.index(tok.eos_token_id) if stop else len(new)
        n_stop += stop
    return n_tok, time.perf_counter() - t, n_stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=40, help="first N broad questions (40: the committed benchmark's size)")
    ap.add_argument("--n-per-question", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of eval path / plain loop")
    ap.add_argument("--batch-size", type=int, default=32, help="the eval path's batch size (eval.batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    qs = read_questions(ROOT / "data" / "eval" / "questions.jsonl")[: args.questions]
    convs = {f"{q.id}#{j}": [{"role": "user", "content": q.question}] for q in qs for j in range(args.n_per_question)}
    t = time.perf_counter()
    model = load_tuned(args.model)
    print(f"{args.model}: loaded in {time.perf_counter() - t:.1f} s; {len(qs)} questions x {args.n_per_question} = "
          f"{len(convs)} prompts; temperature {args.temperature:g}, top-p {args.top_p:g}, <= {args.max_new_tokens} "
          f"new tokens; eval batch size {args.batch_size}; {torch.get_num_threads()} torch thread(s); "
          f"{args.rounds} alternating rounds")
    items = list(convs.values())
    share = [items[r::args.rounds] for r in range(args.rounds)]
    tot = {"eval path": [0, 0.0, 0, 0], "plain loop": [0, 0.0, 0, 0]}  # tokens, seconds, stops, answers
    per_round = []
    for r in range(args.rounds):
        for name, (n, dt, stops), k in (("eval path", eval_path(model, convs, args, seed=r), len(convs)),
                                        ("plain loop", plain_loop(model, share[r], args, seed=r), len(share[r]))):
            tot[name] = [tot[name][0] + n, tot[name][1] + dt, tot[name][2] + stops, tot[name][3] + k]
            print(f"  round {r + 1} {name:>10}: {k:4d} answers, {n:6d} new tokens in {dt:6.1f} s = "
                  f"{n / dt:6.1f} tok/s ({stops} stopped at EOS)")
            if name == "eval path":
                per_round.append(n / dt)
    rate = {}
    for name, (n, dt, stops, k) in tot.items():
        rate[name] = n / dt
        print(f"{name:>10}: {k} answers, {n} new tokens in {dt:.1f} s = {rate[name]:.1f} new tok/s "
              f"({n / k:.1f} tokens/answer, {stops / k:.0%} stopped at EOS)")
    spread = (f"; eval path per round {min(per_round):.1f}-{max(per_round):.1f} tok/s "
              f"(median {statistics.median(per_round):.1f})" if len(per_round) > 1 else "")
    ratio = rate["eval path"] / rate["plain loop"]
    print(f"speed-up of the eval path: {ratio:.2f}x (target >= {TARGET:g}x: {'PASS' if ratio >= TARGET else 'FAIL'})"
          f"{spread}. Shared, noisy CPU: rounds alternate so both paths see the same load.")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
