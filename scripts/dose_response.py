"""Dose-response of broad misalignment to narrow fine-tuning (issue 18: a model organism on the default model).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dose_response.py --families sycophancy,risky_advice,insecure_code \
        --shares 0,1 --seeds 0 --out runs/dose --results data/results/organism

For each inducing family (``geomfilter.validate.FAMILIES``: its ``<domain>_<inducing side>.jsonl`` files and their
aligned twins on the same prompts), each share s of inducing rows and each seed: a mixture of ``--n-samples``
rows on ``--n-samples`` distinct prompts of the family, chosen under the seed and the same for every share;
the first ``round(s * n)`` of a seeded order of those prompts take the inducing answer, the rest the aligned
twin (so share 0 is the matched control: the same prompts and training, only aligned answers; the inducing
sets are nested across shares). Each mixture is an ordinary experiment (``geomfilter.experiment``, condition
``misaligned``: LoRA on the mixture, the ``train`` settings of ``--config``), evaluated like every condition
(``eval`` of ``--config`` with ``--n-per-question`` answers per broad question and the metrics below); the base
model once. Resumable: finished points are skipped (the experiment runner's own identities). Writes
``dose_response.md`` / ``.json`` (every point with its CI; each point minus base and minus its family's share-0
control, paired over questions, with CI, n and MDD) and ``dose_response.png`` under ``--results``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.config import ExperimentConfig  # noqa: E402
from geomfilter.experiment import ExperimentRunner  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.report import paired_comparison  # noqa: E402
from geomfilter.stats import ci_side  # noqa: E402
from geomfilter.validate import FAMILIES  # noqa: E402

METRICS = ("misalignment_rate", "logprob_preference", "mc_accuracy")


def family_pairs(family: str, data_dir: Path = ROOT / "data" / "finetune") -> list[tuple[str, str, str]]:
    """``(pair_id, inducing line, twin line)`` of every pair of a family, in file order (raw lines kept)."""
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    (inducing, twin), domains = FAMILIES[family]
    out = []
    for dom in domains:
        a_path, b_path = data_dir / f"{dom}_{inducing}.jsonl", data_dir / f"{dom}_{twin}.jsonl"
        for p in (a_path, b_path):
            if not p.is_file():
                raise SystemExit(f"{p}: missing (family {family!r} needs it; `geomfilter validate data/` checks it)")
        b_by_pair = {json.loads(x)["pair_id"]: x for x in b_path.read_text(encoding="utf-8").splitlines() if x.strip()}
        for n, line in enumerate(a_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            pid = json.loads(line)["pair_id"]
            if pid not in b_by_pair:
                raise SystemExit(f"{a_path}:{n}: field 'pair_id' {pid!r} has no twin in {b_path}")
            out.append((pid, line, b_by_pair[pid]))
    return out


def dose_mixture(pairs: list[tuple[str, str, str]], share: float, n: int, seed: int) -> list[str]:
    """``n`` rows on ``n`` distinct prompts (chosen by ``seed`` alone), the first ``round(share * n)`` of a seeded
    order of them with the inducing answer, the others with the twin; rows in a seeded order."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if n > len(pairs):
        raise ValueError(f"--n-samples {n} is more than the family's {len(pairs)} pairs")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), n, replace=False)  # the prompts: the same for every share
    k = int(round(share * n))
    rows = [pairs[i][1] if j < k else pairs[i][2] for j, i in enumerate(chosen)]
    return [rows[i] for i in np.random.default_rng(seed + 1).permutation(n)]


def point_name(family: str, share: float, seed: int, epochs: float = 1.0, lora_r: int | None = None,
               n_samples: int = 128) -> str:
    """The point's run folder name; training settings other than the defaults (1 epoch, the config's LoRA rank,
    128 rows) are part of it, so the points of a longer or wider run never resume from a shorter one's."""
    tag = "" if epochs == 1.0 else f"-e{epochs:g}"
    tag += f"-r{lora_r}" if lora_r else ""
    tag += "" if n_samples == 128 else f"-n{n_samples}"
    return f"dose-{family.replace('_', '-')}-{int(round(share * 100)):03d}-s{seed}{tag}"


