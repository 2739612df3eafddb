"""Compare finished conditions of different experiments (another training setting, the same evaluation) question by
question, per replicate and pooled.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_runs.py \
        --a runs/organism-mix75-e5/misaligned runs/organism-mix75-e5-seed1/misaligned \
        --b runs/medium/misaligned runs/medium-seed1/misaligned \
        --out data/results/organism/mixture_epochs.md

An experiment compares the conditions it trained itself; a training setting that the whole experiment shares
(epochs, LoRA rank, the mixture) is compared across two experiments. The i-th ``--a`` and the i-th ``--b`` are one
replicate: conditions evaluated with the same settings and seed (their recorded evaluation identities must be equal,
so the same questions and sampling settings), trained differently. Per paired metric (``geomfilter.report.PAIRED``)
both measured: a − b within each replicate (``report.paired_comparison``: bootstrap CI over questions, n, MDD),
pooled over the replicates (a question's value its mean over them, ``report.pool_replicates``), and in how many
replicates the own CI excludes zero on the side of the pooled difference. Writes the markdown file and a ``.json``.

A side of a replicate may be several conditions joined by ``+`` (``runs/x/random-0.50+runs/x/random-0.50-draw1``):
each question's value is then their mean (``report.pool_replicates``, as the report's ``random-0.50-mean``), for a
baseline averaged over its random draws; they must have been evaluated alike.

``--judge SPEC`` reads the misalignment rate by another judge (e.g. ``offline-residual``) instead of the one each
experiment ran: every condition's sampled answers (``<condition>/answers.jsonl``) are scored by it, the scores kept
and reused beside them as ``scripts/rejudge_experiment.py`` keeps them (``<condition>/rejudged/``), so conditions that
script already judged cost nothing. The other paired metrics do not depend on the judge and are compared as they are.

``--draws 1,1,2,2,3`` names the draw of the training data each replicate was trained on (one label per replicate, in
``--a``'s order), for a filter compared on several draws of a mixture: the replicates of one draw (its seeds) are
pooled into that draw's estimate (with its CI over questions), and the draws' estimates are averaged with a Student-t
CI over them (``geomfilter.stats.t_interval``): the between-draw spread is what a claim about a new draw has to beat,
which the question-level CI of the pooled replicates leaves out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from rejudge_experiment import RATE, judged_scores, per_question, read_answers  # noqa: E402

from geomfilter.experiment import METRICS_FILE  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.judges import load_judge  # noqa: E402
from geomfilter.report import (  # noqa: E402
    COLUMNS,
    PAIRED,
    metric_records,
    paired_comparison,
    pool_replicates,
    replicated,
)
from geomfilter.stats import ci_side, t_interval  # noqa: E402


def read_condition(path: Path, judge: tuple[str, object] | None = None) -> dict:
    """A finished condition's record (``<run>/<condition>/metrics.json``); with ``judge`` (its spec and the loaded
    judge) the misalignment rate is the one that judge gives the condition's answers (:func:`rejudged_rate`)."""
    f = path / METRICS_FILE
    if not f.is_file():
        raise SystemExit(f"{path}: no {METRICS_FILE} (not a finished condition of an experiment)")
    rec = json.loads(f.read_text())
    if "eval" not in rec.get("identity", {}):
        raise SystemExit(f"{f}: no evaluation identity (written by an older geomfilter?)")
    if judge is not None:
        rec["metrics"][RATE] = rejudged_rate(path, *judge)
    return rec


def rejudged_rate(path: Path, spec: str, judge) -> dict:
    """The misalignment rate of a condition's sampled answers by ``judge`` (kept scores reused): per question the share
    of its scored answers flagged, and their mean, in the record form of ``metrics.json``."""
    rows = read_answers(path)
    per_q = per_question(rows, [s.misaligned() for s in judged_scores(path, rows, spec, judge)])
    if not per_q:
        raise SystemExit(f"{path}: the judge {spec} scored none of the {len(rows)} answers, so it gives no rate")
    record = metric_records({path.name: per_q}, RATE)[path.name]["metrics"][RATE]  # the shape report.py reads
    return {**record, "judge": spec, "mean": sum(per_q.values()) / len(per_q)}


