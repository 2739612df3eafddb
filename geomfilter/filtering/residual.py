"""Strategies on the pooled residual stream (no SAE needed): ``projection`` and ``representation``.

* ``projection`` - the pooled residual projected on the harmful - benign mean direction; with
  ``own=`` (a cache of the model's own answers to the same prompts) the *projection difference*
  sample - own answer;
* ``representation`` - mean cosine of the pooled residual to its ``top_n`` most similar harmful
  anchors minus the same for benign anchors.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..cache import ActivationCache
from ..samples import Sample
from .base import OptionChecks, SampleFilter, own_rows


def _resid(cache: ActivationCache | None) -> np.ndarray:
    if cache is None:
        raise ValueError("this strategy learns from the reference caches: call fit(harmful_cache, benign_cache)")
    if "resid_mean" not in cache.arrays:
        raise ValueError(f"cache {cache.path} has no residual means")
    return cache.arrays["resid_mean"].astype(np.float64)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def _space(cache: ActivationCache) -> dict[str, Any]:
    """What makes two caches' residuals comparable: the model and the hook (and where the cache is, for errors)."""
    return {"hook": cache.hook, "model": cache.manifest["identity"]["model"], "path": cache.path}


def _same_space(ref: dict[str, Any], b: ActivationCache, what: str) -> None:
    if b.hook != ref["hook"] or b.manifest["identity"]["model"] != ref["model"]:
        raise ValueError(f"{what} cache {b.path} was made with another model or hook than {ref['path']} "
                         f"({b.hook} vs {ref['hook']}); cache both the same way")


class ProjectionFilter(SampleFilter):
    """Residual projection on the unit harmful - benign mean direction (optionally minus the own answer's).

    ``normalize``: the cosine of the pooled residual, centred on the references' midpoint, to the direction
    (scale-robust: a row's norm, which follows its length and register, no longer moves its score).
    """

    strategy = "projection"
    option_checks: ClassVar[OptionChecks] = {"normalize": (lambda v: isinstance(v, bool), "must be true or false")}

    def __init__(self, normalize: bool = False, drop: float | None = 0.1, threshold: float | None = None):
        self.normalize = normalize
        self.drop = drop
        self.threshold = threshold

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """The unit direction from the benign to the harmful mean pooled residual, and their midpoint."""
        mh, mb = _resid(harmful).mean(axis=0), _resid(benign).mean(axis=0)
        d = mh - mb
        self.direction_ = d / np.linalg.norm(d)
        self.center_ = (mh + mb) / 2
        self.space_ = _space(harmful)

    def _project(self, cache: ActivationCache) -> np.ndarray:
        x = _resid(cache)
        if self.normalize:
            return _unit_rows(x - self.center_) @ self.direction_
        return x @ self.direction_

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """Pooled residual of each row on the fitted direction (minus its own answer's, with ``own``)."""
        self._check_fitted()
        _same_space(self.space_, cache, "data")
        s = self._project(cache)
        if own is not None:
            _same_space(self.space_, own, "own-answer")
            s = s - self._project(own)[own_rows(cache, own)]
        return s


class RepresentationFilter(SampleFilter):
    """Mean cosine to the ``top_n`` nearest harmful anchors minus to the ``top_n`` nearest benign anchors."""

    strategy = "representation"
    option_checks: ClassVar[OptionChecks] = {"top_n": (lambda v: v >= 1, "must be >= 1")}

    def __init__(self, top_n: int = 10, drop: float | None = 0.1, threshold: float | None = None):
        self.top_n = top_n
        self.drop = drop
        self.threshold = threshold

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Keep the unit pooled residuals of the harmful and benign references as anchors."""
        self.harmful_, self.benign_ = _unit_rows(_resid(harmful)), _unit_rows(_resid(benign))
        self.space_ = _space(harmful)

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """Mean cosine to the ``top_n`` nearest harmful anchors minus to the ``top_n`` nearest benign ones."""
        self._check_fitted()
        _same_space(self.space_, cache, "data")
        x = _unit_rows(_resid(cache))

        def top_mean(anchors: np.ndarray) -> np.ndarray:
            cos = x @ anchors.T
            n = min(self.top_n, cos.shape[1])
            return -np.sort(-cos, axis=1)[:, :n].mean(axis=1)
        return top_mean(self.harmful_) - top_mean(self.benign_)
