"""geomfilter: geometry-aware filtering of fine-tuning data against emergent misalignment.

The pipeline: cache a model's activations on a chat dataset (response tokens), encode them with a
sparse autoencoder, measure how close each sample's features sit to harmful-behaviour features
(decoder cosine), filter, fine-tune, evaluate. The main API, SAELens-style::

    from geomfilter import FilterConfig, FilterRunner
    run = FilterRunner(FilterConfig(data="data/finetune/mixed.jsonl", params={"drop": 0.25},
                                    out="runs/filtered")).run()

The names below are loaded on first use (``import geomfilter.stats`` stays free of torch).
See docs/ARCHITECTURE.md for the layers and what each module owns.
"""
from __future__ import annotations

import importlib

from .settings import DEFAULT_MODEL, CacheConfig, __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "ActivationCache": "cache", "cache_activations": "cache", "load_cache": "cache",
    "ExperimentConfig": "config", "ExperimentRunner": "experiment",
    "prepare_dataset": "data", "read_samples": "samples",
    "GeomfilterError": "errors",
    "FeatureSet": "features", "harmful_features": "features",
    "STRATEGIES": "filtering", "SampleFilter": "filtering", "make_filter": "filtering",
    "ActivationFilter": "filtering", "GeometryFilter": "filtering", "JudgeFilter": "filtering",
    "ProjectionFilter": "filtering", "RandomFilter": "filtering", "RepresentationFilter": "filtering",
    "FinetuneConfig": "finetune_config", "FinetuneRunner": "finetune", "load_tuned": "finetune",
    "load_judge": "judges", "load_model": "models", "load_sae": "saes",
    "CacheBuilder": "pipeline", "FilterConfig": "pipeline", "FilterRunner": "pipeline",
}

__all__ = ["DEFAULT_MODEL", "CacheConfig", "__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    """Load a public name from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geomfilter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
