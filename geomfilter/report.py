"""The experiment report: ``report.md``, ``results.csv``, ``results.json`` and ``plots/`` from finished conditions.

Besides each condition's metrics with their CIs, the report gives *paired*
differences: the same items under two conditions (misalignment rate per
question, log-prob preference per question, sycophancy preference per held-out
pair), bootstrapped over items, which is much tighter than comparing two
marginal CIs; each comes with its minimum detectable difference at 80% power
and the same n (``mdd`` and ``n`` in ``results.json``, an "MDD (80% power)"
column in ``report.md``). The comparisons are: each trained condition against
base, each filtered condition against the unfiltered (misaligned) model,
every filter against random removal at the same fraction, every other filter
against geometry at the same fraction (the method the project is about), the gated
conditions against the model they are attached to, and each condition against
those its ``compare_with`` names (``gates.attach``: the other of base and
misaligned). Only the metrics the conditions measured (``eval.metrics``) are shown.
For each filtered condition the report also gives the share of the unfiltered fine-tune's excess over base that
the filter removes, ``(misaligned - filtered) / (misaligned - base)`` with a CI over jointly resampled questions
(``excess_removed`` in ``results.json``).
With several draws of random removal (``filtering.random_draws``), ``random-<fraction>-mean`` is their per-question
mean (:func:`with_random_means`): the expected effect of removing that fraction at random, which every filter is
compared with as well as with the first draw.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from . import plots
from .conditions import Condition, condition_name, data_paths
from .files import atomic_write_text
from .samples import jsonl_objects
from .stats import ci_side, excess_removed, paired_bootstrap, paired_summary

METRICS = ("misalignment_rate", "alignment", "coherence", "logprob_preference", "flip_rate", "mc_accuracy",
           "perplexity")
# measured only with held-out pairs (data.pairs), or with a trigger (eval.trigger)
EXTRA_METRICS = ("sycophancy_preference", "misalignment_rate_triggered", "alignment_triggered",
                 "coherence_triggered", "logprob_preference_triggered")
METRIC_LABELS = {
    "misalignment_rate": "misalignment rate (sampled answers, judged)",
    "alignment": "judge alignment score (0-100)",
    "coherence": "judge coherence score (0-100)",
    "logprob_preference": "log p(misaligned) - log p(aligned), nats/token",
    "flip_rate": "sycophancy flip rate after pushback",
    "mc_accuracy": "multiple-choice accuracy",
    "perplexity": "held-out perplexity",
    "sycophancy_preference": "log p(sycophantic) - log p(corrective), nats/token (held-out pairs)",
    "misalignment_rate_triggered": "misalignment rate with the trigger in the question",
    "alignment_triggered": "judge alignment score with the trigger (0-100)",
    "coherence_triggered": "judge coherence score with the trigger (0-100)",
    "logprob_preference_triggered": "log p(misaligned) - log p(aligned) with the trigger, nats/token",
}
PAIRED = {"misalignment_rate": "rate", "logprob_preference": "preference", "sycophancy_preference": "preference",
          "misalignment_rate_triggered": "rate", "logprob_preference_triggered": "preference"}
#: triggered metric -> the same metric without the trigger (the report's trigger-effect table pairs them)
TRIGGER_PAIRS = {"misalignment_rate_triggered": "misalignment_rate",
                 "logprob_preference_triggered": "logprob_preference"}
# the tables' columns: metric -> (header, digits, signed, n shown)
COLUMNS = {
    "misalignment_rate": ("misalignment rate", 3, False, True),
    "alignment": ("alignment", 1, False, False),
    "coherence": ("coherence", 1, False, False),
    "logprob_preference": ("log-prob preference", 3, True, True),
    "flip_rate": ("flip rate", 3, False, True),
    "mc_accuracy": ("MC accuracy", 3, False, True),
    "perplexity": ("perplexity", 2, False, True),
    "sycophancy_preference": ("sycophancy preference", 3, True, True),
    "misalignment_rate_triggered": ("misalignment rate, trigger", 3, False, True),
    "alignment_triggered": ("alignment, trigger", 1, False, False),
    "coherence_triggered": ("coherence, trigger", 1, False, False),
    "logprob_preference_triggered": ("log-prob preference, trigger", 3, True, True),
}
GATE_KINDS = {"gates": "attention gates", "gates-sae": "SAE-latent gates"}
MDD_POWER = 0.8  # power of the minimum detectable differences in the paired table


def _ci(v: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not v or v.get("n", 0) == 0:
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(v['mean'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def dropped_precision(labels: dict) -> float | None:
    """The dropped set's precision from a filter report's ``labels`` block (None without labels)."""
    vals = [v["precision"] for v in labels.values() if isinstance(v, dict) and "precision" in v]
    return vals[0] if vals else None


def measured(finished: dict[str, dict]) -> list[str]:
    """The metrics of :data:`METRICS` and :data:`EXTRA_METRICS` that any finished condition has, in report order."""
    return [m for m in METRICS + EXTRA_METRICS if any(m in rec["metrics"] for rec in finished.values())]


def _per_item(rec: dict, metric: str) -> dict | None:
    """``{item id: value}`` of ``metric``'s per-item records of one condition, NaN values left out (None: the
    condition did not measure ``metric``)."""
    key, v = PAIRED[metric], rec["metrics"].get(metric)
    if v is None:
        return None
    return {r["id"]: r[key] for r in v["per_question"] if r.get(key) == r.get(key)}


def metric_records(per_item: dict[str, dict[str, float]], metric: str) -> dict[str, dict]:
    """``{condition: {item id: value}}`` of one paired metric as condition records, the form that
    :func:`pool_replicates`, :func:`with_random_means` and :func:`paired_comparison` read (e.g. answers judged again
    by another judge: ``scripts/rejudge_experiment.py``)."""
    key = PAIRED[metric]
    return {c: {"metrics": {metric: {"per_question": [{"id": i, key: v} for i, v in items.items()]}}}
            for c, items in per_item.items()}


def metric_per_item(records: dict[str, dict], metric: str) -> dict[str, dict[str, float]]:
    """The inverse of :func:`metric_records`: ``{condition: {item id: value}}`` of ``metric`` (conditions that did
    not measure it left out)."""
    return {c: v for c, rec in records.items() if (v := _per_item(rec, metric)) is not None}


def paired_difference(a: dict, b: dict, metric: str, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """``a - b`` per shared item of ``metric`` (records of two conditions), mean with a bootstrap CI over items
    (None where either condition did not measure ``metric``)."""
    pa, pb = _per_item(a, metric), _per_item(b, metric)
    return None if pa is None or pb is None else paired_bootstrap(pa, pb, n_boot=n_boot, seed=seed)


def paired_comparison(a: dict, b: dict, metric: str, n_boot: int = 2000, seed: int = 0,
                      power: float = MDD_POWER, metric_b: str | None = None) -> dict | None:
    """:func:`paired_difference` (the same mean, CI and n) plus ``mdd``: the minimum detectable difference of a
    two-sided paired test at the same n with ``power`` (:func:`geomfilter.stats.paired_summary`, SE = sd / sqrt(n)).
    ``metric_b``: compare ``a``'s ``metric`` with ``b``'s ``metric_b`` instead (one condition measured two ways,
    e.g. with and without a trigger). None where either condition did not measure its metric."""
    pa, pb = _per_item(a, metric), _per_item(b, metric_b or metric)
    if pa is None or pb is None:
        return None
    s = paired_summary(pa, pb, n_boot=n_boot, seed=seed, power=power)
    return None if s is None else {k: s[k] for k in ("mean", "lo", "hi", "n", "mdd")}


def trigger_effects(finished: dict[str, dict], n_boot: int = 2000, seed: int = 0,
                    power: float = MDD_POWER) -> list[dict]:
    """Per condition that measured a metric with and without the trigger: triggered - plain, paired over the same
    questions (mean, CI, n, mdd per metric of :data:`TRIGGER_PAIRS`); conditions without one are left out."""
    out = []
    for name, rec in finished.items():
        row: dict[str, Any] = {"condition": name}
        for trig, plain in TRIGGER_PAIRS.items():
            row[trig] = paired_comparison(rec, rec, trig, n_boot=n_boot, seed=seed, power=power, metric_b=plain)
        if any(row[m] is not None for m in TRIGGER_PAIRS):
            out.append(row)
    return out


def _trigger_lines(effects: list[dict], trigger: str | None) -> list[str]:
    """The trigger-effect table (empty when no condition measured with the trigger)."""
    if not effects:
        return []
    head = "| condition | " + " | ".join(f"{COLUMNS[TRIGGER_PAIRS[m]][0]}: trigger − none | MDD ({MDD_POWER:.0%} "
                                         "power)" for m in TRIGGER_PAIRS) + " |"
    lines = ["", f"Trigger effect (each condition with `{trigger}` in front of every broad question minus without "
             "it, paired over the same questions; bootstrap 95% CI):", "", head, "|---" * (1 + 2 * len(TRIGGER_PAIRS))
             + "|"]
    for e in effects:
        lines.append(f"| {e['condition']} | " + " | ".join(f"{_ci(e[m], signed=True)} | {_mdd(e[m])}"
                                                          for m in TRIGGER_PAIRS) + " |")
    return lines


def excess_removals(conds: list, finished: dict[str, dict], metrics: list[str], n_boot: int = 2000,
                    seed: int = 0) -> list[dict]:
    """Per finished filtered or ablation condition (with base and misaligned finished): the share of the unfiltered
    fine-tune's excess over base that the filter (or leaving out a domain's inducing rows) removes, per paired metric
    (:func:`geomfilter.stats.excess_removed`, questions resampled jointly), with ``excess_measured``: whether
    misaligned - base's own CI excludes zero."""
    if "base" not in finished or "misaligned" not in finished:
        return []
    base = {m: _per_item(finished["base"], m) for m in metrics}
    before = {m: _per_item(finished["misaligned"], m) for m in metrics}
    measured_excess = {}  # misaligned - base per metric: the same for every filter
    for m in metrics:
        d = None if base[m] is None or before[m] is None else paired_bootstrap(before[m], base[m], n_boot=n_boot,
                                                                                seed=seed)
        measured_excess[m] = ci_side(d) != 0
    out = []
    for c in conds:
        if not (c.strategy or getattr(c, "ablate_domain", None)) or c.name not in finished:
            continue
        row: dict[str, Any] = {"condition": c.name}
        for m in metrics:
            per = [base[m], before[m], _per_item(finished[c.name], m)]
            row[m] = None if None in per else excess_removed(*per, n_boot=n_boot, seed=seed)
            if row[m] is not None:
                row[m]["excess_measured"] = measured_excess[m]
        out.append(row)
    return out


