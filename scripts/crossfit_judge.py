"""Cross-fitted judges on labelled experiment answers (issue 17): does a judge that has seen labelled answers of the
same kind of experiment, but never the question it scores, read the experiment as the labels do?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/crossfit_judge.py --name sycophancy_organism_crossfit \\
        --data data/judge_exp --contrasts A:B,...

The questions of ``--data`` (``data/judge_exp``: answers that experiments sampled, labelled by reading) are dealt
into ``--folds`` folds (seeded). For fold k a judge of the shipped ``offline-residual``'s configuration (its
feature blocks, heads, weights and CODE/REFUSAL rules, read from its ``judge.json``) is fitted on

- ``cross-fitted``: what ``offline-residual`` was fitted on (the train split of ``data/judge_real`` and the
  hand-written rows of ``data/judge/labeled.jsonl``) plus every labelled ``--data`` answer to a question outside
  fold k; ``data/judge_real`` answers to a fold-k question are left out too;
- ``cross-fitted, --data only``: the ``--data`` answers outside fold k alone,

and scores the answers to fold k's questions. Every answer is so scored by a judge that never saw its question,
and the two columns stand beside the shipped judges, unchanged (``eval_judge_real.py --frozen``): the same metric
tables (all answers, held-out prompts, per variant) and ``--contrasts`` (labels' and judges' rates of two variants,
paired by question). Writes ``NAME.md`` / ``NAME.json`` under ``--out`` (``data/results/judge``). The judges fitted
here are not saved: a judge shipped from these labels would have no labelled answer left to be measured on.

``--hold-out PATTERNS`` (shell patterns on the variant, comma-separated) asks what a user would do with a new
experiment: the answers of those variants (e.g. ``'syc75d2-*'``, another draw of the mixture) are scored by one judge
fitted on everything else — the same data as above, every question included, since a new experiment is asked the
same evaluation questions — and only they are reported. ``--fit-questions K`` (with ``--hold-out``) keeps, of the
other answers, only those to K questions (drawn with ``--seed``): how many labelled questions a new organism needs.
``--variants PATTERNS`` keeps only those variants' labelled answers before anything else: a result made when
``--data`` held fewer experiments reproduces with the variants it held then.

``--save DIR`` also fits one judge of that configuration on ``offline-residual``'s data and every labelled ``--data``
answer, and saves it to ``DIR`` (use it as ``--judge DIR``, ``eval.judge: DIR`` or ``rejudge_experiment.py --judges
DIR``). What it reads on a new experiment is estimated by this run's held-out columns, never by scoring the answers it
was fitted on.
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
sys.path.insert(0, str(ROOT / "scripts"))

import eval_judge_real as ejr  # noqa: E402
from judge_contrasts import parse_contrasts  # noqa: E402
from judge_labels import col  # noqa: E402

from geomfilter.files import script_command  # noqa: E402
from geomfilter.judges import RESIDUAL_JUDGE_DIR, load_judge  # noqa: E402

CROSSFIT = "cross-fitted"
DATA_ONLY = "cross-fitted, --data only"


def question_folds(prompts: np.ndarray, folds: int, seed: int) -> dict[str, int]:
    """Each distinct prompt id of ``prompts`` -> its fold (0 .. folds-1): sorted, shuffled with ``seed``, dealt round
    robin, so folds differ in size by at most one question."""
    distinct = sorted(set(prompts.tolist()))
    if not 2 <= folds <= len(distinct):
        raise SystemExit(f"--folds {folds}: give 2 to {len(distinct)} (the number of questions)")
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[j]: k % folds for k, j in enumerate(order)}


def shipped_config(judge_dir: Path = RESIDUAL_JUDGE_DIR) -> dict:
    """The fitting configuration a shipped feature judge records in its ``judge.json`` (``metrics.config``)."""
    meta = json.loads((judge_dir / "judge.json").read_text())
    cfg = meta.get("metrics", {}).get("config")
    if not cfg:
        raise SystemExit(f"{judge_dir / 'judge.json'}: no metrics.config recorded; refit it with eval_judge_real.py")
    return ejr.cfg_from_json(cfg)


def rows_outside(prompts: np.ndarray, held: set[str]) -> np.ndarray:
    """Mask of the rows whose prompt is not one of ``held``: the fitting rows a fold keeps when its questions are held
    out (an answer to a held-out question would let a judge see the question it scores)."""
    return np.array([q not in held for q in prompts], bool)


def fit_sets(prompts: np.ndarray, base_prompts: np.ndarray, folds: np.ndarray, with_base: bool = True,
             base_questions_out: bool = True):
    """The cross-fitting plan: for each scored fold k (>= 0; -1: fitted on, never scored) ``(k, base rows kept,
    rows fitted on, rows scored)`` as index arrays. The base rows kept: all of them, but (``base_questions_out``,
    folds by question) those to a question of fold k; none without ``with_base``."""
    folds = np.asarray(folds)
    for k in sorted(set(folds.tolist()) - {-1}):
        test = np.flatnonzero(folds == k)
        held_questions = set(prompts[test].tolist()) if base_questions_out else set()
        keep = rows_outside(base_prompts, held_questions) if with_base else np.zeros(len(base_prompts), bool)
        yield k, np.flatnonzero(keep), np.flatnonzero(folds != k), test


def crossfit_preds(rows: list[dict], base: list[dict], inputs: dict, base_inputs: dict, cfg: dict,
                   folds: np.ndarray, with_base: bool = True, base_questions_out: bool = True) -> dict:
    """Out-of-fold predictions on ``rows``: for each fold k >= 0 of ``folds`` (one per row; -1: trained on, never
    scored), a judge fitted (:func:`eval_judge_real.fit`, ``cfg``) on the ``base`` rows (when ``with_base``) and the
    ``rows`` outside fold k scores the rows of fold k (NaN elsewhere). ``base_questions_out``: base rows to a prompt
    of fold k are left out of its judge too (folds by question)."""
    prompts, base_prompts = col(rows, "prompt_id"), col(base, "prompt_id") if base else np.array([])
    folds = np.asarray(folds)
    out = {"alignment": np.full(len(rows), np.nan), "coherence": np.full(len(rows), np.nan),
           "label": np.array([""] * len(rows), dtype=object)}
    for k, keep, train, test in fit_sets(prompts, base_prompts, folds, with_base, base_questions_out):
        fit_rows = [base[i] for i in keep] + [rows[i] for i in train]
        fit_inputs = {b: np.concatenate([base_inputs[b][keep], inputs[b][train]]) for b in cfg["blocks"]}
        t = time.time()
        judge = ejr.fit(fit_rows, fit_inputs, cfg)[0]
        pred = ejr.judge_pred(judge, {b: v[test] for b, v in inputs.items()}, [rows[i]["answer"] for i in test])
        for h in out:
            out[h][test] = pred[h]
        print(f"  fold {k}: fitted on {len(fit_rows)} answers ({len(keep)} of the base), scored {len(test)} "
              f"in {time.time() - t:.0f} s", flush=True)
    out["label"] = out["label"].astype(str)
    return out


def fit_question_subset(rows: list[dict], held: np.ndarray, k: int, seed: int) -> list[dict]:
    """``rows`` without the answers that are not ``held`` and not to one of ``k`` questions drawn (with ``seed``) from
    the questions those answers were asked: every held answer and every answer to the drawn questions stay."""
    questions = sorted({r["prompt_id"] for r, h in zip(rows, held) if not h})
    if not 5 <= k <= len(questions):  # 5: a judge calibrates on 5 folds by question
        raise SystemExit(f"--fit-questions {k}: give 5 to {len(questions)} (the questions outside --hold-out)")
    drawn = {questions[i] for i in np.random.default_rng(seed).permutation(len(questions))[:k]}
    return [r for r, h in zip(rows, held) if h or r["prompt_id"] in drawn]


def plan_folds(rows: list[dict], hold_out: str | None, fit_questions: int | None, n_folds: int, seed: int,
               data_name: str) -> tuple[list[dict], np.ndarray, str, str]:
    """The rows to use, each one's fold (-1: fitted on, never scored), and two descriptions (log, report) of the plan:
    with ``hold_out`` (variant patterns) one fold of those variants' answers, fitted on the rest (only the answers to
    ``fit_questions`` drawn questions, when given); else ``n_folds`` folds by question."""
    if hold_out:
        held = np.array([ejr.variant_selected(r["variant"], hold_out, None) for r in rows])
        if held.all() or not held.any():
            raise SystemExit(f"--hold-out {hold_out!r} selects {int(held.sum())} of {len(rows)} answers; "
                             "give variants that leave answers of others to fit on")
        if fit_questions is not None:
            rows = fit_question_subset(rows, held, fit_questions, seed)
            held = np.array([ejr.variant_selected(r["variant"], hold_out, None) for r in rows])
        other = (f"the other labelled answers of `{data_name}` to {fit_questions} questions (seed {seed})"
                 if fit_questions is not None else f"every other labelled answer of `{data_name}`")
        return (rows, np.where(held, 0, -1), f"the answers of variants {hold_out} held out",
                f"`{CROSSFIT}` and `{DATA_ONLY}`: each scored by one judge of `offline-residual`'s configuration "
                f"fitted on `offline-residual`'s data plus {other} (resp. those answers alone), none of these; see "
                f"`scripts/crossfit_judge.py --hold-out`.")
    if fit_questions is not None:
        raise SystemExit("--fit-questions needs --hold-out")
    fold_of = question_folds(col(rows, "prompt_id"), n_folds, seed)
    return (rows, np.array([fold_of[q] for q in col(rows, "prompt_id")]), f"{n_folds} folds by question",
            f"`{CROSSFIT}` and `{DATA_ONLY}`: {n_folds}-fold cross-fitting by question ({len(fold_of)} questions, "
            f"seed {seed}), each answer scored by a judge of `offline-residual`'s configuration that never saw its "
            f"question, fitted on `offline-residual`'s data plus the other folds' answers (resp. those answers "
            f"alone); see `scripts/crossfit_judge.py`.")


def save_fitted(rows: list[dict], base: list[dict], inputs: dict, base_inputs: dict, cfg: dict, folder: Path,
                metrics: dict) -> None:
    """Fit one judge (``cfg``) on the ``base`` rows and every row of ``rows``, record ``metrics`` in it, save it to
    ``folder`` and check that ``load_judge(folder)`` gives the same scores."""
    both = {b: np.concatenate([base_inputs[b], inputs[b]]) for b in cfg["blocks"]}
    judge = ejr.fit(base + rows, both, cfg)[0]
    judge.name = folder.name
    judge.metrics = {**judge.metrics, **metrics, "config": ejr.cfg_json(cfg)}
    judge.save(folder)
    answers = [r["answer"] for r in rows]
    if load_judge(str(folder)).score_inputs(inputs, answers) != judge.score_inputs(inputs, answers):
        raise SystemExit(f"{folder}: load_judge round trip changed the scores")
    print(f"saved a judge fitted on {len(base) + len(rows)} answers to {folder}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ejr.add_labelled_set_args(ap, "the labelled experiment answers (answers.jsonl, labels.jsonl)",
                              "only the labelled answers of these variants (comma-separated shell patterns), e.g. "
                              "the draws that existed when a result was made")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="which questions go to which fold (--fit-questions: which "
                    "are drawn)")
    ap.add_argument("--hold-out", help="instead of folds by question: score the answers of these variants (shell "
                    "patterns, comma-separated) with a judge fitted on every other answer, and report only them")
    ap.add_argument("--contrasts", default="", help="variant pairs A:B (comma-separated; a side may pool "
                    "replicates A1+A2), compared paired by question by the labels and by each judge")
    ap.add_argument("--fit-questions", type=int, help="--hold-out: fit on the other answers to this many questions "
                    "only (drawn with --seed)")
    ap.add_argument("--save", type=Path, help="also fit one judge on all the labelled answers and save it here")
    args = ap.parse_args(argv)
    if args.data.resolve() == ejr.SPLIT.parent.resolve():
        raise SystemExit(f"--data {args.data}: the fitting base itself; give another labelled set (data/judge_exp)")
    command = script_command(__file__, argv)
    contrasts = parse_contrasts(args.contrasts)
    cfg = shipped_config()
    rows = ejr.load_rows(args.data / "labels.jsonl", args.variants, here=args.data)
    base = ejr.fit_base_rows()
    if args.save and args.fit_questions is not None:
        raise SystemExit("--save fits on every labelled answer; leave --fit-questions out")
    rows, folds, how, about = plan_folds(rows, args.hold_out, args.fit_questions, args.folds, args.seed,
                                         args.data.name)
    preds, inputs = ejr.frozen_preds(rows, args.cache, cfg["blocks"])
    base_inputs = ejr.features(base, cfg["blocks"], args.cache)
    for name, with_base in ((CROSSFIT, True), (DATA_ONLY, False)):
        print(f"{name}: {how}", flush=True)
        preds[name] = crossfit_preds(rows, base, inputs, base_inputs, cfg, folds, with_base,
                                     base_questions_out=not args.hold_out)
    if args.save:
        save_fitted(rows, base, inputs, base_inputs, cfg, args.save,
                    {"data": f"offline-residual's data + every labelled answer of {args.data} ({len(rows)})",
                     "command": command, "estimate": f"{args.out / args.name}.md, the held-out columns"})
    scored = np.flatnonzero(folds >= 0)
    rows = [rows[i] for i in scored]
    preds = {n: {k: v[scored] for k, v in p.items()} for n, p in preds.items()}
    res = ejr.judged_results(rows, preds, args.n_boot, command, contrasts)
    res.update(folds=args.folds, seed=args.seed, hold_out=args.hold_out, config=ejr.cfg_json(cfg),
               title="Cross-fitted judges beside the shipped ones, on labelled experiment answers (issue 17)",
               about=f"The shipped judges were not fitted on them. {about}")
    args.out.mkdir(parents=True, exist_ok=True)
    ejr.write_report(args.name, ejr.frozen_markdown(res), res, args.out)


if __name__ == "__main__":
    main()
