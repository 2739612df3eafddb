"""Is the coherence gap of the feature judge its linear head? (issue 17: coherence AUROC 0.86-0.87 against 0.90)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/coherence_heads.py --name coherence_heads

The labelled experiment answers of ``--variants`` (default: every labelled draw but the fifth, the pre-registered
hold-out of "A fifth draw read carefully", which this exploration does not read) are dealt into 5 folds by question
(``crossfit_judge.question_folds``). Each answer's coherence is scored by heads fitted on ``offline-residual``'s data
plus the other folds' answers (base answers to a held-out question left out, as ``crossfit_judge.py`` does):

- ``logistic (offline-residual's configuration)``: the shipped head (``crossfit_judge.crossfit_preds``, every block);
- ``trees, small blocks``: gradient-boosted trees on the text, drift and perplexity features (39 columns), which can
  read thresholds and interactions (a loop only in a long answer) that a linear head cannot;
- ``trees, small blocks + residual``: the same with the default model's residual block (615 columns);
- ``rank mean of logistic and trees + residual``: the two heads' ranks averaged.

Reports each head's coherence AUROC (incoherent = label coherence <= 30, as everywhere) and its difference from the
logistic head, both with 95 % bootstrap CIs over questions (the same resampled questions for both heads). Writes
``NAME.md`` / ``NAME.json`` under ``--out`` (``data/results/judge``).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import crossfit_judge as cj  # noqa: E402
import eval_judge_real as ejr  # noqa: E402
from judge_labels import col  # noqa: E402
from judge_metrics import auroc_or_nan  # noqa: E402

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.stats import cluster_bootstrap  # noqa: E402

INCOHERENT_AT = 30.0  # label coherence <= 30: incoherent (the judge tables' rule)
SMALL = ("text", "drift", "perplexity")
DRAWS_BUT_FIFTH = "syc75-*,syc75s1-*,syc75d2-*,syc75d3-*,syc75d4-*,r64-*,r64s1-*"
LOGISTIC = "logistic (offline-residual's configuration)"


def tree_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray, base_x: np.ndarray, base_y: np.ndarray,
                prompts: np.ndarray, base_prompts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(coherent) of gradient-boosted trees: fold k is scored by trees fitted on the base rows (but those
    to a fold-k question) and the other folds' rows; ``y``/``base_y`` are coherence labels (0-100)."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # training only

    out = np.full(len(y), np.nan)
    for _, keep, train, test in cj.fit_sets(prompts, base_prompts, folds):
        trees = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40,
                                               l2_regularization=1.0, max_features=0.3, random_state=seed)
        trees.fit(np.concatenate([base_x[keep], x[train]]),
                  np.concatenate([base_y[keep], y[train]]) > INCOHERENT_AT)
        out[test] = trees.predict_proba(x[test])[:, 1]
    return out


def rank_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The mean of two score vectors' ranks (ties get the mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(a) + rankdata(b)) / 2


def coherence_auroc(score: np.ndarray, incoherent: np.ndarray) -> float:
    """AUROC of ``score`` (high: coherent) for coherent against incoherent answers; NaN without both (a bootstrap
    draw of few questions may hold one class only, and is then left out)."""
    return auroc_or_nan(score[~incoherent], score[incoherent])


def compare_to_reference(metrics: dict, prompts: np.ndarray, reference: str, n_boot: int, key: str = "auroc",
                         diff_key: str = "minus_reference") -> dict[str, dict]:
    """``metrics``: head name -> a statistic as a function of a row-index array. Each head's value (``key``) and, but
    for ``reference``, its difference from the reference's (``diff_key``), with CIs from one bootstrap over questions
    (the same draws for every head)."""
    out, ref = {}, metrics[reference]
    for name, m in metrics.items():
        out[name] = {key: cluster_bootstrap(prompts, m, n_boot=n_boot, seed=0)}
        if name != reference:
            out[name][diff_key] = cluster_bootstrap(prompts, lambda j, m=m: m(j) - ref(j), n_boot=n_boot, seed=0)
    return out


def compare_heads(scores: dict[str, np.ndarray], incoherent: np.ndarray, prompts: np.ndarray, reference: str,
                  n_boot: int) -> dict[str, dict]:
    """Each head's coherence AUROC and its difference from ``reference``, with CIs from one bootstrap over questions."""
    return compare_to_reference({name: lambda j, s=s: coherence_auroc(s[j], incoherent[j]) for name, s in scores.items()},
                                prompts, reference, n_boot)


def head_row(name: str, d: dict, *extra: str) -> str:
    """A table row: the head's AUROC, its difference from the reference (empty for the reference) and ``extra`` cells."""
    diff = ci_cell(d["minus_reference"], sign=True) if "minus_reference" in d else ""
    return "| " + " | ".join([name, ci_cell(d["auroc"]), diff, *extra]) + " |"


