"""Decoder-direction geometry: how close features sit to harmful-behaviour features.

The geometric account of emergent misalignment: fine-tuning amplifies the SAE
features its data activates, and harmful features whose decoder directions have
a high cosine with those features get amplified along with them. This module
measures that closeness.

* :func:`unit_directions` - unit-normalised decoder rows (from an SAE or an array);
* :func:`feature_proximity` - per latent, the max (or mean) cosine to a harmful
  set, or its cosine to the set's span, a latent's match with itself excluded;
* :func:`nearest_harmful` - for some latents, their closest harmful latents;
* :data:`SCORERS` / :func:`score_targets` - per-sample scores: an aggregation of
  the proximities of the sample's target features, weighted by activation;
* :func:`permutation_control` - is a feature set closer to the harmful set than
  random sets matched in size and firing frequency?

Set statistics (AUROC, bootstrap CIs, precision of the dropped set) live in
:mod:`geomfilter.stats`.

Everything is numpy on CPU; scoring a million samples takes a few seconds
(``benchmarks/bench_score.py``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .features import SampleTargets


def unit_directions(sae_or_w) -> np.ndarray:
    """Unit-normalised decoder directions ``[d_sae, d_in]`` float32 from an SAE or a ``W_dec``-like array.

    Zero rows stay zero (their cosine with anything is 0).
    """
    if hasattr(sae_or_w, "W_dec"):
        w = sae_or_w.W_dec.detach().float().cpu().numpy()
    elif hasattr(sae_or_w, "detach"):
        w = sae_or_w.detach().float().cpu().numpy()
    else:
        w = np.asarray(sae_or_w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"decoder directions must be 2-D [d_sae, d_in], got shape {w.shape}")
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    return (w / np.maximum(norm, 1e-12)).astype(np.float32)


def _check_ids(ids: Sequence[int], d_sae: int, what: str) -> np.ndarray:
    arr = np.asarray(list(ids), dtype=np.int64)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    bad = arr[(arr < 0) | (arr >= d_sae)]
    if bad.size:
        raise ValueError(f"{what} has latent ids out of range 0..{d_sae - 1}: {bad[:5].tolist()}")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{what} has repeated latent ids")
    return arr


def cosines_to(directions: np.ndarray, harmful: Sequence[int], features: Sequence[int] | None = None) -> np.ndarray:
    """Cosine matrix ``[len(features) (default all), len(harmful)]``; a latent's match with itself is NaN."""
    d_sae = directions.shape[0]
    h = _check_ids(harmful, d_sae, "harmful feature set")
    f = np.arange(d_sae) if features is None else np.asarray(list(features), dtype=np.int64)
    cos = directions[f] @ directions[h].T
    cos[f[:, None] == h[None, :]] = np.nan
    return cos


#: how :func:`feature_proximity` aggregates a latent's closeness to the harmful set
PROXIMITIES = ("max", "mean", "span")


def feature_proximity(directions: np.ndarray, harmful: Sequence[int], agg: str = "max") -> np.ndarray:
    """Per latent (all ``d_sae``): its closeness to the harmful set, self-match excluded.

    * ``max`` / ``mean``: the max or mean decoder cosine to the harmful latents;
    * ``span``: the largest cosine between its decoder direction and any direction in the span of the harmful
      latents' (the length of its projection on that span): how far it lies in the harmful *subspace*, whichever
      latents an SAE happened to slice that subspace into.

    A harmful latent's proximity is to the *other* harmful latents. With a
    one-latent harmful set, that latent's own proximity is NaN.
    """
    if agg not in PROXIMITIES:
        raise ValueError(f"agg must be one of {PROXIMITIES}, got {agg!r}")
    if agg == "span":
        return _span_proximity(directions, _check_ids(harmful, directions.shape[0], "harmful feature set"))
    cos = cosines_to(directions, harmful)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a lone harmful latent
        out = np.nanmax(cos, axis=1) if agg == "max" else np.nanmean(cos, axis=1)
    return out.astype(np.float32)


