"""Strategies on SAE latents (``requires_sae``): ``geometry`` and ``activation``.

Both select a harmful feature set on the reference caches (:func:`geomfilter.features.harmful_features`,
or explicit ``harmful_ids``; ``seed`` picks the selection half when ``select_frac`` < 1):

* ``geometry`` - decoder-cosine proximity of the sample's target SAE features to the harmful
  features (see :mod:`geomfilter.geometry`);
* ``activation`` - the summed pooled activation of the harmful features.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..cache import ActivationCache
from ..features import FeatureSet, SampleTargets, explicit_features, harmful_features, sample_targets
from ..geometry import PROXIMITIES, SCORERS, feature_proximity, nearest_harmful, score_targets, unit_directions
from ..samples import Sample
from .base import OptionChecks, SampleFilter, own_rows


def _sae_width(sae: Any) -> int:
    """The number of latents of an SAE or of a ``W_dec``-like array."""
    w = getattr(sae, "W_dec", sae)
    return int(w.shape[0]) if hasattr(w, "shape") else len(w)


#: the checks of the harmful feature set's options (shared with the ensemble, which passes them to its members)
HARMFUL_SET_CHECKS: OptionChecks = {
    "n_harmful": (lambda v: v >= 1, "must be >= 1"),
    "min_freq": (lambda v: 0 <= v <= 1, "must be a fraction in [0, 1]"),
    "harmful_method": (lambda v: v in ("contrast", "auroc"), "must be 'contrast' or 'auroc'"),
    "harmful_ids": (lambda v: v is None or (len(v) > 0 and min(v) >= 0), "must be non-negative latent ids"),
}


class _HarmfulFeatureFilter(SampleFilter):
    """Shared fitting of the harmful feature set (selected on the references, or explicit ids)."""

    requires_sae = True
    uses_seed = True
    option_checks: ClassVar[OptionChecks] = HARMFUL_SET_CHECKS

    def __init__(self, sae: Any = None, *, n_harmful: int = 100, harmful_method: str = "contrast",
                 min_freq: float = 0.05, harmful_ids: list[int] | None = None, select_frac: float = 1.0,
                 seed: int = 0, drop: float | None = 0.1, threshold: float | None = None):
        self.sae = sae
        self.n_harmful = n_harmful
        self.harmful_method = harmful_method
        self.min_freq = min_freq
        self.harmful_ids = harmful_ids
        self.select_frac = select_frac
        self.seed = seed
        self.drop = drop
        self.threshold = threshold

    def _fit_features(self, harmful: ActivationCache | None, benign: ActivationCache | None,
                      d_sae: int | None) -> FeatureSet:
        """The harmful feature set: ``harmful_ids`` (``d_sae``: the SAE's width) or selected on the references."""
        if self.harmful_ids is not None:
            if harmful is None and d_sae is None:
                raise ValueError("explicit harmful ids without reference caches need the SAE's width")
            return explicit_features(list(self.harmful_ids), harmful.d_sae if harmful is not None else d_sae)
        return harmful_features(harmful, benign, n=self.n_harmful, method=self.harmful_method,
                                min_freq=self.min_freq, select_frac=self.select_frac, seed=self.seed)


class ActivationFilter(_HarmfulFeatureFilter):
    """Summed pooled (mean) activation of the harmful features in the sample.

    ``sae`` is optional: the activations come from the caches; its width serves explicit
    ``harmful_ids`` fitted without reference caches.
    """

    strategy = "activation"

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Select the harmful features on the references (or take ``harmful_ids``)."""
        self.features_ = self._fit_features(harmful, benign, None if self.sae is None else _sae_width(self.sae))

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """Summed pooled activation of the harmful features (minus the own answer's, with ``own``)."""
        self._check_fitted()
        s = self._harmful_sum(cache)
        if own is not None:
            s = s - self._harmful_sum(own)[own_rows(cache, own)]
        return s

    def _harmful_sum(self, cache: ActivationCache) -> np.ndarray:
        if cache.d_sae is None:
            raise ValueError(f"cache {cache.path} has no SAE activations")
        idx, val = cache.arrays["mean_idx"], cache.arrays["mean_val"]
        hit = np.isin(idx, np.asarray(self.features_.ids))
        return np.where(hit, np.maximum(val, 0), 0).sum(axis=1).astype(np.float64)


class GeometryFilter(_HarmfulFeatureFilter):
    """Decoder-cosine proximity of each sample's target features to the harmful features.

    ``sae``: the SAE or its ``W_dec`` (``[d_sae, d_in]``); ``fit`` turns it into unit decoder
    directions ``directions_``. Per latent ``f``: ``p_f`` = ``proximity`` (max or mean) cosine
    of its decoder direction to the harmful set, or (``span``) to the set's span (self excluded).
    Per sample: its top-``k`` target latents by pooled activation (or their increase over the
    model's own answer, with ``own=``), aggregated by ``scorer`` (see
    :data:`geomfilter.geometry.SCORERS`).
    ``max_target_freq``: latents that fire on more than this fraction of the *benign*
    references (generic, dense latents) are not used as targets.
    """

    strategy = "geometry"
    option_checks: ClassVar[OptionChecks] = {
        "k": (lambda v: v >= 1, "must be >= 1"),
        "max_target_freq": (lambda v: v is None or 0 < v <= 1, "must be in (0, 1]"),
        "scorer": (lambda v: v in SCORERS, f"must be one of {sorted(SCORERS)}"),
        "proximity": (lambda v: v in PROXIMITIES, f"must be one of {list(PROXIMITIES)}"),
    }

    def __init__(self, sae: Any = None, *, n_harmful: int = 100, harmful_method: str = "contrast",
                 min_freq: float = 0.05, harmful_ids: list[int] | None = None, select_frac: float = 1.0,
                 seed: int = 0, k: int = 32, pooling: str = "mean", scorer: str = "weighted_mean",
                 proximity: str = "max", max_target_freq: float | None = None, drop: float | None = 0.1,
                 threshold: float | None = None):
        super().__init__(sae, n_harmful=n_harmful, harmful_method=harmful_method, min_freq=min_freq,
                         harmful_ids=harmful_ids, select_frac=select_frac, seed=seed, drop=drop, threshold=threshold)
        self.k = k
        self.pooling = pooling
        self.scorer = scorer
        self.proximity = proximity
        self.max_target_freq = max_target_freq

    def _check_settings(self) -> None:
        super()._check_settings()  # scorer, proximity, k, max_target_freq: option_checks
        if self.sae is None:
            raise ValueError("GeometryFilter needs the SAE (or its W_dec) for the decoder directions")

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Select the harmful features; compute every latent's proximity and nearest harmful latent."""
        self.directions_ = unit_directions(self.sae)
        d_sae = self.directions_.shape[0]
        if harmful is not None and harmful.d_sae != d_sae:
            raise ValueError(f"reference cache {harmful.path} has d_sae {harmful.d_sae} but the SAE has "
                             f"{d_sae} latents: cache the references with the same SAE")
        self.features_ = self._fit_features(harmful, benign, d_sae)
        self.proximity_ = feature_proximity(self.directions_, self.features_.ids, agg=self.proximity)
        near = nearest_harmful(self.directions_, self.features_.ids, range(d_sae), n=1)
        self.nearest_id_ = np.array([nh[0][0] if nh else -1 for nh in near])
        self.nearest_cos_ = np.array([nh[0][1] if nh else np.nan for nh in near], dtype=np.float32)
        self.excluded_ = np.zeros(d_sae, dtype=bool)
        if self.max_target_freq is not None:
            if benign is None:
                raise ValueError("max_target_freq needs the benign reference cache to measure firing frequency")
            self.excluded_ = (benign.dense(self.pooling) > 0).mean(axis=0) > self.max_target_freq

    def targets(self, cache: ActivationCache, own: ActivationCache | None = None) -> SampleTargets:
        """Per row: its top-``k`` target latents and their weights (the increase over ``own``'s, with ``own``),
        generic latents (``excluded_``) left out."""
        self._check_fitted()
        if cache.d_sae != self.directions_.shape[0]:
            raise ValueError(f"cache {cache.path} has d_sae {cache.d_sae}, the SAE {self.directions_.shape[0]}")
        k = self.k + int(self.excluded_.sum()) if self.excluded_.any() else self.k
        k = min(k, cache.arrays[f"{self.pooling}_idx"].shape[1]) if own is None else k
        t = sample_targets(cache, k=k, pooling=self.pooling, relative_to=own)
        if self.excluded_.any():  # drop generic latents, keep the top-k of the rest
            drop = (t.idx >= 0) & self.excluded_[np.maximum(t.idx, 0)]
            idx, w = np.where(drop, -1, t.idx), np.where(drop, 0.0, t.weight).astype(np.float32)
            order = np.argsort(-w, axis=1, kind="stable")[:, : self.k]
            t = type(t)(idx=np.take_along_axis(idx, order, 1), weight=np.take_along_axis(w, order, 1), mode=t.mode)
        return t

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """Per row: ``scorer`` over the proximities of its target features (see :func:`geometry.score_targets`)."""
        return score_targets(self.targets(cache, own), self.proximity_, self.scorer)

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3, own: ActivationCache | None = None,
                samples: list[Sample] | None = None) -> list[list[dict]]:
        """Per row: the ``n`` target latents contributing most (weight x proximity), with their nearest
        harmful latents."""
        return self._explain_targets(self.targets(cache, own), rows, n)

    def _scored_and_explained(self, cache: ActivationCache, own: ActivationCache | None,
                              samples: list[Sample] | None, n: int) -> tuple[np.ndarray, list[list[dict]] | None]:
        t = self.targets(cache, own)  # once for both
        scores = self._checked(score_targets(t, self.proximity_, self.scorer), cache)
        return scores, (self._explain_targets(t, np.arange(len(cache)), n) if n else None)

    def _explain_targets(self, t: SampleTargets, rows: np.ndarray, n: int) -> list[list[dict]]:
        prox = np.nan_to_num(self.proximity_, nan=-1.0)
        idx, w = t.idx[rows], t.weight[rows]
        ok = idx >= 0
        contrib = np.where(ok, w * prox[np.where(ok, idx, 0)], -np.inf)
        top = np.argsort(-contrib, axis=1, kind="stable")[:, :n]
        top_idx, top_w, top_ok = (np.take_along_axis(a, top, axis=1) for a in (idx, w, ok))
        safe = np.where(top_ok, top_idx, 0)
        near_id, near_cos, p = self.nearest_id_[safe], self.nearest_cos_[safe], prox[safe]
        return [[{"feature": int(top_idx[r, j]), "weight": round(float(top_w[r, j]), 4),
                  "proximity": round(float(p[r, j]), 4), "nearest_harmful": int(near_id[r, j]),
                  "cosine": round(float(near_cos[r, j]), 4)} for j in range(top.shape[1]) if top_ok[r, j]]
                for r in range(len(rows))]