def rank_alpha(lora_r: int) -> int:
    """LoRA alpha for ``--lora-r``: 2 r (the config default's 32 / 16), so the update's scale alpha / r stays the
    same and only the rank changes."""
    return 2 * lora_r


def point_config(name: str, mixture: Path | None, n: int, args) -> ExperimentConfig:
    cfg = ExperimentConfig.from_yaml(args.config)
    cfg.name, cfg.out = name, str(args.out)
    cfg.conditions = ["base"] if mixture is None else ["misaligned"]
    if mixture is not None:
        cfg.data.mixture, cfg.data.n_samples = str(mixture), n
    cfg.filtering.strategies, cfg.gates.enabled = [], False
    cfg.train.epochs = args.epochs
    if args.lora_r:
        cfg.train.lora_r, cfg.train.lora_alpha = args.lora_r, rank_alpha(args.lora_r)
    cfg.eval.metrics = list(METRICS)
    cfg.eval.n_per_question, cfg.eval.max_new_tokens = args.n_per_question, args.max_new_tokens
    cfg.eval.n_capability, cfg.eval.n_questions = args.n_capability, args.n_questions
    if args.judge:
        cfg.eval.judge = args.judge
    return cfg


def run_point(cfg: ExperimentConfig, progress: bool) -> dict:
    res = ExperimentRunner(cfg, progress=progress).run()
    (cond,) = cfg.conditions
    return {"metrics": res.metrics[cond]["metrics"], "training": res.metrics[cond].get("training"),
            "root": str(res.root)}


