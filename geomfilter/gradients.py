"""The update each training sample asks for at a hook: pooled negative loss gradients of the residual.

Fine-tuning on a sample moves the hooked residual by about ``-lr * dL/dh``; a feature ``j`` of an SAE
at that hook then changes by about ``<d_j, -dL/dh>`` (``d_j`` its decoder direction). So the sample's
danger is where that update points, not what it already activates (issue 19, method (a)).

Per sample ``i`` (its SFT loss ``L_i``: the mean next-token NLL over its response tokens, as
:func:`geomfilter.finetune.response_loss` trains on it)::

    g_i = - sum over response positions t of  dL_i / dh_{i,t}

:func:`response_gradients` computes every ``g_i`` with one forward pass and one backward pass through
the blocks above the hook per padded batch (the activation is detached at the hook, so nothing below
it is differentiated). Samples in a batch do not interact (right padding, attention mask, a loss per
sample summed), so batching does not change ``g_i`` beyond float rounding.

:func:`cache_gradients` stores them next to an activation cache (``gradients.npz`` + ``gradients.json``,
keyed by the cache's identity: a re-run reuses them, a changed cache recomputes them);
:func:`load_gradients` reads them in the cache's row order.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .cache import ActivationCache, CacheError
from .data import PreparedDataset, TokenizedSample
from .files import atomic_write_text
from .models import HookedModel
from .pooling import pack_batches, pad_batch
from .settings import CacheConfig

GRADIENT_FORMAT = 1
GRAD_FILE, GRAD_META = "gradients.npz", "gradients.json"


class GradientsMissingError(CacheError):
    """An activation cache without (current) gradients, asked for them."""


def _per_sample_loss(logits: torch.Tensor, ids: torch.Tensor, rmask: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean next-token NLL of each row over its response targets (0 for a row without any)."""
    targets, keep = ids[:, 1:], rmask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    n = keep.sum(1)
    return (nll * keep).sum(1) / n.clamp_min(1)


def batch_gradients(model: HookedModel, hook: str, ids: torch.Tensor, att: torch.Tensor,
                    rmask: torch.Tensor) -> torch.Tensor:
    """``[B, d]``: ``g_i`` of every row of one right-padded batch (CPU float32)."""
    dev = model.device
    ids, att, rmask = ids.to(dev), att.to(dev), rmask.to(dev)
    held: list[torch.Tensor] = []

    def leaf(act, hook=None):  # cut the graph below the hook: backward runs through the upper blocks only
        a = act.detach().requires_grad_(True)
        held.append(a)
        return a

    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(ids, attention_mask=att, fwd_hooks=[(hook, leaf)])
        if len(held) != 1:
            raise RuntimeError(f"hook {hook!r} fired {len(held)} times in one forward pass (expected once)")
        loss = _per_sample_loss(logits, ids, rmask).sum()
        (grad,) = torch.autograd.grad(loss, held[0])
    m = rmask.unsqueeze(-1).to(grad.dtype)
    return (-(grad * m).sum(1)).float().cpu()


def response_gradients(model: HookedModel, samples: Sequence[TokenizedSample], hook: str, *,
                       max_batch_tokens: int = CacheConfig.max_batch_tokens // 2,
                       max_batch_size: int = CacheConfig.max_batch_size, progress: bool = True) -> np.ndarray:
    """``[n, d]`` float32: ``g_i`` of every tokenized sample, in ``samples`` order (see the module doc).

    Batches are packed like the activation cache's (longest first, under a token budget; half the
    cache's by default, since the backward pass keeps the upper blocks' activations).
    """
    from tqdm.auto import tqdm

    model.validate_hook(hook)
    out = np.zeros((len(samples), model.hook_d(hook)), dtype=np.float32)
    batches = pack_batches([len(t.input_ids) for t in samples], max_batch_tokens, max_batch_size)
    bar = tqdm(total=len(samples), desc=f"gradients at {hook}", unit="sample", disable=not progress)
    for batch in batches:
        ids, att, rmask = pad_batch([samples[i] for i in batch], model.tokenizer.pad_token_id)
        out[batch] = batch_gradients(model, hook, ids, att, rmask).numpy()
        bar.update(len(batch))
    bar.close()
    return out


