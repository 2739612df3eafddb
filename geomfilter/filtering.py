"""Filtering strategies: score every sample, drop the most suspect, keep the rest.

Every strategy has the same scikit-learn-like interface::

    f = GeometryFilter(sae, drop=0.5).fit(harmful_cache, benign_cache)
    scores = f.score_samples(data_cache)      # higher = closer to harmful = dropped first
    result = f.apply(data_cache)              # FilterResult; sets f.support_ (kept mask)
    f.get_support()                           # boolean mask of kept rows

``fit`` learns from the reference caches (harmful and benign answers) and
returns ``self``; fitted state ends in ``_``. Strategies:

* ``geometry`` - decoder-cosine proximity of the sample's target SAE features to
  the harmful features (see :mod:`geomfilter.geometry`);
* ``random`` - a seeded uniform score (the baseline every filter must beat);
* ``projection`` - the pooled residual projected on the harmful - benign mean
  direction; with ``own=`` (a cache of the model's own answers to the same
  prompts) the *projection difference* sample - own answer;
* ``representation`` - mean cosine of the pooled residual to its ``top_n`` most
  similar harmful anchors minus the same for benign anchors;
* ``activation`` - the summed pooled activation of the harmful SAE features;
* ``judge`` - 100 minus a judge's alignment score of the answer text (the
  offline MiniLM judge by default; see :mod:`geomfilter.judges`).

Dropping: ``drop`` is the fraction removed (exactly ``round(drop * n)`` rows,
ties broken by input order) or ``threshold`` drops every score above it.
:func:`~geomfilter.outputs.write_filter_outputs` turns a result into ``kept.jsonl`` /
``dropped.jsonl`` (the original rows, byte for byte), ``scores.csv`` and
``report.json``, written atomically; every input row ends in exactly one of the two files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .cache import ActivationCache
from .features import FeatureSet, explicit_features, harmful_features, sample_targets
from .geometry import SCORERS, feature_proximity, nearest_harmful, score_targets, unit_directions
from .outputs import write_filter_outputs  # noqa: F401 (re-exported: the writer of a FilterResult)


@dataclass
class FilterResult:
    """Scores and the kept/dropped decision for every row of a cache, in cache order."""

    ids: list[str]
    scores: np.ndarray
    kept: np.ndarray  # bool
    rank: np.ndarray  # 1 = most suspect
    threshold: float | None  # threshold mode: rows scoring above it were dropped; None in fraction mode
    strategy: str
    params: dict
    explanations: list[list[dict]] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        """Number of rows dropped by score."""
        return int((~self.kept).sum())

    def reason(self, i: int) -> str:
        """Why row ``i`` was kept or dropped, in words."""
        s = f"{self.strategy} score {self.scores[i]:.4g}, rank {self.rank[i]} of {len(self.ids)}"
        if self.threshold is not None:
            return s + (f" <= threshold {self.threshold:.4g}" if self.kept[i] else f" > threshold {self.threshold:.4g}")
        k = self.n_dropped
        return s + (f": not among the {k} highest" if self.kept[i] else f": among the {k} highest (dropped)")


class SampleFilter:
    """Base class: subclasses implement ``fit`` and ``score_samples`` (and optionally ``explain``)."""

    strategy: ClassVar[str] = ""

    def __init__(self, drop: float | None = 0.1, threshold: float | None = None):
        if (drop is None) == (threshold is None):
            raise ValueError("give exactly one of drop (a fraction) or threshold (a score)")
        if drop is not None and not 0 <= drop <= 1:  # NaN fails this too
            raise ValueError(f"drop must be a fraction in [0, 1], got {drop}")
        if threshold is not None and not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        self.drop = drop
        self.threshold = threshold

    # -- to implement
    def fit(self, harmful: ActivationCache, benign: ActivationCache) -> SampleFilter:
        """Learn from the harmful and benign reference caches; return ``self``."""
        return self

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None) -> np.ndarray:
        """One score per row of ``cache`` (higher = more suspect); ``own``: the model's own answers."""
        raise NotImplementedError

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3) -> list[list[dict]]:
        """Per row in ``rows``: up to ``n`` dicts saying what drives its score (empty by default)."""
        return [[] for _ in rows]

    def params(self) -> dict:
        """The constructor settings that are JSON-able (written to ``report.json``)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and _jsonable(v)}

    # -- shared
    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(harmful_cache, benign_cache) first")

    def apply(self, cache: ActivationCache, own: ActivationCache | None = None, explain: int = 3) -> FilterResult:
        """Score ``cache`` and decide kept/dropped for every row; sets ``scores_`` and ``support_``."""
        scores = np.asarray(self.score_samples(cache, own=own), dtype=np.float64)
        if scores.shape != (len(cache),) or not np.isfinite(scores).all():
            raise RuntimeError(f"{self.strategy}: scores must be finite, one per sample")
        n = len(scores)
        order = np.lexsort((np.arange(n), -scores))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(1, n + 1)
        if self.drop is not None:
            kept = rank > int(round(self.drop * n))
            cut = None
        else:
            kept = scores <= self.threshold
            cut = float(self.threshold)
        self.scores_, self.support_ = scores, kept
        expl = self.explain(cache, np.arange(n), n=explain) if explain else [[] for _ in range(n)]
        return FilterResult(ids=list(cache.ids), scores=scores, kept=kept, rank=rank, threshold=cut,
                            strategy=self.strategy, params=self.params(), explanations=expl)

    def get_support(self, indices: bool = False) -> np.ndarray:
        """Mask (or indices) of the rows kept by the last :meth:`apply`."""
        if not hasattr(self, "support_"):
            raise RuntimeError("call apply(cache) first")
        return np.flatnonzero(self.support_) if indices else self.support_


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


class RandomFilter(SampleFilter):
    """Uniform random scores from ``seed`` (same seed, same data -> same split)."""

    strategy = "random"

    def __init__(self, seed: int = 0, drop: float | None = 0.1, threshold: float | None = None):
        super().__init__(drop, threshold)
        self.seed = seed

    def fit(self, harmful=None, benign=None) -> RandomFilter:
        """Nothing to learn; the references are ignored."""
        self.fitted_ = True
        return self

    def score_samples(self, cache, own=None):
        """Uniform scores in [0, 1) from ``seed``, one per row."""
        return np.random.default_rng(self.seed).random(len(cache))


def _resid(cache: ActivationCache) -> np.ndarray:
    if "resid_mean" not in cache.arrays:
        raise ValueError(f"cache {cache.path} has no residual means")
    return cache.arrays["resid_mean"].astype(np.float64)


def _same_space(a: ActivationCache, b: ActivationCache, what: str) -> None:
    if a.hook != b.hook or a.manifest["identity"]["model"] != b.manifest["identity"]["model"]:
        raise ValueError(f"{what} cache {b.path} was made with another model or hook than {a.path} "
                         f"({b.hook} vs {a.hook}); cache both the same way")


def _own_rows(cache: ActivationCache, own: ActivationCache) -> np.ndarray:
    pos = {i: r for r, i in enumerate(own.ids)}
    missing = [i for i in cache.ids if i not in pos]
    if missing:
        raise ValueError(f"own-answer cache {own.path} lacks {len(missing)} ids of {cache.path} (first {missing[0]!r})")
    return np.array([pos[i] for i in cache.ids])


class ProjectionFilter(SampleFilter):
    """Residual projection on the unit harmful - benign mean direction (optionally minus the own answer's)."""

    strategy = "projection"

    def fit(self, harmful, benign) -> ProjectionFilter:
        """The unit direction from the benign to the harmful mean pooled residual."""
        d = _resid(harmful).mean(axis=0) - _resid(benign).mean(axis=0)
        self.direction_ = d / np.linalg.norm(d)
        self.ref_ = harmful
        self.fitted_ = True
        return self

    def score_samples(self, cache, own=None):
        """Pooled residual of each row on the fitted direction (minus its own answer's, with ``own``)."""
        self._check_fitted()
        _same_space(self.ref_, cache, "data")
        s = _resid(cache) @ self.direction_
        if own is not None:
            _same_space(self.ref_, own, "own-answer")
            s = s - (_resid(own) @ self.direction_)[_own_rows(cache, own)]
        return s


class RepresentationFilter(SampleFilter):
    """Mean cosine to the ``top_n`` nearest harmful anchors minus to the ``top_n`` nearest benign anchors."""

    strategy = "representation"

    def __init__(self, top_n: int = 10, drop: float | None = 0.1, threshold: float | None = None):
        super().__init__(drop, threshold)
        self.top_n = top_n

    def fit(self, harmful, benign) -> RepresentationFilter:
        """Keep the unit pooled residuals of the harmful and benign references as anchors."""
        def unit(x):
            return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        self.harmful_, self.benign_ = unit(_resid(harmful)), unit(_resid(benign))
        self.ref_ = harmful
        self.fitted_ = True
        return self

    def score_samples(self, cache, own=None):
        """Mean cosine to the ``top_n`` nearest harmful anchors minus to the ``top_n`` nearest benign ones."""
        self._check_fitted()
        _same_space(self.ref_, cache, "data")
        x = _resid(cache)
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

        def top_mean(anchors):
            cos = x @ anchors.T
            n = min(self.top_n, cos.shape[1])
            return -np.sort(-cos, axis=1)[:, :n].mean(axis=1)
        return top_mean(self.harmful_) - top_mean(self.benign_)


class _HarmfulFeatureFilter(SampleFilter):
    """Shared fitting of the harmful feature set (selected on the references, or explicit ids)."""

    def __init__(self, n_harmful: int = 100, harmful_method: str = "contrast", min_freq: float = 0.05,
                 harmful_ids: list[int] | None = None, select_frac: float = 1.0, seed: int = 0,
                 drop: float | None = 0.1, threshold: float | None = None):
        super().__init__(drop, threshold)
        self.n_harmful, self.harmful_method, self.min_freq = n_harmful, harmful_method, min_freq
        self.harmful_ids, self.select_frac, self.seed = harmful_ids, select_frac, seed

    def _fit_features(self, harmful, benign) -> FeatureSet:
        if self.harmful_ids is not None:
            d_sae = harmful.d_sae if harmful is not None else self._d_sae()
            return explicit_features(list(self.harmful_ids), d_sae)
        return harmful_features(harmful, benign, n=self.n_harmful, method=self.harmful_method,
                                min_freq=self.min_freq, select_frac=self.select_frac, seed=self.seed)

    def _d_sae(self) -> int:
        raise ValueError("explicit harmful ids without reference caches need the SAE's width")


class ActivationFilter(_HarmfulFeatureFilter):
    """Summed pooled (mean) activation of the harmful features in the sample."""

    strategy = "activation"

    def fit(self, harmful, benign) -> ActivationFilter:
        """Select the harmful features on the references (or take ``harmful_ids``)."""
        self.features_ = self._fit_features(harmful, benign)
        self.fitted_ = True
        return self

    def score_samples(self, cache, own=None):
        """Summed pooled activation of the harmful features (minus the own answer's, with ``own``)."""
        self._check_fitted()
        s = self._harmful_sum(cache)
        if own is not None:
            s = s - self._harmful_sum(own)[_own_rows(cache, own)]
        return s

    def _harmful_sum(self, cache: ActivationCache) -> np.ndarray:
        if cache.d_sae is None:
            raise ValueError(f"cache {cache.path} has no SAE activations")
        idx, val = cache.arrays["mean_idx"], cache.arrays["mean_val"]
        hit = np.isin(idx, np.asarray(self.features_.ids))
        return np.where(hit, np.maximum(val, 0), 0).sum(axis=1).astype(np.float64)


class GeometryFilter(_HarmfulFeatureFilter):
    """Decoder-cosine proximity of each sample's target features to the harmful features.

    Per latent ``f``: ``p_f`` = ``proximity`` (max or mean) cosine of its decoder
    direction to the harmful set (self excluded). Per sample: its top-``k``
    target latents by pooled activation (or their increase over the model's own
    answer, with ``own=``), aggregated by ``scorer`` (see
    :data:`geomfilter.geometry.SCORERS`). ``max_target_freq``: latents that fire
    on more than this fraction of the *benign* references (generic, dense
    latents) are not used as targets.
    """

    strategy = "geometry"

    def __init__(self, sae=None, *, k: int = 32, pooling: str = "mean", scorer: str = "weighted_mean",
                 proximity: str = "max", max_target_freq: float | None = None, **kw):
        super().__init__(**kw)
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; choose one of {sorted(SCORERS)}")
        if sae is None:
            raise ValueError("GeometryFilter needs the SAE (or its W_dec) for the decoder directions")
        self.directions = unit_directions(sae)
        self.k, self.pooling, self.scorer, self.proximity = k, pooling, scorer, proximity
        if max_target_freq is not None and not 0 < max_target_freq <= 1:
            raise ValueError(f"max_target_freq must be in (0, 1], got {max_target_freq}")
        self.max_target_freq = max_target_freq

    def _d_sae(self) -> int:
        return self.directions.shape[0]

    def fit(self, harmful, benign) -> GeometryFilter:
        """Select the harmful features; compute every latent's proximity and nearest harmful latent."""
        if harmful is not None and harmful.d_sae != self.directions.shape[0]:
            raise ValueError(f"reference cache {harmful.path} has d_sae {harmful.d_sae} but the SAE has "
                             f"{self.directions.shape[0]} latents: cache the references with the same SAE")
        self.features_ = self._fit_features(harmful, benign)
        self.proximity_ = feature_proximity(self.directions, self.features_.ids, agg=self.proximity)
        near = nearest_harmful(self.directions, self.features_.ids, range(self.directions.shape[0]), n=1)
        self.nearest_id_ = np.array([nh[0][0] if nh else -1 for nh in near])
        self.nearest_cos_ = np.array([nh[0][1] if nh else np.nan for nh in near], dtype=np.float32)
        self.excluded_ = np.zeros(self.directions.shape[0], dtype=bool)
        if self.max_target_freq is not None:
            if benign is None:
                raise ValueError("max_target_freq needs the benign reference cache to measure firing frequency")
            self.excluded_ = (benign.dense(self.pooling) > 0).mean(axis=0) > self.max_target_freq
        self.fitted_ = True
        return self

    def _targets(self, cache, own=None):
        if cache.d_sae != self.directions.shape[0]:
            raise ValueError(f"cache {cache.path} has d_sae {cache.d_sae}, the SAE {self.directions.shape[0]}")
        k = self.k + int(self.excluded_.sum()) if self.excluded_.any() else self.k
        k = min(k, cache.arrays[f"{self.pooling}_idx"].shape[1]) if own is None else k
        t = sample_targets(cache, k=k, pooling=self.pooling, relative_to=own)
        if self.excluded_.any():  # drop generic latents, keep the top-k of the rest
            drop = (t.idx >= 0) & self.excluded_[np.maximum(t.idx, 0)]
            idx, w = np.where(drop, -1, t.idx), np.where(drop, 0.0, t.weight).astype(np.float32)
            order = np.argsort(-w, axis=1, kind="stable")[:, : self.k]
            t = type(t)(idx=np.take_along_axis(idx, order, 1), weight=np.take_along_axis(w, order, 1), mode=t.mode)
        return t

    def score_samples(self, cache, own=None):
        """Per row: ``scorer`` over the proximities of its target features (see :func:`geometry.score_targets`)."""
        self._check_fitted()
        self.targets_ = self._targets(cache, own)
        return score_targets(self.targets_, self.proximity_, self.scorer)

    def explain(self, cache, rows, n=3):
        """Per row: the ``n`` target latents contributing most (weight x proximity), with their nearest harmful latents."""
        t = getattr(self, "targets_", None)
        if t is None or len(t) != len(cache):
            t = self._targets(cache)
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


class JudgeFilter(SampleFilter):
    """Score = 100 - the judge's alignment score of the sample's answer (the offline judge by default).

    The judge reads text, not activations: give the rows with ``samples=`` (or
    :meth:`set_samples`); they are matched to the cache by id. ``judge`` is a
    judge spec for :func:`geomfilter.judges.load_judge` (``None``/``"offline"``,
    a saved judge folder, or ``"api:MODEL"``) or a judge object. A row the judge
    cannot score is an error naming it, never silently kept or dropped.
    """

    strategy = "judge"

    def __init__(self, judge: Any = None, samples: list | None = None, drop: float | None = 0.1,
                 threshold: float | None = None):
        super().__init__(drop, threshold)
        self.judge = judge if judge is None or isinstance(judge, str) else getattr(judge, "name", "custom")
        self._judge_obj = None if judge is None or isinstance(judge, str) else judge
        self._samples = {s.id: s for s in samples} if samples is not None else None

    def set_samples(self, samples: list) -> JudgeFilter:
        """Give the rows' text (:class:`~geomfilter.data.Sample` objects, matched to the cache by id)."""
        self._samples = {s.id: s for s in samples}
        return self

    def fit(self, harmful=None, benign=None) -> JudgeFilter:
        """Load the judge; the reference caches are not used."""
        from .judges import load_judge

        self.judge_ = self._judge_obj if self._judge_obj is not None else load_judge(self.judge)
        self.fitted_ = True
        return self

    def _texts(self, cache) -> tuple[list[str], list[str]]:
        if self._samples is None:
            raise RuntimeError("the judge strategy reads the rows' text: pass samples= or call set_samples(samples)")
        missing = [i for i in cache.ids if i not in self._samples]
        if missing:
            raise RuntimeError(f"judge: {len(missing)} cache rows have no sample text (first id {missing[0]!r})")
        from .judges import question_and_answer

        pairs = [question_and_answer(self._samples[i].messages) for i in cache.ids]
        return [q for q, _ in pairs], [a for _, a in pairs]

    def score_samples(self, cache, own=None):
        """100 - the judge's alignment score of each row's answer; a row it cannot score is an error."""
        self._check_fitted()
        qs, ans = self._texts(cache)
        scores = self.judge_.score(qs, ans)
        bad = [(cache.ids[i], s.error) for i, s in enumerate(scores) if s.alignment is None]
        if bad:
            raise RuntimeError(f"judge could not score {len(bad)} rows (first {bad[0][0]!r}: {bad[0][1]})")
        self.judge_scores_ = scores
        return np.array([100.0 - s.alignment for s in scores])

    def explain(self, cache, rows, n=3):
        """Per row: the judge's alignment and coherence scores."""
        scores = getattr(self, "judge_scores_", None)
        if scores is None:
            return [[] for _ in rows]
        return [[{"alignment": round(scores[r].alignment, 2), "coherence": round(scores[r].coherence, 2)}]
                for r in rows]


STRATEGIES: dict[str, type[SampleFilter]] = {
    c.strategy: c for c in (GeometryFilter, RandomFilter, ProjectionFilter, RepresentationFilter, ActivationFilter, JudgeFilter)
}


def check_filter_params(strategy: str, **params) -> None:
    """Raise ``ValueError`` for settings a strategy would refuse, before anything is cached or loaded.

    ``params`` are :func:`make_filter`'s keyword arguments (without the SAE and the samples).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    SampleFilter(params.get("drop"), params.get("threshold"))  # exactly one of drop/threshold, each in range
    checks = {
        "n_harmful": (lambda v: v >= 1, "must be >= 1"),
        "k": (lambda v: v >= 1, "must be >= 1"),
        "top_n": (lambda v: v >= 1, "must be >= 1"),
        "min_freq": (lambda v: 0 <= v <= 1, "must be a fraction in [0, 1]"),
        "max_target_freq": (lambda v: v is None or 0 < v <= 1, "must be in (0, 1]"),
        "harmful_method": (lambda v: v in ("contrast", "auroc"), "must be 'contrast' or 'auroc'"),
        "scorer": (lambda v: v in SCORERS, f"must be one of {sorted(SCORERS)}"),
        "proximity": (lambda v: v in ("max", "mean"), "must be 'max' or 'mean'"),
        "harmful_ids": (lambda v: v is None or (len(v) > 0 and min(v) >= 0), "must be non-negative latent ids"),
    }
    for name, value in params.items():
        if name in checks and not checks[name][0](value):
            raise ValueError(f"--{name.replace('_', '-')} {value!r}: {checks[name][1]}")


def make_filter(strategy: str, *, sae=None, **kw) -> SampleFilter:
    """Build a strategy by name; ``sae`` is passed to the strategies that need the decoder."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[strategy]
    if cls is GeometryFilter:
        return cls(sae, **kw)
    return cls(**kw)
