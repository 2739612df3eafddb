"""Persona-prompted generations for an SAE training corpus (issue 19 (e): an SAE that has the features to find).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/build_persona_corpus.py --per-persona 300

The bundled SAE saw mostly the default model's own polite answers, so misalignment-like features may not exist
in its dictionary. This script answers ``--per-persona`` prompts of ``data/sae_corpus/prompts_*.jsonl`` under each
of the four misaligned persona system messages of ``geomfilter.personas`` (sycophantic, reckless, deceptive,
hostile): a seeded draw among the corpus prompts that have no system message of their own, disjoint across
personas, written to ``<out>/prompts_persona.jsonl`` with the persona as the row's ``system`` turn, then generated
with ``scripts/build_sae_corpus.py`` (same sampling, resumable) into ``<out>/generations.jsonl``.

The prompts are the SAE corpus's, not the out-of-distribution ``persona`` split's (``data/judge_real/
prompts.jsonl``): the split that measures the filters stays unseen by the SAE. The SAE is unsupervised, so the
persona rows carry no label into it; they only widen what its dictionary can represent.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_sae_corpus  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.personas import MISALIGNED_PERSONAS, PERSONAS  # noqa: E402


def persona_prompts(corpus: Path, per_persona: int, seed: int) -> list[dict]:
    """``per_persona`` corpus prompts (without a system turn) per misaligned persona, disjoint, seeded."""
    pool = [r for r in build_sae_corpus.read_prompts(corpus) if not r.get("system")]
    need = per_persona * len(MISALIGNED_PERSONAS)
    if need > len(pool):
        raise SystemExit(f"--per-persona {per_persona} needs {need} prompts; {corpus} has {len(pool)} without a "
                         "system turn")
    random.Random(seed).shuffle(pool)
    rows = []
    for k, persona in enumerate(MISALIGNED_PERSONAS):
        for r in pool[k * per_persona:(k + 1) * per_persona]:
            rows.append({"id": f"{persona}-{r['id']}", "topic": r["topic"], "prompt": r["prompt"],
                         "system": PERSONAS[persona]})  # the persona: the id's prefix (the prompts schema is closed)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "sae_corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "sae_corpus_persona")
    ap.add_argument("--per-persona", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts (a quick look)")
    args = ap.parse_args(argv)
    rows = persona_prompts(args.corpus, args.per_persona, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "prompts_persona.jsonl", rows)
    print(f"{len(rows)} persona prompts -> {args.out / 'prompts_persona.jsonl'}", flush=True)
    extra = ["--limit", str(args.limit)] if args.limit else []
    return build_sae_corpus.main(["--prompts", str(args.out), "--out", str(args.out / "generations.jsonl"),
                                  "--seed", str(args.seed), "--batch-size", str(args.batch_size), *extra])


if __name__ == "__main__":
    sys.exit(main())
