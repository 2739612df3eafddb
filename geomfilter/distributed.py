"""Ray Data backend for the activation cache (``geomfilter cache DATA --backend ray``).

The unit of work is a *shard*: the same shard plan as the local backend
(:class:`geomfilter.cache.CachePlan`), so the same resume rule applies (finished shards are
skipped). The shards still to compute become the rows of a Ray Dataset (one
shard per block, its tokenized samples pickled into the row);
``map_batches`` runs them over a fixed-size pool of :class:`ShardWorker`
actors. Each actor loads the model and SAE once, from the same specs as the
driver, checks that it got the same weights (the fingerprints of the cache
manifest), and computes a shard with ``pooling.compute_shard``, the routine the
local backend runs, so the arrays are the same bit for bit (same device type,
same library versions). It returns one row per sample: the shard, the sample's
position and id, and its pooled arrays.

The driver checks that every sample id of every pending shard comes back
exactly once, in its planned place, and writes each complete shard atomically
with ``shards.write_shard``: the files (and ``manifest.json``) are those the
local backend writes. A worker that dies (killed, out of memory, a lost node)
is restarted and its shard retried (``max_restarts`` / ``max_task_retries`` on
the actor pool); a shard that still comes back short, or twice, stops the run
with :class:`ShardAccountingError` and nothing wrong on disk.

Ray is an optional dependency: ``pip install 'geomfilter[distributed]'``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import CachePlan, CacheResult, prepare_cache_dir
from .cache_manifest import model_identity
from .data import PreparedDataset
from .errors import GeomfilterError
from .models import HookedModel, load_model
from .pooling import compute_shard
from .saes import describe, load_sae
from .settings import CacheConfig
from .shards import write_shard

RAY_MISSING = "the Ray backend needs Ray, which is not installed: pip install 'geomfilter[distributed]'"


class RayNotInstalledError(GeomfilterError, ImportError):
    """``--backend ray`` without Ray installed."""


class ShardAccountingError(GeomfilterError, RuntimeError):
    """A shard's sample ids did not come back from the workers exactly once."""


class WorkerMismatchError(GeomfilterError, RuntimeError):
    """A worker loaded other model or SAE weights than the driver (a spec that resolves differently there)."""


def require_ray():
    """Import and return ``ray`` (with ``ray.data``), or raise :class:`RayNotInstalledError` naming the extra."""
    try:  # ray is optional and heavy: imported only when the Ray backend is used
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayNotInstalledError(RAY_MISSING) from e
    return ray


