"""The estimator every strategy derives from, its result, and the strategy registry.

* :class:`FilterResult` - scores and the kept/dropped decision for every row of a cache;
* :class:`SampleFilter` - the scikit-learn estimator base: ``fit`` on the reference caches,
  ``score_samples``, ``explain``, ``apply`` (score + decide + explain), ``get_support``; its
  subclasses register themselves in :data:`STRATEGIES` under their ``strategy`` name;
* :func:`make_filter` / :func:`check_filter_params` - build a strategy by name / check its
  settings before anything is cached or loaded;
* :func:`own_rows` - the row of the model's own answer for each row of a cache.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from ..cache import ActivationCache
from ..errors import GeomfilterError
from ..samples import Sample


class FilterOptionError(GeomfilterError, ValueError):
    """A strategy option, or an input of a filter, that the strategy cannot use."""

#: ``{name: (accepts(value) -> bool, what a valid value is)}``: an option's check in :func:`check_filter_params`.
OptionChecks = dict[str, tuple[Callable[[Any], bool], str]]


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


#: Every registered strategy by name (a :class:`SampleFilter` subclass that sets ``strategy`` lands here).
STRATEGIES: dict[str, type[SampleFilter]] = {}


def _register(cls: type[SampleFilter]) -> None:
    old = STRATEGIES.get(cls.strategy)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"strategy {cls.strategy!r} is already taken by {old.__module__}.{old.__qualname__}")
    STRATEGIES[cls.strategy] = cls


def _check_decision(drop: float | None, threshold: float | None) -> None:
    """Exactly one of ``drop`` (a fraction) and ``threshold`` (a finite score)."""
    if (drop is None) == (threshold is None):
        raise FilterOptionError("give exactly one of drop (a fraction) or threshold (a score)")
    if drop is not None and not 0 <= drop <= 1:  # NaN fails this too
        raise FilterOptionError(f"drop must be a fraction in [0, 1], got {drop}")
    if threshold is not None and not np.isfinite(threshold):
        raise FilterOptionError(f"threshold must be a finite number, got {threshold}")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


class SampleFilter(BaseEstimator):
    """Base of every strategy: a scikit-learn estimator that scores cache rows (higher = more suspect).

    Subclasses set ``strategy`` (which registers them in :data:`STRATEGIES`) and the facts below,
    take their settings as constructor arguments (stored unchanged under the same names), learn
    in :meth:`_fit` and implement :meth:`score_samples` (and optionally :meth:`explain`).

    * ``requires_sae`` - the strategy reads SAE latents: the caches need SAE activations and
      :func:`make_filter` passes it ``sae``;
    * ``uses_seed`` - its ``seed`` option changes its scores (the pipeline passes the run's seed);
    * ``needs_texts`` - it reads the rows' text: give ``samples=`` to :meth:`apply` / :meth:`score_samples`;
    * ``needs_gradients`` - it reads the per-row loss gradients stored with the cache
      (:mod:`geomfilter.gradients`; the pipeline computes them);
    * ``option_checks`` - checks of its own options (inherited ones apply too), run by
      :func:`check_filter_params` before anything is built and by :meth:`fit` on the instance's values.
    """

    strategy: ClassVar[str] = ""
    requires_sae: ClassVar[bool] = False
    uses_seed: ClassVar[bool] = False
    needs_texts: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False
    option_checks: ClassVar[OptionChecks] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("strategy"):
            _register(cls)

    def __init__(self, drop: float | None = 0.1, threshold: float | None = None):
        self.drop = drop
        self.threshold = threshold

    # -- the strategy's options
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The strategy's options in constructor order: the keys of ``get_params()`` less ``sae``
        (which :func:`make_filter` passes to the strategies with ``requires_sae``)."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "sae"))

    @classmethod
    def reads_sae(cls, params: Mapping[str, Any] | None = None) -> bool:
        """Whether the strategy, with the options ``params``, reads SAE latents (and so needs an SAE): its
        ``requires_sae``, unless its options decide (``ensemble``: whether a member reads them)."""
        return cls.requires_sae

    @classmethod
    def check_options(cls, **params: Any) -> None:
        """Raise ``ValueError`` for an option the strategy does not take or would refuse.

        ``drop``/``threshold`` are checked by :func:`check_filter_params`; messages name the CLI option.
        """
        names = cls.param_names()
        unknown = [name for name in params if name not in names]
        if unknown:
            raise FilterOptionError(f"strategy {cls.strategy!r} takes no option {unknown[0]!r}; "
                             f"its options: {', '.join(names)}")
        refused = cls._refused_option(params)
        if refused:
            name, value, what = refused
            raise FilterOptionError(f"--{name.replace('_', '-')} {value!r}: {what}")

    @classmethod
    def _refused_option(cls, params: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """``(name, value, what a valid value is)`` for the first of ``params`` that ``option_checks`` (the class's
        and its bases') refuses, else None; a check that cannot compare the value (``None`` where a number goes)
        refuses it."""
        checks: OptionChecks = {}
        for klass in reversed(cls.__mro__):
            checks.update(klass.__dict__.get("option_checks", {}))
        for name, value in params.items():
            if name in checks:
                try:
                    ok = bool(checks[name][0](value))
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    return name, value, checks[name][1]
        return None

    def params(self) -> dict:
        """The JSON-able settings, as written to ``report.json``: ``drop``, ``threshold``, then the other options."""
        values = self.get_params(deep=False)
        names = ["drop", "threshold", *(n for n in self.param_names() if n not in ("drop", "threshold"))]
        return {n: values[n] for n in names if _jsonable(values[n])}

    # -- to implement
    def _check_settings(self) -> None:
        """Refuse settings the strategy cannot use (called by :meth:`fit`): the decision and every option that
        ``option_checks`` refuses; extend with ``super()`` for what a table of checks cannot say."""
        _check_decision(self.drop, self.threshold)
        refused = self._refused_option(self.get_params(deep=False))
        if refused:
            name, value, what = refused
            raise FilterOptionError(f"{type(self).__name__}({name}={value!r}): {name} {what}")

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Set the fitted state (attributes ending in ``_``) from the reference caches; nothing by default."""

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """One score per row of ``cache`` (higher = more suspect); ``own``: the model's own answers;
        ``samples``: the rows' text (read by strategies with ``needs_texts``). No side effects."""
        raise NotImplementedError

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3, own: ActivationCache | None = None,
                samples: list[Sample] | None = None) -> list[list[dict]]:
        """Per row in ``rows``: up to ``n`` dicts saying what drives its score (empty by default)."""
        return [[] for _ in rows]

    def _scored_and_explained(self, cache: ActivationCache, own: ActivationCache | None,
                              samples: list[Sample] | None, n: int) -> tuple[np.ndarray, list[list[dict]] | None]:
        """Checked scores, and explanations of every row (``None`` if ``n`` is 0); override to share work."""
        scores = self._checked(self.score_samples(cache, own=own, samples=samples), cache)
        rows = np.arange(len(cache))
        return scores, (self.explain(cache, rows, n=n, own=own, samples=samples) if n else None)

    # -- shared
    def fit(self, harmful: ActivationCache | None = None, benign: ActivationCache | None = None) -> SampleFilter:
        """Check the settings and learn from the harmful and benign reference caches; return ``self``."""
        self._check_settings()
        for stale in ("scores_", "support_"):  # the decision of a previous apply
            self.__dict__.pop(stale, None)
        self._fit(harmful, benign)
        self.fitted_ = True
        return self

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(harmful_cache, benign_cache) first")

    def _checked(self, scores: Any, cache: ActivationCache) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(cache),) or not np.isfinite(scores).all():
            raise RuntimeError(f"{self.strategy}: scores must be finite, one per sample")
        return scores

    def apply(self, cache: ActivationCache, own: ActivationCache | None = None, samples: list[Sample] | None = None,
              explain: int = 3) -> FilterResult:
        """Score ``cache`` and decide kept/dropped for every row, with up to ``explain`` reasons per row.

        Sets ``scores_`` and ``support_`` (the kept mask, see :meth:`get_support`)."""
        scores, expl = self._scored_and_explained(cache, own, samples, explain)
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
        return FilterResult(ids=list(cache.ids), scores=scores, kept=kept, rank=rank, threshold=cut,
                            strategy=self.strategy, params=self.params(),
                            explanations=expl if expl is not None else [[] for _ in range(n)])

    def get_support(self, indices: bool = False) -> np.ndarray:
        """Mask (or indices) of the rows kept by the last :meth:`apply`."""
        if not hasattr(self, "support_"):
            raise RuntimeError("call apply(cache) first")
        return np.flatnonzero(self.support_) if indices else self.support_


