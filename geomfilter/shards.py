"""The shard files of the activation cache: the shard plan, writing, reading.

Samples are cached shard by shard: ``shard_size`` samples in dataset order
(:func:`shard_samples`), the unit of resume. Shard ``i`` is the file
``shard-0000i.safetensors``: the pooled arrays of its samples (one row each) and
one metadata entry holding the format, the shard's number, its *plan*
(:func:`shard_plan`: a hash of its rows' ids and content hashes), the ids, the
per-row :func:`geomfilter.samples.sample_hash` and the rows' extra fields.
Written atomically (temp file + rename, the permissions the umask gives a new
file) and byte-identical for the same rows and options, so a resumed run skips
the shards whose plan is the expected one (:func:`shard_done`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .data import PreparedDataset
from .files import publish_file

CACHE_FORMAT = "geomfilter-cache/1"

#: What reading a damaged shard file raises (truncated, overwritten, not a shard file).
SHARD_READ_ERRORS = (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError)


def shard_path(out_dir: str | Path, i: int) -> Path:
    """The file of shard ``i`` in the cache folder ``out_dir``."""
    return Path(out_dir) / f"shard-{i:05d}.safetensors"


def shard_samples(dataset: PreparedDataset, shard_size: int, si: int) -> list:
    """The tokenized samples of shard ``si`` (dataset order): the shard plan every backend uses."""
    return dataset.tokenized[si * shard_size:(si + 1) * shard_size]


def shard_plan(part: list) -> str:
    """The plan of a shard: a hash of its samples' ids and content hashes, in order (what resume compares)."""
    h = hashlib.sha256()
    for t in part:
        h.update(f"{t.id}\t{t.content_hash}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()[:16]


def _shard_meta(f) -> dict:
    return json.loads((f.metadata() or {}).get("geomfilter", "{}"))


def _stored_plan(path: Path) -> str | None:
    """The plan recorded in a shard file; None when it records none or cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            plan = _shard_meta(f).get("plan")
            return plan if isinstance(plan, str) else None
    except (OSError, SafetensorError, ValueError, AttributeError, TypeError):  # a corrupt shard is recomputed
        return None


def shard_done(out_dir: str | Path, si: int, part: list) -> bool:
    """True when shard ``si`` of ``out_dir`` is a readable shard of exactly these tokenized samples ``part``
    (same ids and content hashes, in order: :func:`shard_plan`). An unreadable shard is not done."""
    path = shard_path(out_dir, si)
    return path.is_file() and _stored_plan(path) == shard_plan(part)


def read_shard(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata (``ids``, ``meta``, ``rows``, ``plan``) and arrays of one shard file.

    Raises one of :data:`SHARD_READ_ERRORS` when the file cannot be read or its
    parts do not line up (the caller names the file).
    """
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
    return {"ids": ids, "meta": meta, "rows": rows, "plan": md.get("plan")}, arrays


def write_shard(out_dir: str | Path, si: int, part: list, metas: dict[str, dict],
                tensors: dict[str, torch.Tensor]) -> Path:
    """Write shard ``si`` atomically: its tokenized samples ``part`` (ids, content hashes, plan), their extra
    fields (``metas``: by sample id, ``{}`` for a sample without) and the pooled ``tensors``; the file gets
    normal permissions (umask), not 0600."""
    from safetensors.torch import save_file

    path = shard_path(out_dir, si)
    meta = {
        "format": CACHE_FORMAT,
        "shard": str(si),
        "plan": shard_plan(part),
        "ids": json.dumps([t.id for t in part], ensure_ascii=False),
        "rows": json.dumps([t.content_hash for t in part]),
        "meta": json.dumps([metas.get(t.id, {}) for t in part], ensure_ascii=False, sort_keys=True, default=str),
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


def remove_shards_from(out_dir: str | Path, n_shards: int) -> None:
    """Delete the shard files numbered ``n_shards`` and up (those past the end of a dataset that shrank)."""
    for extra in sorted(Path(out_dir).glob("shard-*.safetensors")):
        stem = extra.name[len("shard-"):-len(".safetensors")]
        if stem.isdigit() and int(stem) >= n_shards:
            extra.unlink(missing_ok=True)