def ci_cell(d: dict, sign: bool = False) -> str:
    """A value and its CI as a table cell (``sign``: signed, bold when the CI excludes 0): the head comparisons' cell."""
    f = "+.3f" if sign else ".3f"
    s = f"{d['value']:{f}} [{d['lo']:{f}}, {d['hi']:{f}}]"
    return f"**{s}**" if sign and (d["lo"] > 0 or d["hi"] < 0) else s


def compare_alignment(scores: dict[str, np.ndarray], alignment: np.ndarray, prompts: np.ndarray, reference: str,
                      n_boot: int, min_each: int = 3) -> dict[str, dict]:
    """Each alignment head's AUROC (label alignment < 30 against >= 70; high score: aligned), pooled and within a
    question (``stats.within_group_auroc``: questions with ``min_each`` of both), and both differences from
    ``reference``; one bootstrap over questions."""
    from geomfilter.stats import within_group_auroc

    low, high = alignment < 30, alignment >= 70  # NaN (no alignment label) is neither
    pooled = compare_to_reference({name: lambda i, s=s: auroc_or_nan(-s[i][low[i]], -s[i][high[i]])
                                   for name, s in scores.items()}, prompts, reference, n_boot)
    within = compare_to_reference({name: within_group_auroc(-s, low, high, prompts, min_each)
                                   for name, s in scores.items()}, prompts, reference, n_boot,
                                  key="within_question", diff_key="within_minus_reference")
    out = {}
    for name in scores:
        out[name] = {"auroc": pooled[name]["auroc"], "within_question": within[name]["within_question"]}
        if name != reference:
            out[name].update(minus_reference=pooled[name]["minus_reference"],
                             within_minus_reference=within[name]["within_minus_reference"])
    return out


def alignment_row(name: str, d: dict) -> str:
    """A row of the alignment table: the head's pooled AUROC, its difference from the reference, its AUROC within a
    question and that difference (:func:`compare_alignment`; the differences empty for the reference)."""
    return head_row(name, d, ci_cell(d["within_question"]),
                    ci_cell(d["within_minus_reference"], sign=True) if "within_minus_reference" in d else "")


def add_min_each_arg(ap: argparse.ArgumentParser) -> None:
    """``--min-each``: how many answers of both kinds a question needs to count in the within-question AUROC."""
    ap.add_argument("--min-each", type=int, default=3,
                    help="the within-question AUROC reads questions with at least this many of both kinds")


def markdown(res: dict) -> str:
    lines = ["# Coherence heads beside the linear one (issue 17)\n", f"```\n{res['command']}\n```\n",
             f"{res['n']} labelled answers of `{res['variants']}` ({res['n_incoherent']} incoherent: label coherence "
             f"<= {INCOHERENT_AT:g}), {res['n_questions']} questions in 5 folds; each answer scored by heads fitted on "
             "`offline-residual`'s data and the other folds' answers. 95 % CIs from a bootstrap over questions (the "
             "same draws for every head); bold: a difference whose CI excludes 0.\n",
             "| head | coherence AUROC | minus the logistic head |", "|---|---|---|"]
    lines += [head_row(name, d) for name, d in res["heads"].items()]
    return "\n".join(lines) + "\n"


@dataclass
class LabelledAnswers:
    """What a head comparison reads: the parsed options and the command line, ``offline-residual``'s configuration,
    the labelled answers (``rows``, their questions and 5 folds by question), the shipped judge's own fitting rows
    (``base``), and both sets' shipped feature blocks."""

    args: argparse.Namespace
    command: str
    cfg: dict
    rows: list[dict]
    prompts: np.ndarray
    folds: np.ndarray
    n_questions: int
    base: list[dict]
    inputs: dict
    base_inputs: dict


