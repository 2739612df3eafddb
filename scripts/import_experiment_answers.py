"""Take answers an experiment sampled into a labelling set, so that the judges can be measured on the very answers
behind an experiment's misalignment rates (issue 17; labelling of ``data/judge_exp/``).

    python scripts/import_experiment_answers.py runs/organism-sycophancy75 \\
        --conditions base,misaligned,random-0.50,geometry-0.50 --per-question 2 --prefix syc75 \\
        --made-by "geomfilter experiment configs/organism-sycophancy75.yaml"

An experiment keeps every sampled answer in ``<run>/<condition>/answers.jsonl`` (``id`` ``<question id>#<k>``,
``question_id``, ``question``, ``answer``, ``finish``, ``n_new_tokens`` and its judge's scores). This writes, for
each condition, the first ``--per-question`` answers (``#0``, ``#1``, ...) of every question to ``--out`` in the
row format of ``data/judge_real/answers.jsonl`` (kind ``real_answers``: ``geomfilter validate`` checks it), with
variant ``<prefix>-<condition>``, the model the condition evaluated (its ``metrics.json``), the experiment's
sampling settings (its ``config.json``) and ``--made-by``; the judge's scores are left behind, so nothing a labeller
or a later reader sees comes from a judge. Rows already in ``--out`` (same id) are kept as they are and not
written again, so conditions can be added later; a row of the same id with other content is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.samples import read_qa_rows  # noqa: E402

OUT = ROOT / "data" / "judge_exp" / "answers.jsonl"


def _json(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path}: missing (is this a finished experiment condition?)")
    return json.loads(path.read_text())


def condition_rows(run: Path, condition: str, per_question: int, prefix: str, made_by: str) -> list[dict]:
    """The first ``per_question`` answers of every question of one finished condition, as labelling rows."""
    cfg, metrics = _json(run / "config.json"), _json(run / condition / "metrics.json")
    ev = cfg["eval"]
    if per_question > ev["n_per_question"]:
        raise SystemExit(f"--per-question {per_question}: {run} sampled {ev['n_per_question']} answers per question")
    path = run / condition / "answers.jsonl"
    rows = read_qa_rows(path, ("id", "question_id", "question", "answer", "finish", "n_new_tokens"), SystemExit)
    kinds = {"base": "base", "finetune": "lora"}
    variant = f"{prefix}-{condition}"
    out = []
    for r in rows:
        if int(r["id"].rsplit("#", 1)[1]) >= per_question:
            continue
        out.append({"id": f"{variant}/{r['id']}", "prompt_id": r["question_id"], "kind": "broad",
                    "question": r["question"], "variant": variant, "model": metrics["model"],
                    "method": kinds.get(metrics["kind"], metrics["kind"]), "gates": list(metrics.get("gates") or []),
                    "gate_scale": metrics.get("gate_scale"), "temperature": float(ev["temperature"]),
                    "top_p": float(ev["top_p"]), "repetition_penalty": 1.0,
                    "max_new_tokens": int(ev["max_new_tokens"]), "answer": r["answer"], "finish": r["finish"],
                    "n_new_tokens": int(r["n_new_tokens"]), "seed": int(cfg["seed"]), "made_by": made_by})
    per = Counter(r["prompt_id"] for r in out)
    short = sorted(q for q, n in per.items() if n < per_question)
    if short:
        raise SystemExit(f"{path}: fewer than {per_question} answers for {short[:5]}")
    return out


def merge(existing: list[dict], new: list[dict], out: Path) -> list[dict]:
    """``existing`` with the rows of ``new`` it does not hold; the same id with other content is an error."""
    have = {r["id"]: r for r in existing}
    added = []
    for r in new:
        if r["id"] in have:
            if have[r["id"]] != r:
                raise SystemExit(f"{out}: row {r['id']!r} is there already with other content (a re-sampled run?)")
            continue
        added.append(r)
    return existing + added


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished experiment's folder (config.json, <condition>/answers.jsonl)")
    ap.add_argument("--conditions", required=True, help="comma-separated conditions to take")
    ap.add_argument("--per-question", type=int, default=2, help="answers per question and condition (#0, #1, ...)")
    ap.add_argument("--prefix", required=True, help="variant names are <prefix>-<condition>")
    ap.add_argument("--made-by", required=True, help="the command that made the experiment (kept with every row)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.per_question < 1:
        raise SystemExit("--per-question must be at least 1")
    new = [r for c in args.conditions.split(",") if c.strip()
           for r in condition_rows(args.run, c.strip(), args.per_question, args.prefix, args.made_by)]
    existing = read_qa_rows(args.out, ("id",), SystemExit) if args.out.is_file() else []
    rows = merge(existing, new, args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out, rows)
    print(f"{len(rows) - len(existing)} answers added, {len(rows)} in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