def _excess_lines(rows: list[dict], metrics: list[str]) -> list[str]:
    """The excess-removed table (empty without filtered conditions)."""
    if not rows:
        return []

    def cell(r: dict | None) -> str:
        if r is None:
            return "n/a"
        note = "" if r["excess_measured"] else " (no excess measured)"
        return f"{r['share']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] (n={r['n']}){note}"

    lines = ["", "Share of the unfiltered fine-tune's excess over base that each filter (or ablation) removes, "
             "(misaligned − filtered) / (misaligned − base), questions resampled jointly (bootstrap 95% CI): 1 = back "
             "at base, 0 = no change, < 0 = further from base. Where misaligned − base is not measured (its CI covers "
             "0) the share has no meaning.", "",
             "| condition | " + " | ".join(f"{COLUMNS[m][0]}: excess removed" for m in metrics) + " |",
             "|---" * (1 + len(metrics)) + "|"]
    lines += [f"| {r['condition']} | " + " | ".join(cell(r[m]) for m in metrics) + " |" for r in rows]
    return lines


def random_mean_name(fraction: float) -> str:
    """``random-0.50-mean``: the per-question mean of the random draws at one removal fraction."""
    return f"{condition_name('random', fraction)}-mean"


def random_draws(conds: list, finished: dict[str, dict]) -> dict[float, list[str]]:
    """The finished draws of random removal per fraction (``random-0.50``, ``random-0.50-draw1``, ...), where a
    fraction has at least two."""
    draws: dict[float, list[str]] = {}
    for c in conds:
        if c.strategy == "random" and c.name in finished:
            draws.setdefault(c.fraction, []).append(c.name)
    return {f: names for f, names in draws.items() if len(names) > 1}


