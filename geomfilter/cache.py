"""The streaming activation cache.

``cache_activations`` runs a hooked model over a prepared chat dataset and,
for every sample, stores what the geometry and filtering steps need, pooled
over the sample's *response* tokens only:

* ``mean_idx`` / ``mean_val``: top-k SAE latents by mean activation (sparse);
* ``max_idx`` / ``max_val``: top-k SAE latents by max activation;
* ``n_active``: how many SAE latents fired on at least one response token;
* ``resid_mean``: the mean activation vector at the hook (dense, ``d_model``);
* ``n_tokens``: the number of response tokens pooled.

Streaming: samples are processed shard by shard (``shard_size`` samples, in
dataset order); inside a shard they are sorted by length and packed into
batches under a token budget (minimal padding, right-padded with an attention
mask); the forward pass stops after the hooked layer; SAE encoding happens per
batch on the response tokens only. No activation tensor of the whole dataset is
ever held, so memory does not grow with the dataset.

Output (``out_dir``): ``manifest.json`` (model, hook, SAE, dataset and token
fingerprints, tokenizer, pooling, versions, the plan of every shard),
``data_report.json``, the rejects file when asked for, and
``shard-00000.safetensors`` ... written atomically (temp file + rename, the
permissions the umask gives a new file). Nothing is written into a folder
before its manifest is accepted.

Content addressed: every row is fingerprinted by :func:`geomfilter.data.sample_hash`
(id, messages, extra fields); a shard stores the hashes of its rows and its
*plan* (a hash of its rows' ids and hashes), the manifest the plan of every
shard. Re-running after a kill skips the shards whose plan is the expected one
and produces byte-identical files; an unreadable shard is recomputed. A
manifest that disagrees (other model, SAE, hook, options, or another source)
refuses to mix and says which fields differ; the same source file with edited,
added or removed rows updates the cache: only the shards whose rows changed are
recomputed. :func:`load_cache` refuses a shard that is unreadable
(:class:`CacheCorruptError`) or not the manifest's plan, and
:func:`check_samples_match` tells a cache whose source rows changed since
(:class:`CacheStaleError`).

Backends share the pieces: ``prepare_cache_dir`` (checks, manifest),
``shard_samples`` / ``shard_done`` (the shard plan, resume), ``compute_shard``
(one shard's arrays) and ``write_shard`` (the atomic writer);
``cache_activations`` runs them in this process, ``geomfilter.distributed``
on Ray Data actors.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data import PreparedDataset, Sample, atomic_write_text, fingerprint, publish_file, sample_hash, write_rejects
from .errors import GeomfilterError
from .models import HookedModel
from .saes import check_compatible, describe, weights_fingerprint

CACHE_FORMAT = "geomfilter-cache/1"
SAE_ARRAYS = ("mean_idx", "mean_val", "max_idx", "max_val", "n_active")
RESID_ARRAYS = ("resid_mean", "n_tokens")


class CacheMismatchError(GeomfilterError, RuntimeError):
    """An existing cache was made from something else; refusing to mix."""


class CacheIncompleteError(GeomfilterError, RuntimeError):
    """A cache directory is missing shards (an interrupted run)."""


class CacheCorruptError(GeomfilterError, RuntimeError):
    """A cache file (a shard or the manifest) cannot be read: truncated, overwritten, not a cache file."""


class CacheStaleError(CacheMismatchError):
    """A cache's source rows changed since it was made: its activations are those of the old rows."""


@dataclass
class CacheConfig:
    """The settings of a cache and their defaults: the one place every caller (CLI, pipeline, Ray,
    experiment runner) takes them from."""

    top_k: int = 64  # SAE latents kept per sample and pooling (sparse top-k)
    shard_size: int = 512  # samples per shard (the unit of resume)
    max_batch_tokens: int = 2048  # token budget of one padded batch (measured fastest on a 2-core CPU)
    max_batch_size: int = 64  # most samples in one batch
    max_tokens: int = 1024  # longer conversations are truncated by ``truncation``
    truncation: str = "left"  # left: keep the response; right: cut the end; error: refuse
    response: str = "last"  # pool the last assistant turn, or "all" assistant turns


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


# --------------------------------------------------------------------------- helpers


def _versions() -> dict:
    import sae_lens
    import transformer_lens
    import transformers

    return {
        "geomfilter": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        "sae_lens": getattr(sae_lens, "__version__", "unknown"),
    }