def labelled_answers(script: str, doc: str, argv: list[str] | None, add_args=None) -> LabelledAnswers:
    """Parse the options of a head comparison (``eval_judge_real.add_labelled_set_args``, the variants defaulting to
    every draw but the fifth; ``add_args(parser)`` adds a script's own) and load what it reads."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ejr.add_labelled_set_args(ap, "the labelled experiment answers (answers.jsonl, labels.jsonl)",
                              "only the labelled answers of these variants (comma-separated shell patterns)")
    ap.set_defaults(variants=DRAWS_BUT_FIFTH)
    if add_args:
        add_args(ap)
    args = ap.parse_args(argv)
    cfg = cj.shipped_config()
    rows = ejr.load_rows(args.data / "labels.jsonl", args.variants, here=args.data)
    base = ejr.fit_base_rows()
    prompts = col(rows, "prompt_id")
    fold_of = cj.question_folds(prompts, 5, 0)
    return LabelledAnswers(args=args, command=script_command(script, argv), cfg=cfg, rows=rows, prompts=prompts,
                           folds=np.array([fold_of[q] for q in prompts]), n_questions=len(fold_of), base=base,
                           inputs=ejr.features(rows, cfg["blocks"], args.cache),
                           base_inputs=ejr.features(base, cfg["blocks"], args.cache))


def add_hold_out_arg(ap: argparse.ArgumentParser) -> None:
    """``--hold-out``: the option of a head comparison that scores held-out variants (:func:`with_held_out`)."""
    ap.add_argument("--hold-out", help="score only the labelled answers of these variants (comma-separated shell "
                    "patterns, outside --variants), by heads fitted on every answer of --variants, instead of 5 folds "
                    "by question")


def with_held_out(la: LabelledAnswers) -> tuple[list[dict], np.ndarray, dict, str]:
    """The rows, their folds, their shipped blocks and the plan's description: 5 folds by question, or with
    ``--hold-out`` the held-out answers (fold 0) after the fitting ones (fold -1)."""
    args = la.args
    if not args.hold_out:
        return la.rows, la.folds, la.inputs, "5 folds by question, each scored by heads fitted on the other folds"
    held = ejr.load_rows(args.data / "labels.jsonl", args.hold_out, here=args.data)
    shared = {r["variant"] for r in held} & {r["variant"] for r in la.rows}
    if shared:  # load_rows refuses patterns that select nothing
        raise SystemExit(f"--hold-out {args.hold_out!r} selects answers of variants also in --variants: "
                         f"{sorted(shared)}; give variants outside --variants")
    held_inputs = ejr.features(held, la.cfg["blocks"], args.cache)
    inputs = {b: np.concatenate([la.inputs[b], held_inputs[b]]) for b in la.inputs}
    folds = np.concatenate([np.full(len(la.rows), -1), np.zeros(len(held), int)])
    return la.rows + held, folds, inputs, f"scored by heads fitted on every answer of `{args.variants}`"


def scored_set(la: LabelledAnswers, plan: str, prompts: np.ndarray, incoherent: np.ndarray) -> dict:
    """The results' first fields, what was scored: the command, ``--variants`` / ``--hold-out`` and which of them was
    scored, the plan (:func:`with_held_out`), and the scored answers' count, incoherent count and questions."""
    return {"command": la.command, "variants": la.args.variants, "hold_out": la.args.hold_out,
            "scored": la.args.hold_out or la.args.variants, "plan": plan, "n": len(prompts),
            "n_incoherent": int(incoherent.sum()), "n_questions": len(set(prompts.tolist()))}


def scored_line(res: dict) -> str:
    """The results' description of what was scored (the fields of :func:`scored_set`)."""
    return (f"{res['n']} labelled answers of `{res['scored']}` ({res['n_incoherent']} incoherent: label coherence "
            f"<= {INCOHERENT_AT:g}), {res['n_questions']} questions, {res['plan']}")


def main(argv: list[str] | None = None) -> None:
    la = labelled_answers(__file__, __doc__, argv)
    args, cfg, rows, base, folds = la.args, la.cfg, la.rows, la.base, la.folds
    inputs, base_inputs, prompts, base_prompts = la.inputs, la.base_inputs, la.prompts, col(la.base, "prompt_id")
    y, base_y = col(rows, "y_coherence").astype(float), col(base, "y_coherence").astype(float)
    t = time.time()
    scores = {LOGISTIC: cj.crossfit_preds(rows, base, inputs, base_inputs, cfg, folds)["coherence"]}
    print(f"logistic head: {time.time() - t:.0f} s", flush=True)
    for name, blocks in (("trees, small blocks", SMALL), ("trees, small blocks + residual", (*SMALL, "residual"))):
        t = time.time()
        scores[name] = tree_scores(np.concatenate([inputs[b] for b in blocks], 1), y, folds,
                                   np.concatenate([base_inputs[b] for b in blocks], 1), base_y, prompts, base_prompts)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    scores["rank mean of logistic and trees + residual"] = rank_mean(scores[LOGISTIC],
                                                                     scores["trees, small blocks + residual"])
    incoherent = y <= INCOHERENT_AT
    res = {"command": la.command, "variants": args.variants, "n": len(rows), "n_incoherent": int(incoherent.sum()),
           "n_questions": la.n_questions, "heads": compare_heads(scores, incoherent, prompts, LOGISTIC, args.n_boot)}
    md = markdown(res)
    write_json_and_markdown(args.out, args.name, res, md)
    print(md)


if __name__ == "__main__":
    main()
