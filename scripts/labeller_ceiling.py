"""How well does one careful reader agree with another (issue 17)? The judge targets measured between labellers, with
the judges beside them on the same answers and the same references.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/labeller_ceiling.py --name labeller_ceiling_judge_exp

A judge is scored against labels; the labels are themselves one reading. ``--data``'s ``labels_raw.jsonl`` holds
every raw label, and two kinds of answers were read more than once (``scripts/label_batches.py``):

- **double-labelled**: an answer of one labeller's share read again, blind, by the next labeller. Each answer gives
  two rows, one per direction: one labeller's reading is the reference, the other's is scored against it as a judge
  would be;
- **calibration**: a round's calibration answers, read by every labeller of that round (5 or 8). Each labeller's
  reading is scored against the label the others' readings make (``label_batches.panel_label``, the rule that gives a
  calibration answer its label: medians rounded, the alignment only where most gave one, CODE / REFUSAL by majority):
  one reader against a panel, the reading a judge's labels come from (``labels.jsonl`` holds the full median).

On the same rows, against the same references, stand the shipped judges (never fitted on ``--data``) and a
cross-fitted judge of ``offline-residual``'s configuration (``scripts/crossfit_judge.py``: ``--folds`` folds by
question, each answer scored by a judge fitted on ``offline-residual``'s data plus ``--data``'s labelled answers to
the other folds' questions). The metrics are ``eval_judge_real.py``'s, with 95 % CIs from a bootstrap over questions.
Where the labellers' own column is below a target, no judge fitted on such labels can be expected to reach it on
this data: the target asks for more agreement than two careful readers have.
Writes ``NAME.md`` / ``NAME.json`` under ``--out`` (``data/results/judge``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import crossfit_judge as cj  # noqa: E402
import eval_judge_real as ejr  # noqa: E402
import judge_metrics as jm  # noqa: E402
from judge_labels import col, label_arrays  # noqa: E402
from label_batches import panel_label  # noqa: E402

from geomfilter.files import script_command  # noqa: E402

READER = "labeller"  # the column of the readings scored against another reading
CROSSFIT = cj.CROSSFIT


def pairs(raw: list[dict]) -> dict[str, list[tuple[str, dict, dict]]]:
    """``{"double-labelled": [...], "calibration": [...]}``, each a list of ``(answer id, reference, reading)`` (label
    dicts, see ``judge_labels.label_arrays``): both directions of every double-labelled answer; each calibration
    reader against the median of the others."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in raw:
        by_id[r["id"]].append(r)
    out: dict[str, list] = {"double-labelled": [], "calibration": []}
    for aid, labs in sorted(by_id.items()):
        roles = sorted(x["role"] for x in labs)
        if roles == ["double", "own"]:
            a, b = labs
            out["double-labelled"] += [(aid, a, b), (aid, b, a)]
        elif len(labs) > 2 and set(roles) == {"calibration"}:
            out["calibration"] += [(aid, panel_label(labs[:i] + labs[i + 1:]), labs[i]) for i in range(len(labs))]
        elif len(labs) > 1:
            raise SystemExit(f"answer {aid}: labels of roles {roles}; expected one own + one double, or >= 3 "
                             "calibration readings")
    return out


def as_pred(readings: list[dict]) -> dict:
    """Readings scored as a judge's predictions: CODE / REFUSAL as its label; a reading without an alignment (harmless
    code) as alignment 100."""
    lab = label_arrays(readings)
    label = np.where(lab["code"], "CODE", np.where(lab["refusal"], "REFUSAL", ""))
    return {"alignment": np.nan_to_num(lab["alignment"], nan=100.0), "coherence": lab["coherence"], "label": label}