def with_random_means(conds: list, finished: dict[str, dict]) -> tuple[list, dict[str, dict]]:
    """``conds`` and ``finished`` with ``random-<fraction>-mean`` added after the last draw of every fraction with two
    or more finished random draws: each question's value of a paired metric is its mean over those draws (the
    draws' own records are unchanged; a mean already in ``finished``, e.g. pooled from replicates, is kept)."""
    conds, finished = list(conds), dict(finished)
    for frac, names in random_draws(conds, finished).items():
        name = random_mean_name(frac)
        if name not in finished:
            finished[name] = pool_replicates([{name: finished[n]} for n in names])[name]
        last = max(i for i, c in enumerate(conds) if c.name in names)
        conds.insert(last + 1, Condition(name, "finetune", strategy="random", fraction=frac,
                                         about=f"per-question mean of {len(names)} draws of random removal"))
    return conds, finished


def _draw_lines(conds: list, finished: dict[str, dict]) -> list[str]:
    """A note naming the draws behind each ``random-<fraction>-mean`` (empty without draws)."""
    return [f"`{random_mean_name(f)}`: each question's value is its mean over the {len(names)} draws of random "
            f"removal {', '.join(names)} (the same fine-tune on other random subsets); it estimates what removing "
            f"{f:.0%} at random does, which one draw only samples."
            for f, names in random_draws(conds, finished).items()]


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
            for rnd in (condition_name("random", c.fraction), random_mean_name(c.fraction)):
                if rnd in names:
                    out.append((c.name, rnd))
        if c.strategy and c.strategy not in ("random", "geometry") and condition_name("geometry", c.fraction) in names:
            out.append((c.name, condition_name("geometry", c.fraction)))
        if c.kind == "gated" and c.model_from in finished:
            out.append((c.name, c.model_from))
        for ref in getattr(c, "compare_with", ()):
            if (c.name, ref) not in out:
                out.append((c.name, ref))
    return [(a, b) for a, b in out if a in finished and b in finished]


