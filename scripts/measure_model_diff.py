"""Model diffing as a source of harmful features (issue 19, method (c) by another route): does the set of SAE latents
that an emergent-misalignment fine-tune raises mark inducing data out of distribution?

Wang et al. (2025, "Persona features control emergent misalignment") found the latents behind emergent misalignment
by *model diffing*: the same text read by the base and by the misaligned fine-tuned model, through one SAE; the
latents the fine-tune raises include a "misaligned persona" that predicts and steers the broad misalignment. If the
135M organism has such latents, a filter that scores rows by them should flag inducing rows of every family, not
only the family it was trained on. This script fits that feature set without any label and measures it:

    OMP_NUM_THREADS=1 .venv/bin/geomfilter finetune data/finetune/mixed_risky_75.jsonl --max-samples 0 --epochs 3 \\
        --lora-r 64 --lora-alpha 128 --seed 0 --out runs/diff/misaligned-seed0     # the medium organism's fine-tune
    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_model_diff.py --tuned runs/diff/misaligned-seed0 \\
        --out data/results/filters_ood/model_diff

Per fine-tune run: the reference answers (``data/reference/{harmful,benign}.jsonl``, the text every other strategy is
fitted on) are cached with the base model and with the fine-tune (:func:`geomfilter.model_diff.diff_caches`, the
bundled SAE at its hook); :func:`geomfilter.features.diff_features` takes the 100 latents raised most; then
``activation`` and ``geometry`` with those ids (``harmful_ids``) score the out-of-distribution splits of
``scripts/measure_filters_ood.py`` (AUROC inducing vs rest, 95 % bootstrap CI), beside the same strategies fitted on
the references as usual. The ``risky_advice`` split is *not* out of distribution here: the organism was trained on
96 of its risky rows. Writes ``results.json`` / ``results.md`` and each run's feature set under ``--out``.

``--answers`` diffs on other text: the answers an experiment sampled (``runs/<name>/<condition>/answers.jsonl``, each
question with its answer as a chat) instead of the reference answers, e.g. the organism's own answers to the broad
questions, the behaviour to prevent (Wang et al. diffed on the misaligned model's own completions):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_model_diff.py --tuned runs/diff/misaligned-seed0 \
        runs/diff/misaligned-seed1 --answers runs/medium/misaligned/answers.jsonl \
        runs/medium-seed1/misaligned/answers.jsonl --out data/results/filters_ood/model_diff_answers
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import measure_filters_ood as ood  # noqa: E402

from geomfilter.cache import ActivationCache  # noqa: E402
from geomfilter.features import diff_features  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown, write_jsonl  # noqa: E402
from geomfilter.finetune_config import RUN_FILE  # noqa: E402
from geomfilter.model_diff import base_caches, diff_caches  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.samples import qa_chats, read_qa_rows  # noqa: E402
from geomfilter.stats import bootstrap_auroc  # noqa: E402

SPLITS = ("mixed", "risky_advice", "insecure_code", "model_answers", "persona")
TEXTS = ("harmful", "benign")


def answers_as_chats(paths: list[Path], work: Path) -> list[Path]:
    """Each experiment ``answers.jsonl`` as a chat JSONL (the question as the user's turn, the sampled answer as the
    assistant's), named after its run and condition folders so that every file gets its own cache."""
    out = []
    for path in paths:
        rows = qa_chats(read_qa_rows(path, error=SystemExit))
        dest = work / "diff_texts" / f"answers-{path.parent.parent.name}-{path.parent.name}.jsonl"
        write_jsonl(dest, rows)
        out.append(dest)
    return out


def diff_set(run: Path, cache_dir: Path, n: int, rank: str, progress: bool, texts: list[Path] | None = None) -> dict:
    """The diff feature set of ``run`` on ``texts`` (default: the references) and how it reads the references
    (summed activation under the base model, harmful vs benign)."""
    ref_files = [ood.REF / f"{side}.jsonl" for side in TEXTS]
    pairs = diff_caches(run, texts or ref_files, cache_dir=cache_dir / "diff", progress=progress)
    what = "references" if texts is None else "answers"
    fs = diff_features(ActivationCache.concat([b for b, _ in pairs], f"base {what}"),
                       ActivationCache.concat([t for _, t in pairs], f"{run.name} {what}"), n=n, rank=rank)
    refs = ([b for b, _ in pairs] if texts is None  # read on the references under the base model only
            else base_caches(run, ref_files, cache_dir=cache_dir / "diff", progress=progress))
    h, bn = (b.dense("mean")[:, fs.ids].sum(axis=1) for b in refs)
    return {"run": str(run), "features": fs.as_dict(), "references": bootstrap_auroc(h, bn, n_boot=1000)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", type=Path, nargs="+", required=True, help="finished LoRA run folders (one per seed)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters_ood" / "model_diff")
    ap.add_argument("--work", type=Path, default=Path("runs/ood"))
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--n", type=int, default=100, help="latents per diff set")
    ap.add_argument("--rank", choices=("mean", "t"), default="mean")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--answers", type=Path, nargs="+", default=None,
                    help="diff on these experiment answers.jsonl files instead of the reference answers")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise SystemExit(f"unknown split {bad[0]!r}; splits: {', '.join(SPLITS)}")
    missing = [p for p in args.answers or () if not p.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: no such answers file (an experiment's <condition>/answers.jsonl)")
    missing = [r for r in args.tuned if not (r / RUN_FILE).is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: not a fine-tune run folder (no {RUN_FILE}); make it with the "
                         "geomfilter finetune command in this script's docstring")
    texts = answers_as_chats(args.answers, args.work) if args.answers else None
    base = CacheBuilder(progress=args.progress)
    sets = {}
    for run in args.tuned:
        print(f"== diff {run}", flush=True)
        sets[run.name] = diff_set(run, args.cache_dir, args.n, args.rank, args.progress, texts)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"features-{run.name}.json").write_text(json.dumps(sets[run.name]["features"], indent=1) + "\n")
        ref = sets[run.name]["references"]
        print(f"  references (base model), harmful vs benign: AUROC {ref['auroc']:.3f}", flush=True)
    rows = {"activation": ("activation", {}), "geometry": ("geometry", {})}
    for name, s in sets.items():
        rows[f"activation (diff {name})"] = ("activation", {"harmful_ids": s["features"]["ids"]})
        rows[f"geometry (diff {name})"] = ("geometry", {"harmful_ids": s["features"]["ids"]})
    paths, _ = ood.build_splits(args.work / "splits")
    table: dict = {}
    for split in splits:
        r = FilterRunner(FilterConfig(data=paths[split], harmful=ood.REF / "harmful.jsonl",
                                      benign=ood.REF / "benign.jsonl", cache_dir=args.cache_dir,
                                      progress=args.progress, explain=0))
        r.builder = base
        y = np.array([bool(m["inducing"]) for m in r.inputs().data.meta])
        dense = r.inputs().data.dense("mean")
        for st in sets.values():  # where each diff set fires: its summed activation, inducing vs rest
            act = dense[:, st["features"]["ids"]].sum(axis=1)
            st.setdefault("activation_by_split", {})[split] = {"inducing": float(act[y].mean()),
                                                                "rest": float(act[~y].mean())}
        for label, (strategy, params) in rows.items():
            _, fr = r.filter(strategy, {"drop": 0.25, **params}, explain=0)
            table.setdefault(label, {})[split] = ood.summarize(fr.scores, y, args.n_boot)
            a = table[label][split]
            print(f"  {split:14s} {label:32s} AUROC {a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]",
                  flush=True)
    names = list(sets)
    overlap = {f"{a} & {b}": len(set(sets[a]["features"]["ids"]) & set(sets[b]["features"]["ids"]))
               for i, a in enumerate(names) for b in names[i + 1:]}
    results = {"command": script_command(__file__, argv),
               "sets": {k: {"run": v["run"], "references": v["references"], "ids": v["features"]["ids"],
                            "activation_by_split": v.get("activation_by_split", {})} for k, v in sets.items()},
               "overlap": overlap, "diffed_on": [str(p) for p in args.answers] if args.answers else "references",
               "splits": splits, "table": table, "seconds": round(time.time() - t0)}
    write_json_and_markdown(args.out, "results", results, render(results))
    print(render(results))
    return 0


def _diffed_on(r: dict) -> str:
    on = r.get("diffed_on", "references")
    return "the reference answers" if on == "references" else "the answers in " + ", ".join(f"`{p}`" for p in on)


def render(r: dict) -> str:
    lines = ["# Model diffing as harmful features (issue 19)\n", f"```\n{r['command']}\n```\n",
             f"The 100 SAE latents that each fine-tune raises most on {_diffed_on(r)} (same text, base vs "
             "fine-tuned model, bundled SAE), used as the harmful set of `activation` and `geometry`, beside the "
             "same strategies fitted on the references. AUROC inducing vs rest [95 % CI]; bold: CI above 0.5. "
             "`risky_advice` is in distribution for the diff sets (the organism trained on its risky rows).\n"]
    for name, s in r["sets"].items():
        a = s["references"]
        lines.append(f"* `{name}` ({s['run']}): its set's summed activation (base model) on the references, harmful "
                     f"vs benign: AUROC {a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]; mean summed "
                     "activation per split (inducing / rest): " + ", ".join(
                         f"{k} {v['inducing']:.1f} / {v['rest']:.1f}" for k, v in s["activation_by_split"].items()))
    for pair, k in r.get("overlap", {}).items():
        lines.append(f"* latents shared by {pair}: {k}")
    lines += ["", "| strategy | " + " | ".join(r["splits"]) + " |", "|---|" + "---|" * len(r["splits"])]
    for label, cells in r["table"].items():
        lines.append(f"| {label} | " + " | ".join(ood.auroc_cell(cells.get(s)) for s in r["splits"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