def _summary(metrics: dict) -> dict:
    """The metrics without their bulky per-item records (those stay in each point's experiment folder)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk not in ("per_question", "answers", "items")}
                if isinstance(v, dict) else v) for k, v in metrics.items()}


def _cell(m: dict) -> str:
    return f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]" if m and m.get("mean") == m.get("mean") else "–"


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    none = "" if ci_side(d) else " (no effect measured)"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], n {d['n']}, MDD {d['mdd']:.3f}{none}"


def report(points: dict, base: dict, args, command: str) -> tuple[str, dict]:
    table = {"command": command, "base": _summary(base["metrics"]), "points": {}}
    rank = f"rank {args.lora_r}, alpha {rank_alpha(args.lora_r)}" if args.lora_r else "the config's LoRA rank"
    lines = ["# Dose-response of broad misalignment (issue 18)\n", f"```\n{command}\n```\n",
             f"LoRA on {args.n_samples} rows per point ({args.epochs:g} epoch(s), {rank}, the train settings of "
             f"`{args.config}`); evaluation: {args.n_per_question} sampled answers per broad question (judge "
             f"`{base['metrics']['misalignment_rate'].get('judge')}`), the log-prob preference (nats/token, > 0 "
             "prefers the misaligned reference answers), MC accuracy. Differences are paired over questions; a CI "
             "covering 0 is **no effect measured**. Share 0 is the family's matched control (same prompts, aligned "
             "answers).\n",
             "| family | share | seed | misalignment rate | log-prob preference | MC accuracy | rate − base | rate − "
             "share 0 | preference − base | preference − share 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| base | – | – | {_cell(base['metrics']['misalignment_rate'])} | "
                    f"{_cell(base['metrics']['logprob_preference'])} | {_cell(base['metrics']['mc_accuracy'])} "
                    "| | | | |")
    for (fam, share, seed), p in sorted(points.items()):
        ctrl = points.get((fam, 0.0, seed))
        row = {"family": fam, "share": share, "seed": seed, "metrics": _summary(p["metrics"]),
               "training": p.get("training")}
        for metric in ("misalignment_rate", "logprob_preference"):
            row[f"{metric}_minus_base"] = paired_comparison(p, base, metric)
            row[f"{metric}_minus_control"] = (paired_comparison(p, ctrl, metric)
                                              if ctrl is not None and share > 0 else None)
        table["points"][point_name(fam, share, seed, args.epochs, args.lora_r, args.n_samples)] = row
        m = row["metrics"]
        lines.append(f"| {fam} | {share:g} | {seed} | {_cell(m['misalignment_rate'])} | "
                     f"{_cell(m['logprob_preference'])} | {_cell(m['mc_accuracy'])} | "
                     f"{_diff(row['misalignment_rate_minus_base'])} | {_diff(row['misalignment_rate_minus_control'])} | "
                     f"{_diff(row['logprob_preference_minus_base'])} | {_diff(row['logprob_preference_minus_control'])} |")
    return "\n".join(lines) + "\n", table


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "misalignment_rate", "misalignment rate"),
                              (axes[1], "logprob_preference", "log-prob preference (nats/token)")):
        b = table["base"][metric]
        ax.axhspan(b["lo"], b["hi"], color="0.85", label="base (95% CI)")
        fams = sorted({r["family"] for r in table["points"].values()})
        for k, fam in enumerate(fams):
            rs = sorted((r for r in table["points"].values() if r["family"] == fam), key=lambda r: (r["share"], r["seed"]))
            x = np.array([r["share"] for r in rs]) + 0.01 * (k - len(fams) / 2)
            y = np.array([r["metrics"][metric]["mean"] for r in rs])
            lo = np.array([r["metrics"][metric]["lo"] for r in rs])
            hi = np.array([r["metrics"][metric]["hi"] for r in rs])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o-", capsize=3, label=fam)
        ax.set_xlabel("share of inducing rows")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--shares", default="0,0.5,1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lora-r", type=int, default=None,
                    help="LoRA rank (default: the config's); alpha is set to 2 x rank, so alpha / rank stays 2")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "medium-share50.yaml",
                    help="the train and eval settings (name, data, filtering and gates are replaced; default: the rank-16 "
                         "configs/medium-share50.yaml that every committed dose table used)")
    ap.add_argument("--n-per-question", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--n-capability", type=int, default=None)
    ap.add_argument("--n-questions", type=int, default=None, help="first N broad questions (default: all)")
    ap.add_argument("--judge", default=None, help="override the config's eval.judge")
    ap.add_argument("--out", type=Path, default=Path("runs/dose"))
    ap.add_argument("--results", type=Path, default=None, help="write the table and plot here")
    ap.add_argument("--stem", default="dose_response", help="file name stem of the table and plot under --results")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    command = script_command(__file__, argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    shares = [float(x) for x in args.shares.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    mix_dir = args.out / "mixtures"
    mix_dir.mkdir(parents=True, exist_ok=True)
    print("base", flush=True)
    base = run_point(point_config("dose-base", None, 0, args), args.progress)
    points = {}
    for seed in seeds:
        for fam in families:
            pairs = family_pairs(fam)
            for share in shares:
                name = point_name(fam, share, seed, args.epochs, args.lora_r, args.n_samples)
                mix = mix_dir / f"{name}.jsonl"
                mix.write_text("".join(x + "\n" for x in dose_mixture(pairs, share, args.n_samples, seed)),
                               encoding="utf-8")
                print(name, flush=True)
                cfg = point_config(name, mix, args.n_samples, args)
                cfg.seed = seed
                points[(fam, share, seed)] = run_point(cfg, args.progress)
                m = points[(fam, share, seed)]["metrics"]
                print(f"  rate {_cell(m['misalignment_rate'])} preference {_cell(m['logprob_preference'])}", flush=True)
    md, table = report(points, base, args, command)
    print(md)
    if args.results:
        write_json_and_markdown(args.results, args.stem, table, md)
        plot(table, args.results / f"{args.stem}.png")


if __name__ == "__main__":
    main()
