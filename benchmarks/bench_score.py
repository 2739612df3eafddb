"""Benchmark: geometry-scoring a million cached samples with the real bundled SAE decoder.

    python benchmarks/bench_score.py [--n 1000000] [--k 32] [--stored 64] [--sae smollm2-135m-instruct]

Builds an :class:`~geomfilter.cache.ActivationCache` in memory holding ``--n`` synthetic samples
in the exact stored format (``--stored`` latents per sample, sorted by pooled activation; latent
ids drawn from a Zipf-like firing distribution, values exponential), fits a
:class:`~geomfilter.filtering.GeometryFilter` on the bundled SAE's decoder with a harmful set of
100 latents, and times ``fit`` + ``score_samples`` + ``apply`` (the full decision, explanations
off). Prints samples/s and the ratio to the 10 s target (< 1 passes), measured in this run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from geomfilter import DEFAULT_MODEL
from geomfilter.cache import ActivationCache
from geomfilter.filtering import GeometryFilter
from geomfilter.saes import default_sae_for, load_sae

TARGET_S = 10.0


def synthetic_cache(n: int, d_sae: int, stored: int, seed: int = 0) -> ActivationCache:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, d_sae + 1) ** 0.8
    p /= p.sum()
    perm = rng.permutation(d_sae)
    idx = np.empty((n, stored), dtype=np.int32)
    chunk = 10_000
    for s in range(0, n, chunk):  # distinct latents per row: Gumbel top-k over the firing distribution
        m = min(chunk, n - s)
        u = np.maximum(rng.random((m, d_sae), dtype=np.float32), np.float32(1e-12))
        g = np.log(p)[None, :] - np.log(-np.log(u))
        idx[s:s + m] = perm[np.argpartition(-g, stored, axis=1)[:, :stored]]
    val = -np.sort(-rng.exponential(1.0, size=(n, stored)).astype(np.float32), axis=1)
    arrays = {"mean_idx": idx, "mean_val": val, "max_idx": idx, "max_val": val}
    manifest = {"identity": {"hook": "synthetic", "model": {"spec": "synthetic"}}}
    return ActivationCache(ids=[str(i) for i in range(n)], meta=[{}] * n, arrays=arrays, manifest=manifest,
                           path=Path("<synthetic>"), d_sae=d_sae)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=32, help="target features per sample")
    ap.add_argument("--stored", type=int, default=64, help="latents stored per sample (cache --top-k)")
    ap.add_argument("--sae", default=default_sae_for(DEFAULT_MODEL))
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.sae:
        raise SystemExit("no bundled SAE: pass --sae")
    sae = load_sae(args.sae)
    d_sae = int(sae.cfg.d_sae)
    t = time.perf_counter()
    cache = synthetic_cache(args.n, d_sae, args.stored)
    print(f"built {args.n:,} synthetic samples x {args.stored} stored latents (d_sae {d_sae}) "
          f"in {time.perf_counter() - t:.1f} s")
    harmful = np.random.default_rng(1).choice(d_sae, 100, replace=False).tolist()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        f = GeometryFilter(sae, k=args.k, harmful_ids=harmful, drop=0.5)
        f.fit(None, None)  # explicit harmful ids: no reference caches needed
        res = f.apply(cache, explain=0)
        times.append(time.perf_counter() - t)
    best, med = min(times), float(np.median(times))
    assert res.n_dropped == round(0.5 * args.n)
    print(f"fit + score + decide {args.n:,} samples (k={args.k}): median {med:.2f} s over {args.reps} reps "
          f"(best {best:.2f} s) = {args.n / med:,.0f} samples/s")
    print(f"ratio to the {TARGET_S:.0f} s target: {med / TARGET_S:.3f} ({'PASS' if med < TARGET_S else 'FAIL'})")
    return 0 if med < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