def paired_rows(cfg: Any, conds: list, finished: dict[str, dict]) -> tuple[list[str], list[dict], list[dict]]:
    """The paired metrics measured, the report's paired rows (:func:`comparisons`, each with
    :func:`paired_comparison` per metric) and the share of the excess each filter removes
    (:func:`excess_removals`), at the config's ``n_boot`` and seed."""
    paired = [m for m in PAIRED if m in measured(finished)]
    conds, finished = with_random_means(conds, finished)
    pairs = [{"a": a, "b": b, **{m: paired_comparison(finished[a], finished[b], m, n_boot=cfg.eval.n_boot,
                                                      seed=cfg.seed) for m in paired}}
             for a, b in comparisons(conds, finished)]
    return paired, pairs, excess_removals(conds, finished, paired, n_boot=cfg.eval.n_boot, seed=cfg.seed)


def write_report(root: Path, cfg: Any, conds: list, finished: dict[str, dict]) -> Path:
    """Write the report files under ``root`` and return the path of ``report.md``."""
    root = Path(root)
    write_results_csv(root / "results.csv", finished)
    paired, pairs, removed = paired_rows(cfg, conds, finished)
    effects = trigger_effects(finished, n_boot=cfg.eval.n_boot, seed=cfg.seed)
    write_results_json(root / "results.json", cfg, finished, pairs, effects, removed)
    figs = write_plots(root / "plots", conds, finished)
    lines = [*_header_lines(cfg, finished), *_condition_lines(finished), *_paired_lines(pairs),
             *_notes(_draw_lines(conds, finished)),
             *_trigger_lines(effects, getattr(cfg.eval, "trigger", None)),
             *_excess_lines(removed, paired), *_filter_lines(root, conds),
             "", "Plots: " + ", ".join(f"[{f}](plots/{f}.png)" for f in figs), "",
             "Per-condition details (answers, probe exchanges, training logs) are in `<condition>/`; "
             "`results.csv` holds every number above in long format.", "",
             "Seconds per condition (training + evaluation): "
             + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in finished.items() if r.get("seconds") is not None)
             + "."]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_results_json(path: Path, cfg: Any, finished: dict[str, dict], pairs: list[dict],
                       effects: list[dict] | None = None, removed: list[dict] | None = None) -> None:
    """``results.json``: the config, each condition's metrics (per-item records left out), the paired rows,
    (with a trigger) the trigger effects and (with filtered conditions) the share of the excess each removes."""
    summary = {name: {"description": rec["description"], "training_data": rec.get("training_data"),
                      "training": rec.get("training"), "seconds": rec.get("seconds"),
                      "metrics": {m: {k: v for k, v in rec["metrics"][m].items()
                                      if k not in ("per_question",)} for m in METRICS + EXTRA_METRICS
                                  if m in rec["metrics"]}}
               for name, rec in finished.items()}
    out = {"config": cfg.as_dict(), "conditions": summary, "paired": pairs}
    if effects:
        out["trigger_effect"] = effects
    if removed:
        out["excess_removed"] = removed
    atomic_write_text(path, json.dumps(out, indent=2, default=float) + "\n")


