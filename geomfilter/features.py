"""SAE features of datasets: harmful features, inducing features, per-sample target features.

* :func:`contrast_features` - the latents that separate two cached sets (harmful vs benign
  references, or inducing vs non-inducing fine-tuning data): top-N by the difference of mean
  pooled activation (``contrast``) or by AUROC (``auroc``), after a minimum firing frequency;
* :func:`harmful_features` - the same on the reference sets with a *selection* split and a
  disjoint *measurement* split (by ``pair_id``), so the reported separation is not leaked;
* :func:`explicit_features` - a user's own ids (e.g. picked on Neuronpedia);
* :func:`diff_features` - model diffing: the latents a fine-tune raises most on the same text (the
  same rows cached with the base model and with the fine-tuned one, one SAE), the construction by which
  Wang et al. (2025, "Persona features control emergent misalignment") found misaligned-persona latents;
* :func:`sample_targets` - per sample, the latents fine-tuning on it would amplify: its top-k by
  pooled activation, or (``relative_to=`` a cache of the model's own answers to the same prompts)
  the latents the sample activates *more than the model already does*;
* :func:`top_samples` / :func:`token_activations` - the sanity check behind
  ``geomfilter features top``: where a latent fires, on which tokens.

AUROCs and their CIs come from :mod:`geomfilter.stats`. This module does not import
:mod:`geomfilter.geometry` (geometry imports :class:`SampleTargets` from here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import ActivationCache
from .data import PreparedDataset
from .errors import GeomfilterError
from .models import HookedModel
from .stats import auroc_columns, bootstrap_auroc


class FeatureError(GeomfilterError, ValueError):
    """A feature request that cannot be met (no SAE activations, an id out of range, a bad option)."""


@dataclass
class TokenActivations:
    """One latent's activation on every response token of one sample (see :func:`token_activations`)."""

    id: str
    tokens: list[str]  # response tokens, decoded one by one
    values: list[float]  # the latent's activation on each

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` tokens where the latent is highest, as ``(token, value)``, active ones only."""
        order = np.argsort(self.values)[::-1][:n]
        return [(self.tokens[i], self.values[i]) for i in order if self.values[i] > 0]

    def render(self, threshold: float = 0.0) -> str:
        """The response with every active token marked ``[token|value]``."""
        return "".join(f"[{t}|{v:.2f}]" if v > threshold else t for t, v in zip(self.tokens, self.values))


def top_samples(cache: ActivationCache, feature: int, n: int = 10, pooling: str = "max") -> list[tuple[int, float]]:
    """``(row, value)`` of the ``n`` samples where ``feature`` has the largest pooled activation (> 0)."""
    if cache.d_sae is None:
        raise FeatureError(f"cache {cache.path} has no SAE activations")
    if not 0 <= feature < cache.d_sae:
        raise FeatureError(f"feature {feature} out of range: the SAE has {cache.d_sae} latents (0..{cache.d_sae - 1})")
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


# --------------------------------------------------------------------------- feature sets

@dataclass
class FeatureSet:
    """A chosen set of latents with how it was chosen and how well it separates held-out data.

    ``ids`` are ordered best first. ``stats`` has one dict per id (means, firing
    frequencies, AUROC on the selection split); ``heldout`` the separation of
    the set's summed activation on the measurement split (empty without one).
    """

    ids: list[int]
    method: str
    d_sae: int
    stats: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict:
        """The set as JSON-able data: ids, method, ``d_sae``, selection, held-out separation, stats."""
        return {"ids": self.ids, "method": self.method, "d_sae": self.d_sae, "selection": self.selection,
                "heldout": self.heldout, "stats": self.stats}

    def save(self, path: str | Path) -> None:
        """Write the set as JSON (the format of ``geomfilter features harmful --out``)."""
        Path(path).write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a set written by :meth:`save` (or by ``geomfilter features harmful --out``)."""
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(ids=[int(i) for i in d["ids"]], method=d["method"], d_sae=int(d["d_sae"]),
                   stats=d.get("stats", []), selection=d.get("selection", {}), heldout=d.get("heldout", {}))


def _require_sae(cache: ActivationCache, what: str) -> None:
    if cache.d_sae is None:
        raise FeatureError(f"{what} cache {cache.path} has no SAE activations (cache it with an SAE)")


def contrast_features(pos: ActivationCache, neg: ActivationCache, n: int = 100, method: str = "contrast",
                      min_freq: float = 0.05, pooling: str = "mean") -> FeatureSet:
    """Top-``n`` latents that fire more on ``pos`` than on ``neg``.

    ``contrast`` ranks by mean pooled activation on ``pos`` minus on ``neg``;
    ``auroc`` by how well the latent's pooled activation alone separates them.
    Only latents firing (pooled activation > 0) on at least ``min_freq`` of
    ``pos`` samples are eligible, so one-off latents cannot top the list.
    """
    _require_sae(pos, "positive")
    _require_sae(neg, "negative")
    if pos.d_sae != neg.d_sae or pos.hook != neg.hook:
        raise FeatureError(f"caches disagree: {pos.path} (d_sae {pos.d_sae}, {pos.hook}) vs "
                         f"{neg.path} (d_sae {neg.d_sae}, {neg.hook}); cache both with the same model, SAE and hook")
    if method not in ("contrast", "auroc"):
        raise FeatureError(f"method must be 'contrast' or 'auroc', got {method!r}")
    if n < 1:
        raise FeatureError(f"n must be >= 1, got {n}")
    a, b = pos.dense(pooling), neg.dense(pooling)
    freq_pos, freq_neg = (a > 0).mean(axis=0), (b > 0).mean(axis=0)
    mean_pos, mean_neg = a.mean(axis=0), b.mean(axis=0)
    au = auroc_columns(a, b)
    eligible = freq_pos >= min_freq
    if not eligible.any():
        raise FeatureError(f"no latent fires on >= {min_freq:.0%} of the {len(pos)} positive samples; lower min_freq")
    key = (mean_pos - mean_neg) if method == "contrast" else au
    key = np.where(eligible, key, -np.inf)
    order = np.lexsort((np.arange(len(key)), -key))[: min(n, int(eligible.sum()))]
    order = order[key[order] > (0 if method == "contrast" else 0.5)]
    if len(order) == 0:
        raise FeatureError("no latent fires more on the positive than on the negative set")
    stats = [{"id": int(i), "score": float(key[i]), "mean_pos": float(mean_pos[i]), "mean_neg": float(mean_neg[i]),
              "freq_pos": float(freq_pos[i]), "freq_neg": float(freq_neg[i]), "auroc": float(au[i])} for i in order]
    return FeatureSet(ids=[int(i) for i in order], method=method, d_sae=int(pos.d_sae), stats=stats,
                      selection={"n_requested": n, "min_freq": min_freq, "pooling": pooling, "n_pos": len(pos),
                                 "n_neg": len(neg), "pos": str(pos.path), "neg": str(neg.path), "hook": pos.hook})


def diff_features(base: ActivationCache, tuned: ActivationCache, n: int = 100, rank: str = "mean",
                  pooling: str = "mean") -> FeatureSet:
    """Model diffing: the top-``n`` latents whose pooled activation a fine-tune raises most on the same rows.

    ``base`` and ``tuned`` cache the same rows (same ids, same order) with the base and the fine-tuned model
    through the same SAE and hook. Per row and latent the difference tuned - base; ``rank="mean"`` orders
    latents by its mean over rows, ``"t"`` by its paired t statistic (mean / standard error: raised on most
    rows, not a few). Only latents with a positive mean difference are returned. No labels are read.
    """
    for name, c in (("base", base), ("tuned", tuned)):
        _require_sae(c, name)
    if base.d_sae != tuned.d_sae or base.hook != tuned.hook:
        raise FeatureError(f"caches disagree: {base.path} (d_sae {base.d_sae}, {base.hook}) vs {tuned.path} "
                           f"(d_sae {tuned.d_sae}, {tuned.hook}); cache both with the same SAE and hook")
    if list(base.ids) != list(tuned.ids):
        first = next((i for i, (a, b) in enumerate(zip(base.ids, tuned.ids)) if a != b), min(len(base), len(tuned)))
        raise FeatureError(f"{base.path} and {tuned.path} hold different rows (first difference at row {first}): "
                           "model diffing needs the same data cached with both models")
    if rank not in ("mean", "t"):
        raise FeatureError(f"rank must be 'mean' or 't', got {rank!r}")
    if n < 1:
        raise FeatureError(f"n must be >= 1, got {n}")
    d = tuned.dense(pooling) - base.dense(pooling)
    mean = d.mean(axis=0)
    se = d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.ones_like(mean)
    t = np.divide(mean, se, out=np.zeros_like(mean), where=se > 0)
    key = mean if rank == "mean" else t
    order = np.lexsort((np.arange(len(key)), -key))
    order = order[mean[order] > 0][:n]
    if len(order) == 0:
        raise FeatureError(f"the fine-tune raises no latent on {tuned.path}: nothing to select")
    stats = [{"id": int(i), "score": float(key[i]), "mean_diff": float(mean[i]), "t": float(t[i]),
              "raised_share": float((d[:, i] > 0).mean())} for i in order]
    return FeatureSet(ids=[int(i) for i in order], method=f"diff-{rank}", d_sae=int(base.d_sae), stats=stats,
                      selection={"n_requested": n, "pooling": pooling, "n_rows": len(d), "base": str(base.path),
                                 "tuned": str(tuned.path), "hook": base.hook})


def explicit_features(ids: list[int], d_sae: int, note: str = "user-given") -> FeatureSet:
    """A feature set from explicit latent ids (checked against ``d_sae``)."""
    bad = [i for i in ids if not 0 <= int(i) < d_sae]
    if bad:
        raise FeatureError(f"latent ids out of range 0..{d_sae - 1}: {bad[:5]}")
    if len(set(ids)) != len(ids):
        raise FeatureError("repeated latent ids")
    return FeatureSet(ids=[int(i) for i in ids], method="explicit", d_sae=d_sae, selection={"note": note})


def split_by_pair(cache: ActivationCache, frac: float = 0.5, seed: int = 0, key: str = "pair_id") -> np.ndarray:
    """Boolean mask: ``True`` rows form the selection split, ``False`` the measurement split.

    Rows sharing ``meta[key]`` (the harmful and benign answer to one prompt) land
    on the same side, so no prompt is seen by both. Rows without the key are
    split by their own id.
    """
    if not 0 < frac < 1:
        raise FeatureError(f"split fraction must be in (0, 1), got {frac}")
    groups = [m.get(key, i) for m, i in zip(cache.meta, cache.ids)]
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(len(uniq))[: int(round(frac * len(uniq)))].tolist())
    picked = {g for j, g in enumerate(uniq) if j in chosen}
    return np.array([g in picked for g in groups], dtype=bool)


def harmful_features(harmful: ActivationCache, benign: ActivationCache, n: int = 100, method: str = "contrast",
                     min_freq: float = 0.05, pooling: str = "mean", select_frac: float = 0.5, seed: int = 0,
                     n_boot: int = 1000) -> FeatureSet:
    """Harmful-behaviour latents from the reference sets, selected and measured on disjoint splits.

    Pairs (by ``pair_id``) are split ``select_frac`` / rest with ``seed``. The
    latents are chosen on the selection split; ``heldout`` reports, on the
    measurement split, the AUROC (with bootstrap CI) of the set's summed pooled
    activation for harmful vs benign. ``select_frac=1`` uses everything and
    reports no held-out number.
    """
    if select_frac >= 1:
        fs = contrast_features(harmful, benign, n=n, method=method, min_freq=min_freq, pooling=pooling)
        fs.selection["split"] = "none (all reference rows select)"
        return fs
    sel_h, sel_b = split_by_pair(harmful, select_frac, seed), split_by_pair(benign, select_frac, seed)
    fs = contrast_features(harmful.select(sel_h), benign.select(sel_b), n=n, method=method, min_freq=min_freq,
                           pooling=pooling)
    fs.selection["split"] = {"select_frac": select_frac, "seed": seed, "by": "pair_id",
                             "n_select": [int(sel_h.sum()), int(sel_b.sum())],
                             "n_measure": [int((~sel_h).sum()), int((~sel_b).sum())]}
    if (~sel_h).any() and (~sel_b).any():
        ids = np.asarray(fs.ids)
        s_h = harmful.select(~sel_h).dense(pooling)[:, ids].sum(axis=1)
        s_b = benign.select(~sel_b).dense(pooling)[:, ids].sum(axis=1)
        fs.heldout = {"what": "summed pooled activation of the set, harmful vs benign, measurement split",
                      **bootstrap_auroc(s_h, s_b, n_boot=n_boot, seed=seed)}
    return fs


# --------------------------------------------------------------------------- per-sample targets

@dataclass
class SampleTargets:
    """Each sample's target latents: ``idx [n, k]`` (-1 = empty slot) and their weights ``[n, k]`` (>= 0)."""

    idx: np.ndarray
    weight: np.ndarray
    mode: str = "activation"

    def __len__(self) -> int:
        return len(self.idx)


def _top_k_rows(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, dense.shape[1])
    part = np.argpartition(-dense, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(dense, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    idx = np.where(vals > 0, idx, -1)
    return idx.astype(np.int64), np.maximum(vals, 0).astype(np.float32)


def sample_targets(cache: ActivationCache, k: int = 32, pooling: str = "mean",
                   relative_to: ActivationCache | None = None, chunk: int = 4096) -> SampleTargets:
    """Per-sample target latents: the top-``k`` by pooled activation.

    With ``relative_to`` (a cache of the model's own answers to the same prompts,
    same ids, same SAE), the weights are the *increase* of each latent's pooled
    activation over the model's own answer: what fine-tuning on the sample
    would have to amplify (cf. the persona-vector projection difference).
    Latents the sample does not raise get no weight.
    """
    _require_sae(cache, "data")
    if k < 1:
        raise FeatureError(f"k must be >= 1, got {k}")
    if k > cache.arrays[f"{pooling}_idx"].shape[1]:
        raise FeatureError(f"k={k} exceeds the {cache.arrays[f'{pooling}_idx'].shape[1]} latents stored per sample "
                         f"in {cache.path} (re-cache with a larger --top-k)")
    if relative_to is None:  # the stored top-k is already sorted by value: no dense matrix needed
        idx = cache.arrays[f"{pooling}_idx"][:, :k].astype(np.int64)
        w = np.maximum(cache.arrays[f"{pooling}_val"][:, :k], 0).astype(np.float32)
        return SampleTargets(idx=np.where(w > 0, idx, -1), weight=w, mode="activation")
    _require_sae(relative_to, "own-answer")
    if relative_to.d_sae != cache.d_sae or relative_to.hook != cache.hook:
        raise FeatureError(f"own-answer cache {relative_to.path} was made with another SAE or hook than {cache.path}")
    pos = {i: r for r, i in enumerate(relative_to.ids)}
    missing = [i for i in cache.ids if i not in pos]
    if missing:
        raise FeatureError(f"own-answer cache {relative_to.path} lacks {len(missing)} of the data's ids "
                         f"(first: {missing[0]!r}); generate the model's answers for every prompt")
    own_rows = np.array([pos[i] for i in cache.ids])
    idx = np.full((len(cache), k), -1, dtype=np.int64)
    w = np.zeros((len(cache), k), dtype=np.float32)
    for start in range(0, len(cache), chunk):  # dense differences, a chunk of rows at a time
        rows = np.arange(start, min(start + chunk, len(cache)))
        diff = cache.dense(pooling, rows) - relative_to.dense(pooling, own_rows[rows])
        idx[rows], w[rows] = _top_k_rows(diff, k)
    return SampleTargets(idx=idx, weight=w, mode="relative")

