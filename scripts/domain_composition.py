"""Which domains' inducing rows each fine-tune trained on, against the misalignment rate it reached: across the
finished conditions of experiments on one mixture (filtered, random, matched controls, both seeds).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/domain_composition.py \
        runs/organism-sycophancy75{,-seed1,-redraw,-redraw-seed1,-matched,-matched-seed1,-share,-share-seed1} \
        --rows 64 --judge offline-residual --out data/results/organism/sycophancy75_matched/domain_composition.md

A filter that beats random removal end to end may do it by keeping few rows of the domains that carry the shift.
For every condition that an experiment folder's ``config.json`` plans and that is a finished fine-tune on the mixture
(``<condition>/metrics.json``; the others, ``base`` and unfinished ones, are listed as passed over), this reads the
rows it trained on (the fine-tune's own data files) and counts the inducing rows per domain and the other rows, and
reads its misalignment rate (the mean over questions of the share of answers flagged; ``--judge``: scored again by that judge,
as ``scripts/compare_runs.py --judge`` reads it, the scores kept beside the answers). Among the fine-tunes of
``--rows`` rows (equal training length), it reports the Pearson correlation of the rate with each count, with a
bootstrap CI that resamples training sets (the fine-tunes of one set of rows, by id, at several seeds are one
cluster: ``stats.cluster_bootstrap``).

This is an observational reading over conditions that were not designed to vary one domain at a time: a lead for
which control to run (``scripts/build_matched_random.py --domains``), not an effect.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from compare_runs import read_condition  # noqa: E402
from rejudge_experiment import RATE, planned_conditions  # noqa: E402

from geomfilter.experiment import METRICS_FILE  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.finetune_config import read_run  # noqa: E402
from geomfilter.judges import load_judge  # noqa: E402
from geomfilter.samples import read_qa_rows  # noqa: E402
from geomfilter.stats import cluster_bootstrap  # noqa: E402

OTHER = "other"  # the count of rows that do not induce, whatever their domain


def composition(data_files: list[str]) -> tuple[Counter, list[str]]:
    """Inducing rows per domain, and the other rows as ``OTHER``, of the files a fine-tune trained on; their ids."""
    counts: Counter = Counter()
    ids = []
    for f in data_files:
        for row in read_qa_rows(ROOT / f, ("id", "domain", "inducing"), SystemExit):
            counts[str(row["domain"]) if row["inducing"] else OTHER] += 1
            ids.append(str(row["id"]))
    return counts, ids


def fine_tune_record(cond: Path, judge: tuple[str, object] | None) -> dict:
    """A finished fine-tune's folder, training files and row ids, counts per domain, and rate."""
    meta = read_run(cond / "run")
    files = list(meta["config"]["data"])
    counts, ids = composition(files)
    if sum(counts.values()) != meta["n_samples"]:
        raise SystemExit(f"{cond}: trained on {meta['n_samples']} rows, its data files hold {sum(counts.values())}"
                         " (a subset: which rows is not recorded)")
    return {"condition": str(cond), "data": files, "ids": sorted(ids), "rows": meta["n_samples"],
            "counts": dict(counts), "rate": read_condition(cond, judge)["metrics"][RATE]["mean"]}


def read_fine_tunes(experiments: list[Path], judge: tuple[str, object] | None) -> tuple[list[dict], list[str]]:
    """One record per finished fine-tune on the mixture among the experiments' conditions (those their
    ``config.json`` plans that have a folder), and the conditions passed over with why."""
    records, passed = [], []
    for exp in experiments:
        if not exp.is_dir():
            raise SystemExit(f"{exp}: no such experiment folder")
        for c in planned_conditions(exp):
            if not (exp / c.name).is_dir():  # planned by the config, never run: nothing to pass over
                continue
            if c.kind != "finetune":
                passed.append(f"{c.name} of {exp} (a {c.kind} condition, not a fine-tune on the mixture)")
            elif not (exp / c.name / METRICS_FILE).is_file():
                passed.append(f"{c.name} of {exp} (not finished)")
            else:
                records.append(fine_tune_record(exp / c.name, judge))
    return records, passed