def _identity(cache: ActivationCache) -> dict:
    """What the gradients of a cache depend on: its identity (model, hook, rows, tokens, truncation)."""
    ident = json.dumps(cache.manifest["identity"], sort_keys=True, default=str)
    return {"format": GRADIENT_FORMAT, "cache_identity": hashlib.sha256(ident.encode()).hexdigest()[:16],
            "hook": cache.hook, "loss": "mean NLL over response targets", "pooling": "sum over response tokens",
            "sign": "negative gradient (the update direction)"}


def gradients_current(cache: ActivationCache) -> bool:
    """Whether ``cache`` has gradients made for its present identity."""
    meta = Path(cache.path) / GRAD_META
    if not (meta.is_file() and (Path(cache.path) / GRAD_FILE).is_file()):
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("identity") == _identity(cache)
    except (OSError, ValueError):
        return False


def cache_gradients(model: HookedModel, dataset: PreparedDataset, cache: ActivationCache, *,
                    progress: bool = True, max_batch_tokens: int = CacheConfig.max_batch_tokens // 2) -> Path:
    """Compute and store the gradients of ``cache``'s rows (``dataset``: the prepared rows it was made from)
    unless current ones are there; returns the gradients file."""
    path = Path(cache.path) / GRAD_FILE
    if gradients_current(cache):
        return path
    by_id = {t.id: t for t in dataset.tokenized}
    missing = [i for i in cache.ids if i not in by_id]
    if missing:
        raise GradientsMissingError(f"cache {cache.path}: {len(missing)} rows are not in the prepared dataset "
                                    f"(first {missing[0]!r}); prepare the rows the cache was made from")
    rows = [by_id[i] for i in cache.ids]
    tokens = [t.content_hash for t in rows]
    grads = response_gradients(model, rows, cache.hook, max_batch_tokens=max_batch_tokens, progress=progress)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array(cache.ids), grad=grads)
    tmp.replace(path)
    atomic_write_text(Path(cache.path) / GRAD_META, json.dumps(
        {"identity": _identity(cache), "n_samples": len(rows), "d": int(grads.shape[1]),
         "rows_fingerprint": hashlib.sha256("\n".join(tokens).encode()).hexdigest()[:16]}, indent=1) + "\n")
    return path


def load_gradients(cache: ActivationCache) -> np.ndarray:
    """``[n, d]``: the gradients of ``cache``, in its row order: held in memory (``cache.arrays["grad_sum"]``,
    set by :func:`attach_gradients`) or stored with it (refused if missing or stale)."""
    if "grad_sum" in cache.arrays:
        return cache.arrays["grad_sum"]
    if not gradients_current(cache):
        raise GradientsMissingError(
            f"cache {cache.path} has no gradients for its present rows: the pipeline computes them for the "
            "'gradient' strategy (or call geomfilter.gradients.cache_gradients(model, dataset, cache))")
    with np.load(Path(cache.path) / GRAD_FILE) as z:
        ids, grad = [str(i) for i in z["ids"]], z["grad"]
    if ids != list(cache.ids):
        raise GradientsMissingError(f"cache {cache.path}: the gradients' rows are not the cache's; recompute them")
    return grad


def attach_gradients(cache: ActivationCache) -> ActivationCache:
    """Read the stored gradients into ``cache.arrays["grad_sum"]`` (once; later reads need no disk); returns it."""
    cache.arrays["grad_sum"] = load_gradients(cache)
    return cache


__all__ = ["GradientsMissingError", "attach_gradients", "batch_gradients", "cache_gradients", "gradients_current", "load_gradients",
           "response_gradients"]
