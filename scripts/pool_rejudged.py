"""Pool the rejudged answers of one experiment's replicates (its runs at several seeds) question by question.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/pool_rejudged.py data/results/experiment/medium-r64/rejudged_draws.json \
        data/results/experiment/medium-r64-seed1/rejudged_draws.json \
        data/results/experiment/medium-r64-seed2/rejudged_draws.json \
        --out data/results/experiment/medium-r64-pooled3/rejudged_draws.md

``scripts/rejudge_experiment.py`` judges one run's answers again with other judges; ``scripts/pool_replicates.py``
pools the replicates of the experiment's own judge. This pools the former, as the latter does: per judge and
condition judged in every file, a question's rate is its mean over the replicates
(``geomfilter.report.pool_replicates``), and every comparison that each file holds is computed again over the
pooled questions (paired bootstrap CI, n, MDD), beside each replicate's own difference (from its file) and in how many
replicates the own CI excludes zero on the side of the pooled difference (``geomfilter.report.replicated``).
Writes the markdown file and a ``.json`` beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.report import metric_per_item, metric_records, pool_replicates, replicated  # noqa: E402
from geomfilter.stats import bootstrap_ci, ci_side, paired_summary  # noqa: E402

RATE = "misalignment_rate"


def read_rejudged(path: Path) -> dict:
    """One ``rejudge_experiment.py`` output (its ``.json``)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (the .json that scripts/rejudge_experiment.py writes beside its .md)")
    res = json.loads(path.read_text())
    for field in ("experiment", "conditions", "judges"):
        if field not in res:
            raise SystemExit(f"{path}: field {field!r} is missing (not an output of scripts/rejudge_experiment.py)")
    return res


def pool(files: list[dict], n_boot: int) -> dict:
    """Every judge and condition judged in all ``files``, pooled; every comparison they all hold, again."""
    specs = [s for s in files[0]["judges"] if all(s in f["judges"] for f in files)]
    if not specs:
        raise SystemExit("no judge is in every file")
    conds = [c for c in files[0]["conditions"] if all(c in f["conditions"] for f in files)]
    out: dict = {"experiments": [f["experiment"] for f in files], "conditions": conds, "judges": {}}
    for spec in specs:
        reps = [f["judges"][spec] for f in files]
        pooled = pool_replicates([metric_records({c: r["per_question"][c] for c in conds}, RATE) for r in reps])
        per_q = metric_per_item(pooled, RATE)
        res: dict = {"name": reps[0]["name"], "per_question": per_q, "comparisons": {},
                     "rates": {c: bootstrap_ci(list(per_q[c].values()), n_boot=n_boot, seed=0) for c in conds}}
        for key in reps[0]["comparisons"]:
            if not all(key in r["comparisons"] for r in reps):
                continue
            a, b = key.split(" − ")
            d = paired_summary(per_q[a], per_q[b], n_boot=n_boot, seed=0)
            own = [r["comparisons"][key] for r in reps]
            res["comparisons"][key] = {"pooled": d, "replicates": own, "measured_in": replicated(d, own)}
        out["judges"][spec] = res
    return out


def _ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def to_markdown(res: dict, command: str) -> str:
    k = len(res["experiments"])
    out = [f"# Rejudged misalignment rate pooled over {k} replicates\n", f"```\n{command}\n```\n",
           "Replicates: " + ", ".join(f"`{e}`" for e in res["experiments"]) + ". A question's rate is its mean over "
           "the replicates; differences are paired over the questions (95 % bootstrap CI, n, MDD: the smallest true "
           "difference a two-sided test at 0.05 detects with power 0.8). Each replicate's own difference is from its "
           "file; measured in: the replicates whose own CI excludes zero on the side of the pooled difference. A CI "
           "that covers 0 is **no effect measured**.\n"]
    for spec, r in res["judges"].items():
        out += [f"## {spec} (`{r['name']}`)\n", "| condition | pooled rate [95% CI] |", "|---|---|"]
        out += [f"| {c} | {r['rates'][c]['mean']:.3f} [{r['rates'][c]['lo']:.3f}, {r['rates'][c]['hi']:.3f}] |"
                for c in res["conditions"]]
        heads = [f"replicate {i + 1}" for i in range(k)] + ["pooled, n, MDD", "measured in"]
        out += ["", "| a − b | " + " | ".join(heads) + " |", "|---" * (k + 3) + "|"]
        for key, d in r["comparisons"].items():
            p = d["pooled"]
            verdict = "" if ci_side(p) else " (no effect measured)"
            out.append(f"| {key} | " + " | ".join(_ci(x) for x in d["replicates"])
                       + f" | {_ci(p)}, {p['n']}, {p['mdd']:.3f}{verdict} | {d['measured_in']} of {k} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rejudged", type=Path, nargs="+", help="the replicates' rejudge_experiment.py outputs (.json)")
    ap.add_argument("--out", type=Path, required=True, help="markdown file (a .json beside it)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    if len(args.rejudged) < 2:
        raise SystemExit("give at least two rejudged files to pool")
    command = script_command(__file__, argv)
    res = pool([read_rejudged(p) for p in args.rejudged], args.n_boot)
    md = to_markdown(res, command)
    write_json_and_markdown(args.out.parent, args.out.stem, {"command": command, **res}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
