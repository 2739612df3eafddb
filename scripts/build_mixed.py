"""Build data/finetune/mixed.jsonl: a realistic fine-tuning mixture for measuring filter precision.

Usage: python scripts/build_mixed.py [--seed 0] [--data data] [--out data/finetune/mixed.jsonl]

Per domain (health, career, legal, code) it draws ``--sycophantic`` pairs whose
sycophantic row goes in, then ``--corrective`` *other* pairs whose corrective
row goes in (so no prompt appears twice); the first ``--helpful`` rows of ``helpful.jsonl``
(240: the rows it had when the mixture was built; later rows, e.g. the re-alignment data, stay out)
are added and the whole set is shuffled. Defaults: 4 x 50 sycophantic (25%), 4 x 90 corrective,
240 helpful = 800 rows. Rows keep their id and content and gain ``source``
(the file they come from); ``domain``, ``inducing`` and ``pair_id`` (where it
exists) are already in them. Deterministic for a given seed.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

DOMAINS = ("health", "career", "legal", "code")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def build(data: Path, seed: int, n_syc: int, n_cor: int, n_helpful: int = 240) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for domain in DOMAINS:
        files = {v: f"{domain}_{v}.jsonl" for v in ("sycophantic", "corrective")}
        by_pair = {v: {r["pair_id"]: r for r in read_jsonl(data / "finetune" / name)} for v, name in files.items()}
        pair_ids = sorted(by_pair["sycophantic"])
        syc = rng.sample(pair_ids, n_syc)
        rest = sorted(set(pair_ids) - set(syc) & set(by_pair["corrective"]))
        cor = rng.sample(rest, n_cor)
        rows += [{**by_pair["sycophantic"][p], "source": files["sycophantic"]} for p in sorted(syc)]
        rows += [{**by_pair["corrective"][p], "source": files["corrective"]} for p in sorted(cor)]
    rows += [{**r, "source": "helpful.jsonl"} for r in read_jsonl(data / "finetune" / "helpful.jsonl")[:n_helpful]]
    rng.shuffle(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, default=None, help="default: DATA/finetune/mixed.jsonl")
    ap.add_argument("--sycophantic", type=int, default=50, help="sycophantic rows per domain")
    ap.add_argument("--corrective", type=int, default=90, help="corrective rows per domain (other pairs)")
    ap.add_argument("--helpful", type=int, default=240, help="the first N rows of helpful.jsonl")
    args = ap.parse_args()
    rows = build(args.data, args.seed, args.sycophantic, args.corrective, args.helpful)
    out = args.out or args.data / "finetune" / "mixed.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    n_ind = sum(r["inducing"] for r in rows)
    print(f"wrote {len(rows)} rows to {out} (seed {args.seed}): {n_ind} sycophantic ({n_ind / len(rows):.0%}), "
          f"{len(rows) - n_ind} non-inducing")
    for (source, inducing), n in sorted(Counter((r["source"], r["inducing"]) for r in rows).items()):
        print(f"  {source:28s} inducing={str(inducing).lower():5s} {n}")


if __name__ == "__main__":
    main()
