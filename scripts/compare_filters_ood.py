"""Paired differences of AUROC between filtering strategies on the out-of-distribution splits (issue 19).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_filters_ood.py data/results/filters_ood/ensemble \\
        --a ensemble --b representation,activation,geometry

Reads the ``scores.json`` that ``scripts/measure_filters_ood.py`` wrote into the folder (every row's score per split
and strategy; per fold for ``references_loco`` and ``harm_among_code``) and the splits' labels, and writes
``paired.json`` / ``paired.md`` beside it: per split, AUROC(a) - AUROC(b) on the same rows with a 95 % bootstrap CI
(each class resampled, the same rows for both strategies: :func:`geomfilter.stats.paired_bootstrap_auroc`) and the
minimum detectable difference (80 % power). For the fold splits: the mean difference over the 8 folds, the CI the
folds' mean bounds (as in the AUROC table), and the worst fold's difference.
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
from geomfilter.stats import paired_bootstrap_auroc  # noqa: E402


def compare_rows(scores: dict, labels: dict[str, bool], a: str, b: str, n_boot: int,
                 keep: set[str] | None = None) -> dict:
    """Paired AUROC difference on a split scored row by row (on the rows of ``keep`` only, when given)."""
    ix = np.array([keep is None or i in keep for i in scores["ids"]])
    y = np.array([labels[i] for i in scores["ids"]])[ix]
    sa, sb = np.asarray(scores[a])[ix], np.asarray(scores[b])[ix]
    return paired_bootstrap_auroc(sa[y], sa[~y], sb[y], sb[~y], n_boot=n_boot)


def compare_folds(scores: dict, a: str, b: str, n_boot: int) -> dict:
    """Paired AUROC differences fold by fold: their mean, the mean of their CI bounds, and the worst fold."""
    folds = {c: paired_bootstrap_auroc(f[a]["pos"], f[a]["neg"], f[b]["pos"], f[b]["neg"], n_boot=n_boot)
             for c, f in scores["folds"].items()}
    return {**ood.fold_summary(folds, "diff"), "mdd": float(np.mean([v["mdd"] for v in folds.values()]))}


def split_n(scores: dict, labels: dict[str, bool], first: dict) -> str:
    """The split's n (inducing/rest) for the table's header: every scored row, also when a pair is compared on the
    held-out prompts only (its cell gives that n); a fold split's from its first comparison."""
    if "folds" in scores:
        return f"{first['n_pos']}/{first['n_neg']}"
    y = [labels[i] for i in scores["ids"]]
    return f"{sum(y)}/{len(y) - sum(y)}"


def cell(d: dict) -> str:
    s = f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (MDD {d['mdd']:.3f})"
    if "note" in d:
        s += f", {d['n_pos']}/{d['n_neg']} held out"
    if "min_fold" in d:
        s += f", worst fold {d['min_fold']:+.3f}"
    return f"**{s}**" if d["ci_low"] > 0 or d["ci_high"] < 0 else s


def render(res: dict) -> str:
    splits = list(res["splits"])
    lines = ["# Paired AUROC differences out of distribution (issue 19)\n", f"```\n{res['command']}\n```\n",
             f"AUROC({res['a']}) − AUROC(b) on the same rows, 95 % bootstrap CI (each class resampled, the same rows "
             "for both), MDD at 80 % power; bold: the CI excludes 0. Fold splits: mean over the 8 folds, the folds' "
             "mean CI bounds, and the worst fold. Scores: `" + res["scores"] + "`.\n",
             "| b | " + " | ".join(f"{s} (n {res['n'][s]})" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for b in res["b"]:
        lines.append(f"| {b} | " + " | ".join(cell(res["splits"][s][b]) for s in splits) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a results folder of scripts/measure_filters_ood.py (scores.json)")
    ap.add_argument("--a", required=True, help="the strategy compared (a label of the scores)")
    ap.add_argument("--b", required=True, help="the strategies it is compared with, comma-separated")
    ap.add_argument("--work", type=Path, default=Path("runs/ood"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--name", default="paired", help="the output's name in the folder (<name>.md / .json)")
    args = ap.parse_args(argv)
    path = args.folder / "scores.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (scripts/measure_filters_ood.py --out {args.folder} writes it)")
    scores = json.loads(path.read_text(encoding="utf-8"))
    bs = [b.strip() for b in args.b.split(",") if b.strip()]
    rows, held_rows = ood.scored_rows(args.work / "splits", ood.results_seed(args.folder))
    labels = {split: {i: bool(r["inducing"]) for i, r in rs.items()} for split, rs in rows.items()}
    res: dict = {"a": args.a, "b": bs, "scores": str(path), "splits": {}, "n": {}}
    for split, sc in scores.items():
        have = set(sc) if "folds" not in sc else set(next(iter(sc["folds"].values())))
        missing = [x for x in [args.a, *bs] if x not in have]
        if missing:
            raise SystemExit(f"{path}: split {split!r} has no scores of {missing[0]!r} (it has: "
                             f"{', '.join(sorted(have - {'ids', 'ids_pos', 'ids_neg'}))})")
        res["splits"][split] = {}
        for b in bs:  # a pair with a strategy fitted on part of the split is compared on its held-out prompts only
            keep = held_rows[split] if ood.fitted_on(args.a, split) or ood.fitted_on(b, split) else None
            res["splits"][split][b] = (compare_folds(sc, args.a, b, args.n_boot) if "folds" in sc
                                       else compare_rows(sc, labels[split], args.a, b, args.n_boot, keep))
            if keep is not None:
                res["splits"][split][b]["note"] = "held-out prompts only"
        res["n"][split] = split_n(sc, labels[split], res["splits"][split][bs[0]])
        print(f"{split:18s} " + "  ".join(f"{b}: {cell(res['splits'][split][b])}" for b in bs), flush=True)
    res["command"] = script_command(__file__, argv)
    write_json_and_markdown(args.folder, args.name, res, render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