class ShardWorker:
    """A Ray Data actor: loads the model + SAE once, then computes whole shards (``map_batches`` callable).

    ``expect`` is the driver's manifest identity; the worker refuses to run
    when its own model or SAE weights differ from it. ``threads`` sets torch's
    CPU threads (the actor's CPU share).
    """

    def __init__(self, model_spec: str, sae_spec: str | None, hook: str, *, expect: dict, top_k: int,
                 max_batch_tokens: int, max_batch_size: int, device: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(model_spec, device=device, progress=False)
        self.sae = load_sae(sae_spec, device=str(self.model.device)) if sae_spec else None
        got = model_identity(self.model)
        if got != expect["model"]:
            diff = {k: (got.get(k), expect["model"].get(k)) for k in set(got) | set(expect["model"])
                    if got.get(k) != expect["model"].get(k)}
            raise WorkerMismatchError(f"worker loaded model {model_spec!r} unlike the driver's (field: (worker, "
                                      f"driver)): {diff}; the spec resolves to another model on this node")
        sae_id = describe(self.sae) if self.sae is not None else None
        if sae_id != expect["sae"]:
            raise WorkerMismatchError(f"worker loaded SAE {sae_spec!r} as {sae_id}, the driver has {expect['sae']}")
        self.hook = hook
        self.kw = {"top_k": top_k, "max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size}

    def compute(self, si: int, part: list) -> dict[str, torch.Tensor]:
        """The pooled arrays of shard ``si`` (its tokenized samples ``part``): ``pooling.compute_shard``."""
        return compute_shard(self.model, self.sae, part, self.hook, **self.kw)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows ``{shard, samples}`` in, one row per sample out: ``shard, pos, id`` and the pooled arrays."""
        cols: dict[str, list] = {}
        for si, blob in zip(batch["shard"], batch["samples"]):
            part = pickle.loads(bytes(blob))
            tensors = self.compute(int(si), part)
            cols.setdefault("shard", []).append(np.full(len(part), int(si), dtype=np.int64))
            cols.setdefault("pos", []).append(np.arange(len(part), dtype=np.int64))
            cols.setdefault("id", []).append(np.array([t.id for t in part], dtype=object))
            for k, v in tensors.items():
                cols.setdefault(k, []).append(v.numpy())
        return {k: np.concatenate(v) for k, v in cols.items()}


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nobody listens on: Ray itself retries for minutes."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # 'auto', 'local', or something for Ray to interpret
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {e}") from e


@contextlib.contextmanager
def _ray_session(ray_address: str | None, progress: bool):
    """``ray``, initialised: the running Ray if there is one, else one joined or started here and shut down at
    the end (``ray_address``, else ``$RAY_ADDRESS``, else a fresh local Ray -- never a stale one found through
    /tmp/ray)."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
        _check_reachable(address)
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=progress)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def cache_activations_ray(model: HookedModel, sae, dataset: PreparedDataset, out_dir: str | Path, *,
                          sae_spec: str | None = None, model_spec: str | None = None, hook: str | None = None,
                          top_k: int = CacheConfig.top_k, shard_size: int = CacheConfig.shard_size,
                          max_batch_tokens: int = CacheConfig.max_batch_tokens,
                          max_batch_size: int = CacheConfig.max_batch_size, num_actors: int | None = None,
                          ray_address: str | None = None, device: str | None = None, max_retries: int = 3,
                          progress: bool = True, on_shard: Callable[[int, Path], None] | None = None,
                          worker_cls: type = ShardWorker, worker_kwargs: dict[str, Any] | None = None,
                          rejects_path: str | Path | None = None) -> CacheResult:
    """:func:`geomfilter.cache.cache_activations` on Ray Data: the same shards and manifest, computed by actors.

    ``model`` / ``sae`` are the driver's copies (manifest, checks); every actor
    loads its own from ``model_spec`` (default ``model.spec``) and ``sae_spec``
    (required when ``sae`` is given). ``num_actors`` defaults to the cluster's
    GPUs when it has any (one GPU per actor, unless ``device='cpu'``), else its
    CPUs (the CPUs are split between the actors). ``ray_address`` joins a
    running cluster; default: the already initialised Ray, else ``$RAY_ADDRESS``,
    else a local one started here and shut down at the end. A dying worker is restarted and its
    shard retried up to ``max_retries`` times. ``worker_cls`` (a
    :class:`ShardWorker` subclass, built with ``worker_kwargs`` as extra
    keyword arguments) lets callers instrument the workers. Shards already on
    disk are skipped, as locally; with nothing left to do, Ray is not started.
    ``rejects_path``: the rejects file, written once ``out_dir`` is accepted (as locally).
    """
    if sae is not None and not sae_spec:
        raise ValueError("the Ray backend loads the SAE in every worker from its spec: pass sae_spec")
    if num_actors is not None and num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    t0 = time.perf_counter()
    config = CacheConfig(top_k=top_k, shard_size=shard_size, max_batch_tokens=max_batch_tokens,
                         max_batch_size=max_batch_size)
    plan = prepare_cache_dir(model, sae, dataset, out_dir, config, hook=hook, rejects_path=rejects_path)
    written = n_tokens = 0
    if plan.pending:
        specs = (model_spec or model.spec, sae_spec if sae is not None else None, plan.hook)
        with _ray_session(ray_address, progress) as ray:
            ds, n_actors = _map_shards(ray, plan, specs, num_actors=num_actors, device=device, max_retries=max_retries,
                                       progress=progress, worker_cls=worker_cls, worker_kwargs=worker_kwargs or {})
            written, n_tokens = _collect(ds, plan, f"cache {plan.hook} (ray, {n_actors} actors)", progress, on_shard)
    return plan.result(written, n_tokens, time.perf_counter() - t0)


def _actor_resources(ray, n_pending: int, num_actors: int | None,
                     device: str | None) -> tuple[int, dict, int | None, str]:
    """``(actors, resources per actor, torch threads, device)``: one GPU per actor when the cluster has GPUs
    (unless ``device='cpu'``), else the CPUs split between the actors; never more actors than shards."""
    res = ray.cluster_resources()
    use_gpus = device != "cpu" and res.get("GPU", 0) > 0
    n_actors = min(num_actors or max(1, int(res.get("GPU", 0) if use_gpus else res.get("CPU", 1))), n_pending)
    if use_gpus:
        return n_actors, {"num_gpus": 1}, None, device or "cuda"
    cpus = res.get("CPU", 1)
    share = max(cpus // n_actors, 1) if cpus >= n_actors else cpus / n_actors
    return n_actors, {"num_cpus": share}, max(int(share), 1), device or "cpu"


def _map_shards(ray, plan: CachePlan, specs: tuple[str, str | None, str], *, num_actors: int | None,
                device: str | None, max_retries: int, progress: bool, worker_cls: type,
                worker_kwargs: dict[str, Any]):
    """The Ray Dataset of the pending shards mapped through a pool of ``worker_cls`` actors, and the pool's size.

    ``specs``: ``(model spec, SAE spec or None, hook)``, what every actor loads.
    """
    n_actors, res, threads, device = _actor_resources(ray, len(plan.pending), num_actors, device)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    rows = [{"shard": si, "samples": pickle.dumps(plan.parts[si], protocol=pickle.HIGHEST_PROTOCOL)}
            for si in plan.pending]
    source = ray.data.from_items(rows, override_num_blocks=len(rows))
    # A worker that dies is restarted (``max_restarts``) and its shard retried on it (``max_task_retries``), a
    # bounded number of times so a shard that always kills its worker stops the run. Ray >= 2.60 deprecates
    # these pass-through actor options (its defaults retry forever); use them while map_batches takes them.
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(source.map_batches).parameters.values()):
        res.update(max_restarts=max_retries, max_task_retries=max_retries)
    cfg = plan.config
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = source.map_batches(
            worker_cls,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_args=specs,
            fn_constructor_kwargs={"expect": plan.manifest["identity"], "top_k": cfg.top_k,
                                   "max_batch_tokens": cfg.max_batch_tokens, "max_batch_size": cfg.max_batch_size,
                                   "device": device, "threads": threads, **worker_kwargs},
            **res,
        )
    return ds, n_actors


def _collect(ds, plan: CachePlan, desc: str, progress: bool,
             on_shard: Callable[[int, Path], None] | None) -> tuple[int, int]:
    """Write each shard once all its rows came back from the workers (:class:`ShardCollector`); return the
    number of shards written and their tokens."""
    collector = ShardCollector(dict(enumerate(plan.parts)), plan.pending, plan.out_dir, plan.metas)
    bar = plan.progress_bar(progress, desc)
    written = n_tokens = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for si, path in collector.add(batch):
            written += 1
            n_tokens += sum(len(t.input_ids) for t in plan.parts[si])
            if bar is not None:
                bar.update(len(plan.parts[si]))
            if on_shard is not None:
                on_shard(si, path)
    if bar is not None:
        bar.close()
    collector.finish()
    return written, n_tokens


class ShardCollector:
    """The driver's side: gathers the workers' per-sample rows and writes each shard once it is complete.

    Every row must be a planned sample of a pending shard (``plans[si][pos].id``)
    and arrive exactly once; otherwise :class:`ShardAccountingError`, and the
    shard is not written. :meth:`finish` raises if any pending shard is short.
    """

    def __init__(self, plans: dict[int, list], pending: list[int], out_dir: Path, metas: dict[str, dict]):
        self.plans, self.pending, self.out_dir, self.metas = plans, list(pending), Path(out_dir), metas
        self.got: dict[int, dict[int, dict[str, np.ndarray]]] = {si: {} for si in pending}
        self.done: set[int] = set()

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[int, Path]]:
        """Take one batch of worker rows; write the shards it completes, returned as ``[(shard, path)]``."""
        touched = set()
        for r in range(len(batch["id"])):
            si, pos, sid = int(batch["shard"][r]), int(batch["pos"][r]), str(batch["id"][r])
            plan = self.plans.get(si)
            if si not in self.got or pos >= len(plan) or plan[pos].id != sid:
                raise ShardAccountingError(f"a worker returned sample {sid!r} as shard {si} position {pos}, "
                                           "which is not in the plan of the shards to compute")
            if si in self.done or pos in self.got[si]:
                raise ShardAccountingError(f"sample {sid!r} (shard {si}) came back twice")
            self.got[si][pos] = {k: v[r] for k, v in batch.items() if k not in ("shard", "pos", "id")}
            touched.add(si)
        out = []
        for si in sorted(touched):
            rows = self.got[si]
            if len(rows) < len(self.plans[si]):
                continue
            n = len(self.plans[si])
            tensors = {k: torch.from_numpy(np.ascontiguousarray(np.stack([rows[p][k] for p in range(n)])))
                       for k in rows[0]}
            out.append((si, write_shard(self.out_dir, si, self.plans[si], self.metas, tensors)))
            self.done.add(si)
            self.got[si] = dict.fromkeys(rows, {})  # free the arrays, remember the ids seen
        return out

    def finish(self) -> None:
        """Raise :class:`ShardAccountingError` unless every pending shard came back complete and was written."""
        short = [si for si in self.pending if si not in self.done]
        if short:
            si = short[0]
            missing = [t.id for p, t in enumerate(self.plans[si]) if p not in self.got[si]]
            raise ShardAccountingError(
                f"{len(short)} of {len(self.pending)} shards did not come back complete from the Ray workers "
                f"(shard {si}: {len(missing)} of {len(self.plans[si])} samples missing, first {missing[0]!r}); "
                "nothing was written for them: re-run the same command to resume")
