"""The ``judge`` strategy: 100 minus a judge's alignment score of the answer text.

The offline MiniLM judge by default; see :mod:`geomfilter.judges`. The judge reads text, not
activations (``needs_texts``): the rows come per call, ``apply(cache, samples=samples)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..cache import ActivationCache
from ..errors import GeomfilterError
from ..judges import JudgeScore, load_judge, question_and_answer
from ..samples import Sample
from .base import SampleFilter


class JudgeFilterError(GeomfilterError, RuntimeError):
    """Rows the judge strategy cannot score (no text given, or the judge failed on them)."""


class JudgeFilter(SampleFilter):
    """Score = 100 - the judge's alignment score of the sample's answer (the offline judge by default).

    ``judge`` is a judge spec for :func:`geomfilter.judges.load_judge` (``None``/``"offline"``,
    a saved judge folder, or ``"api:MODEL"``) or a judge object (anything with
    ``score(questions, answers)``). The rows' text comes with each call: ``samples=``
    (:class:`~geomfilter.data.Sample` objects, matched to the cache by id). A row the judge
    cannot score is an error naming it, never silently kept or dropped.
    """

    strategy = "judge"
    needs_texts = True

    def __init__(self, judge: Any = None, drop: float | None = 0.1, threshold: float | None = None):
        self.judge = judge
        self.drop = drop
        self.threshold = threshold

    def params(self) -> dict:
        """As :meth:`SampleFilter.params`, a judge object given by its ``name``."""
        p = super().params()
        if self.judge is None or isinstance(self.judge, str):
            p["_judge_obj"] = None  # what report.json has always held for a judge given by spec
        else:
            p["judge"] = getattr(self.judge, "name", "custom")
        return p

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Load the judge; the reference caches are not used."""
        self.judge_ = load_judge(self.judge) if self.judge is None or isinstance(self.judge, str) else self.judge

    def _judged(self, cache: ActivationCache, samples: list[Sample] | None, rows: np.ndarray | None = None
                ) -> list[JudgeScore]:
        """The judge's scores of ``rows`` (default: all) of ``cache``; a row it cannot score is an error."""
        self._check_fitted()
        if samples is None:
            raise JudgeFilterError("the judge strategy reads the rows' text: pass samples= to apply or score_samples "
                               "(Sample objects, matched to the cache by id)")
        by_id = {s.id: s for s in samples}
        missing = [i for i in cache.ids if i not in by_id]
        if missing:
            raise JudgeFilterError(f"judge: {len(missing)} cache rows have no sample text (first id {missing[0]!r})")
        ids = list(cache.ids) if rows is None else [cache.ids[r] for r in rows]
        pairs = [question_and_answer(by_id[i].messages) for i in ids]
        scores = self.judge_.score([q for q, _ in pairs], [a for _, a in pairs])
        bad = [(ids[i], s.error) for i, s in enumerate(scores) if s.alignment is None]
        if bad:
            raise JudgeFilterError(f"judge could not score {len(bad)} rows (first {bad[0][0]!r}: {bad[0][1]})")
        return scores

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """100 - the judge's alignment score of each row's answer (``samples``: the rows' text)."""
        return np.array([100.0 - s.alignment for s in self._judged(cache, samples)])

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3, own: ActivationCache | None = None,
                samples: list[Sample] | None = None) -> list[list[dict]]:
        """Per row in ``rows``: the judge's alignment and coherence scores (the judge reads them again)."""
        return [_explained(s) for s in self._judged(cache, samples, rows)]

    def _scored_and_explained(self, cache: ActivationCache, own: ActivationCache | None,
                              samples: list[Sample] | None, n: int) -> tuple[np.ndarray, list[list[dict]] | None]:
        judged = self._judged(cache, samples)  # one judging for both
        scores = self._checked([100.0 - s.alignment for s in judged], cache)
        return scores, ([_explained(s) for s in judged] if n else None)


def _explained(s: JudgeScore) -> list[dict]:
    return [{"alignment": round(s.alignment, 2), "coherence": round(s.coherence, 2)}]
