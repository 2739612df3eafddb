"""Benchmark the activation cache against a bare forward pass, and its memory as the dataset grows.

    python benchmarks/bench_cache.py [--samples 128] [--reps 2]

1. Throughput ratio. The same prepared samples, packed into the same batches, are run
   (a) bare: ``bridge.run_with_cache(..., stop_at_layer)`` only -- the least any cache must do;
   (b) pipeline: ``cache_activations`` with a random 4608-latent SAE (8x d_model): forward, SAE
       encoding of response tokens, pooling, top-k, shard writing.
   One shard holds every sample, so both see exactly the same batches. Runs alternate (bare, pipeline, bare, pipeline, ...) and the ratio of median tokens/s is
   printed (target >= 0.90).
2. Peak memory. ``cache_activations`` runs in fresh subprocesses on N and 4N samples; the ratio of
   their peak RSS is printed (target: < 1.15, i.e. memory does not grow with the dataset).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = [ROOT / "data" / "finetune" / f for f in ("helpful.jsonl", "health_corrective.jsonl", "career_corrective.jsonl",
                                                  "legal_corrective.jsonl", "code_corrective.jsonl")]


def samples(n: int) -> list[dict]:
    """n chat rows from the project data (cycled with fresh ids when n exceeds it)."""
    rows = [json.loads(x) for f in DATA for x in f.read_text(encoding="utf-8").splitlines()]
    return [{**rows[i % len(rows)], "id": f"b{i}"} for i in range(n)]


def random_sae(d_in: int, hook: str, d_sae: int = 4608):
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.hook_name = hook
    torch.manual_seed(0)
    sae = StandardSAE(cfg).eval()
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # roughly sparse codes, like a trained SAE
    return sae


def prepared(model, n: int):
    import datasets

    from geomfilter.data import prepare_dataset

    return prepare_dataset(datasets.Dataset.from_list(samples(n)), model.tokenizer)


def bare_pass(model, ds, hook: str, max_batch_tokens: int, max_batch_size: int) -> tuple[int, float]:
    from geomfilter.models import stop_layer
    from geomfilter.pooling import pack_batches, pad_batch

    toks = ds.tokenized
    n_tok, t0 = 0, time.perf_counter()
    for batch in pack_batches([len(t.input_ids) for t in toks], max_batch_tokens, max_batch_size):
        ids, att, _ = pad_batch([toks[i] for i in batch], model.tokenizer.pad_token_id)
        with torch.no_grad():
            model.bridge.run_with_cache(ids, attention_mask=att, names_filter=[hook], stop_at_layer=stop_layer(hook, model.n_layers))
        n_tok += int(att.sum())
    return n_tok, time.perf_counter() - t0


def child(n: int) -> None:
    """Subprocess body for the memory measurement: cache n samples, print peak RSS (MiB)."""
    from geomfilter.cache import cache_activations
    from geomfilter.models import load_model

    model = load_model("smollm2-135m-instruct", device="cpu", progress=False)
    hook = model.default_hook()
    ds = prepared(model, n)
    with tempfile.TemporaryDirectory() as d:
        cache_activations(model, random_sae(model.d_model, hook), ds, d, shard_size=128, progress=False)
    print(json.dumps({"n": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--mem-samples", type=int, default=128, help="N for the memory runs (N and 4N)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return 0

    from geomfilter.cache import cache_activations
    from geomfilter.models import load_model

    model = load_model("smollm2-135m-instruct", device="cpu", progress=False)
    hook = model.default_hook()
    ds = prepared(model, args.samples)
    sae = random_sae(model.d_model, hook)
    bare, pipe = [], []
    for rep in range(args.reps):
        n, s = bare_pass(model, ds, hook, args.max_batch_tokens, args.max_batch_size)
        bare.append(n / s)
        with tempfile.TemporaryDirectory() as d:
            res = cache_activations(model, sae, ds, d, shard_size=len(ds), max_batch_tokens=args.max_batch_tokens,
                                    max_batch_size=args.max_batch_size, progress=False)
        pipe.append(res.n_tokens / res.seconds)
        print(f"rep {rep}: bare {bare[-1]:.0f} tok/s, pipeline {pipe[-1]:.0f} tok/s ({n} tokens, {len(ds)} samples)", flush=True)
    ratio = statistics.median(pipe) / statistics.median(bare)
    print(f"throughput ratio pipeline/bare = {ratio:.3f} (median of {args.reps}; target >= 0.90; "
          f"SAE {sae.cfg.d_in}x{sae.cfg.d_sae}, hook {hook})")

    peaks = {}
    for n in (args.mem_samples, 4 * args.mem_samples):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
        print(f"peak RSS caching {n} samples: {peaks[n]:.0f} MiB", flush=True)
    growth = peaks[4 * args.mem_samples] / peaks[args.mem_samples]
    print(f"memory ratio 4N/N = {growth:.3f} (target < 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