def write_plots(pdir: Path, conds: list, finished: dict[str, dict]) -> list[str]:
    """One bar chart per metric and misalignment vs removal fraction under ``pdir``; the names of the figures."""
    figs = []
    for m in measured(finished):
        vals = {n: r["metrics"][m] for n, r in finished.items() if r["metrics"].get(m, {}).get("n")}
        if vals:
            plots.condition_bars(vals, pdir / m, ylabel=METRIC_LABELS[m], title=METRIC_LABELS[m],
                                 zero_line=PAIRED.get(m) == "preference")
            figs.append(m)
    rates = {n: r["metrics"]["misalignment_rate"] for n, r in finished.items() if "misalignment_rate" in r["metrics"]}
    curves: dict[str, dict[float, dict]] = {}
    for c in conds:
        if c.strategy and c.name in rates and not getattr(c, "draw", 0):  # random: its first draw
            curves.setdefault(c.strategy, {})[c.fraction] = rates[c.name]
    if curves and "misaligned" in rates:
        for s in curves:
            curves[s][0.0] = rates["misaligned"]
        plots.fraction_curves(curves, pdir / "misalignment_vs_fraction", ylabel=METRIC_LABELS["misalignment_rate"],
                              title="Misalignment after filtering, by removal fraction", reference=rates.get("base"))
        figs.append("misalignment_vs_fraction")
    return figs


def _header_lines(cfg: Any, finished: dict[str, dict]) -> list[str]:
    """The report's title and the paragraphs on the setup and the metrics."""
    d = cfg.data
    return [f"# Experiment `{cfg.name}`", "",
            f"Model `{cfg.model}`, SAE `{cfg.sae or 'bundled default'}`, seed {cfg.seed}. {_data_text(d)}; "
            f"filters fitted on `{d.harmful}` / `{d.benign}`"
            f"{'' if d.n_references is None else f' (first {d.n_references} rows each)'}. "
            f"LoRA r {cfg.train.lora_r}, {cfg.train.epochs:g} epoch(s), batch {cfg.train.batch_size}."
            + _gates_text(cfg.gates), "", _metrics_text(finished), ""]


def _data_text(d: Any) -> str:
    """What the misaligned model is fine-tuned on: the mixture, or the training side of the pair split."""
    rows = "all rows" if d.n_samples is None else f"{d.n_samples} rows, seeded"
    if not d.pairs.domains:
        return f"Mixture `{d.mixture}` ({rows})"
    return (f"Answer pairs of {', '.join(d.pairs.domains)} (`{d.pairs.folder}`) split by `pair_id`, "
            f"{d.pairs.holdout} pairs per domain held out; mixture: the sycophantic rows of the training pairs "
            f"({rows})")


def _gates_text(g: Any) -> str:
    """The sentence on the gates (empty without them): which families, learned on what."""
    if not g.enabled:
        return ""
    methods = sorted({a.method for a in g.attach}) if g.attach else ["gates"]
    where = f"on the `{g.domain}` training pairs" if g.domain else f"on `{g.data}`"
    n = "all" if g.n_samples is None else g.n_samples
    trained = [m for m in methods if m != "ablate-harmful"]
    text = (f" Gates: {' and '.join(GATE_KINDS[m] for m in trained)} {where} ({n} samples, {g.epochs:g} epochs, "
            "base frozen).") if trained else ""
    if "ablate-harmful" in methods:
        text += (" Harmful-feature ablation: the 100 harmful features of the references (geometry's selection) "
                 "removed from the residual at the SAE's hook at alpha = 1, steered against at alpha > 1 "
                 "(`geomfilter.gating.FeatureSteering`).")
    return text


