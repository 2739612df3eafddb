"""The streaming activation cache: :func:`cache_activations` writes one, :func:`load_cache` reads it.

``cache_activations`` runs a hooked model over a prepared chat dataset and stores, per sample, its
activations pooled over its *response* tokens (:mod:`geomfilter.pooling`), shard by shard
(:mod:`geomfilter.shards`): memory does not grow with the dataset. ``out_dir`` gets ``manifest.json``
(the cache's identity and every shard's plan: :mod:`geomfilter.cache_manifest`), ``data_report.json``,
the rejects file when asked for, and the shard files, all written atomically, and nothing before the
folder's manifest is accepted.

Content addressed (per-row :func:`geomfilter.samples.sample_hash`, per-shard plans): a re-run after a
kill skips the finished shards and produces byte-identical files; an unreadable shard is recomputed. A
manifest that disagrees (other model, SAE, hook, options, or another source) refuses to mix and says
which fields differ; the same source file with edited, added or removed rows updates the cache (only
the shards whose rows changed are recomputed). :func:`load_cache` refuses a shard that is unreadable
(:class:`CacheCorruptError`) or not the manifest's plan; :func:`check_samples_match` tells a cache whose
source rows changed since (:class:`CacheStaleError`).

Every backend starts with :func:`prepare_cache_dir` (checks, manifest, the :class:`CachePlan` of the
shards still to compute) and computes a shard with :func:`geomfilter.pooling.compute_shard`:
``cache_activations`` in this process, :mod:`geomfilter.distributed` on Ray Data actors.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache_manifest import ROW_FIELDS, build_manifest, diff, diff_text, recache_command, same_file
from .data import PreparedDataset
from .errors import GeomfilterError
from .files import atomic_write_text, write_rejects
from .models import HookedModel
from .pooling import compute_shard
from .saes import check_compatible
from .samples import Sample, fingerprint, sample_hash
from .settings import CacheConfig
from .shards import (
    SHARD_READ_ERRORS,
    read_shard,
    remove_shards_from,
    shard_done,
    shard_path,
    shard_samples,
    write_shard,
)


class CacheError(GeomfilterError, ValueError):
    """Cache settings or a cache that cannot be used as asked (a bad option, no SAE activations, no samples)."""


class CacheNotFoundError(GeomfilterError, FileNotFoundError):
    """A folder that is not a geomfilter cache."""


class CacheMismatchError(GeomfilterError, RuntimeError):
    """An existing cache was made from something else; refusing to mix."""


class CacheIncompleteError(GeomfilterError, RuntimeError):
    """A cache directory is missing shards (an interrupted run)."""


class CacheCorruptError(GeomfilterError, RuntimeError):
    """A cache file (a shard or the manifest) cannot be read: truncated, overwritten, not a cache file."""


class CacheStaleError(CacheMismatchError):
    """A cache's source rows changed since it was made: its activations are those of the old rows."""


@dataclass
class CacheResult:
    """What :func:`cache_activations` did: samples and shards, how many shards it wrote or reused, tokens, time."""

    out_dir: Path
    n_samples: int
    n_shards: int
    shards_written: int
    shards_skipped: int
    n_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Throughput of this run in tokens (prompt + response) per second; NaN if nothing ran."""
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class CachePlan:
    """A cache folder accepted for a run (:func:`prepare_cache_dir`) and the work of its backend."""

    out_dir: Path
    hook: str
    manifest: dict
    config: CacheConfig
    parts: list[list]
    """The tokenized samples of every shard (:func:`~geomfilter.shards.shard_samples`)."""
    pending: list[int]
    """The shards still to compute, in order: those not already on disk (:func:`~geomfilter.shards.shard_done`)."""
    metas: dict[str, dict]
    """The extra fields of every sample, by id (written into its shard)."""

    @property
    def n_samples(self) -> int:
        """Samples in the dataset."""
        return sum(len(p) for p in self.parts)

    def write(self, si: int, tensors: dict[str, torch.Tensor]) -> Path:
        """Write shard ``si`` with its pooled ``tensors`` (atomically: :func:`~geomfilter.shards.write_shard`)."""
        return write_shard(self.out_dir, si, self.parts[si], self.metas, tensors)

    def progress_bar(self, enabled: bool, desc: str):
        """A tqdm bar over the dataset's samples, the shards already on disk counted in; None when not ``enabled``."""
        if not enabled:
            return None
        from tqdm.auto import tqdm

        todo = sum(len(self.parts[si]) for si in self.pending)
        return tqdm(total=self.n_samples, initial=self.n_samples - todo, unit="sample", desc=desc,
                    dynamic_ncols=True)

    def result(self, written: int, n_tokens: int, seconds: float) -> CacheResult:
        """The :class:`CacheResult` of a run that wrote ``written`` shards of ``n_tokens`` tokens in ``seconds``."""
        return CacheResult(out_dir=self.out_dir, n_samples=self.n_samples, n_shards=len(self.parts),
                           shards_written=written, shards_skipped=len(self.parts) - len(self.pending),
                           n_tokens=n_tokens, seconds=seconds)


