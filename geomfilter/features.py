"""SAE features of a dataset: which samples and tokens make a latent fire.

:func:`top_samples` ranks a cache's samples by one latent's pooled activation;
:func:`token_activations` re-runs the model on a few samples to show the latent's activation on
every response token. Together they are the sanity check behind ``geomfilter features top``: a
feature that reads as "harmful content" fires on misaligned answers, on the words that make them so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cache import ActivationCache
from .data import PreparedDataset
from .models import HookedModel


@dataclass
class TokenActivations:
    id: str
    tokens: list[str]  # response tokens, decoded one by one
    values: list[float]  # the latent's activation on each

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(self.values)[::-1][:n]
        return [(self.tokens[i], self.values[i]) for i in order if self.values[i] > 0]

    def render(self, threshold: float = 0.0) -> str:
        """The response with every active token marked ``[token|value]``."""
        return "".join(f"[{t}|{v:.2f}]" if v > threshold else t for t, v in zip(self.tokens, self.values))


def top_samples(cache: ActivationCache, feature: int, n: int = 10, pooling: str = "max") -> list[tuple[int, float]]:
    """``(row, value)`` of the ``n`` samples where ``feature`` has the largest pooled activation (> 0)."""
    if cache.d_sae is None:
        raise ValueError(f"cache {cache.path} has no SAE activations")
    if not 0 <= feature < cache.d_sae:
        raise ValueError(f"feature {feature} out of range: the SAE has {cache.d_sae} latents (0..{cache.d_sae - 1})")
    idx, val = cache.arrays[f"{pooling}_idx"], cache.arrays[f"{pooling}_val"]
    hit = idx == feature
    score = np.where(hit, val, 0.0).max(axis=1)
    order = np.argsort(-score, kind="stable")[:n]
    return [(int(i), float(score[i])) for i in order if score[i] > 0]


def token_activations(model: HookedModel, sae, dataset: PreparedDataset, rows: list[int], feature: int,
                      hook: str) -> list[TokenActivations]:
    """Per-token activation of ``feature`` over the response tokens of ``dataset.tokenized[rows]``."""
    out = []
    for r in rows:
        t = dataset.tokenized[r]
        ids = torch.tensor([t.input_ids], device=model.device)
        with torch.no_grad():
            acts = sae.encode(model.activations(ids, hook)[0].to(sae.W_enc.dtype))[:, feature].float().cpu()
        pos = [i for i, m in enumerate(t.response_mask) if m]
        out.append(TokenActivations(
            id=t.id,
            tokens=[model.tokenizer.decode([t.input_ids[i]]) for i in pos],
            values=[float(acts[i]) for i in pos],
        ))
    return out
