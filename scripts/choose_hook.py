"""Pick the SAE hook by measurement: a linear probe per residual layer on harmful vs benign references.

    python scripts/choose_hook.py [--layers 4 8 10 12 14 16 18 20 24] [--out runs/choose_hook.json]

For every layer the response-token mean of ``blocks.L.hook_resid_post`` is computed for the
project's paired references (``data/reference/harmful.jsonl`` vs ``benign.jsonl``: same prompt,
misaligned vs aligned answer) in one forward pass per batch (stopping after the deepest layer
asked for). A logistic-regression probe (standardised features, C=0.1) is scored by 5-fold
cross-validated AUROC with folds grouped by ``pair_id``, so a prompt's two answers never sit on
both sides of a split. The printed table and the JSON file are the record behind the default hook.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geomfilter import DEFAULT_MODEL
from geomfilter.data import prepare_dataset
from geomfilter.models import load_model
from geomfilter.pooling import resid_means_by_layer

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 10, 12, 14, 16, 18, 20, 24])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "choose_hook.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = load_model(args.model)
    feats, groups, labels = {L: [] for L in args.layers}, [], []
    for label in ("harmful", "benign"):
        ds = prepare_dataset(ROOT / "data" / "reference" / f"{label}.jsonl", model.tokenizer)
        for layer, x in resid_means_by_layer(model, ds, args.layers).items():
            feats[layer].append(x)
        groups += [s.meta["pair_id"] for s in ds.samples]
        labels += [int(label == "harmful")] * len(ds)
    y, g = np.array(labels), np.array(groups)
    results = {}
    print(f"{'layer':>5} {'hook':<26} {'probe AUROC (5-fold, grouped by pair)':>38}")
    for layer in args.layers:
        x = np.concatenate(feats[layer])
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        p = cross_val_predict(probe, x, y, groups=g, cv=GroupKFold(n_splits=5), method="predict_proba")[:, 1]
        results[layer] = float(roc_auc_score(y, p))
        print(f"{layer:>5} {f'blocks.{layer}.hook_resid_post':<26} {results[layer]:>38.3f}")
    best = max(results, key=results.get)
    record = {"model": args.model, "n_samples": int(len(y)), "auroc_by_layer": results, "best_layer": best,
              "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"best: blocks.{best}.hook_resid_post (AUROC {results[best]:.3f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
