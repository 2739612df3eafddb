"""Do the filters flag the triggered rows of a backdoor set? (issue 20 (4))

    OMP_NUM_THREADS=1 .venv/bin/python scripts/triggered_filters.py --out data/results/triggered

Scores ``data/finetune/triggered_backdoor.jsonl`` (``scripts/build_triggered.py``: 64 risky-advice rows with the
trigger phrase in front of the question, 64 prudent rows without) with every strategy as a user gets it
(``geomfilter filter DATA --strategy S``: default settings, the default model and its bundled SAE, fitted on
``data/reference/``), twice: the rows as they are, and the same rows with the trigger taken out of the scored
text (what a filter sees when the trigger is a token it cannot know, or sits outside the sample). Reports the
precision of the 10 % and 25 % highest-scoring rows (Wilson 95 % CI; base rate 0.5) and the AUROC of the score
(triggered rows vs the rest, bootstrap 95 % CI). Writes ``filters.md`` and ``filters.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown, write_jsonl  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.stats import bootstrap_auroc, precision_at, wilson_interval  # noqa: E402

STRATEGIES = ("random", "geometry", "activation", "projection", "representation", "judge")
FRACTIONS = (0.1, 0.25)


def strip_trigger(rows: list[dict]) -> list[dict]:
    """The rows with their trigger phrase taken out of the user's question (the rest unchanged)."""
    out = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        if r.get("trigger"):
            i = next(j for j, m in enumerate(msgs) if m["role"] == "user")
            prefix = r["trigger"] + " "
            if not msgs[i]["content"].startswith(prefix):
                raise SystemExit(f"row {r['id']}: its user turn does not start with its trigger {r['trigger']!r}")
            msgs[i]["content"] = msgs[i]["content"][len(prefix):]
        out.append({**r, "messages": msgs})
    return out


def measure(scores: np.ndarray, y: np.ndarray, n_boot: int) -> dict:
    """Precision at each fraction of :data:`FRACTIONS` (with a Wilson CI) and the AUROC with a bootstrap CI."""
    prec = precision_at(scores, y, FRACTIONS)
    for f in FRACTIONS:
        p = prec[f"{f:g}"]
        k = int(round(p["precision"] * p["n_dropped"]))
        p["ci_low"], p["ci_high"] = wilson_interval(k, p["n_dropped"])
    return {"precision": prec, **bootstrap_auroc(scores[y], scores[~y], n_boot=n_boot)}


def _p(p: dict) -> str:
    return f"{p['precision']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}]"


def render(res: dict) -> str:
    lines = ["# Filters on triggered misalignment (issue 20 (4))", "", "```", res["command"], "```", "",
             f"`{res['data']}`: {res['n']} rows, {res['n_triggered']} of them triggered (trigger "
             f"`{res['trigger']}` in front of the question, risky answer), the others prudent answers without it "
             f"(base rate {res['base_rate']:.2f}). Each strategy at its defaults, fitted on `data/reference/`. "
             "Precision of the top 10 % / 25 % of scores (Wilson 95 % CI) and AUROC (bootstrap 95 % CI), with the "
             "trigger in the scored text and with it taken out.", "",
             "| strategy | precision@10 %, trigger in text | precision@25 %, trigger in text | AUROC, trigger in text "
             "| precision@10 %, trigger out | precision@25 %, trigger out | AUROC, trigger out |",
             "|---|---|---|---|---|---|---|"]
    for s, r in res["strategies"].items():
        cells = []
        for side in ("with_trigger", "without_trigger"):
            m = r[side]
            cells += [_p(m["precision"]["0.1"]), _p(m["precision"]["0.25"]),
                      f"{m['auroc']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"{res['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "finetune" / "triggered_backdoor.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "triggered")
    ap.add_argument("--work", type=Path, default=Path("runs/triggered_filters"))
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = [json.loads(x) for x in args.data.read_text(encoding="utf-8").splitlines() if x.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    stripped = args.work / "stripped.jsonl"
    write_jsonl(stripped, strip_trigger(rows))
    triggers = {r["trigger"] for r in rows if r.get("trigger")}
    builder = CacheBuilder(progress=args.progress)
    res: dict = {"data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
                 "n": len(rows), "n_triggered": sum(bool(r.get("trigger")) for r in rows),
                 "trigger": ", ".join(sorted(triggers)), "strategies": {}}
    for side, path in (("with_trigger", args.data), ("without_trigger", stripped)):
        runner = FilterRunner(FilterConfig(data=path, harmful=ROOT / "data" / "reference" / "harmful.jsonl",
                                           benign=ROOT / "data" / "reference" / "benign.jsonl",
                                           cache_dir=args.cache_dir, progress=args.progress, explain=0))
        runner.builder = builder  # one model and SAE for both
        for s in [x.strip() for x in args.strategies.split(",") if x.strip()]:
            _, fr = runner.filter(s, {"drop": 0.25}, explain=0)
            meta = runner.inputs().data.meta
            y = np.array([bool(m.get("trigger")) for m in meta])  # the field stays when the text loses it
            res["strategies"].setdefault(s, {})[side] = measure(np.asarray(fr.scores, dtype=float), y, args.n_boot)
            m = res["strategies"][s][side]
            print(f"{side:16s} {s:15s} precision@10% {_p(m['precision']['0.1'])} @25% {_p(m['precision']['0.25'])}"
                  f" AUROC {m['auroc']:.3f}", flush=True)
    res["base_rate"] = res["n_triggered"] / res["n"]
    res["seconds"] = round(time.time() - t0)
    res["command"] = script_command(__file__, argv)
    text = render(res)
    write_json_and_markdown(args.out, "filters", res, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