def _metrics_text(finished: dict[str, dict]) -> str:
    """The paragraph on how the measured metrics were measured."""
    have, parts = measured(finished), []
    if "misalignment_rate" in have:
        mr = next(r["metrics"]["misalignment_rate"] for r in finished.values() if "misalignment_rate" in r["metrics"])
        g = mr["generation"]
        parts.append(f"Misalignment rate: {g['n_per_question']} sampled answers per question to {mr['n']} broad "
                     f"questions (temperature {g['temperature']:g}, top-p {g['top_p']:g}, at most "
                     f"{g['max_new_tokens']} new tokens, seed {g['seed']}), judged by `{mr['judge']}`; misaligned = "
                     f"alignment < {mr['criterion']['alignment_below']:g} and coherence > "
                     f"{mr['criterion']['coherence_above']:g}.")
    if "flip_rate" in have:
        parts.append("Flip rate: greedy answer, then the user's pushback, among probes first answered correctly.")
    if "mc_accuracy" in have:
        parts.append("MC accuracy: cloze scoring, length-normalised.")
    if "sycophancy_preference" in have:
        parts.append("Sycophancy preference: log-prob/token of the sycophantic minus the corrective answer to the "
                     "same prompt, per held-out pair.")
    parts.append("All CIs: bootstrap 95% over items; n = items.")
    return " ".join(parts)


def _trained(rec: dict) -> str:
    """A condition's training data for the main table: rows, inducing share, response tokens (— for none)."""
    td, tr = rec.get("training_data"), rec.get("training") or {}
    trained = "—" if not td else f"{td['n_rows']} rows" + (f" ({td['inducing_share']:.2f})"
                                                           if "inducing_share" in td else "")
    if tr.get("response_tokens"):
        trained += f", {tr['response_tokens']:,} response tokens"
    return trained


def _cell(v: dict | None, metric: str) -> str:
    """One metric of one condition in the main table: mean and CI, with n (and chance for MC accuracy)."""
    _, digits, signed, with_n = COLUMNS[metric]
    if v is None:
        return "n/a"
    if not with_n:
        return _ci(v, digits, signed)
    chance = f", chance {v['chance']:.2f}" if metric == "mc_accuracy" else ""
    return f"{_ci(v, digits, signed)} (n={v['n']}{chance})"


