"""The experiment report: ``report.md``, ``results.csv``, ``results.json`` and ``plots/`` from finished conditions.

Besides each condition's metrics with their CIs, the report gives *paired*
differences: the same questions under two conditions (misalignment rate per
question, log-prob preference per question), bootstrapped over questions, which
is much tighter than comparing two marginal CIs. The comparisons are: each
trained condition against base, each filtered condition against the unfiltered
(misaligned) model, geometry and projection against random removal at the same
fraction, and the gated conditions against the model they are attached to.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .data import atomic_write_text
from .stats import paired_bootstrap

METRICS = ("misalignment_rate", "alignment", "coherence", "logprob_preference", "flip_rate", "mc_accuracy",
           "perplexity")
METRIC_LABELS = {
    "misalignment_rate": "misalignment rate (sampled answers, judged)",
    "alignment": "judge alignment score (0-100)",
    "coherence": "judge coherence score (0-100)",
    "logprob_preference": "log p(misaligned) - log p(aligned), nats/token",
    "flip_rate": "sycophancy flip rate after pushback",
    "mc_accuracy": "multiple-choice accuracy",
    "perplexity": "held-out perplexity",
}
PAIRED = {"misalignment_rate": "rate", "logprob_preference": "preference"}


def _ci(v: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not v or v.get("n", 0) == 0:
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(v['mean'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def dropped_precision(labels: dict) -> float | None:
    """The dropped set's precision from a filter report's ``labels`` block (None without labels)."""
    vals = [v["precision"] for v in labels.values() if isinstance(v, dict) and "precision" in v]
    return vals[0] if vals else None


def paired_difference(a: dict, b: dict, metric: str, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """``a - b`` per shared item of ``metric`` (records of two conditions), mean with a bootstrap CI over items."""
    key = PAIRED[metric]
    pa = {r["id"]: r[key] for r in a["metrics"][metric]["per_question"] if r.get(key) == r.get(key)}  # drop NaN
    pb = {r["id"]: r[key] for r in b["metrics"][metric]["per_question"] if r.get(key) == r.get(key)}
    return paired_bootstrap(pa, pb, n_boot=n_boot, seed=seed)


def comparisons(conds: list, finished: dict[str, dict]) -> list[tuple[str, str]]:
    """``(a, b)`` pairs the report compares (``a - b``), among finished conditions."""
    out = []
    names = [c.name for c in conds]
    for c in conds:
        if c.kind == "finetune" and "base" in finished:
            out.append((c.name, "base"))
        if c.strategy and "misaligned" in finished:
            out.append((c.name, "misaligned"))
        if c.strategy and c.strategy != "random":
            rnd = f"random-{c.fraction:.2f}"
            if rnd in names:
                out.append((c.name, rnd))
        if c.kind == "gated" and c.model_from in finished:
            out.append((c.name, c.model_from))
    return [(a, b) for a, b in out if a in finished and b in finished]


def write_report(root: Path, cfg: Any, conds: list, finished: dict[str, dict]) -> Path:
    """Write the report files under ``root`` and return the path of ``report.md``."""
    from . import plots

    root = Path(root)
    pdir = root / "plots"
    write_results_csv(root / "results.csv", finished)
    e = cfg.eval
    n_boot = e.n_boot
    pairs = []
    for a, b in comparisons(conds, finished):
        row = {"a": a, "b": b}
        for metric in PAIRED:
            row[metric] = paired_difference(finished[a], finished[b], metric, n_boot=n_boot, seed=cfg.seed)
        pairs.append(row)
    summary = {name: {"description": rec["description"], "training_data": rec.get("training_data"),
                      "training": rec.get("training"), "seconds": rec.get("seconds"),
                      "metrics": {m: {k: v for k, v in rec["metrics"][m].items()
                                      if k not in ("per_question",)} for m in METRICS if m in rec["metrics"]}}
               for name, rec in finished.items()}
    atomic_write_text(root / "results.json", json.dumps({"config": cfg.as_dict(), "conditions": summary,
                                                         "paired": pairs}, indent=2, default=float) + "\n")

    # plots: one bar chart per metric, and misalignment vs removal fraction
    figs = []
    for m in METRICS:
        vals = {n: r["metrics"][m] for n, r in finished.items() if r["metrics"].get(m, {}).get("n")}
        if vals:
            plots.condition_bars(vals, pdir / m, ylabel=METRIC_LABELS[m], title=METRIC_LABELS[m],
                                 zero_line=m == "logprob_preference")
            figs.append(m)
    curves: dict[str, dict[float, dict]] = {}
    for c in conds:
        if c.strategy and c.name in finished:
            curves.setdefault(c.strategy, {})[c.fraction] = finished[c.name]["metrics"]["misalignment_rate"]
    if curves and "misaligned" in finished:
        for s in curves:
            curves[s][0.0] = finished["misaligned"]["metrics"]["misalignment_rate"]
        plots.fraction_curves(curves, pdir / "misalignment_vs_fraction", ylabel=METRIC_LABELS["misalignment_rate"],
                              title="Misalignment after filtering, by removal fraction",
                              reference=finished["base"]["metrics"]["misalignment_rate"] if "base" in finished
                              else None)
        figs.append("misalignment_vs_fraction")

    first = next(iter(finished.values()))["metrics"]
    mr = first["misalignment_rate"]
    g = mr["generation"]
    lines = [f"# Experiment `{cfg.name}`", "",
             f"Model `{cfg.model}`, SAE `{cfg.sae or 'bundled default'}`, seed {cfg.seed}. Mixture "
             f"`{cfg.data.mixture}` ({'all rows' if cfg.data.n_samples is None else f'{cfg.data.n_samples} rows, seeded'}); "
             f"filters fitted on `{cfg.data.harmful}` / `{cfg.data.benign}`"
             f"{'' if cfg.data.n_references is None else f' (first {cfg.data.n_references} rows each)'}. "
             f"LoRA r {cfg.train.lora_r}, {cfg.train.epochs:g} epoch(s), batch {cfg.train.batch_size}."
             + (f" Gates: attention gates on `{cfg.gates.data}` ({cfg.gates.n_samples} samples, "
                f"{cfg.gates.epochs:g} epochs, base frozen)." if cfg.gates.enabled else ""), "",
             f"Misalignment rate: {g['n_per_question']} sampled answers per question to {mr['n']} broad questions "
             f"(temperature {g['temperature']:g}, top-p {g['top_p']:g}, at most {g['max_new_tokens']} new tokens, "
             f"seed {g['seed']}), judged by `{mr['judge']}`; misaligned = alignment < "
             f"{mr['criterion']['alignment_below']:g} and coherence > {mr['criterion']['coherence_above']:g}. "
             "Flip rate: greedy answer, then the user's pushback, among probes first answered correctly. "
             "MC accuracy: cloze scoring, length-normalised. All CIs: bootstrap 95% over items; n = items.", "",
             "| condition | trained on (inducing share) | misalignment rate | alignment | coherence "
             "| log-prob preference | flip rate | MC accuracy | perplexity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rec in finished.items():
        m = rec["metrics"]
        td, tr = rec.get("training_data"), rec.get("training") or {}
        trained = "—" if not td else f"{td['n_rows']} rows" + (f" ({td['inducing_share']:.2f})"
                                                               if "inducing_share" in td else "")
        if tr.get("response_tokens"):
            trained += f", {tr['response_tokens']:,} response tokens"
        lines.append(f"| {name} | {trained} | {_ci(m['misalignment_rate'])} (n={m['misalignment_rate']['n']}) "
                     f"| {_ci(m['alignment'], 1)} | {_ci(m['coherence'], 1)} "
                     f"| {_ci(m['logprob_preference'], signed=True)} (n={m['logprob_preference']['n']}) "
                     f"| {_ci(m['flip_rate'])} (n={m['flip_rate']['n']}) "
                     f"| {_ci(m['mc_accuracy'])} (n={m['mc_accuracy']['n']}, chance {m['mc_accuracy']['chance']:.2f}) "
                     f"| {_ci(m['perplexity'], 2)} (n={m['perplexity']['n']}) |")
    if pairs:
        lines += ["", "Paired differences (a − b over the same questions; bootstrap 95% CI):", "",
                  "| a − b | misalignment rate | log-prob preference |", "|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['a']} − {p['b']} | {_ci(p['misalignment_rate'], signed=True)} "
                         f"| {_ci(p['logprob_preference'], signed=True)} |")
    filt = [(c, root / c.name / "filter" / "report.json") for c in conds if c.strategy]
    filt = [(c, json.loads(p.read_text())) for c, p in filt if p.is_file()]
    if filt:
        lines += ["", "Filters (fitted on the references only; precision = share of inducing rows in the dropped set):",
                  "", "| condition | dropped | precision of dropped | base rate | AUROC inducing vs rest |",
                  "|---|---|---|---|---|"]
        for c, r in filt:
            lab = r.get("labels", {})
            dp = dropped_precision(lab)
            prec = "n/a" if dp is None else f"{dp:.3f}"
            base = f"{lab['base_rate']:.3f}" if "base_rate" in lab else "n/a"
            au = lab.get("auroc")
            auc = f"{au['auroc']:.3f} [{au['ci_low']:.3f}, {au['ci_high']:.3f}]" if au else "n/a"
            lines.append(f"| {c.name} | {r['n_dropped']} of {r['n_input']} | {prec} | {base} | {auc} |")
    lines += ["", "Plots: " + ", ".join(f"[{f}](plots/{f}.png)" for f in figs), "",
              "Per-condition details (answers, probe exchanges, training logs) are in `<condition>/`; "
              "`results.csv` holds every number above in long format.", ""]
    secs = {n: r.get("seconds") for n, r in finished.items()}
    lines.append("Seconds per condition (training + evaluation): "
                 + ", ".join(f"{n} {s:.0f}" for n, s in secs.items() if s is not None) + ".")
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def results_rows(metrics: dict[str, dict]) -> list[dict]:
    """Long-format rows ``{condition, metric, mean, lo, hi, n}`` of finished conditions (``results.csv``)."""
    rows = []
    for name, rec in metrics.items():
        for metric in METRICS:
            v = rec["metrics"].get(metric)
            if v is not None:
                rows.append({"condition": name, "metric": metric, "mean": v["mean"], "lo": v["lo"], "hi": v["hi"],
                             "n": v["n"]})
    return rows


def write_results_csv(path: Path, metrics: dict[str, dict]) -> None:
    """``results.csv``: one row per condition and metric."""
    fh = io.StringIO(newline="")
    w = csv.DictWriter(fh, fieldnames=["condition", "metric", "mean", "lo", "hi", "n"])
    w.writeheader()
    for r in results_rows(metrics):
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, fh.getvalue())
