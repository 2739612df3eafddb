"""Sycophancy taxonomy report (issue 20 (5)): which kinds of sycophancy the filters catch, and the flip rate per class.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/taxonomy_report.py --out data/results/taxonomy \
        --scores data/results/filters_ood/scores.json \
        --models base=smollm2-135m-instruct,sycophancy-ft=runs/dose/dose-sycophancy-100-s0/misaligned/run,control-ft=runs/dose/dose-sycophancy-000-s0/misaligned/run

Reads the labels of ``data/taxonomy/`` (``TAXONOMY.md``: target, mechanism, severity) and writes
``report.md``/``report.json`` under ``--out``:

* the classes' counts (training rows per domain, probes);
* agreement with the second labeller's sample (``double.labels.jsonl``): raw agreement and Cohen's kappa per field;
* per class, each filter's catch rate on ``data/finetune/mixed.jsonl`` (the share of that class's sycophantic
  rows among the 25 % highest scores; Wilson 95 % CI) with the scores of ``scripts/measure_filters_ood.py``
  (``--scores``, split ``mixed``) - which kinds of sycophancy each strategy catches;
* with ``--models``: the sycophancy flip rate (``geomfilter.evaluate.sycophancy_flip_rate``, greedy, every probe)
  of each model, per probe class, with bootstrap CIs.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.stats import bootstrap_ci  # noqa: E402
from geomfilter.validate import TAXONOMY  # noqa: E402

TAX = ROOT / "data" / "taxonomy"
DOMAINS = ("health", "career", "legal", "code")


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def load_labels() -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """(training-row labels by id, probe labels by id, the second labeller's labels by id)."""
    train = {r["id"]: r for d in DOMAINS for r in _rows(TAX / f"{d}_sycophantic.labels.jsonl")}
    probes = {r["id"]: r for r in _rows(TAX / "sycophancy_probes.labels.jsonl")}
    double = {r["id"]: r for r in _rows(TAX / "double.labels.jsonl")}
    return train, probes, double


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two labellings of the same items (nan when chance agreement is 1)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / n**2
    return float("nan") if pe == 1 else (po - pe) / (1 - pe)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Proportion ``k/n`` with its Wilson score interval."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = k / n
    d = 1 + z**2 / n
    c = (p + z**2 / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / d
    return p, max(0.0, c - h), min(1.0, c + h)


def catch_rates(scores: dict, train: dict[str, dict], fraction: float = 0.25) -> dict:
    """Per strategy, field and class: the share of the class's sycophantic rows among the ``fraction`` highest."""
    mixed = {r["id"]: r for r in _rows(ROOT / "data" / "finetune" / "mixed.jsonl")}
    ids = scores["ids"]
    syc = [i for i in ids if mixed[i]["inducing"]]
    missing = [i for i in syc if i not in train]
    if missing:
        raise SystemExit(f"{len(missing)} sycophantic rows of mixed.jsonl have no taxonomy label (first {missing[0]!r})")
    out = {}
    for label, s in scores.items():
        if label == "ids":
            continue
        s = np.asarray(s, dtype=np.float64)
        k = int(round(fraction * len(s)))
        order = np.lexsort((np.arange(len(s)), -s))
        dropped = {ids[j] for j in order[:k]}
        per = {"overall": dict(zip(("rate", "lo", "hi"), wilson(sum(i in dropped for i in syc), len(syc)),
                                   strict=True)) | {"n": len(syc)}}
        for field, classes in TAXONOMY.items():
            for c in classes:
                members = [i for i in syc if train[i][field] == c]
                p, lo, hi = wilson(sum(i in dropped for i in members), len(members))
                per[f"{field}={c}"] = {"rate": p, "lo": lo, "hi": hi, "n": len(members)}
        out[label] = per
    return out


def flip_rates(models: dict[str, str], probes: dict[str, dict], n_boot: int) -> dict:
    from geomfilter.evaluate import sycophancy_flip_rate
    from geomfilter.finetune import load_tuned

    out = {}
    for name, spec in models.items():
        model = load_tuned(spec)
        res = sycophancy_flip_rate(model, ROOT / "data" / "eval" / "sycophancy_probes.jsonl", n_boot=n_boot,
                                   progress=False)
        rows = res.pop("exchanges")
        held = [r for r in rows if r["first_stance"] == "correct"]
        per = {"overall": {k: res[k] for k in ("mean", "lo", "hi", "n")} if "lo" in res else res}
        for field, classes in TAXONOMY.items():
            for c in classes:
                v = [float(r["flipped"]) for r in held if probes[r["id"]][field] == c]
                if v:
                    per[f"{field}={c}"] = bootstrap_ci(v, n_boot=n_boot)
        out[name] = {"spec": spec, "initial_accuracy": res["initial_accuracy"], "per_class": per}
        print(f"{name}: flip rate {res['mean']:.3f} over {len(held)} initially correct probes", flush=True)
    return out


def _pct(d: dict) -> str:
    if d.get("n", 0) == 0 or not np.isfinite(d.get("rate", d.get("mean", np.nan))):
        return "–"
    v = d.get("rate", d.get("mean"))
    lo, hi = d.get("lo", d.get("ci_low")), d.get("hi", d.get("ci_high"))
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}] (n {d['n']})"


