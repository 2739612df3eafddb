"""Pool the replicates of one experiment (its runs at several seeds) question by question (issues 17, 19).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/pool_replicates.py configs/medium.yaml runs/medium runs/medium-seed1 \
        --out data/results/experiment/medium-r64-pooled

Every replicate measures the same broad questions. Per condition finished in every replicate, a question's value
is its mean over the replicates (``geomfilter.report.pool_replicates``); the report's paired differences (each
trained condition − base, each filter − misaligned and − random, with CI, n and MDD) and the share of the
unfiltered fine-tune's excess that each filter removes are then computed over those questions: the same n, less
noise per question than one replicate. Beside them, each difference within every replicate on its own (bootstrapped
with the replicate's seed, from its ``config.json``, as its own report is) and in how many of them its CI excludes
zero on the pooled side: whether the effect replicates seed by seed. Writes ``report.md`` and ``results.json`` under
``--out``. Reads the per-question records of ``RUN/<condition>/metrics.json`` (the runs folders, not the committed
reports).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.conditions import plan_conditions  # noqa: E402
from geomfilter.config import ExperimentConfig  # noqa: E402
from geomfilter.experiment import finished_records  # noqa: E402
from geomfilter.report import write_pooled_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="the experiment's YAML (its conditions and n_boot)")
    ap.add_argument("runs", type=Path, nargs="+", help="the replicates' run folders (runs/<name>[-seedS])")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        raise SystemExit("give at least two run folders to pool")
    cfg = ExperimentConfig.from_yaml(args.config)
    conds = plan_conditions(cfg)
    replicates, seeds = [], []
    for run in args.runs:
        if not run.is_dir():
            raise SystemExit(f"{run}: no such run folder")
        if not (run / "config.json").is_file():
            raise SystemExit(f"{run}: no config.json (written by geomfilter experiment; it holds the seed that the "
                             "replicate's own CIs are bootstrapped with)")
        seeds.append(int(json.loads((run / "config.json").read_text())["seed"]))
        done = finished_records(run, conds)
        if not done:
            raise SystemExit(f"{run}: no finished condition of {args.config}")
        replicates.append(done)
    path = write_pooled_report(args.out, cfg, conds, replicates, [str(r) for r in args.runs], seeds)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