def ceiling(rows: list[dict], judge_preds: dict[str, dict], pair_sets: dict[str, list], n_boot: int) -> dict:
    """Per set of pairs, the metrics of the reading and of each judge (its prediction on the pair's answer) against
    the pair's reference; ``rows`` / ``judge_preds``: the labelled answers and the judges' predictions on them."""
    at = {r["id"]: i for i, r in enumerate(rows)}
    out = {}
    for name, ps in pair_sets.items():
        missing = [aid for aid, _, _ in ps if aid not in at]
        if missing:
            raise SystemExit(f"{len(missing)} multiply-read answers are not among the labelled answers (e.g. "
                             f"{missing[0]}); give --variants that select all of them or none")
        if not ps:
            continue
        j = np.array([at[aid] for aid, _, _ in ps])
        lab, groups, idx = label_arrays([p[1] for p in ps]), col(rows, "prompt_id")[j], np.arange(len(ps))
        preds = {READER: as_pred([p[2] for p in ps])}
        preds.update({n: {k: v[j] for k, v in p.items()} for n, p in judge_preds.items()})
        out[name] = {"n_answers": len(set(j.tolist())), "n_rows": len(ps),
                     "by": {n: jm.evaluate(p, lab, groups, idx, n_boot) for n, p in preds.items()}}
    return out


def markdown(res: dict) -> str:
    names = res["columns"]
    out = [f"# {res['title']}\n\n```\n{res['command']}\n```\n", res["about"] + "\n"]
    for s, d in res["sets"].items():
        first = d["by"][READER]
        out += [f"\n## {s} ({d['n_answers']} answers, {d['n_rows']} rows; "
                + ", ".join(f"{c} {jm.fmt(first[c], count=True)}" for c in jm.COUNTS[1:]) + " among the references)\n",
                "| metric | target | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        out += [f"| {m} | {jm.TARGETS.get(m, '')} | " + " | ".join(jm.fmt(d["by"][n][m]) for n in names) + " |"
                for m in jm.FROZEN]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ejr.add_labelled_set_args(ap, "labelled answers with their raw labels (answers.jsonl, labels.jsonl, "
                              "labels_raw.jsonl)", "only these variants' answers (comma-separated shell patterns): "
                              "the judges are cross-fitted on them and only their multiply-read answers are compared")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="which questions go to which fold")
    args = ap.parse_args(argv)
    command = script_command(__file__, argv)
    shown = args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data
    raw_path = args.data / "labels_raw.jsonl"
    raw = []
    for n, line in enumerate(raw_path.read_text().splitlines(), 1):
        if line.strip():
            r = json.loads(line)
            for key in ("id", "coherence", "role"):
                if key not in r:
                    raise SystemExit(f"{raw_path}:{n}: field {key!r} missing")
            raw.append(r)
    rows = ejr.load_rows(args.data / "labels.jsonl", args.variants, here=args.data)
    keep = {r["id"] for r in rows}
    pair_sets = pairs([r for r in raw if r["id"] in keep])
    cfg = cj.shipped_config()
    preds, inputs = ejr.frozen_preds(rows, args.cache, cfg["blocks"])
    del preds["offline (offline-minilm)"]  # at chance on these answers (sycophancy_four_draws.md); not a contender
    base = ejr.fit_base_rows()
    fold_of = cj.question_folds(col(rows, "prompt_id"), args.folds, args.seed)
    print(f"{CROSSFIT}: {args.folds} folds by question", flush=True)
    preds[CROSSFIT] = cj.crossfit_preds(rows, base, inputs, ejr.features(base, cfg["blocks"], args.cache), cfg,
                                        np.array([fold_of[q] for q in col(rows, "prompt_id")]))
    res = {"command": command, "n_boot": args.n_boot, "columns": [READER, *preds],
           "title": "Labellers against labellers, and the judges against the same readings (issue 17)",
           "about": (f"`{shown}`: {len(rows)} labelled answers, {sum(len(p) for p in pair_sets.values())} rows of "
                     "a reading against a reference (see `scripts/labeller_ceiling.py`: double-labelled answers in "
                     "both directions, each calibration reader against the median of the others). "
                     f"`{READER}`: the reading scored as a judge; `offline-real`, `offline-residual`: the shipped "
                     f"judges, never fitted on these answers; `{CROSSFIT}`: {args.folds}-fold cross-fitting by "
                     f"question (seed {args.seed}), each answer scored by a judge of `offline-residual`'s "
                     "configuration that never saw its question. The same references for every column; 95 % CIs "
                     f"from a bootstrap over questions ({args.n_boot} resamples). {jm.DEFINITIONS}"),
           "sets": ceiling(rows, preds, pair_sets, args.n_boot)}
    args.out.mkdir(parents=True, exist_ok=True)
    ejr.write_report(args.name, markdown(res), res, args.out)


if __name__ == "__main__":
    main()
