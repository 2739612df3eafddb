"""Pooled activations: what the cache stores per sample, computed batch by batch.

For every sample, pooled over its *response* tokens only (:func:`pool_batch`):

* ``mean_idx`` / ``mean_val``: top-k SAE latents by mean activation (sparse);
* ``max_idx`` / ``max_val``: top-k SAE latents by max activation;
* ``n_active``: how many SAE latents fired on at least one response token;
* ``resid_mean``: the mean activation vector at the hook (dense, ``d_model``);
* ``n_tokens``: the number of response tokens pooled.

Inside a shard, samples are sorted by length and packed into batches under a
token budget (:func:`pack_batches`: minimal padding, right-padded with an
attention mask, :func:`pad_batch`); the forward pass stops after the hooked
layer; SAE encoding happens per batch on the response tokens only.
:func:`compute_shard` is the one routine behind every cache backend, so their
shards are byte-identical. :func:`resid_means_by_layer` computes residual means
at several layers in one pass (no SAE, nothing written).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .data import PreparedDataset
from .models import HookedModel
from .settings import CacheConfig

SAE_ARRAYS = ("mean_idx", "mean_val", "max_idx", "max_val", "n_active")
RESID_ARRAYS = ("resid_mean", "n_tokens")


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
                         max_batch_tokens: int = CacheConfig.max_batch_tokens,
                         max_batch_size: int = CacheConfig.max_batch_size,
                         progress: bool = True) -> dict[int, np.ndarray]:
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
    batches = pack_batches([len(t.input_ids) for t in toks], max_batch_tokens, max_batch_size)
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
