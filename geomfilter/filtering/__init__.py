"""Filtering strategies: score every sample, drop the most suspect, keep the rest.

Every strategy is a scikit-learn estimator (:class:`SampleFilter`, a ``BaseEstimator``)::

    f = GeometryFilter(sae, drop=0.5).fit(harmful_cache, benign_cache)
    scores = f.score_samples(data_cache)      # higher = closer to harmful = dropped first
    result = f.apply(data_cache)              # FilterResult; sets f.scores_ and f.support_ (kept mask)
    f.get_support()                           # boolean mask of kept rows

* the constructor only stores its settings (``get_params``/``set_params``/``sklearn.base.clone``
  work; a clone is unfitted); settings are checked by ``fit`` and, before any work, by
  :func:`check_filter_params`;
* ``fit(harmful, benign)`` learns from the reference caches (harmful and benign answers) and
  returns ``self``; fitted state ends in ``_``;
* ``score_samples(cache, own=None, samples=None)`` and ``explain(cache, rows, n, own=None,
  samples=None)`` have no side effects: ``own`` is a cache of the model's own answers to the
  same prompts, ``samples`` the rows' text (:class:`~geomfilter.data.Sample` objects matched to
  the cache by id; only strategies with ``needs_texts`` read it);
* ``apply(cache, own=None, samples=None, explain=3)`` scores, decides and explains every row.

Dropping: ``drop`` is the fraction removed (exactly ``round(drop * n)`` rows, ties broken by
input order) or ``threshold`` drops every score above it.
:func:`~geomfilter.outputs.write_filter_outputs` turns a result into ``kept.jsonl`` /
``dropped.jsonl`` (the original rows, byte for byte), ``scores.csv`` and ``report.json``,
written atomically; every input row ends in exactly one of the two files.

Strategies (:data:`STRATEGIES`, by name; :func:`make_filter` builds one):

* ``geometry`` and ``activation`` (:mod:`.sae_features`) - the harmful SAE features' decoder
  proximity to the sample's target features / their summed activation;
* ``projection`` and ``representation`` (:mod:`.residual`) - on the pooled residual stream;
* ``random`` (:mod:`.random`) - a seeded uniform score, the baseline every filter must beat;
* ``judge`` (:mod:`.judge`) - 100 minus a judge's alignment score of the answer text;
* ``gradient`` (:mod:`.gradient`) - the update each sample asks for at the hook (its pooled negative
  loss gradient) projected on the harmful features' decoder directions;
* ``ensemble`` (:mod:`.ensemble`) - the mean of several of the above (default ``activation`` and
  ``representation``), each scaled by its cross-fitted reference scores (benign 0, harmful 1).

Each class states what the pipeline and the CLI need to know about it: ``strategy`` (its
name), ``requires_sae`` (it reads SAE latents; :func:`make_filter` passes it ``sae``; ``reads_sae(params)`` when its
options decide, as an ensemble's members do),
``uses_seed`` (its ``seed`` option changes its scores), ``needs_texts`` (it reads the rows'
text), ``needs_gradients`` (it reads the loss gradients stored with the cache), and its options are :meth:`SampleFilter.param_names` (its constructor's ``get_params()``
keys less ``sae``), checked by ``option_checks`` (before the CLI builds anything, and again by ``fit`` for
an instance made in Python).

To add a strategy: create ``geomfilter/filtering/<name>.py`` with a :class:`SampleFilter`
subclass setting ``strategy`` and the facts above (``__init__`` storing its options, ``_fit``,
``score_samples``, optionally ``explain``), plus ``tests/test_<name>.py``. Every module of this
package is imported here, so the class registers itself; nothing else names strategies.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..outputs import write_filter_outputs
from .base import STRATEGIES, FilterResult, SampleFilter, check_filter_params, make_filter
from .ensemble import EnsembleFilter
from .gradient import GradientFilter
from .judge import JudgeFilter
from .random import RandomFilter
from .residual import ProjectionFilter, RepresentationFilter
from .sae_features import ActivationFilter, GeometryFilter


def _import_strategy_modules() -> None:
    """Import every module of this package, so that each strategy class in it registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_strategy_modules()

__all__ = [
    "STRATEGIES", "ActivationFilter", "EnsembleFilter", "FilterResult", "GeometryFilter", "GradientFilter", "JudgeFilter", "ProjectionFilter",
    "RandomFilter", "RepresentationFilter", "SampleFilter", "check_filter_params", "make_filter",
    "write_filter_outputs",
]
