"""The identity of an activation cache: its manifest, and how two manifests differ.

A cache folder's ``manifest.json`` records what the activations are of: the
model (spec, kind, sizes, a weights fingerprint), the hook, the SAE, the
dataset (content and token fingerprints, size, tokenization settings), the
tokenizer, the pooling and the shard size -- its ``identity``, which must match
for a run to resume -- plus the source, the library versions (informative) and
the plan of every shard (:func:`geomfilter.shards.shard_plan`). :func:`diff`
lists the fields in which two identities differ; :data:`ROW_FIELDS` are those
that change when only the rows of the source file do. :func:`recache_command`
turns a manifest back into the ``geomfilter cache`` command that updates it.
"""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PreparedDataset
from .models import HookedModel
from .saes import describe, weights_fingerprint
from .settings import __version__
from .shards import CACHE_FORMAT, shard_plan, shard_samples

#: The identity fields that change when the rows of the source file change (and nothing else does).
ROW_FIELDS = {"dataset.fingerprint", "dataset.tokens_fingerprint", "dataset.n_samples", "n_shards"}


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

    ``shards`` is the plan of every shard (:func:`~geomfilter.shards.shard_plan`): what
    :func:`geomfilter.cache.load_cache` checks each shard file against (it follows from the identity and the rows).
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


def diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, cache's value, this run's value)`` of every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [(prefix, a, b)]


def diff_text(diffs: list[tuple[str, Any, Any]]) -> list[str]:
    """One line per difference of :func:`diff`: the key, the cache's value and this run's."""
    return [f"{k}: cache has {a!r}, this run has {b!r}" for k, a, b in diffs]


def same_file(a: str | None, b: str | None) -> bool:
    """Both name the same existing file or folder (a ``<Dataset>`` object is never the same as another)."""
    if not a or not b:
        return False
    pa, pb = Path(a), Path(b)
    try:
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def recache_command(manifest: dict, path: str | Path, *, skip_invalid: bool) -> str:
    """The ``geomfilter cache`` command line that updates the cache in ``path`` (made as ``manifest`` says) from
    its source with the options it was made with (the SAE is not recorded by spec: pass the same ``--sae``).
    ``skip_invalid``: the cache was made with rows rejected (``--skip-invalid``)."""
    ident = manifest["identity"]
    ds = ident.get("dataset", {})
    parts = ["geomfilter", "cache", str(manifest.get("source")), "--out", str(path),
             "--model", str(ident.get("model", {}).get("spec")), "--hook", str(ident.get("hook")),
             "--top-k", str(ident.get("pooling", {}).get("top_k")), "--shard-size", str(ident.get("shard_size"))]
    if ds.get("max_tokens"):
        parts += ["--max-tokens", str(ds["max_tokens"])]
    for opt in ("truncation", "response"):
        if ds.get(opt):
            parts += [f"--{opt}", str(ds[opt])]
    if ident.get("sae") is None:
        parts += ["--sae", "none"]
    if skip_invalid:
        parts.append("--skip-invalid")
    return " ".join(shlex.quote(p) for p in parts)