def span_basis(rows: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """An orthonormal basis ``[d_in, r]`` of the span of ``rows`` ``[n, d_in]``: the left singular vectors of
    ``rows.T`` whose singular value is above ``rtol`` times the largest (dependent rows add nothing)."""
    u, sv, _ = np.linalg.svd(np.asarray(rows, dtype=np.float64).T, full_matrices=False)
    return u[:, sv > rtol * sv.max(initial=0.0)] if sv.size else u


def _span_proximity(directions: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """Per latent, the length of its unit direction's projection on the span of the harmful directions (a harmful
    latent: on the span of the others; NaN for a lone one)."""
    d = directions.astype(np.float64)
    out = np.linalg.norm(d @ span_basis(d[harmful]), axis=1)
    for j in harmful:
        others = harmful[harmful != j]
        out[j] = np.linalg.norm(d[j] @ span_basis(d[others])) if others.size else np.nan
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def nearest_harmful(directions: np.ndarray, harmful: Sequence[int], features: Sequence[int],
                    n: int = 1) -> list[list[tuple[int, float]]]:
    """For each of ``features``: its ``n`` nearest harmful latents as ``(id, cosine)`` (self excluded)."""
    h = np.asarray(list(harmful), dtype=np.int64)
    cos = np.nan_to_num(cosines_to(directions, harmful, features), nan=-np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")[:, :n]
    return [[(int(h[j]), float(cos[i, j])) for j in row if np.isfinite(cos[i, j])] for i, row in enumerate(order)]


# --------------------------------------------------------------------------- per-sample scores
# A scorer maps (proximity of each target feature [n, k], activation weight [n, k] >= 0) to one
# score per sample. Padding slots (no feature) have weight 0 and are ignored; a sample with no
# target feature at all scores NaN... except that NaN would break ranking, so it scores -1
# (the least suspicious value a cosine can take) and the explanation says it had no features.

def _weighted_mean(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    s = w.sum(axis=1)
    return np.divide((p * w).sum(axis=1), s, out=np.full(len(p), -1.0, dtype=np.float64), where=s > 0)


def _weighted_max(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """max_f (w_f / max w) * p_f: the most harmful-adjacent feature, discounted by how weakly it fires."""
    wmax = w.max(axis=1, keepdims=True)
    rel = np.divide(w, wmax, out=np.zeros_like(w), where=wmax > 0)
    out = np.where(w > 0, rel * p, -np.inf).max(axis=1)
    return np.where(np.isfinite(out), out, -1.0)


def _max(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.where(w > 0, p, -np.inf).max(axis=1)
    return np.where(np.isfinite(out), out, -1.0)


def _top_mean(m: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def scorer(p: np.ndarray, w: np.ndarray) -> np.ndarray:
        q = np.where(w > 0, p, -np.inf)
        top = -np.sort(-q, axis=1)[:, :m]
        valid = np.isfinite(top)
        cnt = valid.sum(axis=1)
        return np.divide(np.where(valid, top, 0).sum(axis=1), cnt, out=np.full(len(p), -1.0), where=cnt > 0)
    scorer.__doc__ = f"Mean of the {m} highest proximities among the target features (unweighted)."
    return scorer


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "weighted_mean": _weighted_mean,
    "weighted_max": _weighted_max,
    "max": _max,
    "top5_mean": _top_mean(5),
}
"""Per-sample aggregations of target-feature proximity. ``weighted_mean`` is the default: it measured
best on the project data (see README, "Geometry and filtering")."""


def score_targets(targets: SampleTargets, proximity: np.ndarray, scorer: str | Callable = "weighted_mean") -> np.ndarray:
    """Per-sample geometry score: ``scorer`` over the proximities of each sample's target features."""
    fn = SCORERS.get(scorer) if isinstance(scorer, str) else scorer
    if fn is None:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {sorted(SCORERS)} or pass a function")
    prox = np.nan_to_num(np.asarray(proximity, dtype=np.float32), nan=-1.0)
    p = prox[targets.idx]
    w = np.where(targets.idx >= 0, targets.weight, 0).astype(np.float32)
    p = np.where(targets.idx >= 0, p, -1.0)
    return np.asarray(fn(p, w), dtype=np.float64)


# --------------------------------------------------------------------------- permutation control

@dataclass
class PermutationResult:
    """Outcome of :func:`permutation_control`: the observed statistic, the null's mean and sd, one-sided p."""

    statistic: str
    observed: float
    null_mean: float
    null_sd: float
    p_value: float
    n_perm: int
    n_features: int

    @property
    def z(self) -> float:
        """``(observed - null_mean) / null_sd``; infinite when the null has no spread."""
        return (self.observed - self.null_mean) / self.null_sd if self.null_sd > 0 else float("inf")

    def as_dict(self) -> dict:
        """The result as JSON-able data, ``z`` included."""
        return {**self.__dict__, "z": self.z}


def frequency_matched_sample(freq: np.ndarray, like: np.ndarray, rng: np.random.Generator,
                             exclude: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Random latents matching ``like`` in count and firing-frequency bin (quantile bins of ``freq``)."""
    edges = np.unique(np.quantile(freq, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, freq, side="right")
    pool = np.ones(len(freq), dtype=bool)
    pool[exclude] = False
    out = []
    for b, cnt in zip(*np.unique(bins[like], return_counts=True)):
        cand = np.flatnonzero(pool & (bins == b))
        if len(cand) < cnt:  # not enough in this bin: widen to the whole pool
            cand = np.flatnonzero(pool)
        pick = rng.choice(cand, cnt, replace=False)
        pool[pick] = False
        out.append(pick)
    return np.concatenate(out)


def permutation_control(directions: np.ndarray, query: Sequence[int], harmful: Sequence[int], freq: np.ndarray,
                        n_perm: int = 1000, agg: str = "max", n_bins: int = 10, seed: int = 0) -> PermutationResult:
    """Is ``query`` (e.g. the inducing data's features) closer to ``harmful`` than chance?

    Statistic: the mean over ``query`` latents of their ``agg`` cosine to the
    harmful set. Null: the same statistic for ``n_perm`` random latent sets of
    the same size whose firing frequencies (``freq``, one per latent) fall in
    the same quantile bins, drawn from latents outside both sets. One-sided
    p-value ``(1 + #null >= observed) / (1 + n_perm)``.
    """
    d_sae = directions.shape[0]
    q = _check_ids(query, d_sae, "query feature set")
    h = _check_ids(harmful, d_sae, "harmful feature set")
    freq = np.asarray(freq, dtype=np.float64)
    if freq.shape != (d_sae,):
        raise ValueError(f"freq must have one value per latent ({d_sae}), got shape {freq.shape}")
    prox = np.nan_to_num(feature_proximity(directions, h, agg=agg), nan=-1.0)
    observed = float(prox[q].mean())
    rng = np.random.default_rng(seed)
    exclude = np.union1d(q, h)
    null = np.array([prox[frequency_matched_sample(freq, q, rng, exclude, n_bins)].mean() for _ in range(n_perm)])
    p = (1 + int((null >= observed).sum())) / (1 + n_perm)
    return PermutationResult(statistic=f"mean {agg}-cosine of the query features to the harmful set",
                             observed=observed, null_mean=float(null.mean()), null_sd=float(null.std(ddof=1)),
                             p_value=float(p), n_perm=n_perm, n_features=len(q))
