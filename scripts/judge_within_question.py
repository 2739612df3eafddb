"""Where does a judge's agreement with the labels come from: which questions draw harmful answers, or which answer
to one question is harmful (issue 17)?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/judge_within_question.py --name judge_within_question

A judge's AUROC pools every answer, so it rewards knowing which questions draw harmful answers. A comparison of two
fine-tunes is paired by question (``judge_contrasts.py``): it reads only how answers to the *same* question differ.
For each judge this script splits its agreement with the labels' misalignment ``(100 - alignment) / 100`` into

- **between questions**: the questions' mean scores against their mean labels (slope of the judge on the labels,
  Spearman);
- **within a question**: every score and label minus its question's mean (slope, Spearman), and the AUROC of
  alignment < 30 against >= 70 inside each question with at least 3 of each, averaged;

with 95 % CIs from a bootstrap over questions, and reads each replicate's conditions against each other (for every
replicate, the pairs of ``--pairs`` it holds, paired by question) beside the labels. A slope of 1 reads a
difference at its size; a slope of 0.2 shrinks it five-fold.

A replicate is the part of a variant before its first ``-`` (the import prefix of
``scripts/import_experiment_answers.py``: ``syc75d3`` of ``syc75d3-geometry-0.50``), the condition the rest.
Judges: the shipped ``offline-residual`` (never fitted on ``--data``); ``cross-fitted``, one judge of its
configuration per replicate, fitted on its data plus every other replicate's labelled answers
(``crossfit_judge.py --hold-out``; every question seen, as for a new run of the same evaluation); and, as the
fix tried, two ridge regressions on the same feature blocks, fitted leaving the replicate out: on the labels'
misalignment as is (``ridge``) and on labels and features minus their question's mean (``ridge, within
questions``: only differences inside a question teach it). Writes ``NAME.md`` / ``NAME.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import crossfit_judge as cj  # noqa: E402
import eval_judge_real as ejr  # noqa: E402
import judge_metrics as jm  # noqa: E402
from judge_contrasts import contrast_rates, run_contrasts  # noqa: E402
from judge_labels import col  # noqa: E402

from geomfilter.files import script_command  # noqa: E402
from geomfilter.stats import cluster_bootstrap, spearman, within_group_auroc  # noqa: E402

LABELS = "labels: mean misalignment"
PAIRS = "geometry-0.50:random-0.50,geometry-0.50:misaligned,random-0.50:misaligned,misaligned:base"
FILTER_PAIRS = ("geometry-0.50:random-0.50", "geometry-0.50:misaligned", "random-0.50:misaligned")


def replicate_of(variant: str) -> str:
    return variant.split("-", 1)[0]


def condition_of(variant: str) -> str:
    return variant.split("-", 1)[1] if "-" in variant else ""


def demean(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row minus the mean of its group's rows (rows: axis 0)."""
    out = np.array(values, dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        out[m] -= out[m].mean(axis=0)
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0]) if len(x) > 2 and np.ptp(x) > 0 else float("nan")


def decomposition_fns(score: np.ndarray, label: np.ndarray, alignment: np.ndarray, groups: np.ndarray) -> dict:
    """Statistic name -> function of a row-index array. The bootstrap draws whole questions with replacement, so a
    question's rows may come twice: it then counts twice, in the question means as in the within-question values."""
    per_group = {g: n for g, n in zip(*np.unique(groups, return_counts=True))}

    def question_means(i):
        qs, inv = np.unique(groups[i], return_inverse=True)
        n = np.bincount(inv)
        times = n // np.array([per_group[q] for q in qs])  # how often the bootstrap drew each question
        return (np.repeat(np.bincount(inv, label[i]) / n, times), np.repeat(np.bincount(inv, score[i]) / n, times))

    def within(i):
        return demean(label[i], groups[i]), demean(score[i], groups[i])

    return {"between_slope": lambda i: _slope(*question_means(i)), "between_spearman": lambda i: spearman(*question_means(i)),
            "within_slope": lambda i: _slope(*within(i)), "within_spearman": lambda i: spearman(*within(i)),
            "within_auroc": within_group_auroc(score, alignment < 30, alignment >= 70, groups),
            "pooled_auroc": lambda i: jm.auroc_or_nan(score[i][alignment[i] < 30], score[i][alignment[i] >= 70])}


