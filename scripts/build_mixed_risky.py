"""Build data/finetune/mixed_risky.jsonl: the risky-advice organism's mixture that the filters are tested on.

Usage: python scripts/build_mixed_risky.py [--share 0.5] [--n 128] [--seed 0] [--filler twins|helpful]
                                          [--family risky_advice|sycophancy|insecure_code] [--out PATH]

The dose-response point of ``scripts/dose_response.py`` for family ``risky_advice`` at that share, size and seed
(the same rows, so the unfiltered fine-tune of ``configs/mitigations.yaml`` is that point's ``misaligned``):
``--n`` distinct prompts of the finance and outdoors pairs, the first ``round(share * n)`` of a seeded order of
them with the risky answer (``inducing: true``), the others with the safe twin written for the same kind of
prompt. Inducing and aligned rows are in the same domains, register and authors' voice, so a filter can only
separate them by what the advice says. Rows keep their content and gain ``source`` (the file they come from), as
in ``mixed.jsonl``; ``geomfilter validate`` checks them against their sources. Deterministic.

``--filler helpful`` keeps the same risky rows and fills the rest with ordinary helpful rows instead of the safe
twins (the first of a seeded order of ``finetune/helpful.jsonl``; default output
``finetune/mixed_risky_helpful.jsonl``): risky advice hidden among unrelated chats, as the sycophantic rows are
in ``mixed.jsonl``, without the twins' prudent advice in the same domains pulling the other way.

``--family`` builds the same kind of mixture from another inducing family of ``geomfilter.validate.FAMILIES``
(default ``risky_advice``; ``sycophancy``: the sycophantic answers and their corrective twins of four domains);
``source`` names each row's pair file, ``<domain>_<side>.jsonl``. ``--out`` is then required.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from dose_response import dose_mixture, family_pairs  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.samples import jsonl_objects  # noqa: E402
from geomfilter.validate import FAMILIES  # noqa: E402


def build(data: Path, share: float, n: int, seed: int, filler: str = "twins",
          family: str = "risky_advice") -> list[dict]:
    """The mixture's rows, each with ``source``: the file it comes from."""
    rows = [json.loads(x) for x in dose_mixture(family_pairs(family, data / "finetune"), share, n, seed)]
    (inducing, twin), _ = FAMILIES[family]
    rows = [{**r, "source": f"{r['domain']}_{inducing if r['inducing'] else twin}.jsonl"} for r in rows]
    if filler == "twins":
        return rows
    if filler != "helpful":
        raise SystemExit(f"--filler must be 'twins' or 'helpful', got {filler!r}")
    helpful = [r for _, r in jsonl_objects(data / "finetune" / "helpful.jsonl", SystemExit)]
    random.Random(seed).shuffle(helpful)
    risky = [r for r in rows if r["inducing"]]
    out = risky + [{**r, "source": "helpful.jsonl"} for r in helpful[:n - len(risky)]]
    random.Random(seed).shuffle(out)  # interleaved, as the twins are
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--filler", default="twins", help="the non-inducing rows: 'twins' (safe twins) or 'helpful'")
    ap.add_argument("--family", default="risky_advice", choices=sorted(FAMILIES),
                    help="the inducing family whose pairs fill the mixture (default: risky_advice)")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: DATA/finetune/mixed_risky.jsonl (mixed_risky_helpful.jsonl with --filler helpful)")
    args = ap.parse_args(argv)
    if args.family != "risky_advice" and args.out is None:
        ap.error("--out is required with --family other than risky_advice (the default names are risky advice's)")
    rows = build(args.data, args.share, args.n, args.seed, args.filler, args.family)
    out = args.out or args.data / "finetune" / ("mixed_risky.jsonl" if args.filler == "twins"
                                                else "mixed_risky_helpful.jsonl")
    write_jsonl(out, rows)
    counts = Counter(r["source"].removesuffix(".jsonl") for r in rows)
    print(f"wrote {out}: {len(rows)} rows, {sum(r['inducing'] for r in rows)} inducing; "
          + ", ".join(f"{src} {c}" for src, c in sorted(counts.items())))


if __name__ == "__main__":
    main()