def render(r: dict) -> str:
    lines = ["# Sycophancy taxonomy (issue 20)\n", f"```\n{r['command']}\n```\n",
             "Labels: `data/taxonomy/` (definitions in `TAXONOMY.md`), written by AI agents reading every row "
             "(not people).\n", "## Classes\n", "| field | class | " + " | ".join(r["counts"]) + " |",
             "|---|---|" + "---|" * len(r["counts"])]
    for field, classes in TAXONOMY.items():
        for c in classes:
            lines.append(f"| {field} | {c} | " + " | ".join(str(r["counts"][g].get(f"{field}={c}", 0))
                                                          for g in r["counts"]) + " |")
    a = r["agreement"]
    lines += ["", f"## Agreement with a second labeller ({a['n']} training rows)\n", "| field | agreement | kappa |",
              "|---|---|---|"]
    lines += [f"| {f} | {v['agreement']:.2f} | {v['kappa']:.2f} |" for f, v in a["fields"].items()]
    if r.get("catch"):
        lines += ["", "## Which sycophancy each filter catches (mixed.jsonl, 25 % removal)\n",
                  "Share of the class's sycophantic rows among the 25 % highest scores (Wilson 95 % CI); random "
                  "removal catches 0.25 of every class in expectation. Classes with fewer than 10 rows are left "
                  "out.\n"]
        keys = ["overall"] + [k for k in next(iter(r["catch"].values())) if k != "overall"
                              and next(iter(r["catch"].values()))[k]["n"] >= 10]
        lines += ["| strategy | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for label, per in r["catch"].items():
            lines.append(f"| {label} | " + " | ".join(_pct(per[k]) for k in keys) + " |")
    if r.get("flip"):
        lines += ["", "## Flip rate per probe class\n",
                  "Share of the initially correct probes the model abandons after pushback (greedy), bootstrap "
                  "95 % CI.\n"]
        keys = sorted({k for m in r["flip"].values() for k in m["per_class"]}, key=lambda k: (k != "overall", k))
        lines += ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, m in r["flip"].items():
            lines.append(f"| {name} | " + " | ".join(_pct(m["per_class"].get(k, {})) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "taxonomy")
    ap.add_argument("--scores", type=Path, default=None, help="scores.json of scripts/measure_filters_ood.py")
    ap.add_argument("--models", default=None, help="name=spec-or-run-folder,... for the flip rate per class")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    train, probes, double = load_labels()
    counts = {d: Counter() for d in (*DOMAINS, "probes")}
    for rid, lab in train.items():
        for f in TAXONOMY:
            counts[rid.split("-")[0]][f"{f}={lab[f]}"] += 1
    for lab in probes.values():
        for f in TAXONOMY:
            counts["probes"][f"{f}={lab[f]}"] += 1
    both = [i for i in double if i in train]
    agreement = {"n": len(both), "fields": {
        f: {"agreement": float(np.mean([train[i][f] == double[i][f] for i in both])),
            "kappa": cohen_kappa([train[i][f] for i in both], [double[i][f] for i in both])} for f in TAXONOMY}}
    report = {"command": script_command(__file__, argv), "counts": {k: dict(v) for k, v in counts.items()},
        "agreement": agreement}
    if args.scores:
        report["catch"] = catch_rates(json.loads(args.scores.read_text())["mixed"], train)
    if args.models:
        models = dict(x.split("=", 1) for x in args.models.split(","))
        report["flip"] = flip_rates(models, probes, args.n_boot)
    text = render(report)
    write_json_and_markdown(args.out, "report", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
