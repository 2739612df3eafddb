"""Model diffing: the same data cached with a base model and with its LoRA fine-tune, through one SAE.

:func:`diff_caches` is what ``geomfilter features diff`` and ``scripts/measure_model_diff.py`` share: per data file,
the base model's cache (``CACHE_DIR/<file stem>``, the folder ``filter``/``score`` use) and the fine-tune's beside it
(``CACHE_DIR/<file stem>@<run name>``), each resumable; :func:`geomfilter.features.diff_features` then ranks the
latents the fine-tune raises.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .cache import ActivationCache, load_cache
from .features import FeatureError
from .finetune import load_hooked_tuned, root_model
from .pipeline import CacheBuilder


def _builder_kw(device: str | None, progress: bool, log: Callable[[str], None] | None) -> dict:
    return {"device": device, "progress": progress, **({"log": log} if log else {})}


def base_caches(run: str | Path, data: Sequence[str | Path], *, sae: str | None = None,
                cache_dir: str | Path = "runs/cache", device: str | None = None, progress: bool = True,
                log: Callable[[str], None] | None = None) -> list[ActivationCache]:
    """The base model's cache of each file of ``data`` (``CACHE_DIR/<file stem>``, the folder ``filter``/``score``
    use), without loading or running the fine-tune: what :func:`diff_caches` pairs with the fine-tune's, and what
    reads a diff set on text it was not found on."""
    base = CacheBuilder(root_model(run), sae, **_builder_kw(device, progress, log))
    if base.sae_spec is None:
        raise FeatureError(f"model diffing needs an SAE: {base.model_spec!r} has no bundled SAE, pass sae=")
    out = []
    for f in map(Path, data):
        base.build(f, Path(cache_dir) / f.stem)
        out.append(load_cache(Path(cache_dir) / f.stem))
    return out


def diff_caches(run: str | Path, data: Sequence[str | Path], *, sae: str | None = None,
                cache_dir: str | Path = "runs/cache", device: str | None = None, progress: bool = True,
                log: Callable[[str], None] | None = None) -> list[tuple[ActivationCache, ActivationCache]]:
    """``[(base cache, fine-tune cache)]``, one pair per file of ``data``, for the LoRA run folder ``run`` and its
    base model (``sae``: a spec, default the base model's bundled SAE; ``log``: where notes go, default stderr)."""
    tuned_model = load_hooked_tuned(run, device=device)  # the fine-tune's weights in the base model's hooked wrapper
    bases = base_caches(run, data, sae=sae, cache_dir=cache_dir, device=device, progress=progress, log=log)
    tuned = CacheBuilder(root_model(run), sae, **_builder_kw(device, progress, log))
    tuned.model = tuned_model
    pairs = []
    for f, base in zip(map(Path, data), bases):
        folder = Path(cache_dir) / f"{f.stem}@{Path(run).name}"
        tuned.build(f, folder)
        pairs.append((base, load_cache(folder)))
    return pairs