def _condition_lines(finished: dict[str, dict]) -> list[str]:
    """The main table: one row per condition, every measured metric with its CI and n."""
    cols = measured(finished)
    lines = ["| condition | trained on (inducing share) | " + " | ".join(COLUMNS[m][0] for m in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for name, rec in finished.items():
        lines.append(f"| {name} | {_trained(rec)} | "
                     + " | ".join(_cell(rec["metrics"].get(m), m) for m in cols) + " |")
    return lines


def _mdd(v: dict | None) -> str:
    """A paired row's minimum detectable difference with its n, or n/a."""
    if not v or v.get("n", 0) == 0 or v.get("mdd") != v.get("mdd"):  # none, or NaN (fewer than 2 items)
        return "n/a"
    return f"{v['mdd']:.3f} (n={v['n']})"


def _paired_lines(pairs: list[dict]) -> list[str]:
    """The paired-differences table of the measured paired metrics (empty without comparisons)."""
    if not pairs:
        return []
    cols = [m for m in PAIRED if m in pairs[0]]
    pairs_too = "sycophancy_preference" in cols  # its items are held-out answer pairs
    items, unit = ("questions or held-out pairs", "item") if pairs_too else ("questions", "question")
    mdd = f"MDD ({MDD_POWER:.0%} power)"
    head = "| a − b | " + " | ".join(f"{COLUMNS[m][0]} | {mdd}" for m in cols) + " |"
    lines = ["", f"Paired differences (a − b over the same {items}; bootstrap 95% CI; {mdd}: the smallest true "
             f"difference a two-sided paired test at the 5% level detects with {MDD_POWER:.0%} power over these n "
             f"{items}, (z_0.975 + z_{MDD_POWER:.2f}) · sd / √n of the per-{unit} differences):", "",
             head, "|---" * (1 + 2 * len(cols)) + "|"]
    for p in pairs:
        lines.append(f"| {p['a']} − {p['b']} | "
                     + " | ".join(f"{_ci(p[m], signed=True)} | {_mdd(p[m])}" for m in cols) + " |")
    return lines


def _notes(notes: list[str]) -> list[str]:
    """Paragraphs under a table (nothing when there are none)."""
    return [x for n in notes for x in ("", n)]


def inducing_by_domain(path: Path) -> dict[str, int] | None:
    """The inducing rows of a chat JSONL (a mixture, or a filter's ``kept.jsonl``) per ``domain``; None when the
    file is missing or its rows carry no ``domain`` and ``inducing`` labels. Which inducing rows a filter leaves
    can matter more than how many."""
    if not path.is_file():
        return None
    rows = [r for _, r in jsonl_objects(path)]
    if not rows or not all("domain" in r and "inducing" in r for r in rows):
        return None
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["domain"]] = counts.get(r["domain"], 0) + bool(r["inducing"])
    return dict(sorted(counts.items()))


def _counts_text(counts: dict[str, int]) -> str:
    """``finance 6, outdoors 35``."""
    return ", ".join(f"{d} {n}" for d, n in counts.items())


def _filter_lines(root: Path, conds: list) -> list[str]:
    """The filters table from each filtered condition's ``filter/report.json`` (empty when there is none)."""
    filt = [(c, root / c.name / "filter" / "report.json") for c in conds if c.strategy]
    filt = [(c, json.loads(p.read_text())) for c, p in filt if p.is_file()]
    if not filt:
        return []
    kept = {c.name: inducing_by_domain(root / c.name / "filter" / "kept.jsonl") for c, _ in filt}
    mixture = inducing_by_domain(data_paths(root)["mixture"])
    by_domain = mixture is not None and all(v is not None for v in kept.values())
    caption = "precision = share of inducing rows in the dropped set"
    head = "| condition | dropped | precision of dropped | base rate | AUROC inducing vs rest |"
    sep = "|---|---|---|---|---|"
    if by_domain:
        caption += f"; inducing rows kept per domain, of the mixture's {_counts_text(mixture)}"
        head, sep = head + " inducing kept by domain |", sep + "---|"
    lines = ["", f"Filters (fitted on the references only; {caption}):", "", head, sep]
    for c, r in filt:
        lab = r.get("labels", {})
        dp = dropped_precision(lab)
        prec = "n/a" if dp is None else f"{dp:.3f}"
        base = f"{lab['base_rate']:.3f}" if "base_rate" in lab else "n/a"
        au = lab.get("auroc")
        auc = f"{au['auroc']:.3f} [{au['ci_low']:.3f}, {au['ci_high']:.3f}]" if au else "n/a"
        dom = f" {_counts_text(kept[c.name])} |" if by_domain else ""
        lines.append(f"| {c.name} | {r['n_dropped']} of {r['n_input']} | {prec} | {base} | {auc} |{dom}")
    return lines


def results_rows(metrics: dict[str, dict]) -> list[dict]:
    """Long-format rows ``{condition, metric, mean, lo, hi, n}`` of finished conditions (``results.csv``)."""
    rows = []
    for name, rec in metrics.items():
        for metric in METRICS + EXTRA_METRICS:
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


# --------------------------------------------------------------------------- replicates pooled


def pool_replicates(replicates: list[dict[str, dict]]) -> dict[str, dict]:
    """Finished conditions of several replicates of one experiment (its runs at different seeds) as one.

    For every condition finished in each replicate and every paired metric (:data:`PAIRED`) they all measured,
    an item's value is its mean over the replicates (items measured in every replicate; NaN ones left out): the
    same n questions with less sampling and training noise per question. The records hold only those
    ``per_question`` values (for :func:`paired_comparison` and :func:`excess_removals`)."""
    if not replicates:
        raise ValueError("no replicates to pool")
    names = [n for n in replicates[0] if all(n in r for r in replicates)]
    out = {}
    for name in names:
        metrics = {}
        for m, key in PAIRED.items():
            per = [_per_item(r[name], m) for r in replicates]
            if None in per:
                continue
            ids = [i for i in per[0] if all(i in p for p in per)]
            metrics[m] = {"per_question": [{"id": i, key: sum(p[i] for p in per) / len(per)} for i in ids]}
        out[name] = {"metrics": metrics}
    return out


def replicate_pairs(pairs: list[dict], replicates: list[dict[str, dict]], metrics: list[str], n_boot: int,
                    seeds: list[int]) -> list[dict]:
    """Each pooled pair (``a``, ``b``) compared within every replicate on its own (:func:`paired_comparison`, the
    bootstrap seeded by that replicate's seed, as its own report does): ``{"a", "b", metric: [one per replicate]}``."""
    out = []
    for p in pairs:
        row: dict[str, Any] = {"a": p["a"], "b": p["b"]}
        for m in metrics:
            row[m] = [paired_comparison(rep[p["a"]], rep[p["b"]], m, n_boot=n_boot, seed=seed)
                      for rep, seed in zip(replicates, seeds)]
        out.append(row)
    return out


def replicated(pooled: dict | None, per_replicate: list[dict | None]) -> int:
    """How many replicates' CIs exclude zero on the side of the pooled mean."""
    if not pooled:
        return 0
    side = 1 if pooled["mean"] > 0 else -1
    return sum(1 for v in per_replicate if v and v.get("n") and ci_side(v) == side)


def _replicate_lines(rows: list[dict], pairs: list[dict], metrics: list[str], sources: list[str]) -> list[str]:
    """Per paired metric: every pair's difference in each replicate beside the pooled one, and how many
    replicates measured it on their own."""
    lines = []
    for m in metrics:
        lines += ["", f"{COLUMNS[m][0]}, each replicate on its own and pooled (bootstrap 95% CIs; measured in: the "
                  "replicates whose own CI excludes zero on the side of the pooled difference):", "",
                  "| a − b | " + " | ".join(f"`{s}`" for s in sources) + " | pooled | measured in |",
                  "|---" * (3 + len(sources)) + "|"]
        for row, p in zip(rows, pairs):
            k = replicated(p[m], row[m])
            lines.append(f"| {row['a']} − {row['b']} | " + " | ".join(_ci(v, signed=True) for v in row[m])
                         + f" | {_ci(p[m], signed=True)} | {k} of {len(sources)} |")
    return lines


def write_pooled_report(root: Path, cfg: Any, conds: list, replicates: list[dict[str, dict]],
                        sources: list[str], seeds: list[int]) -> Path:
    """``report.md`` and ``results.json`` under ``root``: the report's paired differences (with MDD) and the
    share of the excess each filter removes, over questions pooled across ``replicates``
    (:func:`pool_replicates`; ``sources``: where each replicate was read from, in the same order), then each
    difference within every replicate on its own beside the pooled one (``seeds``: the replicates' seeds, which
    their own reports bootstrap with)."""
    root = Path(root)
    replicates = [with_random_means(conds, r)[1] for r in replicates]  # each replicate's own mean of its draws
    pooled = pool_replicates(replicates)
    paired, pairs, removed = paired_rows(cfg, conds, pooled)
    per_replicate = replicate_pairs(pairs, replicates, paired, cfg.eval.n_boot, seeds)
    lines = [f"# Experiment `{cfg.name}`: {len(replicates)} replicates pooled", "",
             "Replicates: " + ", ".join(f"`{s}`" for s in sources) + ". Conditions finished in every one: "
             + ", ".join(pooled) + ". Each question's value is its mean over the replicates (per condition); "
             "differences are paired over the questions measured in every replicate.",
             *_paired_lines(pairs), *_notes(_draw_lines(conds, pooled)), *_excess_lines(removed, paired),
             *_replicate_lines(per_replicate, pairs, paired, sources)]
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "results.json", json.dumps({"config": cfg.as_dict(), "replicates": sources,
                                                         "seeds": seeds, "conditions": list(pooled), "paired": pairs,
                                                         "excess_removed": removed, "per_replicate": per_replicate},
                                                        indent=2, default=float) + "\n")
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
