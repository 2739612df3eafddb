"""Power analysis of an experiment's judged misalignment rate: which eval size detects a given difference.

Usage: python scripts/power_analysis.py [EXPERIMENT_DIR] [--effect 0.08] [--power 0.8] [--level 0.95]
                                        [--pair A B ...] [--from-ci] [--n-sim 1000]
       (default: data/results/experiment/medium; prints markdown)

The misalignment rate of a condition is the mean over questions of each question's rate over its
``n_per_question`` sampled answers, and conditions are compared by the paired difference over the
same questions (``stats.paired_bootstrap``, what ``report.md`` shows). Its minimum detectable
difference (MDD, two-sided, ``--power`` at ``1 - --level``) at another number of questions ``n``
and answers per question ``k`` follows from two variance components of the per-question
difference (``stats.design_mdd``): ``tau^2``, how much the true difference varies between
questions (more answers cannot shrink it), and the binomial variance of single answers
(``stats.rate_within_variance`` of both conditions), which shrinks as ``1 / k``.

The components come from the experiment folder: the per-question rates in
``<condition>/answers.jsonl`` when the folder holds them (a fresh ``geomfilter experiment`` run
does), otherwise -- as for the committed ``data/results/experiment/*`` folders, which keep only
``results.json`` -- from its 95% bootstrap CIs: a condition's CI gives the spread of its
per-question rates, a pair's CI (``results.json["paired"]``) the spread of the per-question
differences (``sd ~ (hi - lo) / (2 z) * sqrt(n)``). ``--from-ci`` forces the CI route (to check it
against the answers).

Printed: the components per pair, a table of MDD vs (questions, answers per question) per pair,
the smallest designs that detect ``--effect``, and a simulation check of the recommended design:
questions drawn with rates from the fitted components, answers drawn per question, the project's
paired bootstrap CI as the test (power at ``--effect`` and false positives at 0).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import norm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.stats import (  # noqa: E402
    ci_side,
    design_components,
    design_mdd,
    paired_bootstrap,
    paired_differences,
    rate_within_variance,
)

QUESTIONS = (40, 60, 80, 120, 160, 240)
PER_QUESTION = (1, 2, 3, 4, 6, 8, 10, 12, 16)
SEC_PER_ANSWER = 0.82  # s per sampled + judged answer, 1 thread: 0.75 generation (bench_generate) + 0.07 offline judge


def default_pairs(conditions: list[str]) -> list[tuple[str, str]]:
    """misaligned - base, and every filtered condition against the unfiltered model and against random."""
    pairs = [("misaligned", "base")] if {"misaligned", "base"} <= set(conditions) else []
    filtered = [c for c in conditions if c.split("-")[0] in ("geometry", "projection", "random") and "+" not in c]
    pairs += [(f, "misaligned") for f in filtered if "misaligned" in conditions]
    pairs += [(f, r) for f in filtered for r in filtered if r.startswith("random-") and f != r
              and f.rsplit("-", 1)[-1] == r.rsplit("-", 1)[-1]]
    return pairs


def ci_item_var(ci: dict, level: float) -> float:
    """Per-item variance (ddof 1) behind a percentile bootstrap CI of a mean over ``n`` items."""
    n = ci["n"]
    se = (ci["hi"] - ci["lo"]) / (2 * norm.ppf(0.5 + level / 2))
    return se ** 2 * n * n / (n - 1)  # the bootstrap SE is sd(ddof 0) / sqrt(n)


def question_rates(folder: Path, condition: str) -> dict[str, float] | None:
    """Per-question misalignment rate of one condition from its ``answers.jsonl`` (scored answers only)."""
    path = folder / condition / "answers.jsonl"
    if not path.is_file():
        return None
    by_q = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("error") is None and row.get("misaligned") is not None:
                by_q[row["question_id"]].append(float(row["misaligned"]))
    return {q: float(np.mean(v)) for q, v in by_q.items()}


def components(folder: Path, res: dict, a: str, b: str, k0: int, level: float, from_ci: bool) -> dict:
    """Means, per-question variances and the two variance components of the pair ``a - b``."""
    ra, rb = (None, None) if from_ci else (question_rates(folder, a), question_rates(folder, b))
    if ra is not None and rb is not None:
        va, vb = np.array(list(ra.values())), np.array(list(rb.values()))
        d = np.array(paired_differences(ra, rb))
        ma, mb, sa, sb, sd, n, src = va.mean(), vb.mean(), va.var(ddof=1), vb.var(ddof=1), d.var(ddof=1), len(d), \
            "answers.jsonl"
    else:
        mr = {c: res["conditions"][c]["metrics"]["misalignment_rate"] for c in (a, b)}
        pair = next((p for p in res["paired"] if (p["a"], p["b"]) == (a, b)), None)
        if pair is None:
            raise SystemExit(f"results.json has no paired difference {a} - {b} (and no answers.jsonl)")
        pm = pair["misalignment_rate"]
        ma, mb, n, src = mr[a]["mean"], mr[b]["mean"], pm["n"], "results.json CIs"
        sa, sb, sd = ci_item_var(mr[a], level), ci_item_var(mr[b], level), ci_item_var(pm, level)
    within = rate_within_variance(float(ma), float(sa), k0) + rate_within_variance(float(mb), float(sb), k0)
    tau2, w_eff = design_components(float(sd), within, k0)
    return {"a": a, "b": b, "mean_a": float(ma), "mean_b": float(mb), "var_a": float(sa), "var_b": float(sb),
            "diff_var": float(sd), "within": within, "within_eff": w_eff, "tau2": tau2, "n": int(n),
            "k0": k0, "source": src, "observed": float(ma - mb)}


def mdd(c: dict, n: int, k: int, level: float, power: float) -> float:
    return design_mdd(c["diff_var"], c["within"], c["k0"], n, k, level=level, power=power)


def smallest_k(c: dict, n: int, effect: float, level: float, power: float, k_max: int = 200) -> int | None:
    """Fewest answers per question at ``n`` questions whose MDD is at most ``effect`` (None: not even ``k_max``)."""
    return next((k for k in range(1, k_max + 1) if mdd(c, n, k, level, power) <= effect), None)


def beta_rates(rng, mean: float, var: float, n: int) -> np.ndarray:
    """``n`` true per-question rates with the given mean and spread (a Beta; all equal when there is no spread)."""
    if var <= 1e-9 or mean <= 0 or mean >= 1:
        return np.full(n, mean)
    c = mean * (1 - mean) / min(var, 0.99 * mean * (1 - mean)) - 1
    return rng.beta(mean * c, (1 - mean) * c, n)


def simulate(c: dict, n: int, k: int, effect: float, n_sim: int, n_boot: int, level: float, seed: int = 0) -> float:
    """Share of simulated studies (n questions x k answers) whose paired bootstrap CI excludes 0.

    Question rates of ``b`` are drawn with ``b``'s fitted between-question spread; ``a`` adds
    ``effect`` plus a question-specific deviation ``+-t`` (each sign with probability 1/2, so the
    true mean difference is exactly ``effect``), ``t = sqrt(tau^2)`` or less where the rate would
    leave [0, 1]; answers are 0/1 draws.
    """
    rng = np.random.default_rng(seed)
    var_b = max(0.0, c["mean_b"] * (1 - c["mean_b"]) - rate_within_variance(c["mean_b"], c["var_b"], c["k0"]))
    hits = 0
    for s in range(n_sim):
        pb = beta_rates(rng, c["mean_b"], var_b, n)
        centre = np.clip(pb + effect, 0.0, 1.0)
        t = np.minimum(math.sqrt(c["tau2"]), np.minimum(centre, 1.0 - centre))
        pa = centre + t * rng.choice([-1.0, 1.0], n)
        qa, qb = rng.binomial(k, pa) / k, rng.binomial(k, pb) / k
        ci = paired_bootstrap(dict(enumerate(qa)), dict(enumerate(qb)), n_boot=n_boot, seed=s, level=level)
        hits += ci_side(ci) != 0
    return hits / n_sim


def table(c: dict, args) -> list[str]:
    head = "| questions \\ answers per question | " + " | ".join(str(k) for k in PER_QUESTION) + " |"
    out = [head, "|---|" + "---|" * len(PER_QUESTION)]
    for n in QUESTIONS:
        cells = [f"{mdd(c, n, k, args.level, args.power):.3f}" for k in PER_QUESTION]
        cells = [f"**{x}**" if float(x) <= args.effect else x for x in cells]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out


def recommend(comps: list[dict], args, questions: tuple[int, ...] = QUESTIONS) -> tuple[int, int] | None:
    """The design detecting ``effect`` for every pair: fewest answers in all, then fewest questions (None: none)."""
    best = None
    for n in questions:
        ks = [smallest_k(c, n, args.effect, args.level, args.power) for c in comps]
        if None in ks:
            continue
        k = max(ks)
        if best is None or n * k < best[0] * best[1]:
            best = (n, k)
    return best


def all_per_answer(c: dict) -> dict:
    """The same pair with all of its observed spread put on single answers (tau^2 = 0): more answers help most."""
    return {**c, "within": c["diff_var"] * c["k0"], "within_eff": c["diff_var"] * c["k0"], "tau2": 0.0}


def report(folder: Path, args) -> list[str]:
    res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    e = res["config"]["eval"]
    k0 = int(e["n_per_question"])
    conds = list(res["conditions"])
    pairs = [tuple(p) for p in args.pair] if args.pair else default_pairs(conds)
    comps = [components(folder, res, a, b, k0, args.level, args.from_ci) for a, b in pairs]
    n0 = comps[0]["n"]
    seconds = sum(v.get("seconds") or 0 for v in res["conditions"].values())
    n_q_file = sum(1 for x in (ROOT / e["questions"]).read_text(encoding="utf-8").splitlines() if x.strip()) \
        if (ROOT / e["questions"]).is_file() else None
    z = norm.ppf(0.5 + args.level / 2) + norm.ppf(args.power)
    out = [f"# Power of the judged misalignment rate: `{folder}`", "",
           f"Observed design: {n0} questions x {k0} sampled answers per condition ({len(conds)} conditions, "
           f"{seconds / 60:.0f} min in all). MDD = the smallest true paired difference a two-sided test at "
           f"alpha {1 - args.level:.2f} detects with power {args.power:.0%} (MDD = {z:.3f} x SE). Variance "
           f"components from {comps[0]['source']}; `stats.design_mdd` extrapolates them to other designs.", "",
           "| a - b | observed | a rate | b rate | sd of per-question diff | within (1 answer, a+b) | tau^2 (between) "
           f"+- its SE | MDD now ({n0} x {k0}) |", "|---|---|---|---|---|---|---|---|"]
    for c in comps:
        w = f"{c['within']:.3f}" + (f" -> {c['within_eff']:.3f}" if c["within_eff"] < c["within"] else "")
        out.append(f"| {c['a']} - {c['b']} | {c['observed']:+.3f} | {c['mean_a']:.3f} | {c['mean_b']:.3f} | "
                   f"{math.sqrt(c['diff_var']):.3f} | {w} | {c['tau2']:.4f} +- "
                   f"{c['diff_var'] * math.sqrt(2 / (c['n'] - 1)):.4f} | {mdd(c, n0, k0, args.level, args.power):.3f} |")
    clear = [f"{c['a']} - {c['b']}" for c in comps if c["tau2"] > 2 * c["diff_var"] * math.sqrt(2 / (c["n"] - 1))]
    clear_text = ("tau^2 clearly above 0 (> 2 SE): " + ", ".join(clear) if clear
                  else "no tau^2 here is clearly above 0 (> 2 SE)")
    out += ["", f"within: the binomial variance of one answer in each condition, summed (independent answers); "
            f"`a -> b` where the per-question differences vary less than independent answers would make them "
            f"(the paired answers are correlated: every condition samples the same prompts under the same seeds), "
            f"then tau^2 = 0 and within = {k0} x the observed variance. tau^2: the spread of the true per-question "
            f"differences; more answers cannot shrink it, only more questions. Its SE (from the sampling error of a "
            f"variance over {n0} questions, sd^2 x sqrt(2 / (n - 1))) shows how loosely {n0} questions pin it down: "
            f"{clear_text}. Where tau^2 ~ 0 only the total number of answers per condition (questions x answers) "
            f"matters.", ""]
    for c in comps:
        out += [f"## MDD of {c['a']} - {c['b']} (bold: <= {args.effect})", ""] + table(c, args) + [""]
    out += design_section(comps, args, n0, k0, seconds, len(conds), n_q_file)
    return out


def design_section(comps: list[dict], args, n0: int, k0: int, seconds: float, n_cond: int,
                   n_q_file: int | None) -> list[str]:
    out = [f"## Smallest designs detecting a difference of {args.effect} (power {args.power:.0%}, alpha "
           f"{1 - args.level:.2f})", "", "| a - b | " + " | ".join(f"k at {n} questions" for n in QUESTIONS) + " |",
           "|---|" + "---|" * len(QUESTIONS)]
    for c in comps:
        ks = [smallest_k(c, n, args.effect, args.level, args.power) for n in QUESTIONS]
        out.append(f"| {c['a']} - {c['b']} | " + " | ".join(str(k) if k else "> 200" for k in ks) + " |")
    best = recommend(comps, args)
    if best is None:
        raise SystemExit(f"no design up to {QUESTIONS[-1]} questions x 200 answers detects {args.effect}")
    n, k = best
    worst = max(comps, key=lambda c: mdd(c, n, k, args.level, args.power))
    extra = n * k - n0 * k0
    out += ["", f"**Recommended: {n} questions x {k} answers per question** ({n * k} answers per condition, now "
            f"{n0 * k0}); worst pair {worst['a']} - {worst['b']}: MDD {mdd(worst, n, k, args.level, args.power):.3f}.",
            ""]
    designs = [(n0, k0), (n, k)]
    if n_q_file is not None:
        out.append(f"The question file holds {n_q_file} questions" + (
            "; this design needs no new ones." if n <= n_q_file else
            f"; this design needs {n - n_q_file} more (same schema: aligned and misaligned reference answers)."))
        out.append("")
        alt = recommend([all_per_answer(c) for c in comps], args, (n_q_file,)) if n > n_q_file else None
        if alt:
            designs.append(alt)
            out.append(f"Keeping the {n_q_file} questions: {alt[1]} answers per question ({alt[0] * alt[1]} per "
                       f"condition, +{(alt[0] * alt[1] - n0 * k0) * n_cond * args.sec_per_answer / 60:.0f} min) is "
                       f"enough only if every tau^2 is really 0 (all of the observed spread on single answers: "
                       f"the estimates allow it but do not show it); with the fitted components the worst pair "
                       f"{worst['a']} - {worst['b']} has MDD {mdd(worst, *alt, args.level, args.power):.3f} there.")
            out.append("")
    out.append(f"Run time of the recommended design: +{extra} sampled and judged answers per condition x {n_cond} "
               f"conditions x ~{args.sec_per_answer} s = +{extra * n_cond * args.sec_per_answer / 60:.0f} min on one "
               f"thread (the observed run took {seconds / 60:.0f} min in all; s per answer: generation in "
               f"benchmarks/results/bench_generate.txt + the offline judge).")
    if args.n_sim:
        out += ["", f"Simulation check ({args.n_sim} simulated studies per cell, questions and answers drawn from "
                f"the fitted components of the worst pair -- per-question deviations of +-sqrt(tau^2), less where a "
                f"rate would leave [0, 1], independent answers -- test = `stats.paired_bootstrap` {args.level:.0%} "
                f"CI excluding 0, {args.n_boot} resamples):", "",
                "| design | power at +" + f"{args.effect} | false positives at 0 |", "|---|---|---|"]
        for dn, dk in designs:
            p1 = simulate(worst, dn, dk, args.effect, args.n_sim, args.n_boot, args.level)
            p0 = simulate(worst, dn, dk, 0.0, args.n_sim, args.n_boot, args.level, seed=1)
            out.append(f"| {dn} x {dk} | {p1:.2f} | {p0:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default=str(ROOT / "data/results/experiment/medium"))
    ap.add_argument("--effect", type=float, default=0.08, help="difference to detect")
    ap.add_argument("--power", type=float, default=0.8)
    ap.add_argument("--level", type=float, default=0.95, help="1 - alpha (two-sided)")
    ap.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), help="a - b (repeatable)")
    ap.add_argument("--from-ci", action="store_true", help="use results.json CIs even when answers.jsonl exist")
    ap.add_argument("--n-sim", type=int, default=1000, help="simulated studies per check (0: no simulation)")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples per simulated study")
    ap.add_argument("--sec-per-answer", type=float, default=SEC_PER_ANSWER)
    args = ap.parse_args(argv)
    print("\n".join(report(Path(args.experiment), args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
