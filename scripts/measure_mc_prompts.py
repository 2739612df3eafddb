"""Does fine-tuning raise MC accuracy, or only the way the experiments pose the question? (issue 18's MC clause)

The experiments' capability metric scores each choice as the assistant's whole answer (``mc_accuracy``, prompt
``chat``). After every fine-tune of the organism it rose 7-13 points, the aligned-twin controls included, while the
organism target asks it to stay within 5 points of base. If the rise came from the chat framing (a fine-tune that
makes short replies likelier), it would vanish when the choice follows "The answer is:" in the assistant's turn, or
follows "Answer:" in plain text with no chat template. For the base model and each fine-tune: accuracy under the
three prompts (:data:`geomfilter.evaluate.MC_PROMPTS`), by per-token mean (the metric) and by summed log-prob, and
each fine-tune − base paired over the questions (bootstrap CI, n, MDD; :func:`geomfilter.stats.paired_summary`).
A run folder inside an experiment condition (``runs/medium/misaligned/run``) is checked against the accuracy that
the experiment recorded for the ``chat`` prompt.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_mc_prompts.py runs/medium/misaligned/run \\
        runs/medium-seed1/misaligned/run runs/medium-seed2/misaligned/run --out data/results/organism/mc_prompts.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.evaluate import MC_PROMPTS, mc_accuracy, read_mc  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.finetune import load_tuned  # noqa: E402
from geomfilter.finetune_config import RUN_FILE  # noqa: E402
from geomfilter.settings import DEFAULT_MODEL  # noqa: E402
from geomfilter.stats import ci_side, paired_summary  # noqa: E402

MODES = {"mean": "pick", "sum": "pick_sum"}  # accuracy by per-token mean (the metric) / by summed log-prob


def hits(res: dict, mode: str) -> dict[str, float]:
    """Question id -> 1.0 where the pick of ``mode`` is the right answer (both in ``mc_accuracy``'s records)."""
    return {r["id"]: float(r[MODES[mode]] == r["answer"]) for r in res["per_question"]}


def recorded_accuracy(spec: str) -> float | None:
    """The ``chat`` MC accuracy an experiment recorded for the condition whose fine-tune run folder is ``spec``
    (``<condition>/run``); None for a model spec or a run outside an experiment."""
    path = Path(spec).parent / "metrics.json"
    if not (Path(spec) / RUN_FILE).is_file() or not path.is_file():
        return None
    return json.loads(path.read_text())["metrics"].get("mc_accuracy", {}).get("mean")


def measure(models: dict[str, str], capability: Path, batch_size: int, n_boot: int) -> dict:
    questions = read_mc(capability)
    out: dict = {"capability": str(capability), "n_questions": len(questions), "models": {}, "paired": {}}
    for name, spec in models.items():
        t0 = time.time()
        model = load_tuned(spec)
        rec: dict = {"spec": spec, "accuracy": {}, "hits": {}}
        for prompt in MC_PROMPTS:
            res = mc_accuracy(model, questions, batch_size=batch_size, n_boot=n_boot, progress=False, prompt=prompt)
            for mode in MODES:
                h = hits(res, mode)
                rec["hits"][f"{prompt}/{mode}"] = h
                rec["accuracy"][f"{prompt}/{mode}"] = sum(h.values()) / len(h)
        rec["recorded_chat"] = recorded_accuracy(spec)
        rec["seconds"] = round(time.time() - t0, 1)
        out["models"][name] = rec
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rec["accuracy"].items()) + f" ({rec['seconds']} s)",
              flush=True)
    base = out["models"]["base"]
    for name, rec in out["models"].items():
        if name != "base":
            out["paired"][name] = {k: paired_summary(rec["hits"][k], base["hits"][k], n_boot=n_boot, seed=0)
                                   for k in rec["hits"]}
    return out


def to_markdown(res: dict, command: str) -> str:
    keys = [f"{p}/{m}" for p in MC_PROMPTS for m in MODES]
    lines = [f"# MC accuracy under three prompts ({res['n_questions']} questions of `{res['capability']}`)", "",
             f"```\n{command}\n```", "",
             "Prompts: `chat`, the choice as the assistant's whole answer (the experiments' metric); `answer-is`, the "
             "choice after the assistant's \"The answer is:\"; `plain`, \"Question: …\\nAnswer: <choice>\" with no "
             "chat template. `/mean`: the pick by per-token log-prob (the metric); `/sum`: by summed log-prob.", "",
             "| model | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (1 + len(keys)) + "|"]
    for name, rec in res["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{rec['accuracy'][k]:.3f}" for k in keys) + " |")
    lines += ["", "Fine-tune − base, paired over the questions (bootstrap 95% CI; MDD at 80% power; bold: CI excludes "
              "zero):", "", "| model | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (1 + len(keys)) + "|"]
    for name, row in res["paired"].items():
        cells = []
        for k in keys:
            d = row[k]
            txt = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (MDD {d['mdd']:.3f})"
            cells.append(f"**{txt}**" if ci_side(d) else txt)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    checks = [f"{name}: `chat/mean` {rec['accuracy']['chat/mean']:.3f}, the experiment recorded "
              f"{rec['recorded_chat']:.3f}" for name, rec in res["models"].items() if rec["recorded_chat"] is not None]
    if checks:
        lines += ["", "Check against the experiments' own MC accuracy: " + "; ".join(checks) + "."]
    lines += ["", "Seconds per model: " + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in res["models"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="fine-tune run folders (or NAME=FOLDER) compared with the base model")
    ap.add_argument("--base", default=DEFAULT_MODEL, help="the base model spec (default: the embedded default)")
    ap.add_argument("--capability", type=Path, default=Path("data/eval/capability.jsonl"),
                    help="the MC questions (default: the experiments' own)")
    ap.add_argument("--out", type=Path, required=True, help="markdown file (a .json beside it)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    models = {"base": args.base}
    for r in args.runs:
        name, _, spec = r.rpartition("=") if "=" in r else (r, "", r)
        if not Path(spec).is_dir():
            raise SystemExit(f"{spec}: no such run folder")
        if name in models:
            raise SystemExit(f"{name}: named twice")
        models[name] = spec
    command = script_command(__file__, argv)
    res = measure(models, args.capability, args.batch_size, args.n_boot)
    text = to_markdown(res, command)
    write_json_and_markdown(args.out.parent, args.out.stem, {"command": command, **res}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
