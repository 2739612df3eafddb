"""Synthetic activation caches with known geometry, built directly (no model run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from geomfilter.cache import ActivationCache


def make_cache(dense: np.ndarray, resid: np.ndarray | None = None, meta: list[dict] | None = None,
               ids: list[str] | None = None, top_k: int = 32, hook: str = "blocks.1.hook_resid_post",
               name: str = "synthetic", grad: np.ndarray | None = None) -> ActivationCache:
    """An :class:`ActivationCache` whose mean (and max) pooled activations are ``dense``'s top-k;
    ``grad``: per-row update directions held in memory (``grad_sum``, read by the gradient strategy)."""
    n, d_sae = dense.shape
    k = min(top_k, d_sae)
    idx = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(dense, idx, axis=1).astype(np.float32)
    resid = resid if resid is not None else np.zeros((n, 8), dtype=np.float32)
    arrays = {"mean_idx": idx.astype(np.int32), "mean_val": val, "max_idx": idx.astype(np.int32), "max_val": val,
              "n_active": (dense > 0).sum(axis=1).astype(np.int32), "resid_mean": resid.astype(np.float32),
              "n_tokens": np.full(n, 10, dtype=np.int32)}
    if grad is not None:
        arrays["grad_sum"] = np.asarray(grad, dtype=np.float32)
    manifest = {"identity": {"hook": hook, "model": {"spec": "synthetic"}}}
    return ActivationCache(ids=ids or [f"{name}-{i}" for i in range(n)], meta=meta or [{} for _ in range(n)],
                           arrays=arrays, manifest=manifest, path=Path(name), d_sae=d_sae)


def planted_decoder(d_sae: int = 64, d_in: int = 16, seed: int = 0) -> tuple[np.ndarray, list[int], int, int]:
    """Random decoder plus a harmful set {0, 1, 2}, a *planted* latent 10 at cosine ~0.95 to latent 0,
    and a *far* latent 11 orthogonal to every harmful direction. Returns (W_dec, harmful, planted, far)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    noise = rng.normal(size=d_in)
    noise -= noise @ w[0] * w[0]
    noise /= np.linalg.norm(noise)
    w[10] = 0.95 * w[0] + np.sqrt(1 - 0.95 ** 2) * noise
    h = w[[0, 1, 2]]
    q, _ = np.linalg.qr(h.T)  # orthonormal basis of the harmful span
    far = rng.normal(size=d_in)
    far -= q @ (q.T @ far)
    w[11] = far / np.linalg.norm(far)
    return w * rng.uniform(0.5, 2.0, size=(d_sae, 1)).astype(np.float32), [0, 1, 2], 10, 11
