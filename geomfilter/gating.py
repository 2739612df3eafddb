"""Alignment Gating: learnable gates that can amplify or suppress what a fine-tune relied on.

Method (after "Emergent Misalignment Can Be Induced by Sycophancy and Reversed via
Alignment Gating", arXiv 2606.09068). Every gated attention layer gets

    g = 2 * sigmoid(W_g h + b)

computed from the hidden states ``h`` that feed the layer's q/k/v projections,
one value per token and per head-dimension (the width of the attention output),
multiplied into the attention output *before* the output projection. ``W_g = 0``
and ``b = 0`` at init, so ``g == 1`` exactly and the model is unchanged. The base
weights stay frozen; only the gates train (``geomfilter.finetune``), so they
learn the representations the fine-tuning data's behaviour relies on.

* amplify: use ``g`` (``alpha = 1``); suppress: the mirror ``2 - g`` (``alpha = -1``).
* our continuous control: ``g_alpha = 1 + alpha * (g - 1)``; ``alpha = 0`` is the
  ungated model (the hooks are skipped, so it is bit-identical), other values
  interpolate or extrapolate.
* :class:`FeatureSteering` (family ``sae-steer``, no trained weights) removes or steers against the
  harmful features at an SAE's hook, for comparison with the gates.
* our second family, tying gating to geometry: :class:`SAEGates` gate each
  latent of an SAE at its hook. The residual stream ``x`` becomes
  ``x + sum_i (g_i - 1) * a_i(x) * W_dec[i]`` -- each latent's contribution is
  scaled by its gate, the SAE's reconstruction error is left untouched, and an
  open gate (``g == 1``) adds exactly zero.

Gates attach with forward hooks to any compatible HF causal LM (the base model,
a merged LoRA fine-tune, a ``peft`` model) or to a :class:`~geomfilter.models.HookedModel`
(its transformer-lens bridge runs the same modules, so the gates act there too).
They are saved on their own (``gates.safetensors`` + ``gates.json``) and
:func:`load_gates` brings them back. :mod:`geomfilter.gate_analysis` measures which
heads, units or latents moved (the gates record their movement while
:meth:`~geomfilter.gate_set.GateSet.recording`) and relates the most-moved SAE latents to harmful features.

The shared parts live in :mod:`geomfilter.gate_set`, the SAE-hook families in :mod:`geomfilter.sae_gating`;
this module holds the attention gates and :func:`load_gates`, and re-exports the rest.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .gate_set import (
    FORMAT_VERSION,
    GATES_CONFIG,
    GATES_WEIGHTS,
    Gate,
    GateRecorder,
    GateSet,
    GatingError,
    torch_module,
)
from .sae_gating import FeatureSteering, SAEGates, decoder_layers, resid_post_layer
from .saes import load_sae

__all__ = ["AttentionGates", "FeatureSteering", "FORMAT_VERSION", "GATES_CONFIG", "GATES_WEIGHTS", "Gate",
           "GateRecorder", "GateSet", "GatingError", "SAEGates", "attention_projections", "decoder_layers",
           "load_gates", "resid_post_layer", "torch_module"]

_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:\.|$)")


# ---------------------------------------------------------------------------------------------
# attention-output gates (the paper's family)
# ---------------------------------------------------------------------------------------------
def attention_projections(model: Any) -> dict[int, tuple[nn.Module, nn.Module]]:
    """``{layer: (q_proj, o_proj)}`` of every attention block (Llama/Mistral/Qwen/Gemma naming).

    Works through ``peft`` wrappers and transformer-lens bridges (both keep the
    ``layers.N`` path and the projection modules). Raises :class:`GatingError`
    for architectures without separate ``q_proj``/``o_proj`` (e.g. GPT-2's fused ``c_attn``).
    """
    found: dict[int, tuple[nn.Module, nn.Module]] = {}
    for name, mod in torch_module(model).named_modules():
        q, o = getattr(mod, "q_proj", None), getattr(mod, "o_proj", None)
        if isinstance(q, nn.Module) and isinstance(o, nn.Module):
            m = _LAYER.search(name)
            if m and int(m.group(1)) not in found:
                found[int(m.group(1))] = (q, o)
    if not found:
        raise GatingError(
            f"no attention block with q_proj/o_proj found in {type(torch_module(model)).__name__}: "
            "attention gates support Llama-style attention (Llama, Mistral, Qwen, Gemma, SmolLM); "
            "fused projections such as GPT-2's c_attn are not supported"
        )
    return dict(sorted(found.items()))


def _in_features(linear: nn.Module) -> int:
    base = getattr(linear, "base_layer", linear)  # peft LoRA wrapper
    return int(base.in_features)


class AttentionGates(GateSet):
    """One :class:`Gate` per chosen attention layer (``d_model -> n_heads * head_dim``)."""

    family = "attention"

    def __init__(self, layers: Sequence[int], d_in: int, d_out: int, n_heads: int, model: str | None = None):
        super().__init__()
        if not layers:
            raise GatingError("at least one layer must be gated")
        if d_out % n_heads:
            raise GatingError(f"gate width {d_out} is not a multiple of n_heads={n_heads}")
        self.layers = sorted(int(x) for x in layers)
        self.d_in, self.d_out, self.n_heads, self.model_spec = int(d_in), int(d_out), int(n_heads), model
        self.gates = nn.ModuleDict({str(layer): Gate(self.d_in, self.d_out) for layer in self.layers})
        self._h: dict[int, torch.Tensor] = {}

    @classmethod
    def for_model(cls, model: Any, layers: Sequence[int] | None = None, model_spec: str | None = None) -> AttentionGates:
        """Open gates sized for ``model``; ``layers=None`` gates every attention layer."""
        proj = attention_projections(model)
        use = list(proj) if layers is None else [int(x) for x in layers]
        missing = sorted(set(use) - set(proj))
        if missing:
            raise GatingError(f"the model has no attention layer(s) {missing}; it has layers 0..{max(proj)}")
        q, o = proj[use[0]]
        config = getattr(torch_module(model), "config", None)
        n_heads = int(getattr(config, "num_attention_heads", 0) or 1)
        return cls(use, _in_features(q), _in_features(o), n_heads, model=model_spec)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (``d_out / n_heads``)."""
        return self.d_out // self.n_heads

    def config(self) -> dict:
        """What ``gates.json`` records to rebuild and attach these gates."""
        return {"family": self.family, "layers": self.layers, "d_in": self.d_in, "d_out": self.d_out,
                "n_heads": self.n_heads, "model": self.model_spec}

    def _install(self, model: nn.Module) -> list:
        proj = attention_projections(model)
        handles = []
        try:
            for layer in self.layers:
                if layer not in proj:
                    raise GatingError(f"gates for layer {layer} but the model's attention layers are 0..{max(proj)}")
                q, o = proj[layer]
                if (_in_features(q), _in_features(o)) != (self.d_in, self.d_out):
                    raise GatingError(
                        f"layer {layer}: gates map {self.d_in} -> {self.d_out} but the model's q_proj takes "
                        f"{_in_features(q)} and o_proj takes {_in_features(o)} (gates trained for {self.model_spec!r})"
                    )
                handles.append(q.register_forward_pre_hook(self._capture_hook(layer), with_kwargs=True))
                handles.append(o.register_forward_pre_hook(self._gate_hook(layer), with_kwargs=True))
        except Exception:
            for h in handles:
                h.remove()
            raise
        return handles

    def _capture_hook(self, layer: int):
        def hook(_mod, args, kwargs):
            self._h[layer] = args[0] if args else kwargs["input"]

        return hook

    def _gate_hook(self, layer: int):
        def hook(_mod, args, kwargs):
            h = self._h.pop(layer, None)
            if h is None:
                raise GatingError(f"layer {layer}: o_proj ran without q_proj having run first")
            if self.alpha == 0.0 and self._recorder is None:
                return None
            x = args[0] if args else kwargs["input"]
            g = self.gates[str(layer)](h, self.alpha)
            if self._recorder is not None:
                self._recorder.add(f"layer{layer}", "abs", (g - 1.0).abs())
                self._recorder.add(f"layer{layer}", "signed", g - 1.0)
                self._recorder.count(f"layer{layer}", g)
            if self.alpha == 0.0:
                return None
            y = x * g.to(x.dtype)
            return ((y,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": y})

        return hook


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_gates(folder: str | Path, *, sae: Any = None, device: str | None = None) -> AttentionGates | SAEGates:
    """Load gates saved by :meth:`GateSet.save` (an SAE-gates folder loads its SAE by spec unless ``sae`` is given)."""
    folder = Path(folder)
    if (folder / "gates" / GATES_CONFIG).is_file():  # a fine-tune run folder
        folder = folder / "gates"
    cfg_path, w_path = folder / GATES_CONFIG, folder / GATES_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise GatingError(f"{folder} is not a gates folder (needs {GATES_CONFIG} and {GATES_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise GatingError(f"{cfg_path}: line {e.lineno}: not valid JSON ({e.msg})") from e
    family = cfg.get("family")
    if family == "attention":
        gates: GateSet = AttentionGates(cfg["layers"], cfg["d_in"], cfg["d_out"], cfg["n_heads"], model=cfg.get("model"))
    elif family == "sae":
        if sae is None:
            sae = load_sae(cfg["sae"])
        gates = SAEGates(sae, cfg["sae"], hook=cfg.get("hook"), model=cfg.get("model"),
                         bound=cfg.get("bound", 1.0), normalize=cfg.get("normalize", False),  # older: the paper's
                         sink_ratio=cfg.get("sink_ratio"))
    elif family == "sae-steer":
        if sae is None:
            sae = load_sae(cfg["sae"])
        gates = FeatureSteering(sae, cfg["sae"], cfg["features"], strength=cfg.get("strength", 1.0),
                                hook=cfg.get("hook"), model=cfg.get("model"))
    else:
        raise GatingError(f"{cfg_path}: field 'family': expected 'attention', 'sae' or 'sae-steer', got {family!r}")
    state = load_file(str(w_path))
    missing, unexpected = gates.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GatingError(f"{w_path}: gate weights do not match {cfg_path} (missing {missing}, unexpected {unexpected})")
    if device is not None:
        gates.to(device)
    gates.meta = cfg  # type: ignore[attr-defined]
    return gates


