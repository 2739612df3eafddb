"""Gate families at an SAE's residual hook (:mod:`geomfilter.gating`): :class:`SAEGates` gate each latent of
the SAE (``x -> x + ((g - 1) * a(x)) @ W_dec``); :class:`FeatureSteering` removes or steers against the harmful
features (no trained weights). Both hook the output of block ``L`` for an SAE on ``blocks.L.hook_resid_post``;
the SAE stays frozen and is not saved with them (``gates.json`` records its spec).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .gate_set import Gate, GateSet, GatingError, torch_module
from .saes import sae_hook_name


def decoder_layers(model: Any) -> nn.ModuleList:
    """The model's list of transformer blocks (``model.layers`` / ``transformer.h``)."""
    for name, mod in torch_module(model).named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and len(mod) > 0:
            return mod
    kind = type(torch_module(model)).__name__
    raise GatingError(f"no list of transformer blocks (…layers / …h) found in {kind}")


def resid_post_layer(hook: str) -> int:
    """The layer ``L`` of a ``blocks.L.hook_resid_post`` hook; any other hook is a :class:`GatingError`."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook or "")
    if not m:
        raise GatingError(f"SAE gates need an SAE on a residual-stream hook blocks.L.hook_resid_post, not {hook!r}")
    return int(m.group(1))


class _SAEHookSet(GateSet):
    """What the gate families at an SAE's residual hook share: the frozen SAE (not a submodule: never
    trained, never saved; ``gates.json`` records its spec and :func:`load_gates` loads it again), its hook
    and layer, the checks on attaching, and one forward hook on that layer (``_hook``)."""

    def __init__(self, sae: Any, sae_spec: str, hook: str | None = None, model: str | None = None):
        super().__init__()
        self.hook = hook or sae_hook_name(sae)
        self.layer = resid_post_layer(self.hook)
        self.sae_spec, self.model_spec = sae_spec, model
        self.d_in, self.d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
        object.__setattr__(self, "sae", sae)  # not a submodule: never trained, never saved
        for p in sae.parameters():
            p.requires_grad_(False)

    def config(self) -> dict:
        """What ``gates.json`` records to rebuild and attach these gates (SAE spec, hook, layer, widths)."""
        return {"family": self.family, "sae": self.sae_spec, "hook": self.hook, "layer": self.layer,
                "d_in": self.d_in, "d_sae": self.d_sae, "model": self.model_spec}

    def _install(self, model: nn.Module) -> list:
        layers = decoder_layers(model)
        if self.layer >= len(layers):
            raise GatingError(f"SAE hook {self.hook} but the model has {len(layers)} layers")
        d_model = getattr(getattr(model, "config", None), "hidden_size", self.d_in)
        if int(d_model) != self.d_in:
            raise GatingError(f"the SAE reads width {self.d_in} but the model's residual stream is {d_model}")
        dev = next(model.parameters()).device
        self.sae.to(dev)
        self.to(dev)
        return [layers[self.layer].register_forward_hook(self._hook)]

    def _hook(self, _mod, _args, output):
        raise NotImplementedError


class SAEGates(_SAEHookSet):
    """Gates on an SAE's latents at its hook: ``x -> x + ((g - 1) * a(x)) @ W_dec``, ``g = 2 sigmoid(W x + b)``.

    The SAE itself is frozen and not saved with the gates (``gates.json``
    records its spec; :func:`load_gates` loads it again).
    """

    family = "sae"

    def __init__(self, sae: Any, sae_spec: str, hook: str | None = None, model: str | None = None,
                 bound: float = 1.0, normalize: bool = False, sink_ratio: float | None = None):
        super().__init__(sae, sae_spec, hook=hook, model=model)
        if sink_ratio is not None and sink_ratio <= 1.0:
            raise GatingError(f"sink_ratio must be > 1 (a multiple of the sequence's median norm), got {sink_ratio}")
        self.gate = Gate(self.d_in, self.d_sae, bound=bound, normalize=normalize)
        self.sink_ratio = None if sink_ratio is None else float(sink_ratio)

    def config(self) -> dict:
        """The SAE-hook config plus the gate's ``bound``, ``normalize`` and ``sink_ratio`` (issue 20 (3))."""
        return {**super().config(), "bound": self.gate.bound, "normalize": self.gate.normalize,
                "sink_ratio": self.sink_ratio}

    def _open_at_sinks(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``g`` with every token whose residual norm is above ``sink_ratio`` times its sequence's median norm
        set open (``g = 1``): attention-sink tokens (the first token's residual is about 150 times the others'
        on the default model), which the SAE never saw in training and where any gated change of its huge
        latent activations breaks the model."""
        if self.sink_ratio is None or x.dim() < 3 or x.shape[-2] < 2:
            return g
        norms = x.float().norm(dim=-1)
        sink = norms > self.sink_ratio * norms.median(dim=-1, keepdim=True).values
        return torch.where(sink.unsqueeze(-1), torch.ones_like(g), g)

    def _hook(self, _mod, _args, output):
        if self.alpha == 0.0 and self._recorder is None:
            return None
        x = output[0] if isinstance(output, tuple) else output
        sae_dtype = self.sae.W_dec.dtype
        a = self.sae.encode(x.to(sae_dtype)).float()
        g = self._open_at_sinks(x, self.gate(x, self.alpha))
        if self._recorder is not None:
            norms = self.sae.W_dec.detach().float().norm(dim=1)
            self._recorder.add("sae", "abs", (g - 1.0).abs())
            self._recorder.add("sae", "signed", g - 1.0)
            self._recorder.add("sae", "effect", ((g - 1.0) * a).abs() * norms)
            self._recorder.add("sae", "active", (a > 0).float())
            self._recorder.count("sae", g)
        if self.alpha == 0.0:
            return None
        delta = ((g - 1.0) * a) @ self.sae.W_dec.float()
        y = x + delta.to(x.dtype)
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y


class FeatureSteering(_SAEHookSet):
    """Harmful-feature ablation and steering at inference, through an SAE at its hook (issue 20 (2)).

    ``x -> x - strength * alpha * sum_{j in H} a_j(x) * W_dec[j]`` for the harmful feature set ``H`` (the
    features ``geometry`` uses, selected on the reference caches): ``strength * alpha = 1`` *ablates* them
    (their decoded contribution to the residual is removed; the rest of the SAE's reconstruction and its error
    are left alone), larger values *steer against* them in proportion to how much they fire, ``alpha = 0`` is
    the unedited model (the hook is skipped). A gate set without trained parameters: it attaches, saves and
    loads like the gates (family ``sae-steer``); an experiment's ``gates.attach`` entry ``{method:
    ablate-harmful, scales: [1, 2]}`` evaluates ``<model>+ablate-harmful@+1`` and ``@+2``.
    """

    family = "sae-steer"

    def __init__(self, sae: Any, sae_spec: str, features: list[int], *, strength: float = 1.0,
                 hook: str | None = None, model: str | None = None):
        super().__init__(sae, sae_spec, hook=hook, model=model)
        if not features:
            raise GatingError("FeatureSteering needs at least one feature id")
        bad = [f for f in features if not 0 <= int(f) < self.d_sae]
        if bad:
            raise GatingError(f"feature ids {bad[:5]} are outside the SAE's {self.d_sae} latents")
        self.strength = float(strength)
        self.register_buffer("features", torch.tensor(sorted({int(f) for f in features}), dtype=torch.long))

    def config(self) -> dict:
        """What ``gates.json`` records: the SAE gates' fields, the feature ids and the strength."""
        return {**super().config(), "features": self.features.tolist(), "strength": self.strength}

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        """The residual ``x [.., d_in]`` with the harmful latents' contribution scaled by ``1 - strength * alpha``."""
        scale = self.strength * self.alpha
        if scale == 0.0:
            return x
        a = self.sae.encode(x.to(self.sae.W_dec.dtype))[..., self.features].float()
        delta = a @ self.sae.W_dec[self.features].float()
        return x - (scale * delta).to(x.dtype)

    def _hook(self, _mod, _args, output):
        if self.alpha == 0.0:
            return None
        x = output[0] if isinstance(output, tuple) else output
        y = self.edit(x)
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