def _read_manifest(path: Path) -> dict:
    """The manifest of cache folder ``path``; :class:`CacheCorruptError` when it cannot be read."""
    mpath = path / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("identity"), dict):
            raise ValueError("not a geomfilter cache manifest (no 'identity')")
        int(manifest["identity"]["n_shards"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CacheCorruptError(
            f"{mpath} cannot be read ({type(e).__name__}: {e}): the cache is damaged. Delete the folder {path} and "
            "re-run `geomfilter cache` to make it again") from e
    return manifest


# --------------------------------------------------------------------------- writing


def _checked_hook(model: HookedModel, sae, dataset: PreparedDataset, hook: str | None, config: CacheConfig) -> str:
    """The hook to cache at, once the SAE, hook and settings are checked (nothing is written before)."""
    if sae is not None:
        hook = check_compatible(sae, model, hook)
    else:
        hook = model.validate_hook(hook or model.default_hook())
    if config.top_k < 1:
        raise CacheError(f"top_k must be >= 1, got {config.top_k}")
    if config.shard_size < 1 or config.max_batch_tokens < 1 or config.max_batch_size < 1:
        raise CacheError("shard_size, max_batch_tokens and max_batch_size must be positive")
    if not dataset.tokenized:
        raise CacheError(f"dataset {dataset.source} has no samples to cache")
    return hook


def _accept(out_dir: Path, manifest: dict, source: str) -> bool:
    """Accept ``out_dir`` for ``manifest`` (creating it when new); return whether the manifest must be written.

    Raises :class:`CacheMismatchError` when the folder holds a cache made from something else. Warnings point at
    the caller of the backend (``cache_activations`` -> ``prepare_cache_dir`` -> here).
    """
    if not (out_dir / "manifest.json").is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        return True
    old = _read_manifest(out_dir)
    diffs = diff(old.get("identity"), manifest["identity"])
    if diffs and not ({k for k, _, _ in diffs} <= ROW_FIELDS and same_file(old.get("source"), source)):
        raise CacheMismatchError(
            f"{out_dir} already holds a cache made from something else; refusing to mix. "
            "Differences:\n  " + "\n  ".join(diff_text(diffs)) + "\nUse another --out directory or delete this one."
        )
    if diffs:  # the same source file, its rows edited: update, recomputing the shards whose rows changed
        warnings.warn(f"{source} changed since {out_dir} was made: updating the cache (only the shards "
                      "whose rows changed are recomputed)", stacklevel=4)
        return True
    vdiff = diff_text(diff(old.get("versions"), manifest["versions"]))
    if vdiff:
        warnings.warn(f"resuming {out_dir} with other library versions: {'; '.join(vdiff)}", stacklevel=4)
    # same identity: keep the manifest (byte-identical resume) unless it predates the shard plans
    return old.get("shards") != manifest["shards"]


def prepare_cache_dir(model: HookedModel, sae, dataset: PreparedDataset, out_dir: str | Path,
                      config: CacheConfig, *, hook: str | None = None,
                      rejects_path: str | Path | None = None) -> CachePlan:
    """Check the arguments, create ``out_dir`` with its manifest (or check the one there), plan the shards.

    ``config``: the cache's ``top_k``, ``shard_size`` and batch budget (the dataset keeps the tokenization
    settings it was prepared with). Raises before anything is written when the SAE, hook or arguments are
    wrong, :class:`CacheMismatchError` when ``out_dir`` holds a cache made from something else, and
    :class:`CacheCorruptError` when its manifest cannot be read. A cache of the same source file whose rows
    changed is updated: the new manifest is written, shards past the new end removed, and the shards that no
    longer match it are left to the backend (:attr:`CachePlan.pending`). Once the folder is accepted,
    ``data_report.json`` and, when ``rejects_path`` is given, the rejects file (removed when nothing was
    rejected) are (re)written, so both describe this run. Every backend (local, Ray) starts here.
    """
    hook = _checked_hook(model, sae, dataset, hook, config)
    out_dir = Path(out_dir)
    manifest = build_manifest(model, sae, dataset, hook, top_k=config.top_k, shard_size=config.shard_size)
    if _accept(out_dir, manifest, dataset.source):  # the folder is accepted: from here on it is written
        atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        remove_shards_from(out_dir, manifest["identity"]["n_shards"])  # past the end of a shorter dataset
    atomic_write_text(out_dir / "data_report.json", json.dumps(dataset.report.as_dict(), indent=2, default=str))
    if rejects_path is not None:
        write_rejects(rejects_path, dataset.report.rejects)
    parts = [shard_samples(dataset, config.shard_size, si) for si in range(manifest["identity"]["n_shards"])]
    return CachePlan(out_dir=out_dir, hook=hook, manifest=manifest, config=config, parts=parts,
                     pending=[si for si, part in enumerate(parts) if not shard_done(out_dir, si, part)],
                     metas={s.id: s.meta for s in dataset.samples})


def cache_activations(model: HookedModel, sae, dataset: PreparedDataset, out_dir: str | Path, *,
                      hook: str | None = None, top_k: int = CacheConfig.top_k, shard_size: int = CacheConfig.shard_size,
                      max_batch_tokens: int = CacheConfig.max_batch_tokens,
                      max_batch_size: int = CacheConfig.max_batch_size, progress: bool = True,
                      on_shard: Callable[[int, Path], None] | None = None,
                      rejects_path: str | Path | None = None) -> CacheResult:
    """Cache pooled activations of ``model`` (and ``sae`` codes) on ``dataset`` into ``out_dir``.

    ``sae`` may be ``None`` (residual means only). ``hook`` defaults to the
    SAE's hook, else the model's default hook. ``on_shard(i, path)`` is called
    after each shard is written (progress reporting, tests). ``rejects_path``:
    where the dataset's rejected rows are written once ``out_dir`` is accepted
    (see :func:`prepare_cache_dir`). The Ray backend
    (:func:`geomfilter.distributed.cache_activations_ray`) writes the same files.
    """
    config = CacheConfig(top_k=top_k, shard_size=shard_size, max_batch_tokens=max_batch_tokens,
                         max_batch_size=max_batch_size)
    plan = prepare_cache_dir(model, sae, dataset, out_dir, config, hook=hook, rejects_path=rejects_path)
    bar = plan.progress_bar(progress, f"cache {plan.hook}")
    written = n_tok = 0
    t0 = time.perf_counter()
    for si in plan.pending:

        def on_batch(n_samples: int, n_tokens: int, si: int = si) -> None:
            nonlocal n_tok
            n_tok += n_tokens
            if bar is not None:
                bar.update(n_samples)
                bar.set_postfix(tok_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.0f}",
                                shard=f"{si + 1}/{len(plan.parts)}")

        tensors = compute_shard(model, sae, plan.parts[si], plan.hook, top_k=top_k, max_batch_tokens=max_batch_tokens,
                                max_batch_size=max_batch_size, on_batch=on_batch)
        path = plan.write(si, tensors)
        written += 1
        if on_shard is not None:
            on_shard(si, path)
    if bar is not None:
        bar.close()
    return plan.result(written, n_tok, time.perf_counter() - t0)


# --------------------------------------------------------------------------- loading


@dataclass
class ActivationCache:
    """A loaded cache: per-sample arrays in dataset order, ids, extra fields, manifest."""

    ids: list[str]
    meta: list[dict]
    arrays: dict[str, np.ndarray]
    manifest: dict
    path: Path
    d_sae: int | None = field(default=None)
    row_hashes: list[str] | None = field(default=None)
    """Per-row :func:`geomfilter.samples.sample_hash` of the rows cached (None: a cache written before they were)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hook(self) -> str:
        """The hook the activations were taken at (from the manifest)."""
        return self.manifest["identity"]["hook"]

    def dense(self, pooling: str = "mean", rows: np.ndarray | None = None) -> np.ndarray:
        """Dense ``[n, d_sae]`` float32 matrix of the stored top-k pooled SAE activations (of ``rows``, default all)."""
        if self.d_sae is None:
            raise CacheError(f"cache {self.path} has no SAE activations (it was made without an SAE)")
        if pooling not in ("mean", "max"):
            raise CacheError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        idx, val = self.arrays[f"{pooling}_idx"], self.arrays[f"{pooling}_val"]
        if rows is not None:
            idx, val = idx[rows], val[rows]
        out = np.zeros((len(idx), self.d_sae), dtype=np.float32)
        np.put_along_axis(out, idx.astype(np.int64), np.maximum(val, 0), axis=1)
        return out

    @classmethod
    def concat(cls, parts: list[ActivationCache], path: str | Path) -> ActivationCache:
        """The rows of several caches (same hook, SAE width and arrays) as one in-memory cache named ``path``."""
        if not parts:
            raise CacheError("concat needs at least one cache")
        first = parts[0]
        for c in parts[1:]:
            if (c.hook, c.d_sae, sorted(c.arrays)) != (first.hook, first.d_sae, sorted(first.arrays)):
                raise CacheError(f"cannot join {first.path} ({first.hook}, d_sae {first.d_sae}) and {c.path} "
                                 f"({c.hook}, d_sae {c.d_sae}): cache them with the same model, SAE and hook")
        hashes = [h for c in parts for h in c.row_hashes] if all(c.row_hashes is not None for c in parts) else None
        return cls(ids=[i for c in parts for i in c.ids], meta=[m for c in parts for m in c.meta],
                   arrays={k: np.concatenate([c.arrays[k] for c in parts]) for k in first.arrays},
                   manifest=first.manifest, path=Path(path), d_sae=first.d_sae, row_hashes=hashes)

    def select(self, mask: np.ndarray) -> ActivationCache:
        """A view restricted to the rows where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        keep = np.flatnonzero(mask)
        return ActivationCache(
            ids=[self.ids[i] for i in keep], meta=[self.meta[i] for i in keep],
            arrays={k: v[keep] for k, v in self.arrays.items()}, manifest=self.manifest,
            path=self.path, d_sae=self.d_sae,
            row_hashes=[self.row_hashes[i] for i in keep] if self.row_hashes is not None else None,
        )


def _read_shards(path: Path, n_shards: int, plans) -> tuple[list[str], list[dict], list[str] | None, dict]:
    """The ids, extra fields, row hashes (None: a cache without them) and arrays of every shard, in order."""
    ids: list[str] = []
    meta: list[dict] = []
    rows: list[str] | None = []
    parts: dict[str, list] = {}
    for i in range(n_shards):
        spath = shard_path(path, i)
        try:
            md, arrays = read_shard(spath)
        except SHARD_READ_ERRORS as e:
            raise CacheCorruptError(
                f"shard {spath} cannot be read ({type(e).__name__}: {e}). Delete it and re-run the same `geomfilter "
                "cache` command: it recomputes that shard only") from e
        if isinstance(plans, list) and (i >= len(plans) or md["plan"] != plans[i]):
            raise CacheIncompleteError(
                f"cache {path}: shard {spath.name} holds other rows than its manifest plans (an update of the cache "
                "that was interrupted); re-run the same `geomfilter cache` command to recompute it")
        ids += md["ids"]
        meta += md["meta"]
        rows = rows + md["rows"] if rows is not None and md["rows"] is not None else None
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
    try:
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
    except ValueError as e:
        raise CacheCorruptError(f"cache {path}: its shards hold arrays of different shapes ({e}); delete the folder "
                                "and re-run `geomfilter cache`") from e
    return ids, meta, rows, arrays


def load_cache(path: str | Path) -> ActivationCache:
    """Load a cache directory written by :func:`cache_activations`.

    Raises :class:`CacheIncompleteError` when shards are missing or do not match
    the manifest's plan (an interrupted run or update: re-run to resume) and
    :class:`CacheCorruptError`, naming the file, when the manifest or a shard
    cannot be read.
    """
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise CacheNotFoundError(f"{path} is not a geomfilter cache (no manifest.json)")
    manifest = _read_manifest(path)
    ident = manifest["identity"]
    n_shards = int(ident["n_shards"])
    missing = [i for i in range(n_shards) if not shard_path(path, i).is_file()]
    if missing:
        raise CacheIncompleteError(
            f"cache {path} is incomplete: {len(missing)} of {n_shards} shards missing (first: {missing[0]}); "
            "re-run the same `geomfilter cache` command to resume"
        )
    ids, meta, rows, arrays = _read_shards(path, n_shards, manifest.get("shards"))
    if len(ids) != ident["dataset"]["n_samples"]:
        raise CacheIncompleteError(f"cache {path} holds {len(ids)} samples, manifest says {ident['dataset']['n_samples']}")
    sae = ident.get("sae")
    return ActivationCache(ids=ids, meta=meta, arrays=arrays, manifest=manifest, path=path,
                           d_sae=int(sae["d_sae"]) if sae else None, row_hashes=rows)


# --------------------------------------------------------------------------- staleness


def cache_rejects(cache: ActivationCache) -> list[dict]:
    """The rows rejected when ``cache`` was made (its ``data_report.json``); ``[]`` when it has none or none is
    readable."""
    try:
        rejects = json.loads((cache.path / "data_report.json").read_text(encoding="utf-8")).get("rejects", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in rejects if isinstance(r, dict)] if isinstance(rejects, list) else []


def _where(samples: dict[str, Sample], ids: list[str], n: int = 3) -> str:
    shown = [f"{i!r} (line {samples[i].line})" if i in samples and samples[i].line else repr(i) for i in ids[:n]]
    return ", ".join(shown) + (", ..." if len(ids) > n else "")


def check_samples_match(cache: ActivationCache, samples: list[Sample], *, source: str | Path | None = None) -> None:
    """Raise :class:`CacheStaleError` unless ``samples`` -- the valid rows of the cache's source file, read now
    -- are the rows ``cache`` was made from.

    Compared by id and content (:func:`geomfilter.samples.sample_hash`): a cached row
    that was edited or is gone, and a row that is not in the cache (added, or
    fixed since it was rejected) but was not rejected when it was cached, make
    the cache stale. The error names the source file, the counts and the first
    ids with their line numbers, and the ``geomfilter cache`` command that
    updates the cache. A cache written before per-row hashes is checked as a
    whole (its dataset fingerprint). The order of the rows does not matter.
    """
    source = str(source if source is not None else cache.manifest.get("source"))
    by_id = {s.id: s for s in samples}
    cached = set(cache.ids)
    gone = [i for i in cache.ids if i not in by_id]
    if cache.row_hashes is not None:
        changed = [i for i, h in zip(cache.ids, cache.row_hashes) if i in by_id and sample_hash(by_id[i]) != h]
    elif not gone and fingerprint([by_id[i] for i in cache.ids]) != cache.manifest["identity"]["dataset"]["fingerprint"]:
        changed = [None]  # an old cache: some row changed, which one is unknown
    else:
        changed = []
    rejects = cache_rejects(cache)
    rejected = {r.get("id") for r in rejects if r.get("id") is not None}
    added = [s.id for s in samples if s.id not in cached and s.id not in rejected]
    if not (gone or changed or added):
        return
    what = []
    if changed == [None]:
        what.append("rows were edited (this cache predates per-row fingerprints, so which ones is unknown)")
    elif changed:
        what.append(f"{len(changed)} cached row{'s' if len(changed) > 1 else ''} edited (first: {_where(by_id, changed)})")
    if gone:
        what.append(f"{len(gone)} cached row{'s' if len(gone) > 1 else ''} no longer there (first: {_where(by_id, gone)})")
    if added:
        what.append(f"{len(added)} row{'s' if len(added) > 1 else ''} not in the cache (first: {_where(by_id, added)})")
    raise CacheStaleError(
        f"cache {cache.path} is stale: {source} changed since it was made: {'; '.join(what)}. Its activations and "
        f"scores would be those of the old rows. Update it with "
        f"`{recache_command(cache.manifest, cache.path, skip_invalid=bool(rejects))}`"
        + (" and the --sae it was made with" if cache.manifest["identity"].get("sae") is not None else "")
        + " (only the shards whose rows changed are recomputed), then run this again.")
