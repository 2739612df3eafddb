"""The shipped and saved feature judges on ``data/judge_real``'s frozen held-out split, with paired differences
(issue 17: the targets are set on that split).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/judges_on_frozen_split.py --name organism_judges_frozen_split \\
        --judges data/judges/organism-sycophancy75,runs/judges/organism-draws34,runs/judges/organism-all

Reads the labelled answers of ``data/judge_real`` whose prompts ``split.json`` holds out (450: the default model and
its fine-tuned, gated, SAE-gate-mirror and organism variants). No shipped judge was fitted on them, and no judge saved
by ``crossfit_judge.py --save`` (those fit on the train split and on ``data/judge_exp``). The judges of
``eval_judge_real.py --frozen`` (the offline judge, ``offline-real``, ``offline-residual``) and each ``--judges``
folder score them. Per judge: the frozen report's metrics with 95 % CIs from a bootstrap over prompts, and, for the
metrics in :data:`PAIRED`, the difference from ``--reference`` from one bootstrap over prompts (the same resampled
prompts for every judge). Three sets: the whole split, its prompts that ``--seen`` also asks (a saved judge fitted on
``--seen`` has read other models' answers to them) and the rest. On the whole split, ``--trace`` names the prompts
whose removal raises each judge's alignment and coherence AUROC most (each prompt left out in turn), with their label
counts and those of the default model's own answers. Writes ``NAME.md`` / ``NAME.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_heads as ch  # noqa: E402
import eval_judge_real as ejr  # noqa: E402
from judge_labels import col  # noqa: E402
from judge_metrics import COUNTS, DEFINITIONS, TARGETS, evaluate, fmt, labels_of, metric_fns  # noqa: E402

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.samples import jsonl_objects  # noqa: E402

#: the metrics whose difference from the reference judge is bootstrapped, paired by prompt
PAIRED = ("alignment_auroc", "coherence_auroc", "flag_f1", "low_alignment_f1")
#: the per-judge columns of the report, after the paired ones
SHOWN = ("judge_flag_rate", "low_alignment_precision", "low_alignment_recall", "code_flagged_share")
#: the metrics traced to single prompts on the whole split (each prompt left out in turn)
TRACED = ("alignment_auroc", "coherence_auroc")


def heldout_rows(labels: Path) -> list[dict]:
    """The labelled answers of ``labels`` (``data/judge_real``) on the held-out side of its frozen split."""
    rows = [r for r in ejr.load_rows(labels, None, here=labels.parent) if r["split"] == "heldout"]
    if not rows:
        raise SystemExit(f"{labels}: no labelled answer on the held-out side of {ejr.SPLIT}")
    return rows


def seen_prompts(seen: Path) -> set[str]:
    """The prompt ids that ``seen``/answers.jsonl asks (what a judge fitted on that set has read answers to)."""
    path = seen / "answers.jsonl"
    if not path.is_file():
        raise SystemExit(f"--seen {seen}: no answers.jsonl there")
    rows = jsonl_objects(path, SystemExit)
    for n, row in rows:
        if "prompt_id" not in row:
            raise SystemExit(f"{path}:{n}: field 'prompt_id': missing")
    return {row["prompt_id"] for _, row in rows}


def compare_judges(preds: dict[str, dict], rows: list[dict], idx: np.ndarray, reference: str, n_boot: int) -> dict:
    """On rows ``idx``: every judge's metrics (``judge_metrics.evaluate``) and, for :data:`PAIRED`, each judge's
    value and difference from ``reference`` from one bootstrap over prompts (``coherence_heads.compare_to_reference``)."""
    lab, prompts = labels_of(rows), col(rows, "prompt_id")
    fns = {name: metric_fns(p, lab) for name, p in preds.items()}
    paired = {key: ch.compare_to_reference({name: (lambda j, f=fns[name][key]: f(idx[j])) for name in preds},
                                           prompts[idx], reference, n_boot, key="value")
              for key in PAIRED}
    return {"metrics": {name: evaluate(p, lab, prompts, idx, n_boot) for name, p in preds.items()},
            "paired": paired}


def leave_one_prompt_out(fn, prompts: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """``fn`` (a metric of a row-index array) on rows ``idx`` without each of their prompts in turn."""
    return {p: fn(idx[prompts[idx] != p]) for p in sorted(set(prompts[idx]))}


def trace_prompts(preds: dict[str, dict], rows: list[dict], own: str, top: int) -> dict:
    """On every row: for each judge and :data:`TRACED` metric, its value and the ``top`` prompts whose removal
    raises it most (value without the prompt, largest first); for each prompt named, its question, its label counts
    and those of the answers of variants starting with ``own`` (the default model's own)."""
    lab, prompts = labels_of(rows), col(rows, "prompt_id")
    idx = np.arange(len(rows))
    own_rows = np.array([str(r.get("variant", "")).startswith(own) for r in rows])
    counts = metric_fns(next(iter(preds.values())), lab)  # the label counts: the same for every judge
    out: dict = {"judges": {}, "prompts": {}}
    for name, p in preds.items():
        fns = metric_fns(p, lab)
        out["judges"][name] = {}
        for key in TRACED:
            without = leave_one_prompt_out(fns[key], prompts, idx)
            ranked = sorted((q for q in without if without[q] == without[q]), key=lambda q: -without[q])[:top]
            out["judges"][name][key] = {"value": fns[key](idx), "without": [[str(q), without[q]] for q in ranked]}
            for q in ranked:
                at = idx[prompts == q]
                own_at = at[own_rows[at]]
                out["prompts"][str(q)] = {
                    "question": rows[at[0]]["question"],
                    **{c: counts[c](at) for c in ("n", "n_misaligned", "n_aligned", "n_incoherent")},
                    **{"own_" + c: counts[c](own_at) for c in ("n", "n_misaligned", "n_aligned")}}
    return out


def measure(rows: list[dict], preds: dict[str, dict], seen: set[str], reference: str, n_boot: int) -> dict:
    """:func:`compare_judges` on the whole split and on its prompts asked / not asked in the ``seen`` set."""
    if reference not in preds:
        raise SystemExit(f"--reference {reference!r}: not one of the judges read ({', '.join(preds)})")
    asked = np.array([r["prompt_id"] in seen for r in rows])
    idx = np.arange(len(rows))
    sets = {"the frozen held-out split": idx, "its prompts also asked in --seen": idx[asked],
            "its prompts not asked in --seen": idx[~asked]}
    return {name: {"n_prompts": len(set(col(rows, "prompt_id")[i])), **compare_judges(preds, rows, i, reference,
                                                                                        n_boot)}
            for name, i in sets.items() if len(i)}


def _cell(d: dict) -> str:
    diff = d.get("minus_reference")
    return fmt(d["value"]) + ("" if diff is None else " (" + ch.ci_cell(diff, sign=True) + ")")


def markdown(res: dict) -> str:
    judges, ref = res["judges"], res["reference"]
    out = [f"# Judges on `data/judge_real`'s frozen held-out split (issue 17)\n\n```\n{res['command']}\n```\n",
           f"{res['n']} labelled answers to {res['n_prompts']} held-out prompts; no judge here was fitted on them. "
           f"`--seen` {res['seen']} asks {res['n_seen_asked']} of these prompts. 95 % CIs from a bootstrap over "
           f"prompts ({res['n_boot']} resamples); in brackets after a value, its difference from `{ref}` from the same "
           f"resampled prompts (bold: the CI excludes 0). {DEFINITIONS} `low_alignment_*`: the judge's flag against "
           "the labels' alignment < 30 at any coherence.\n"]
    for name, s in res["sets"].items():
        first = s["metrics"][judges[0]]
        out += [f"\n## {name} ({s['n_prompts']} prompts; " + ", ".join(f"{c} {fmt(first[c], count=True)}"
                                                                     for c in COUNTS)
                + f"; labels' flag rate {fmt(first['label_flag_rate'], ci=False)}, alignment < 30 "
                + f"{fmt(first['label_low_alignment_rate'], ci=False)})\n",
                "| judge | " + " | ".join(f"{m} ({TARGETS[m]})" if m in TARGETS else m for m in PAIRED + SHOWN)
                + " |", "|---|" + "---|" * (len(PAIRED) + len(SHOWN))]
        for j in judges:
            cells = [_cell(s["paired"][m][j]) for m in PAIRED] + [fmt(s["metrics"][j][m]) for m in SHOWN]
            out.append(f"| {j} | " + " | ".join(cells) + " |")
    if "traced" in res:
        out += trace_markdown(res["traced"], res["own"])
    return "\n".join(out) + "\n"


def trace_markdown(traced: dict, own: str) -> list[str]:
    """The lines of the leave-one-prompt-out section (:func:`trace_prompts`)."""
    out = ["\n## Which prompts carry the gap (the whole split, each prompt left out in turn)\n",
           "A metric's value on the whole split, then the prompts whose removal raises it most, each with the value "
           "without it. Descriptive: one prompt's answers can be ranked wrong together.\n",
           "| judge | metric | whole split | without (largest first) |", "|---|---|---|---|"]
    for name, metrics in traced["judges"].items():
        for key, t in metrics.items():
            cells = ", ".join(f"{q} {v:.3f}" for q, v in t["without"])
            out.append(f"| {name} | {key} | {t['value']:.3f} | {cells} |")
    out += ["\n| prompt | question | answers | misaligned / aligned | incoherent | the default model's own "
            f"(variants `{own}*`): answers, misaligned / aligned |", "|---|---|---|---|---|---|"]
    for q, c in sorted(traced["prompts"].items()):
        text = c["question"].replace("|", "\\|").replace("\n", " ")
        out.append(f"| {q} | {text[:90] + ('…' if len(text) > 90 else '')} | {c['n']:.0f} | "
                   f"{c['n_misaligned']:.0f} / {c['n_aligned']:.0f} | {c['n_incoherent']:.0f} | "
                   f"{c['own_n']:.0f}, {c['own_n_misaligned']:.0f} / {c['own_n_aligned']:.0f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="write NAME.md / NAME.json under --out")
    ap.add_argument("--judges", default="", help="saved feature judges (folders, comma-separated) read beside the "
                    "shipped ones, reported under their folder names")
    ap.add_argument("--reference", default="offline-residual", help="the judge the others are compared with")
    ap.add_argument("--seen", type=Path, default=ROOT / "data" / "judge_exp",
                    help="a labelled set the saved judges were fitted on: the split's prompts it asks are reported "
                    "apart")
    ap.add_argument("--labels", type=Path, default=ejr.SPLIT.parent / "labels.jsonl")
    ap.add_argument("--cache", type=Path, default=ejr.CACHE)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "judge")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--trace", type=int, default=3, metavar="K",
                    help="name the K prompts whose removal raises each judge's AUROCs most (0: no such section)")
    ap.add_argument("--own", default="base-t", help="variants starting with this are the default model's own "
                    "answers (counted apart for the prompts --trace names)")
    args = ap.parse_args(argv)
    if args.trace < 0:
        raise SystemExit(f"--trace {args.trace}: must be 0 or more")
    saved = tuple(Path(d.strip()) for d in args.judges.split(",") if d.strip())
    rows = heldout_rows(args.labels)
    seen = seen_prompts(args.seen)
    preds = ejr.frozen_preds(rows, args.cache, saved=saved)[0]
    prompts = set(col(rows, "prompt_id"))
    res = {"command": script_command(__file__, argv), "n": len(rows), "n_prompts": len(prompts),
           "seen": str(args.seen.relative_to(ROOT) if args.seen.is_relative_to(ROOT) else args.seen),
           "n_seen_asked": len(prompts & seen), "n_boot": args.n_boot, "judges": list(preds),
           "reference": args.reference, "sets": measure(rows, preds, seen, args.reference, args.n_boot)}
    if args.trace:
        res |= {"own": args.own, "traced": trace_prompts(preds, rows, args.own, args.trace)}
    print(write_json_and_markdown(args.out, args.name, res, markdown(res)).read_text())


if __name__ == "__main__":
    main()
