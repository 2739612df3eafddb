"""``gradient``: where the update a sample asks for points, read on the harmful decoder directions.

Issue 19, method (a). A fine-tuning step on sample ``i`` moves the hooked residual by about ``g_i``
(its pooled negative loss gradient, :mod:`geomfilter.gradients`), and SAE feature ``j`` by about
``<d_j, g_i>``. The score is how much that update pushes the harmful features up::

    p_ij = <d_j, g_i> / |g_i|        (``normalize``; the raw inner product otherwise)
    score_i = mean over harmful j of max(p_ij, 0)     (``agg="positive"``: increases only)
              mean over harmful j of p_ij             (``agg="mean"``)

The harmful features are selected on the reference caches like ``geometry``'s (SAE activations of
harmful vs benign answers); the gradients are stored next to the data's cache (the pipeline computes
them for this strategy: one forward and one backward pass through the blocks above the hook per batch).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..cache import ActivationCache
from ..geometry import unit_directions
from ..gradients import load_gradients
from ..samples import Sample
from .base import FilterOptionError, OptionChecks
from .sae_features import _HarmfulFeatureFilter


class GradientFilter(_HarmfulFeatureFilter):
    """Projection of each sample's update direction at the hook on the harmful features' decoder directions."""

    strategy = "gradient"
    needs_gradients = True
    option_checks: ClassVar[OptionChecks] = {
        "agg": (lambda v: v in ("positive", "mean"), "must be 'positive' or 'mean'"),
        "normalize": (lambda v: isinstance(v, bool), "must be true or false"),
    }

    def __init__(self, sae: Any = None, *, n_harmful: int = 100, harmful_method: str = "contrast",
                 min_freq: float = 0.05, harmful_ids: list[int] | None = None, select_frac: float = 1.0,
                 seed: int = 0, agg: str = "positive", normalize: bool = True, drop: float | None = 0.1,
                 threshold: float | None = None):
        super().__init__(sae, n_harmful=n_harmful, harmful_method=harmful_method, min_freq=min_freq,
                         harmful_ids=harmful_ids, select_frac=select_frac, seed=seed, drop=drop, threshold=threshold)
        self.agg = agg
        self.normalize = normalize

    def _check_settings(self) -> None:
        super()._check_settings()  # agg, normalize: option_checks
        if self.sae is None:
            raise FilterOptionError("GradientFilter needs the SAE (or its W_dec) for the decoder directions")

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Select the harmful features; keep their unit decoder directions ``harmful_directions_``."""
        directions = unit_directions(self.sae)
        if harmful is not None and harmful.d_sae != directions.shape[0]:
            raise FilterOptionError(f"reference cache {harmful.path} has d_sae {harmful.d_sae} but the SAE has "
                                    f"{directions.shape[0]} latents: cache the references with the same SAE")
        self.features_ = self._fit_features(harmful, benign, directions.shape[0])
        self.harmful_directions_ = directions[np.asarray(self.features_.ids)].astype(np.float64)

    def projections(self, grads: np.ndarray) -> np.ndarray:
        """``[n, n_harmful]``: each update's component along each harmful decoder direction."""
        self._check_fitted()
        g = np.asarray(grads, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != self.harmful_directions_.shape[1]:
            raise FilterOptionError(f"gradients of shape {g.shape} do not match the SAE's input width "
                                    f"{self.harmful_directions_.shape[1]}")
        if self.normalize:
            g = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-12)
        return g @ self.harmful_directions_.T

    def score_gradients(self, grads: np.ndarray) -> np.ndarray:
        """One score per row of ``grads`` (``[n, d]``: :func:`geomfilter.gradients.response_gradients`)."""
        p = self.projections(grads)
        return (np.maximum(p, 0) if self.agg == "positive" else p).mean(axis=1)

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """The score of every row from the gradients stored with ``cache``."""
        if own is not None:
            raise FilterOptionError("the gradient strategy takes no own-answer cache (--own)")
        return self.score_gradients(load_gradients(cache))

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3, own: ActivationCache | None = None,
                samples: list[Sample] | None = None) -> list[list[dict]]:
        """Per row: the ``n`` harmful features its update pushes up most, with the push."""
        p = self.projections(load_gradients(cache)[rows])
        top = np.argsort(-p, axis=1, kind="stable")[:, :n]
        ids = np.asarray(self.features_.ids)
        return [[{"feature": int(ids[j]), "push": round(float(p[r, j]), 4)} for j in top[r]]
                for r in range(len(rows))]
