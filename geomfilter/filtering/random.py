"""The ``random`` strategy: a seeded uniform score, the baseline every filter must beat."""
from __future__ import annotations

import numpy as np

from ..cache import ActivationCache
from ..samples import Sample
from .base import SampleFilter


class RandomFilter(SampleFilter):
    """Uniform random scores from ``seed`` (same seed, same data -> same split); the references are ignored."""

    strategy = "random"
    uses_seed = True

    def __init__(self, seed: int = 0, drop: float | None = 0.1, threshold: float | None = None):
        self.seed = seed
        self.drop = drop
        self.threshold = threshold

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """Uniform scores in [0, 1) from ``seed``, one per row."""
        self._check_fitted()
        return np.random.default_rng(self.seed).random(len(cache))