def _check_one_replicate(pa: Path, ra: dict, pb: Path, rb: dict) -> None:
    if ra["identity"]["eval"] != rb["identity"]["eval"]:
        diff = sorted(k for k in {**ra["identity"]["eval"], **rb["identity"]["eval"]}
                      if ra["identity"]["eval"].get(k) != rb["identity"]["eval"].get(k))
        raise SystemExit(f"{pa} and {pb} were evaluated differently ({', '.join(diff)}): not one replicate")


def read_side(spec: Path, judge: tuple[str, object] | None = None) -> dict:
    """One side of a replicate: a condition's record, or for ``A+B+...`` the per-question mean of those conditions
    (their paired metrics only, each with its ``mean`` over the questions; the first one's identity)."""
    paths = [Path(p) for p in str(spec).split("+")]
    recs = [read_condition(p, judge) for p in paths]
    for p, r in zip(paths[1:], recs[1:]):
        _check_one_replicate(paths[0], recs[0], p, r)
    if len(recs) == 1:
        return recs[0]
    mean = pool_replicates([{"x": r} for r in recs])["x"]
    for m, v in mean["metrics"].items():
        values = [q[PAIRED[m]] for q in v["per_question"]]
        v["mean"] = sum(values) / len(values)
    return {**mean, "identity": recs[0]["identity"]}


def compare(a: list[Path], b: list[Path], n_boot: int, judge: str | None = None,
            draws: list[str] | None = None) -> dict:
    """a − b per replicate and pooled, for every paired metric both sides measured (the rate by ``judge``: a judge
    spec, or None for each experiment's own); with ``draws`` (a label per replicate) also per draw and between
    draws (:func:`between_draws`)."""
    if len(a) != len(b) or not a:
        raise SystemExit(f"--a and --b name one condition per replicate each: got {len(a)} and {len(b)}")
    if draws is not None and (len(draws) != len(a) or len(set(draws)) < 2):
        raise SystemExit(f"--draws names the draw of each of the {len(a)} replicates (at least two draws): "
                         f"got {','.join(draws)}")
    loaded = (judge, load_judge(judge)) if judge else None
    reps = []
    for pa, pb in zip(a, b):
        ra, rb = read_side(pa, loaded), read_side(pb, loaded)
        _check_one_replicate(pa, ra, pb, rb)
        reps.append({"a": ra, "b": rb})
    pooled = pool_replicates(reps)
    metrics = [m for m in PAIRED if all(m in r[s]["metrics"] for r in reps for s in "ab")]
    out: dict = {"a": [str(p) for p in a], "b": [str(p) for p in b], "judge": judge, "metrics": {}}
    for m in metrics:
        own = [paired_comparison(r["a"], r["b"], m, n_boot=n_boot, seed=0) for r in reps]
        p = paired_comparison(pooled["a"], pooled["b"], m, n_boot=n_boot, seed=0) if len(reps) > 1 else own[0]
        out["metrics"][m] = {"means": [[r[s]["metrics"][m]["mean"] for s in "ab"] for r in reps],
                             "replicates": own, "pooled": p, "measured_in": replicated(p, own)}
        if draws is not None:
            out["metrics"][m]["draws"] = between_draws(reps, draws, m, n_boot)
    if draws is not None:
        out["draws"] = draws
    return out


def between_draws(reps: list[dict], draws: list[str], metric: str, n_boot: int) -> dict:
    """Per draw (in order of first appearance): its replicates pooled question by question and a − b with a CI over
    the questions; between draws: the mean of those estimates with a Student-t CI over them, and how many draws'
    own CIs exclude zero on its side."""
    labels = list(dict.fromkeys(draws))
    per_draw = []
    for d in labels:
        mine = [r for r, x in zip(reps, draws) if x == d]
        pooled = pool_replicates(mine)  # one replicate pools to itself
        per_draw.append({"draw": d, "n_replicates": len(mine),
                         **paired_comparison(pooled["a"], pooled["b"], metric, n_boot=n_boot, seed=0)})
    between = t_interval([x["mean"] for x in per_draw])
    return {"per_draw": per_draw, "between": between, "measured_in": replicated(between, per_draw)}