def decompose(score: np.ndarray, label: np.ndarray, alignment: np.ndarray, groups: np.ndarray, n_boot: int) -> dict:
    """Every statistic of :func:`decomposition_fns` on the rows with a label, CI from a bootstrap over ``groups``."""
    ok = ~np.isnan(label)
    s, y, a, g = score[ok], label[ok], alignment[ok], groups[ok]
    return {name: cluster_bootstrap(g, fn, n_boot=n_boot, seed=0)
            for name, fn in decomposition_fns(s, y, a, g).items()}


def ridge_scores(x: np.ndarray, y: np.ndarray, replicate: np.ndarray, groups: np.ndarray, within: bool,
                 alpha: float) -> np.ndarray:
    """Out-of-replicate ridge predictions of ``y`` (rows with a label fit): for each replicate, standardise on the
    others, fit (on question-demeaned features and labels when ``within``) and predict its rows."""
    from sklearn.linear_model import Ridge

    out = np.full(len(y), np.nan)
    for r in np.unique(replicate):
        test, train = replicate == r, (replicate != r) & ~np.isnan(y)
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        xs = (x - mu) / sd
        xt, yt = (demean(xs[train], groups[train]), demean(y[train], groups[train])) if within else (xs[train], y[train])
        out[test] = Ridge(alpha=alpha).fit(xt, yt).predict(xs[test])
    return out


def replicate_pairs(variants: np.ndarray, pairs: str) -> list[tuple[tuple[str], tuple[str]]]:
    """For every replicate, the ``A:B`` condition pairs of ``pairs`` it holds both sides of, as contrasts."""
    have = set(variants.tolist())
    out = []
    wanted = [p.strip().split(":") for p in pairs.split(",") if p.strip()]
    bad = [":".join(p) for p in wanted if len(p) != 2 or not all(p)]
    if bad:
        raise SystemExit(f"--pairs: give condition pairs A:B, comma-separated; got {', '.join(bad)}")
    for r in sorted({replicate_of(v) for v in have}):
        for p in wanted:
            a, b = (f"{r}-{c}" for c in p)
            if a in have and b in have:
                out.append(((a,), (b,)))
    return out


def contrast_slopes(contrasts: list[dict], judges: list[str]) -> dict:
    """Per judge, the slope (through 0) of its mean-misalignment contrasts on the labels', over the filter contrasts
    (:data:`FILTER_PAIRS`) and over all."""
    out = {}
    for j in judges:
        key = f"{j}: mean misalignment"
        for subset, keep in (("filter", lambda c: f"{condition_of(c['a'])}:{condition_of(c['b'])}" in FILTER_PAIRS),
                             ("all", lambda c: True)):
            cs = [c for c in contrasts if keep(c)]
            x = np.array([c["rates"][LABELS]["diff"]["mean"] for c in cs])
            y = np.array([c["rates"][key]["diff"]["mean"] for c in cs])
            out.setdefault(j, {})[subset] = {"slope": float(x @ y / (x @ x)) if len(x) else float("nan"), "n": len(x)}
    return out