def _tokens_fingerprint(dataset: PreparedDataset) -> str:
    h = hashlib.sha256()
    for t in dataset.tokenized:
        h.update(t.id.encode("utf-8"))
        h.update(np.asarray(t.input_ids, dtype=np.int64).tobytes())
        h.update(np.packbits(np.asarray(t.response_mask, dtype=bool)).tobytes())
    return h.hexdigest()


def _tokenizer_info(tokenizer: Any) -> dict:
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16],
    }


def model_identity(model: HookedModel) -> dict:
    """The model part of a manifest's identity: spec, kind, sizes and a weights fingerprint (no location)."""
    model_id = {k: v for k, v in model.info.items() if k != "location"}
    model_id["weights"] = weights_fingerprint(model.hf_model)
    return model_id


def build_manifest(model: HookedModel, sae, dataset: PreparedDataset, hook: str, *,
                   top_k: int, shard_size: int) -> dict:
    """The manifest of a cache run: ``identity`` must match to resume; ``versions`` is informative.

    ``shards`` is the plan of every shard (:func:`shard_plan`): what :func:`load_cache`
    checks each shard file against (it follows from the identity and the rows).
    """
    identity = {
        "format": CACHE_FORMAT,
        "model": model_identity(model),
        "hook": hook,
        "sae": describe(sae) if sae is not None else None,
        "dataset": {
            "fingerprint": dataset.fingerprint,
            "tokens_fingerprint": _tokens_fingerprint(dataset),
            "n_samples": len(dataset.tokenized),
            "response": dataset.report.response,
            "max_tokens": dataset.report.max_tokens,
            "truncation": dataset.report.truncation,
        },
        "tokenizer": _tokenizer_info(model.tokenizer),
        "pooling": {"over": "response tokens", "sae": ["mean", "max"] if sae is not None else [],
                    "resid": "mean", "top_k": top_k},
        "shard_size": shard_size,
        "n_shards": max(1, -(-len(dataset.tokenized) // shard_size)),
    }
    shards = [shard_plan(shard_samples(dataset, shard_size, si)) for si in range(identity["n_shards"])]
    return {"identity": identity, "source": dataset.source, "versions": _versions(), "shards": shards}


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, cache's value, this run's value)`` of every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [(prefix, a, b)]


def _diff_text(diffs: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"{k}: cache has {a!r}, this run has {b!r}" for k, a, b in diffs]


# The identity fields that change when the rows of the source file change (and nothing else does).
_ROW_FIELDS = {"dataset.fingerprint", "dataset.tokens_fingerprint", "dataset.n_samples", "n_shards"}


def _same_file(a: str | None, b: str | None) -> bool:
    """Both name the same existing file or folder (a ``<Dataset>`` object is never the same as another)."""
    if not a or not b:
        return False
    pa, pb = Path(a), Path(b)
    try:
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _shard_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"shard-{i:05d}.safetensors"


def shard_plan(part: list) -> str:
    """The plan of a shard: a hash of its samples' ids and content hashes, in order (what resume compares)."""
    h = hashlib.sha256()
    for t in part:
        h.update(f"{t.id}\t{t.content_hash}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()[:16]


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


def pack_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Pack sample positions into batches: longest first, padded size under the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur = [], []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and ((len(cur) + 1) * width > max_batch_tokens or len(cur) >= max_batch_size):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pad_batch(samples: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad tokenized samples: ``(input_ids, attention_mask, response_mask)``, each ``[B, T]``."""
    width = max(len(t.input_ids) for t in samples)
    tok = torch.full((len(samples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(samples), width), dtype=torch.long)
    rmask = torch.zeros((len(samples), width), dtype=torch.bool)
    for r, t in enumerate(samples):
        n = len(t.input_ids)
        tok[r, :n] = torch.tensor(t.input_ids)
        att[r, :n] = 1
        rmask[r, :n] = torch.tensor(t.response_mask)
    return tok, att, rmask


def resid_means_by_layer(model: HookedModel, dataset: PreparedDataset, layers: list[int], *,
                         max_batch_tokens: int = 2048, progress: bool = True) -> dict[int, np.ndarray]:
    """Response-token mean of ``blocks.L.hook_resid_post`` for several layers in one forward pass per batch.

    Returns ``{layer: [n_samples, d_model]}`` (float32, dataset order). No SAE, nothing
    written: the cheap way to compare layers (probes, residual baselines).
    """
    from tqdm.auto import tqdm

    for layer in layers:
        model.validate_hook(f"blocks.{layer}.hook_resid_post")
    hooks = [f"blocks.{i}.hook_resid_post" for i in layers]
    out = {i: np.zeros((len(dataset), model.d_model), dtype=np.float32) for i in layers}
    toks = dataset.tokenized
    batches = pack_batches([len(t.input_ids) for t in toks], max_batch_tokens, 64)
    for batch in tqdm(batches, desc=f"resid means, {len(layers)} layers", unit="batch", disable=not progress):
        ids, att, mask = pad_batch([toks[i] for i in batch], model.tokenizer.pad_token_id)
        stop = max(layers) + 1
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(ids.to(model.device), attention_mask=att.to(model.device),
                                                   names_filter=hooks,
                                                   stop_at_layer=stop if stop < model.n_layers else None)
        m = mask.to(model.device).unsqueeze(-1).float()
        for layer, hook in zip(layers, hooks):
            out[layer][batch] = ((cache[hook].float() * m).sum(1) / m.sum(1).clamp_min(1)).cpu().numpy()
    return out


# --------------------------------------------------------------------------- pooling


def pool_batch(acts: torch.Tensor, mask: torch.Tensor, sae, top_k: int) -> dict[str, torch.Tensor]:
    """Pool one batch of hook activations ``[B, T, d]`` over the response ``mask`` ``[B, T]``.

    Only the masked tokens are SAE-encoded. Returns CPU tensors keyed as in
    the shard format.
    """
    b = acts.shape[0]
    x = acts[mask]  # [N, d]: response tokens only
    seg = torch.arange(b, device=acts.device).unsqueeze(1).expand_as(mask)[mask]
    counts = mask.sum(1)
    denom = counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    out = {
        "resid_mean": (torch.zeros(b, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, seg, x) / denom).float(),
        "n_tokens": counts.to(torch.int32),
    }
    if sae is not None:
        feats = sae.encode(x.to(sae.W_enc.dtype))  # [N, d_sae]
        d_sae = feats.shape[1]
        mean = torch.zeros(b, d_sae, dtype=feats.dtype, device=feats.device).index_add_(0, seg, feats) / denom
        mx = torch.full((b, d_sae), float("-inf"), dtype=feats.dtype, device=feats.device)
        mx = mx.scatter_reduce(0, seg.unsqueeze(1).expand_as(feats), feats, reduce="amax", include_self=True)
        k = min(top_k, d_sae)
        mv, mi = torch.topk(mean, k, dim=1)
        xv, xi = torch.topk(mx, k, dim=1)
        out.update(
            mean_idx=mi.to(torch.int32), mean_val=mv.float(),
            max_idx=xi.to(torch.int32), max_val=xv.float(),
            n_active=(mx > 0).sum(1).to(torch.int32),
        )
    return {k: v.detach().cpu() for k, v in out.items()}


# --------------------------------------------------------------------------- main entry


def prepare_cache_dir(
    model: HookedModel,
    sae,
    dataset: PreparedDataset,
    out_dir: str | Path,
    *,
    hook: str | None = None,
    top_k: int = 64,
    shard_size: int = 512,
    max_batch_tokens: int = 2048,
    max_batch_size: int = 64,
    rejects_path: str | Path | None = None,
) -> tuple[str, dict]:
    """Check the arguments, then create ``out_dir`` with its manifest (or check the one there).

    Returns ``(hook, manifest)``. Raises before anything is written when the SAE,
    hook or arguments are wrong, :class:`CacheMismatchError` when ``out_dir``
    holds a cache made from something else, and :class:`CacheCorruptError` when
    its manifest cannot be read. A cache of the same source file whose rows
    changed is updated: the new manifest is written and the shards that no
    longer match it are recomputed by the backend (and shards past the new end
    removed). Once the folder is accepted, ``data_report.json`` and, when
    ``rejects_path`` is given, the rejects file are (re)written, so both describe
    this run (a rejects file is removed when nothing was rejected). Every
    backend (local, Ray) starts here.
    """
    if sae is not None:
        hook = check_compatible(sae, model, hook)
    else:
        hook = model.validate_hook(hook or model.default_hook())
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if shard_size < 1 or max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("shard_size, max_batch_tokens and max_batch_size must be positive")
    if not dataset.tokenized:
        raise ValueError(f"dataset {dataset.source} has no samples to cache")
    out_dir = Path(out_dir)
    manifest = build_manifest(model, sae, dataset, hook, top_k=top_k, shard_size=shard_size)
    mpath = out_dir / "manifest.json"
    write = True
    if mpath.is_file():
        old = _read_manifest(out_dir)
        diffs = _diff(old.get("identity"), manifest["identity"])
        if diffs and not ({k for k, _, _ in diffs} <= _ROW_FIELDS and _same_file(old.get("source"), dataset.source)):
            raise CacheMismatchError(
                f"{out_dir} already holds a cache made from something else; refusing to mix. "
                "Differences:\n  " + "\n  ".join(_diff_text(diffs)) + "\nUse another --out directory or delete this one."
            )
        if diffs:  # the same source file, its rows edited: update, recomputing the shards whose rows changed
            warnings.warn(f"{dataset.source} changed since {out_dir} was made: updating the cache (only the shards "
                          "whose rows changed are recomputed)", stacklevel=3)
        else:
            vdiff = _diff_text(_diff(old.get("versions"), manifest["versions"]))
            if vdiff:
                warnings.warn(f"resuming {out_dir} with other library versions: {'; '.join(vdiff)}", stacklevel=3)
            # same identity: keep the manifest (byte-identical resume) unless it predates the shard plans
            write = old.get("shards") != manifest["shards"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    # the folder is accepted: from here on it is written
    if write:
        _atomic_write_text(mpath, json.dumps(manifest, indent=2, sort_keys=True))
        for extra in sorted(out_dir.glob("shard-*.safetensors")):  # shards past the end of a shorter dataset
            stem = extra.name[len("shard-"):-len(".safetensors")]
            if stem.isdigit() and int(stem) >= manifest["identity"]["n_shards"]:
                extra.unlink(missing_ok=True)
    _atomic_write_text(out_dir / "data_report.json", json.dumps(dataset.report.as_dict(), indent=2, default=str))
    if rejects_path is not None:
        write_rejects(rejects_path, dataset.report.rejects)
    return hook, manifest


def shard_samples(dataset: PreparedDataset, shard_size: int, si: int) -> list:
    """The tokenized samples of shard ``si`` (dataset order): the shard plan every backend uses."""
    return dataset.tokenized[si * shard_size:(si + 1) * shard_size]


def shard_done(out_dir: str | Path, si: int, part: list) -> bool:
    """True when shard ``si`` of ``out_dir`` is a readable shard of exactly these tokenized samples ``part``
    (same ids and content hashes, in order: :func:`shard_plan`). An unreadable shard is not done."""
    path = _shard_path(Path(out_dir), si)
    return path.is_file() and _shard_plan(path) == shard_plan(part)


def compute_shard(
    model: HookedModel,
    sae,
    part: list,
    hook: str,
    *,
    top_k: int,
    max_batch_tokens: int,
    max_batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The pooled arrays of one shard's samples ``part``, in ``part``'s order (CPU tensors, shard format).

    Samples are sorted by length and packed into padded batches under the token
    budget; ``on_batch(n_samples, n_tokens)`` is called after each batch. The one
    routine behind every backend, so their shards are byte-identical.
    """
    pad_id = model.tokenizer.pad_token_id
    pooled: dict[str, list] = {}
    order: list[int] = []
    for batch in pack_batches([len(t.input_ids) for t in part], max_batch_tokens, max_batch_size):
        tok, att, rmask = pad_batch([part[i] for i in batch], pad_id)
        with torch.no_grad():
            res = pool_batch(model.activations(tok, hook, attention_mask=att), rmask.to(model.device), sae, top_k)
        for k, v in res.items():
            pooled.setdefault(k, []).append(v)
        order.extend(batch)
        if on_batch is not None:
            on_batch(len(batch), int(att.sum()))
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return {k: torch.cat(v)[inv].contiguous() for k, v in pooled.items()}


def write_shard(out_dir: str | Path, si: int, part: list, metas: list[dict],
                tensors: dict[str, torch.Tensor]) -> Path:
    """Write shard ``si`` atomically: its tokenized samples ``part`` (ids, content hashes, plan), their extra
    fields ``metas`` and the pooled ``tensors``; the file gets normal permissions (umask), not 0600."""
    from safetensors.torch import save_file

    path = _shard_path(Path(out_dir), si)
    meta = {
        "format": CACHE_FORMAT,
        "shard": str(si),
        "plan": shard_plan(part),
        "ids": json.dumps([t.id for t in part], ensure_ascii=False),
        "rows": json.dumps([t.content_hash for t in part]),
        "meta": json.dumps(metas, ensure_ascii=False, sort_keys=True, default=str),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        # one metadata key: safetensors writes a multi-key metadata map in arbitrary order, one key keeps
        # re-runs byte-identical
        save_file(tensors, str(tmp), metadata={"geomfilter": json.dumps(meta, sort_keys=True, ensure_ascii=False)})
        publish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cache_activations(
    model: HookedModel,
    sae,
    dataset: PreparedDataset,
    out_dir: str | Path,
    *,
    hook: str | None = None,
    top_k: int = 64,
    shard_size: int = 512,
    max_batch_tokens: int = 2048,
    max_batch_size: int = 64,
    progress: bool = True,
    on_shard: Callable[[int, Path], None] | None = None,
    rejects_path: str | Path | None = None,
) -> CacheResult:
    """Cache pooled activations of ``model`` (and ``sae`` codes) on ``dataset`` into ``out_dir``.

    ``sae`` may be ``None`` (residual means only). ``hook`` defaults to the
    SAE's hook, else the model's default hook. ``on_shard(i, path)`` is called
    after each shard is written (progress reporting, tests). ``rejects_path``:
    where the dataset's rejected rows are written once ``out_dir`` is accepted
    (see :func:`prepare_cache_dir`). The Ray backend
    (:func:`geomfilter.distributed.cache_activations_ray`) writes the same files.
    """
    hook, manifest = prepare_cache_dir(model, sae, dataset, out_dir, hook=hook, top_k=top_k, shard_size=shard_size,
                                       max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                                       rejects_path=rejects_path)
    out_dir = Path(out_dir)
    n = len(dataset.tokenized)
    n_shards = manifest["identity"]["n_shards"]
    metas = {s.id: s.meta for s in dataset.samples}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="sample", desc=f"cache {hook}", dynamic_ncols=True)
    written = skipped = n_tok = 0
    t0 = time.perf_counter()
    for si in range(n_shards):
        part = shard_samples(dataset, shard_size, si)
        ids = [t.id for t in part]
        if shard_done(out_dir, si, part):
            skipped += 1
            if bar is not None:
                bar.update(len(part))
            continue

        def on_batch(n_samples: int, n_tokens: int, si: int = si) -> None:
            nonlocal n_tok
            n_tok += n_tokens
            if bar is not None:
                bar.update(n_samples)
                bar.set_postfix(tok_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.0f}", shard=f"{si + 1}/{n_shards}")

        tensors = compute_shard(model, sae, part, hook, top_k=top_k, max_batch_tokens=max_batch_tokens,
                                max_batch_size=max_batch_size, on_batch=on_batch)
        path = write_shard(out_dir, si, part, [metas.get(i, {}) for i in ids], tensors)
        written += 1
        if on_shard is not None:
            on_shard(si, path)
    if bar is not None:
        bar.close()
    return CacheResult(out_dir=out_dir, n_samples=n, n_shards=n_shards, shards_written=written,
                       shards_skipped=skipped, n_tokens=n_tok, seconds=time.perf_counter() - t0)


def _shard_meta(f) -> dict:
    return json.loads((f.metadata() or {}).get("geomfilter", "{}"))


def _shard_plan(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            plan = _shard_meta(f).get("plan")
            return plan if isinstance(plan, str) else None
    except (OSError, SafetensorError, ValueError, AttributeError, TypeError):  # a corrupt shard is recomputed
        return None


def _read_shard(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays of one shard file; :class:`CacheCorruptError` naming it when it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            md = _shard_meta(f)
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        ids, meta = json.loads(md["ids"]), json.loads(md["meta"])
        rows = json.loads(md["rows"]) if "rows" in md else None
        if not isinstance(ids, list) or not isinstance(meta, list) or len(meta) != len(ids) or \
                (rows is not None and len(rows) != len(ids)):
            raise ValueError("its ids, meta and row hashes do not line up")
        if any(len(v) != len(ids) for v in arrays.values()):
            raise ValueError(f"its arrays do not have one row per sample ({len(ids)} ids)")
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheCorruptError(
            f"shard {path} cannot be read ({type(e).__name__}: {e}). Delete it and re-run the same `geomfilter "
            "cache` command: it recomputes that shard only") from e
    return {"ids": ids, "meta": meta, "rows": rows, "plan": md.get("plan")}, arrays


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
    """Per-row :func:`geomfilter.data.sample_hash` of the rows cached (None: a cache written before they were)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hook(self) -> str:
        """The hook the activations were taken at (from the manifest)."""
        return self.manifest["identity"]["hook"]

    def dense(self, pooling: str = "mean", rows: np.ndarray | None = None) -> np.ndarray:
        """Dense ``[n, d_sae]`` float32 matrix of the stored top-k pooled SAE activations (of ``rows``, default all)."""
        if self.d_sae is None:
            raise ValueError(f"cache {self.path} has no SAE activations (it was made without an SAE)")
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        idx, val = self.arrays[f"{pooling}_idx"], self.arrays[f"{pooling}_val"]
        if rows is not None:
            idx, val = idx[rows], val[rows]
        out = np.zeros((len(idx), self.d_sae), dtype=np.float32)
        np.put_along_axis(out, idx.astype(np.int64), np.maximum(val, 0), axis=1)
        return out

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


def load_cache(path: str | Path) -> ActivationCache:
    """Load a cache directory written by :func:`cache_activations`.

    Raises :class:`CacheIncompleteError` when shards are missing or do not match
    the manifest's plan (an interrupted run or update: re-run to resume) and
    :class:`CacheCorruptError`, naming the file, when the manifest or a shard
    cannot be read.
    """
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{path} is not a geomfilter cache (no manifest.json)")
    manifest = _read_manifest(path)
    ident = manifest["identity"]
    n_shards = int(ident["n_shards"])
    missing = [i for i in range(n_shards) if not _shard_path(path, i).is_file()]
    if missing:
        raise CacheIncompleteError(
            f"cache {path} is incomplete: {len(missing)} of {n_shards} shards missing (first: {missing[0]}); "
            "re-run the same `geomfilter cache` command to resume"
        )
    plans = manifest.get("shards")
    ids: list[str] = []
    meta: list[dict] = []
    rows: list[str] | None = []
    parts: dict[str, list] = {}
    for i in range(n_shards):
        spath = _shard_path(path, i)
        md, arrays = _read_shard(spath)
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


def recache_command(cache: ActivationCache) -> str:
    """The ``geomfilter cache`` command line that updates ``cache`` from its source with the options it was
    made with (the SAE is not recorded by spec: pass the same ``--sae``)."""
    import shlex

    ident = cache.manifest["identity"]
    ds = ident.get("dataset", {})
    parts = ["geomfilter", "cache", str(cache.manifest.get("source")), "--out", str(cache.path),
             "--model", str(ident.get("model", {}).get("spec")), "--hook", str(ident.get("hook")),
             "--top-k", str(ident.get("pooling", {}).get("top_k")), "--shard-size", str(ident.get("shard_size"))]
    if ds.get("max_tokens"):
        parts += ["--max-tokens", str(ds["max_tokens"])]
    for opt in ("truncation", "response"):
        if ds.get(opt):
            parts += [f"--{opt}", str(ds[opt])]
    if ident.get("sae") is None:
        parts += ["--sae", "none"]
    if cache_rejects(cache):
        parts.append("--skip-invalid")
    return " ".join(shlex.quote(p) for p in parts)


def _where(samples: dict[str, Sample], ids: list[str], n: int = 3) -> str:
    shown = [f"{i!r} (line {samples[i].line})" if i in samples and samples[i].line else repr(i) for i in ids[:n]]
    return ", ".join(shown) + (", ..." if len(ids) > n else "")


def check_samples_match(cache: ActivationCache, samples: list[Sample], *, source: str | Path | None = None) -> None:
    """Raise :class:`CacheStaleError` unless ``samples`` -- the valid rows of the cache's source file, read now
    -- are the rows ``cache`` was made from.

    Compared by id and content (:func:`geomfilter.data.sample_hash`): a cached row
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
    rejected = {r.get("id") for r in cache_rejects(cache) if r.get("id") is not None}
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
        f"scores would be those of the old rows. Update it with `{recache_command(cache)}`"
        + (" and the --sae it was made with" if cache.manifest["identity"].get("sae") is not None else "")
        + " (only the shards whose rows changed are recomputed), then run this again.")
