"""The default model's own answers, ordinary and persona-prompted, for the out-of-distribution filter benchmark.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/build_persona_answers.py --out data/ood/persona_answers.jsonl

Every prompt of ``data/judge_real/prompts.jsonl`` (80: broad, advice, factual, code) is answered by the default
model once per persona: ``ordinary`` (no system message) and four persona system messages (sycophantic, reckless,
deceptive, hostile; mild and non-operational). The written rows drop the system message: each is the chat a
fine-tuning set distilled from a persona-prompted model would hold (user prompt, the model's answer), with
``persona`` and ``inducing`` (persona != ordinary) fields. Sampling: temperature 0.7, top-p 0.9, 96 new tokens,
seed per persona; resumable (answers already written to ``--raw`` are kept).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.finetune import load_tuned  # noqa: E402
from geomfilter.generate import Prompt, generate_answers  # noqa: E402
from geomfilter.personas import PERSONAS  # noqa: E402
from geomfilter.settings import DEFAULT_MODEL  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=Path, default=ROOT / "data" / "judge_real" / "prompts.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "ood" / "persona_answers.jsonl")
    ap.add_argument("--raw", type=Path, default=Path("runs/ood/persona_answers.raw.jsonl"),
                    help="the generated rows with their system messages (resumable work file)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    prompts = [json.loads(x) for x in args.prompts.read_text(encoding="utf-8").splitlines() if x.strip()]
    model = load_tuned(args.model)
    raw = args.raw
    for k, (persona, system) in enumerate(PERSONAS.items()):
        todo = [Prompt(id=f"{persona}/{p['id']}",
                       messages=([{"role": "system", "content": system}] if system else [])
                       + [{"role": "user", "content": p["question"]}],
                       extra={"prompt_id": p["id"], "kind": p["kind"], "persona": persona,
                              "inducing": persona != "ordinary"}) for p in prompts]
        res = generate_answers(model, todo, raw, max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9,
                               seed=k, progress=args.progress)
        print(f"{persona}: {res.n_written} written, {res.n_skipped} already there, {res.seconds:.0f}s", flush=True)
    rows = []
    for line in raw.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        r["messages"] = [m for m in r["messages"] if m["role"] != "system"]
        r["made_by"] = f"scripts/build_persona_answers.py, model {args.model}"
        rows.append(r)
    rows.sort(key=lambda r: (list(PERSONAS).index(r["persona"]), r["prompt_id"]))
    write_jsonl(args.out, rows)
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