def markdown(res: dict) -> str:
    judges = res["judges"]
    stats = ("pooled_auroc", "between_slope", "between_spearman", "within_slope", "within_spearman", "within_auroc")
    out = [f"# {res['title']}\n\n```\n{res['command']}\n```\n", res["about"] + "\n",
           "\n## Between questions and within one\n", "| judge | " + " | ".join(stats) + " |",
           "|---|" + "---|" * len(stats)]
    out += [f"| {j} | " + " | ".join(jm.fmt(res["decomposition"][j][s]) for s in stats) + " |" for j in judges]
    out += ["\n## Each replicate's conditions, paired by question (mean misalignment, a − b)\n",
            "| a − b | n questions | labels | " + " | ".join(judges) + " |", "|---|---|---|" + "---|" * len(judges)]
    for c in res["contrasts"]:
        lab = c["rates"][LABELS]["diff"]
        out.append(f"| {c['a']} − {c['b']} | {lab['n']} | {lab['mean']:+.3f} [{lab['lo']:+.3f}, {lab['hi']:+.3f}] | "
                   + " | ".join(f"{c['rates'][f'{j}: mean misalignment']['diff']['mean']:+.3f}" for j in judges) + " |")
    out += ["\n## Slope of each judge's contrasts on the labels' (through 0)\n",
            "| judge | filter contrasts | all contrasts |", "|---|---|---|"]
    out += [f"| {j} | {s['filter']['slope']:.2f} (n {s['filter']['n']}) | {s['all']['slope']:.2f} (n {s['all']['n']}) |"
            for j, s in res["slopes"].items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ejr.add_labelled_set_args(ap, "the labelled experiment answers (answers.jsonl, labels.jsonl)",
                              "only these variants' answers (comma-separated shell patterns)")
    ap.add_argument("--pairs", default=PAIRS, help="condition pairs A:B read inside every replicate that holds both")
    ap.add_argument("--alpha", type=float, default=100.0, help="the ridge regressions' penalty")
    args = ap.parse_args(argv)
    command = script_command(__file__, argv)
    shown = args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data
    rows = ejr.load_rows(args.data / "labels.jsonl", args.variants, here=args.data)
    variants, groups = col(rows, "variant"), col(rows, "prompt_id")
    replicate = np.array([replicate_of(v) for v in variants])
    if len(set(replicate)) < 2:
        raise SystemExit(f"{args.data}: answers of one replicate ({replicate[0]}); cross-fitting needs two or more")
    cfg = cj.shipped_config()
    shipped, inputs = ejr.frozen_preds(rows, args.cache, cfg["blocks"])
    base = ejr.fit_base_rows()
    fold = np.unique(replicate, return_inverse=True)[1]
    print(f"{cj.CROSSFIT}: one judge per replicate left out", flush=True)
    preds = {"offline-residual": shipped["offline-residual"],
             cj.CROSSFIT: cj.crossfit_preds(rows, base, inputs, ejr.features(base, cfg["blocks"], args.cache), cfg,
                                            fold, base_questions_out=False)}
    lab = jm.labels_of(rows)
    y = (100 - lab["alignment"]) / 100
    x = np.concatenate([inputs[b] for b in cfg["blocks"]], axis=1)
    ridges = ("ridge", "ridge, within questions")
    for name, within in zip(ridges, (False, True)):
        s = ridge_scores(x, y, replicate, groups, within, args.alpha)
        preds[name] = {"alignment": 100 - 100 * s, "coherence": np.full(len(s), 100.0),
                       "label": np.array([""] * len(s))}
    judges = list(preds)
    rates = contrast_rates(preds, lab)
    for name in ridges:  # a ridge predicts the mean misalignment only: no coherence, no CODE/REFUSAL, so no flag
        del rates[f"{name}: flag"], rates[f"{name}: alignment < 30"]
    contrasts = run_contrasts(rows, rates, replicate_pairs(variants, args.pairs), args.n_boot)
    res = {"command": command, "n_boot": args.n_boot, "n": len(rows), "judges": judges,
           "title": "A judge's agreement with the labels, between questions and within one (issue 17)",
           "about": (f"`{shown}`: {len(rows)} labelled answers, {len(set(groups))} questions, replicates "
                     f"{', '.join(sorted(set(replicate)))}. Scores and labels as mean misalignment "
                     "(`(100 - alignment) / 100`). `offline-residual`: shipped, never fitted on these answers; "
                     f"`{cj.CROSSFIT}`: its configuration fitted on its data plus the other replicates' labelled "
                     f"answers; `ridge` / `ridge, within questions`: ridge (alpha {args.alpha:g}) on the same feature "
                     "blocks, fitted on the other replicates' answers as they are / minus their question's mean. "
                     f"95 % CIs from a bootstrap over questions ({args.n_boot} resamples); see "
                     "`scripts/judge_within_question.py`."),
           "decomposition": {j: decompose((100 - p["alignment"]) / 100, y, lab["alignment"], groups, args.n_boot)
                             for j, p in preds.items()},
           "contrasts": contrasts, "slopes": contrast_slopes(contrasts, judges)}
    args.out.mkdir(parents=True, exist_ok=True)
    ejr.write_report(args.name, markdown(res), res, args.out)


if __name__ == "__main__":
    main()
