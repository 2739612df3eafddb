"""Which gates moved: learned gates measured on real data, and SAE gates related to harmful features.

* :func:`gate_movement` -- runs a model with its gates recording (alpha = 1) and
  returns, per head/unit (attention gates) or latent (SAE gates), how far the
  gates moved from open;
* :func:`sae_gate_geometry` -- the decoder cosine of the most-moved SAE latents
  to the harmful features, against the other firing latents';
* :func:`analyze_gates` (``geomfilter gates analyze``) -- both for a gates folder
  on a data file's response tokens, with ``gate_analysis.json`` and plots.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import plots
from .batches import collate
from .data import prepare_dataset
from .gating import AttentionGates, GateRecorder, GatingError, SAEGates, load_gates, torch_module
from .geometry import feature_proximity, nearest_harmful, unit_directions
from .models import load_causal_lm
from .stats import auroc


# ---------------------------------------------------------------------------------------------
# movement
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def gate_movement(gates: AttentionGates | SAEGates, model: Any, batches: Iterable[dict]) -> dict:
    """How far the learned gates move from open on real inputs (at alpha = 1).

    ``batches`` yields ``{"input_ids", "attention_mask"}`` (and optionally
    ``"count_mask"``: which tokens to average over, e.g. response tokens).
    Returns, per gated unit, the mean ``|g - 1|`` and the mean signed ``g - 1``;
    attention gates also per head (mean over the head's dimensions); SAE gates
    also each latent's firing frequency and its mean change of contribution to
    the residual stream ``|g - 1| * a * ||W_dec||``.
    """
    hf = torch_module(model)
    with gates.recording(hf) as rec:
        device = next(hf.parameters()).device
        for batch in batches:
            rec.mask = batch.get("count_mask", batch["attention_mask"]).to(device)
            hf(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    out: dict[str, Any] = {"family": gates.family}
    out.update(_attention_movement(gates, rec) if isinstance(gates, AttentionGates) else _sae_movement(rec))
    return out


def _attention_movement(gates: AttentionGates, rec: GateRecorder) -> dict:
    """Mean movement per unit (``[layer, d_out]``) and per head, and the ten most-moved heads."""
    abs_rows, signed_rows = [], []
    for layer in gates.layers:
        s = rec.sums.get(f"layer{layer}")
        if s is None:
            raise GatingError(f"layer {layer}: the gates never ran (empty batches?)")
        abs_rows.append((s["abs"] / s["_n"]).numpy())
        signed_rows.append((s["signed"] / s["_n"]).numpy())
    unit_abs, unit_signed = np.stack(abs_rows), np.stack(signed_rows)
    per_head = unit_abs.reshape(len(gates.layers), gates.n_heads, gates.head_dim).mean(-1)
    order = np.argsort(-per_head, axis=None)[:10]
    return {
        "layers": gates.layers, "n_heads": gates.n_heads, "head_dim": gates.head_dim,
        "n_tokens": float(rec.sums[f"layer{gates.layers[0]}"]["_n"]),
        "unit_abs": unit_abs, "unit_signed": unit_signed, "head_abs": per_head,
        "top_heads": [{"layer": gates.layers[i // gates.n_heads], "head": int(i % gates.n_heads),
                       "mean_abs": float(per_head.reshape(-1)[i])} for i in order],
    }


def _sae_movement(rec: GateRecorder) -> dict:
    """Per latent: mean ``|g - 1|``, signed ``g - 1``, change of contribution, firing frequency."""
    s = rec.sums.get("sae")
    if s is None:
        raise GatingError("the SAE gates never ran (empty batches?)")
    n = s["_n"]
    freq = (s["active"] / n).numpy()
    return {
        "n_tokens": float(n), "latent_abs": (s["abs"] / n).numpy(), "latent_signed": (s["signed"] / n).numpy(),
        "latent_effect": (s["effect"] / n).numpy(), "latent_freq": freq,
    }


def sae_gate_geometry(movement: dict, directions: np.ndarray, harmful: Sequence[int], top: int = 50,
                      min_freq: float = 1e-3) -> dict:
    """Decoder cosine of the most-moved SAE latents to the harmful features.

    Latents are ranked by ``latent_effect`` among those firing on at least
    ``min_freq`` of the counted tokens (a gate on a latent that never fires
    changes nothing). Compares their max cosine to the harmful set (self-matches
    excluded) with the other firing latents': means and the AUROC that a
    top-moved latent sits closer to harmful features than a non-moved one.
    """
    if movement.get("family") != "sae":
        raise GatingError("sae_gate_geometry needs the movement of SAE gates")
    prox = feature_proximity(directions, harmful, agg="max")
    eligible = np.flatnonzero(movement["latent_freq"] >= min_freq)
    if len(eligible) <= top:
        raise GatingError(f"only {len(eligible)} latents fire on >= {min_freq:g} of tokens; need more than top={top}")
    ranked = eligible[np.argsort(-movement["latent_effect"][eligible], kind="stable")]
    moved, rest = ranked[:top], ranked[top:]
    near = nearest_harmful(directions, harmful, moved.tolist(), n=1)
    harmful_set = {int(h) for h in harmful}
    rows = []
    for i, lat in enumerate(moved):
        nh = near[i][0] if near[i] else (None, float("nan"))
        rows.append({"latent": int(lat), "effect": float(movement["latent_effect"][lat]),
                     "signed": float(movement["latent_signed"][lat]), "freq": float(movement["latent_freq"][lat]),
                     "is_harmful": int(lat) in harmful_set, "max_cos_harmful": float(prox[lat]),
                     "nearest_harmful": None if nh[0] is None else int(nh[0]), "cos": float(nh[1])})
    return {
        "top": top, "min_freq": min_freq, "n_eligible": int(len(eligible)),
        "moved_mean_cos": float(prox[moved].mean()), "rest_mean_cos": float(prox[rest].mean()),
        "auroc_moved_vs_rest": float(auroc(prox[moved], prox[rest])),
        "n_moved_harmful": int(sum(r["is_harmful"] for r in rows)),
        "expected_harmful_by_chance": float(top * len(harmful_set & set(eligible.tolist())) / len(eligible)),
        "latents": rows,
    }



# ---------------------------------------------------------------------------------------------
# a gates folder on a data file
# ---------------------------------------------------------------------------------------------
def analyze_gates(gates_dir: str | Path, data: str | Path, *, model: str | None = None,
                  harmful: Sequence[int] | None = None, max_samples: int = 64, batch_size: int = 8, top: int = 50,
                  out: str | Path | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Which heads/units (attention gates) or latents (SAE gates) moved most, on DATA's response tokens.

    Loads the gates' base model (or ``model``), runs the first ``max_samples``
    rows of ``data`` with the learned gates (alpha = 1) and averages over their
    response tokens. For SAE gates with a ``harmful`` feature set, adds
    :func:`sae_gate_geometry`. With ``out``: writes ``gate_analysis.json`` and
    the plot(s) there. Returns the JSON-able summary.
    """
    gates = load_gates(gates_dir)
    spec = model or gates.meta.get("base_model") or gates.meta.get("model")
    if spec is None:
        raise GatingError(f"{gates_dir}: the gates record no base model; pass model=")
    hf, tok, _ = load_causal_lm(spec, device=device, progress=progress)
    gates.to(next(hf.parameters()).device)
    ds = prepare_dataset(data, tok, max_tokens=512)
    rows = ds.tokenized[:max_samples]
    if not rows:
        raise GatingError(f"{data}: no samples to measure the gates on")
    mv = gate_movement(gates, hf, _response_batches(rows, tok.pad_token_id, batch_size, progress))
    summary: dict[str, Any] = {"gates": str(gates_dir), "model": spec, "data": str(data), "n_samples": len(rows),
                               "n_tokens": mv["n_tokens"], "family": mv["family"]}
    out = Path(out) if out is not None else None
    if isinstance(gates, AttentionGates):
        summary.update(_attention_summary(gates, mv, out))
    else:
        summary.update(_sae_summary(gates, mv, harmful, top, out))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gate_analysis.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _response_batches(rows: list, pad_id: int, batch_size: int, progress: bool) -> Iterator[dict]:
    """Batches of ``rows`` for :func:`gate_movement`, counting their response tokens only."""
    for i in tqdm(range(0, len(rows), batch_size), desc="gate movement", disable=not progress):
        b = collate(rows[i:i + batch_size], pad_id)
        yield {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "count_mask": b["labels"] != -100}


def _attention_summary(gates: AttentionGates, mv: dict, out: Path | None) -> dict:
    """The top heads and each layer's and head's mean movement (and the heads plot, with ``out``)."""
    summary: dict[str, Any] = {
        "top_heads": mv["top_heads"],
        "layer_mean_abs": {int(layer): float(v) for layer, v in zip(gates.layers, mv["head_abs"].mean(1))},
        "head_abs": mv["head_abs"].round(6).tolist(),
    }
    if out is not None:
        summary["plots"] = [str(p) for p in plots.gate_heads(mv["head_abs"], gates.layers, out / "gate_heads")]
    return summary


def _sae_summary(gates: SAEGates, mv: dict, harmful: Sequence[int] | None, top: int, out: Path | None) -> dict:
    """The ``top`` most-moved latents; with ``harmful``, their geometry (and its plot, with ``out``)."""
    order = np.argsort(-mv["latent_effect"], kind="stable")[:top]
    summary: dict[str, Any] = {"top_latents": [{"latent": int(i), "effect": float(mv["latent_effect"][i]),
                                                "signed": float(mv["latent_signed"][i]),
                                                "freq": float(mv["latent_freq"][i])} for i in order]}
    if harmful is not None:
        d = unit_directions(gates.sae)
        geo = sae_gate_geometry(mv, d, harmful, top=top)
        summary["geometry"] = geo
        if out is not None:
            prox = feature_proximity(d, harmful, agg="max")
            summary["plots"] = [str(p) for p in plots.gate_latents(
                mv["latent_effect"], prox, [r["latent"] for r in geo["latents"]], out / "gate_latents",
                harmful=list(harmful))]
    return summary
