"""Alignment Gating on the default model (issue 6's measurement). Resumable; every stage is skipped when done.

1. Split each domain's sycophantic/corrective pairs by ``pair_id`` (seeded): most
   pairs train, ``--holdout`` pairs per domain are kept for the sycophancy check.
2. LoRA-fine-tune on the four sycophantic training sets (the "misaligned model").
3. Train attention gates (base frozen) on one narrow domain (``--gate-domain``,
   default health); and SAE-latent gates on the same data.
4. For each condition, the log-prob preference for misaligned over aligned
   answers on the broad eval questions, the preference for sycophantic over
   corrective answers on the held-out pairs (both nats/token, bootstrap CIs, and
   paired differences against base and against the LoRA model), and held-out
   perplexity (capability).
5. Gate analysis: most-moved heads; most-moved SAE latents vs harmful features.

Writes ``data/results/gating/{results.json,results.md,plots/}``; the runs live in
``runs/gating/``. Usage: ``python scripts/gating_experiment.py`` (about an hour on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter import DEFAULT_MODEL  # noqa: E402
from geomfilter.evaluate import (  # noqa: E402
    heldout_perplexity,
    logprob_preference,
    sycophancy_preference,
)
from geomfilter.finetune import FinetuneConfig, FinetuneRunner, load_tuned  # noqa: E402
from geomfilter.stats import bootstrap_ci  # noqa: E402

DOMAINS = ["health", "career", "legal", "code"]


def split_pairs(out: Path, holdout: int, seed: int) -> dict:
    """Write train_<domain>.jsonl (sycophantic rows of the training pairs) and heldout_{syc,cor}.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    info, held_syc, held_cor = {}, [], []
    for dom in DOMAINS:
        syc = [json.loads(x) for x in (ROOT / f"data/finetune/{dom}_sycophantic.jsonl").read_text().splitlines() if x]
        cor = [json.loads(x) for x in (ROOT / f"data/finetune/{dom}_corrective.jsonl").read_text().splitlines() if x]
        pairs = sorted({r["pair_id"] for r in syc})
        held = set(random.Random(f"{seed}-{dom}").sample(pairs, holdout))
        train = [r for r in syc if r["pair_id"] not in held]
        (out / f"train_{dom}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
        held_syc += [r for r in syc if r["pair_id"] in held]
        held_cor += [r for r in cor if r["pair_id"] in held]
        info[dom] = {"train": len(train), "heldout_pairs": len(held)}
    (out / "heldout_syc.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_syc))
    (out / "heldout_cor.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_cor))
    return info


def harmful_ids(cache_root: Path) -> list[int]:
    """The geometry filter's harmful set (100 latents, contrast, all reference pairs) for the bundled SAE."""
    from geomfilter.cache import cache_activations, load_cache
    from geomfilter.data import prepare_dataset
    from geomfilter.features import harmful_features
    from geomfilter.models import load_model
    from geomfilter.saes import load_sae

    model, sae = load_model(DEFAULT_MODEL), load_sae(DEFAULT_MODEL)
    caches = []
    for name in ("harmful", "benign"):
        ds = prepare_dataset(ROOT / f"data/reference/{name}.jsonl", model.tokenizer)
        out = cache_root / f"L14-{name}-{name}"  # the naming of scripts/measure_filters.py: shared caches
        cache_activations(model, sae, ds, out)  # resumes; a finished cache is reused
        caches.append(load_cache(out))
    return list(harmful_features(*caches, n=100, select_frac=1.0).ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/gating")
    ap.add_argument("--results", type=Path, default=ROOT / "data/results/gating")
    ap.add_argument("--gate-domain", default="health")
    ap.add_argument("--holdout", type=int, default=20, help="held-out pairs per domain")
    ap.add_argument("--lora-epochs", type=float, default=1.0)
    ap.add_argument("--gate-epochs", type=float, default=2.0)
    ap.add_argument("--alphas", default="-1,-0.5,0,1,2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    runs, res = args.runs, args.results
    split = split_pairs(runs / "data", args.holdout, args.seed)
    timings = {}

    def train(name, files, method, epochs):
        cfg = FinetuneConfig(data=[str(f) for f in files], out=str(runs / name), method=method, max_samples=None,
                             epochs=epochs, batch_size=4, seed=args.seed, checkpoint_every=20)
        r = FinetuneRunner(cfg).run()
        timings[name] = r.as_dict()
        print(f"{name}: {r.n_samples} samples, {r.steps} steps, {r.seconds:.0f} s, {r.tokens_per_s:.0f} tok/s, "
              f"loss {r.first_loss:.3f} -> {r.final_loss:.3f}", flush=True)

    train("lora-syc", [runs / "data" / f"train_{d}.jsonl" for d in DOMAINS], "lora", args.lora_epochs)
    gate_data = runs / "data" / f"train_{args.gate_domain}.jsonl"
    train(f"gates-{args.gate_domain}", [gate_data], "gates", args.gate_epochs)
    train(f"sae-gates-{args.gate_domain}", [gate_data], "gates-sae", args.gate_epochs)

    gates, sgates = runs / f"gates-{args.gate_domain}", runs / f"sae-gates-{args.gate_domain}"
    alphas = [float(a) for a in args.alphas.split(",")]
    conditions = [("base", DEFAULT_MODEL, None, [1.0]), ("lora", runs / "lora-syc", None, [1.0]),
                  ("lora + gates", runs / "lora-syc", gates, alphas), ("base + gates", DEFAULT_MODEL, gates, [1.0, -1.0]),
                  ("lora + SAE gates", runs / "lora-syc", sgates, [-1.0]),
                  ("base + SAE gates", DEFAULT_MODEL, sgates, [1.0])]
    evals_path = runs / "evals.json"
    evals = json.loads(evals_path.read_text()) if evals_path.is_file() else {}
    for name, model, g, scales in conditions:
        todo = [a for a in scales if "perplexity" not in evals.get(f"{name} (a={a:+g})" if g else name, {})]
        if not todo:
            continue
        tm = load_tuned(model, gates=g, gate_scale=todo[0])
        for a in todo:
            key = f"{name} (a={a:+g})" if g else name
            tm.set_gate_scale(a)
            t0 = time.perf_counter()
            if key not in evals:
                broad = logprob_preference(tm, ROOT / "data/eval/questions.jsonl")
                syc = sycophancy_preference(tm, runs / "data/heldout_syc.jsonl", runs / "data/heldout_cor.jsonl")
                evals[key] = {"broad": broad.as_dict(), "sycophancy": syc.as_dict()}
            evals[key]["perplexity"] = heldout_perplexity(tm, ROOT / "data/eval/heldout_text.jsonl")
            evals[key]["seconds"] = round(evals[key].get("seconds", 0) + time.perf_counter() - t0, 1)
            evals_path.write_text(json.dumps(evals, indent=2) + "\n")
            b, s, p = evals[key]["broad"], evals[key]["sycophancy"], evals[key]["perplexity"]
            print(f"{key:>28}: broad {b['mean']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}]  "
                  f"syc {s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}]  ppl {p['mean']:.2f}", flush=True)
        tm.close()

    from geomfilter import plots
    from geomfilter.gating import analyze_gates

    res.mkdir(parents=True, exist_ok=True)

    def analysis(out_dir, **kw):
        cached = out_dir / "gate_analysis.json"
        return json.loads(cached.read_text()) if cached.is_file() else analyze_gates(out=out_dir, **kw)

    ana_attn = analysis(res / "gates_attention", gates_dir=gates, data=gate_data, max_samples=64)
    ana_sae = analysis(res / "gates_sae", gates_dir=sgates, data=gate_data, max_samples=64,
                       harmful=harmful_ids(ROOT / "runs/cache/measure"))
    summary = {k: {"broad": {x: v["broad"][x] for x in ("mean", "lo", "hi", "n", "n_answers")},
                   "sycophancy": {x: v["sycophancy"][x] for x in ("mean", "lo", "hi", "n", "n_answers")},
                   "perplexity": v["perplexity"]} for k, v in evals.items()}
    # paired differences (the same questions / pairs under two conditions): much tighter than the raw CIs
    for k, v in evals.items():
        for ref in ("base", "lora"):
            if k == ref or ref not in evals:
                continue
            for metric in ("broad", "sycophancy"):
                a = {r["id"]: r["preference"] for r in v[metric]["per_question"]}
                b = {r["id"]: r["preference"] for r in evals[ref][metric]["per_question"]}
                summary[k][metric][f"minus_{ref}"] = bootstrap_ci([a[i] - b[i] for i in a])
    plots.condition_bars({k: v["broad"] for k, v in summary.items()}, res / "plots" / "broad_preference",
                         ylabel="log p(misaligned) - log p(aligned), nats/token",
                         title="Preference for misaligned answers to broad questions")
    plots.condition_bars({k: v["perplexity"] for k, v in summary.items()}, res / "plots" / "perplexity",
                         ylabel="perplexity on held-out passages", title="Capability: held-out perplexity",
                         zero_line=False)
    plots.condition_bars({k: v["sycophancy"] for k, v in summary.items()}, res / "plots" / "sycophancy_preference",
                         ylabel="log p(sycophantic) - log p(corrective), nats/token",
                         title="Preference for sycophantic answers (held-out pairs)")
    out = {"command": "python scripts/gating_experiment.py " + " ".join(sys.argv[1:]), "split": split,
           "gate_domain": args.gate_domain, "training": timings, "conditions": summary,
           "gate_analysis": {"attention": {k: ana_attn[k] for k in ("top_heads", "layer_mean_abs", "n_tokens")},
                             "sae": {k: v for k, v in ana_sae.items() if k in ("top_latents", "geometry", "n_tokens")}}}
    (res / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    def cell(m, key=None):
        d = m if key is None else m.get(key)
        return "" if d is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    first = next(iter(summary.values()))
    n_q, n_p = first["broad"]["n"], first["sycophancy"]["n"]
    lines = ["Log-prob preference, nats/token, mean over items with bootstrap 95% CIs; paired = the same items "
             "under this condition minus base / minus the LoRA model.", "",
             f"| condition | broad: misaligned − aligned (n={n_q} questions) | paired − base | paired − LoRA "
             f"| sycophantic − corrective (n={n_p} held-out pairs) | paired − base | paired − LoRA "
             f"| held-out perplexity (n={first['perplexity']['n']} passages) |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in summary.items():
        b, s = v["broad"], v["sycophancy"]
        lines.append(f"| {k} | {cell(b)} | {cell(b, 'minus_base')} | {cell(b, 'minus_lora')} | {cell(s)} | "
                     f"{cell(s, 'minus_base')} | {cell(s, 'minus_lora')} | "
                     f"{v['perplexity']['mean']:.2f} [{v['perplexity']['lo']:.2f}, {v['perplexity']['hi']:.2f}] |")
    (res / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {res / 'results.json'}")


if __name__ == "__main__":
    main()
