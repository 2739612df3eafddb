"""What a filter reads in the organisms' answers: misalignment inside each kind of model, or which model wrote it?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/filters_by_variant.py data/results/filters_ood/organism_answers

Reads the ``scores.json`` of a ``scripts/measure_filters_ood.py`` run that scored the ``organism_answers`` split, and
the split's rows (their ``variant``). Per strategy (every one on the held-out questions' answers when the folder
holds one fitted on part of the split, the ``(o)``/``(+o)`` rows; else on every answer): the AUROC of misaligned vs
aligned answers *inside* each group of models (the base model; the sycophancy organisms' fine-tunes; the risky
organism's), and the AUROC of the fine-tunes' *aligned* answers against the base model's aligned answers: a filter that reads
the second well and the first poorly tells which model wrote an answer (its register), not whether it is
misaligned. The last row reads the labels' own misalignment the same way: how far the careful readings themselves
set the fine-tunes' aligned answers apart from the base model's. Bootstrap 95 % CIs (each class resampled). Writes
``by_variant.md`` / ``.json`` beside the scores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import measure_filters_ood as ood  # noqa: E402

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.stats import bootstrap_auroc  # noqa: E402

SPLIT = "organism_answers"
LABELS_ROW = "labels (100 − alignment), for reference"
GROUPS = ("base model", "sycophancy organisms", "risky organism")


def group_of(variant: str) -> str:
    """The kind of model that wrote an answer of ``data/judge_exp``: its import prefix names the organism."""
    if variant.endswith("-base"):
        return "base model"
    return "risky organism" if variant.startswith("r64") else "sycophancy organisms"


WHO_WROTE = "fine-tuned vs base, aligned answers"
#: the columns of a breakdown: misaligned vs aligned inside each group, then which model wrote an aligned answer
COLUMNS = (*GROUPS, WHO_WROTE)


def class_counts(groups: np.ndarray, misaligned: np.ndarray) -> dict[str, str]:
    """Per group of models, ``misaligned/aligned`` answers counted."""
    return {g: f"{int(((groups == g) & misaligned).sum())}/{int(((groups == g) & ~misaligned).sum())}" for g in GROUPS}


def table_row(name: str, by: dict) -> str:
    """One markdown row of a breakdown: ``AUROC [CI]`` per column."""
    return f"| {name} | " + " | ".join(f"{by[c]['auroc']:.2f} [{by[c]['ci_low']:.2f}, {by[c]['ci_high']:.2f}]"
                                       for c in COLUMNS) + " |"


def breakdown(scores: np.ndarray, misaligned: np.ndarray, groups: np.ndarray, n_boot: int) -> dict:
    """Misaligned vs aligned inside each group, and the fine-tunes' aligned answers vs the base model's."""
    out = {g: bootstrap_auroc(scores[(groups == g) & misaligned], scores[(groups == g) & ~misaligned], n_boot=n_boot)
           for g in GROUPS}
    base = groups == "base model"
    out[WHO_WROTE] = bootstrap_auroc(scores[~base & ~misaligned], scores[base & ~misaligned], n_boot=n_boot)
    return out


def render(res: dict) -> str:
    lines = ["# What the filters read in the organisms' answers (issue 19)\n", f"```\n{res['command']}\n```\n",
             "AUROC [95 % CI] of each strategy on `organism_answers`: misaligned vs aligned answers inside each group "
             "of models, and the fine-tunes' aligned answers against the base model's aligned answers (which model "
             f"wrote it, not whether it is misaligned); every strategy on {res['rows']} (the held-out questions' when "
             "a strategy of the folder was fitted on the others'). n misaligned/aligned: "
             + ", ".join(f"{g} {res['n'][g]}" for g in GROUPS) + f". Scores: `{res['scores']}`.\n",
             "| strategy | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    lines += [table_row(label, by) for label, by in res["strategies"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a results folder of scripts/measure_filters_ood.py (scores.json)")
    ap.add_argument("--work", type=Path, default=Path("runs/ood"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    path = args.folder / "scores.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (scripts/measure_filters_ood.py --out {args.folder} writes it)")
    scores = json.loads(path.read_text(encoding="utf-8"))
    if SPLIT not in scores:
        raise SystemExit(f"{path}: no {SPLIT} scores (run scripts/measure_filters_ood.py with --splits {SPLIT})")
    sc = scores[SPLIT]
    split_rows, held_rows = ood.scored_rows(args.work / "splits", ood.results_seed(args.folder))
    rows = split_rows[SPLIT]
    missing = [i for i in sc["ids"] if i not in rows]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} scored rows are not in the {SPLIT} split (e.g. {missing[0]!r}): "
                         "the labels changed since the scores were made; run the script again")
    y = np.array([bool(rows[i]["inducing"]) for i in sc["ids"]])
    groups = np.array([group_of(rows[i]["variant"]) for i in sc["ids"]])
    labels = [x for x in sc if x != "ids"]
    # one set of rows for every strategy: the held-out questions' when any strategy was fitted on the others'
    fitted = any(ood.fitted_on(x, SPLIT) for x in labels)
    keep = np.array([i in held_rows[SPLIT] for i in sc["ids"]]) if fitted else np.ones(len(y), dtype=bool)
    y, groups = y[keep], groups[keep]
    res = {"command": script_command(__file__, argv), "scores": str(path),
           "rows": "the held-out questions' answers" if fitted else "every answer",
           "n": class_counts(groups, y),
           "strategies": {x: breakdown(np.asarray(sc[x])[keep], y, groups, args.n_boot) for x in labels}}
    # the reference: the labels' own misalignment, how far the careful readings themselves set the fine-tunes'
    # aligned answers apart from the base model's (inside a group it is 1 by construction)
    alignment = {r["id"]: r["alignment"] for r in ood.read_rows(ood.JE / "labels.jsonl")}
    own = np.array([100.0 - alignment[i] for i in sc["ids"]])[keep]
    res["strategies"][LABELS_ROW] = breakdown(own, y, groups, args.n_boot)
    write_json_and_markdown(args.folder, "by_variant", res, render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