def training_set(record: dict) -> str:
    """A fine-tune's training rows as one key: fine-tunes on the same rows (at other seeds) share it."""
    return "|".join(record["ids"])


def correlations(records: list[dict], n_boot: int) -> dict[str, dict]:
    """Pearson r of the rate with each domain's count, CI by resampling training sets (their row ids) as clusters."""
    keys = sorted({k for r in records for k in r["counts"]} - {OTHER}) + [OTHER]
    y = np.array([r["rate"] for r in records])
    groups = [training_set(r) for r in records]
    out = {}
    for k in keys:
        x = np.array([r["counts"].get(k, 0) for r in records], dtype=float)

        def r_of(idx, x=x):
            xs, ys = x[idx], y[idx]
            return float(np.corrcoef(xs, ys)[0, 1]) if xs.std() > 0 and ys.std() > 0 else float("nan")
        out[k] = cluster_bootstrap(groups, r_of, n_boot=n_boot)
    return out


def to_markdown(res: dict, command: str) -> str:
    keys = list(res["correlations"])
    lines = [f"# Domain composition of the fine-tunes against their misalignment rate ({res['judge']})", "",
             f"`{command}`", "",
             f"{len(res['fine_tunes'])} fine-tunes of {res['rows']} rows; {res['n_sets']} distinct training sets "
             "(the CI resamples those). Observational: a lead for a control, not an effect.", "",
             "| count of | r with the rate | 95 % CI |", "|---|---|---|"]
    for k, c in res["correlations"].items():
        name = "rows that do not induce" if k == "other" else f"{k} inducing rows"
        lines.append(f"| {name} | {c['value']:+.2f} | [{c['lo']:+.2f}, {c['hi']:+.2f}] |")
    lines += ["", "| fine-tune | " + " | ".join(keys) + " | rate |", "|---|" + "---|" * (len(keys) + 1)]
    for r in sorted(res["fine_tunes"], key=lambda r: r["rate"]):
        lines.append(f"| {r['condition']} | " + " | ".join(str(r["counts"].get(k, 0)) for k in keys)
                     + f" | {r['rate']:.3f} |")
    if res["other_lengths"]:
        lines += ["", "Finished fine-tunes of other lengths (not in the correlations): " + "; ".join(
            f"{r['condition']} ({r['rows']} rows, rate {r['rate']:.3f})" for r in res["other_lengths"])]
    if res["passed_over"]:
        lines += ["", "Passed over: " + "; ".join(res["passed_over"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", type=Path, nargs="+", help="experiment folders (runs/<name>)")
    ap.add_argument("--rows", type=int, required=True,
                    help="the training length compared: fine-tunes of this many rows")
    ap.add_argument("--judge", default=None, help="read the rate by this judge (e.g. offline-residual) instead of "
                    "each experiment's own")
    ap.add_argument("--out", type=Path, required=True, help="markdown file (a .json beside it)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    judge = (args.judge, load_judge(args.judge)) if args.judge else None
    records, passed = read_fine_tunes(args.experiments, judge)
    same = [r for r in records if r["rows"] == args.rows]
    n_sets = len({training_set(r) for r in same})
    if n_sets < 3:
        raise SystemExit(f"{len(same)} fine-tunes of {args.rows} rows on {n_sets} training sets: a correlation needs "
                         "at least 3 sets")
    command = script_command(__file__, argv)
    res = {"judge": args.judge or "each experiment's own", "rows": args.rows, "n_sets": n_sets,
           "correlations": correlations(same, args.n_boot),
           "fine_tunes": [{k: v for k, v in r.items() if k != "ids"} for r in same],
           "other_lengths": [{k: v for k, v in r.items() if k != "ids"} for r in records if r["rows"] != args.rows],
           "passed_over": passed}
    md = to_markdown(res, command)
    write_json_and_markdown(args.out.parent, args.out.stem, {"command": command, **res}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