def _ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def to_markdown(res: dict, command: str) -> str:
    k = len(res["a"])
    judge = f" (misalignment rate by the judge `{res['judge']}`)" if res.get("judge") else ""
    out = [f"# a − b, question by question{judge}\n", f"```\n{command}\n```\n",
           "| replicate | a | b |", "|---|---|---|"]
    out += [f"| {i + 1} | `{x}` | `{y}` |" for i, (x, y) in enumerate(zip(res["a"], res["b"]))]
    out += ["", "Paired over the same questions (95 % bootstrap CI, n, MDD: the smallest true difference a two-sided "
            "test at 0.05 detects with power 0.8); pooled: a question's value is its mean over the replicates; "
            "measured in: the replicates whose own CI excludes zero on the side of the pooled difference. A CI that "
            "covers 0 is **no effect measured**.\n",
            "| metric | " + " | ".join(f"replicate {i + 1}: a, b, a − b" for i in range(k))
            + " | pooled a − b, n, MDD | measured in |", "|---" * (k + 3) + "|"]
    for m, d in res["metrics"].items():
        cells = [f"{ma:.3f}, {mb:.3f}, {_ci(x)}" for (ma, mb), x in zip(d["means"], d["replicates"])]
        p = d["pooled"]
        verdict = "" if ci_side(p) else " (no effect measured)"
        out.append(f"| {COLUMNS[m][0]} | " + " | ".join(cells)
                   + f" | {_ci(p)}, {p['n']}, {p['mdd']:.3f}{verdict} | {d['measured_in']} of {k} |")
    if res.get("draws"):
        out += _draw_lines(res)
    return "\n".join(out) + "\n"


def _draw_lines(res: dict) -> list[str]:
    labels = [x["draw"] for x in next(iter(res["metrics"].values()))["draws"]["per_draw"]]
    out = ["", "By draw of the training data (`--draws`): each draw's replicates pooled question by question (95 % "
           "bootstrap CI over the questions); between draws: the mean of the draws' estimates with a Student-t 95 % CI "
           "over them (k − 1 degrees of freedom), the uncertainty a claim about a new draw carries; measured in: the "
           "draws whose own CI excludes zero on the side of that mean.\n",
           "| metric | " + " | ".join(f"draw {d}" for d in labels) + " | between draws: mean [t CI], k | measured in |",
           "|---" * (len(labels) + 3) + "|"]
    for m, d in res["metrics"].items():
        b = d["draws"]["between"]
        cells = [f"{_ci(x)} ({x['n_replicates']} rep.)" for x in d["draws"]["per_draw"]]
        verdict = "" if ci_side(b) else " (no effect measured)"
        out.append(f"| {COLUMNS[m][0]} | " + " | ".join(cells) + f" | {_ci(b)}, {b['k']}{verdict} | "
                   f"{d['draws']['measured_in']} of {len(labels)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, nargs="+", required=True,
                    help="one condition folder per replicate (A+B: the per-question mean of A and B)")
    ap.add_argument("--b", type=Path, nargs="+", required=True,
                    help="the same replicates' other conditions (A+B as for --a)")
    ap.add_argument("--out", type=Path, required=True, help="markdown file (a .json beside it)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--judge", default=None, help="read the misalignment rate by this judge (e.g. offline-residual) "
                    "from the conditions' answers, instead of each experiment's own judge")
    ap.add_argument("--draws", default=None, help="the draw of the training data of each replicate, comma-separated "
                    "in --a's order (e.g. 1,1,2,2,3): adds each draw's estimate and the mean between draws with a "
                    "Student-t CI over them")
    args = ap.parse_args(argv)
    command = script_command(__file__, argv)
    draws = [x.strip() for x in args.draws.split(",")] if args.draws else None
    res = compare(args.a, args.b, args.n_boot, args.judge, draws)
    md = to_markdown(res, command)
    write_json_and_markdown(args.out.parent, args.out.stem, {"command": command, **res}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