def own_rows(cache: ActivationCache, own: ActivationCache) -> np.ndarray:
    """For each row of ``cache``, the row of ``own`` (the model's own answers) with the same id."""
    pos = {i: r for r, i in enumerate(own.ids)}
    missing = [i for i in cache.ids if i not in pos]
    if missing:
        raise FilterOptionError(f"own-answer cache {own.path} lacks {len(missing)} ids of {cache.path} (first {missing[0]!r})")
    return np.array([pos[i] for i in cache.ids])


def strategy_class(strategy: str) -> type[SampleFilter]:
    """The registered class of ``strategy``; ``ValueError`` naming the choices for an unknown one."""
    if strategy not in STRATEGIES:
        raise FilterOptionError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[strategy]


def check_filter_params(strategy: str, **params: Any) -> None:
    """Raise ``ValueError`` for settings a strategy would refuse, before anything is cached or loaded.

    ``params`` are :func:`make_filter`'s keyword arguments (without the SAE); ``drop`` or
    ``threshold`` is required.
    """
    cls = strategy_class(strategy)
    _check_decision(params.get("drop"), params.get("threshold"))
    cls.check_options(**params)


def make_filter(strategy: str, *, sae: Any = None, **params: Any) -> SampleFilter:
    """Build a strategy by name; ``sae`` (an SAE or its ``W_dec``) goes to the strategies with ``requires_sae``.

    The rows' text is not a setting: give it per call, ``f.apply(cache, samples=samples)``.
    """
    if "samples" in params:
        raise TypeError("make_filter() takes no samples=: give the rows' text per call, "
                        "f.apply(cache, samples=samples) or f.score_samples(cache, samples=samples)")
    cls = strategy_class(strategy)
    if cls.requires_sae:
        params["sae"] = sae
    return cls(**params)
