"""Fine-tuning speed on the embedded default: target 300 samples x 1 epoch in <= 10 minutes (CPU).

Runs LoRA training steps (the default config: batch 4, LoRA r 16 on all
projections) over the same seeded 300-sample draw of data/finetune/mixed.jsonl,
side by side:

* naive: random batches, full-vocabulary logits at every position;
* geomfilter: length-grouped batches, LM head only where a response token is predicted
  (what ``geomfilter finetune`` does).

Each variant runs ``--steps`` steps after one warm-up step; the time per sample
is extrapolated to 300 samples. Prints both, the speed-up, and the ratio of the
geomfilter estimate to the 10-minute target (< 1 passes).

Usage: python benchmarks/bench_finetune.py [--steps 12] [--method lora|gates]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter import DEFAULT_MODEL  # noqa: E402
from geomfilter.batches import collate, epoch_batches  # noqa: E402
from geomfilter.data import prepare_dataset  # noqa: E402
from geomfilter.finetune import response_loss, response_only_loss  # noqa: E402
from geomfilter.models import load_causal_lm  # noqa: E402

TARGET_S, N_SAMPLES, BATCH = 600.0, 300, 4


def build(method: str):
    hf, tok, _ = load_causal_lm(DEFAULT_MODEL, progress=False)
    for p in hf.parameters():
        p.requires_grad_(False)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        from geomfilter.finetune_config import LORA_TARGETS

        hf = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        params = [p for p in hf.parameters() if p.requires_grad]
    else:
        from geomfilter.gating import AttentionGates

        gates = AttentionGates.for_model(hf).attach(hf)
        params = list(gates.parameters())
    hf.train()
    return hf, tok, torch.optim.AdamW(params, lr=1e-4)


def run(hf, opt, rows, batches, fast: bool) -> tuple[float, int]:
    t, n = 0.0, 0
    for k, idx in enumerate(batches):
        batch = collate([rows[i] for i in idx], 2)
        t0 = time.perf_counter()
        if fast:
            loss = response_only_loss(hf, batch)
        else:
            loss = response_loss(hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                 batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k > 0:  # the first step is warm-up
            t += time.perf_counter() - t0
            n += len(idx)
    return t, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--method", choices=["lora", "gates"], default="lora")
    args = ap.parse_args()
    hf, tok, opt = build(args.method)
    rows = prepare_dataset(ROOT / "data/finetune/mixed.jsonl", tok, max_tokens=512).tokenized
    rows = [rows[i] for i in np.sort(np.random.default_rng(0).choice(len(rows), N_SAMPLES, replace=False))]
    lengths = [len(r.input_ids) for r in rows]
    perm = np.random.default_rng(0).permutation(N_SAMPLES).tolist()
    naive = [perm[i:i + BATCH] for i in range(0, N_SAMPLES, BATCH)][: args.steps + 1]
    grouped = epoch_batches(lengths, BATCH, seed=0, epoch=0)[: args.steps + 1]
    res = {}
    for name, batches, fast in (("naive", naive, False), ("geomfilter", grouped, True)):
        t, n = run(hf, opt, rows, batches, fast)
        res[name] = t / n * N_SAMPLES
        print(f"{name:>10}: {n} samples in {t:.1f} s -> {res[name] / 60:.1f} min for {N_SAMPLES} samples x 1 epoch "
              f"({args.method}, {torch.get_num_threads()} threads)")
    print(f"speed-up {res['naive'] / res['geomfilter']:.2f}x; ratio to the {TARGET_S / 60:.0f}-minute target "
          f"{res['geomfilter'] / TARGET_S:.3f} ({'PASS' if res['geomfilter'] <= TARGET_S else 'FAIL'})")


if __name__ == "__main__":
    main()
