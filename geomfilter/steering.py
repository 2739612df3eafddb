"""Harmful-feature ablation and steering at inference, through an SAE at its hook (issue 20 (2)).

:class:`FeatureSteering` edits the residual stream at the SAE's hook while the model runs::

    x -> x - strength * alpha * sum_{j in H} a_j(x) * W_dec[j]

for the harmful feature set ``H`` (the same features ``geometry`` uses: selected on the harmful vs benign
reference caches). ``strength * alpha = 1`` *ablates* them (their decoded contribution to the residual is
removed, the rest of the SAE's reconstruction and its error are left alone); larger values *steer against*
them, in proportion to how much they fire; ``alpha = 0`` is the unedited model (the hook is skipped).

It is a gate set of :mod:`geomfilter.gating` without trained parameters, so it attaches, saves and loads like
the gates (``family: "sae-steer"``): an experiment's ``gates.attach`` entry ``{method: ablate-harmful,
scales: [1, 2, 4]}`` evaluates ``<model>+ablate-harmful@+1`` (ablation) and the stronger steering beside the
mirrored gates, with the same metrics.
"""
from __future__ import annotations

from typing import Any

import torch

from .gating import GatingError, _GateSet, decoder_layers, resid_post_layer
from .saes import sae_hook_name


class FeatureSteering(_GateSet):
    """Subtract ``strength * alpha`` times the harmful latents' decoded contribution at the SAE's hook."""

    family = "sae-steer"

    def __init__(self, sae: Any, sae_spec: str, features: list[int], *, strength: float = 1.0,
                 hook: str | None = None, model: str | None = None):
        super().__init__()
        if not features:
            raise GatingError("FeatureSteering needs at least one feature id")
        d_sae = int(sae.cfg.d_sae)
        bad = [f for f in features if not 0 <= int(f) < d_sae]
        if bad:
            raise GatingError(f"feature ids {bad[:5]} are outside the SAE's {d_sae} latents")
        self.hook = hook or sae_hook_name(sae)
        self.layer = resid_post_layer(self.hook)
        self.sae_spec, self.model_spec = sae_spec, model
        self.d_in, self.d_sae = int(sae.cfg.d_in), d_sae
        self.strength = float(strength)
        object.__setattr__(self, "sae", sae)  # not a submodule: frozen, never saved
        for p in sae.parameters():
            p.requires_grad_(False)
        self.register_buffer("features", torch.tensor(sorted({int(f) for f in features}), dtype=torch.long))

    def config(self) -> dict:
        """What ``gates.json`` records (SAE spec, hook, layer, widths, the feature ids, the strength)."""
        return {"family": self.family, "sae": self.sae_spec, "hook": self.hook, "layer": self.layer,
                "d_in": self.d_in, "d_sae": self.d_sae, "model": self.model_spec,
                "features": self.features.tolist(), "strength": self.strength}

    def _install(self, model: torch.nn.Module) -> list:
        layers = decoder_layers(model)
        if self.layer >= len(layers):
            raise GatingError(f"SAE hook {self.hook} but the model has {len(layers)} layers")
        d_model = getattr(getattr(model, "config", None), "hidden_size", self.d_in)
        if int(d_model) != self.d_in:
            raise GatingError(f"the SAE reads width {self.d_in} but the model's residual stream is {d_model}")
        dev = next(model.parameters()).device
        self.sae.to(dev)
        self.to(dev)
        return [layers[self.layer].register_forward_hook(self._edit_hook)]

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        """The residual ``x [.., d_in]`` with the harmful latents' contribution scaled by ``1 - strength * alpha``."""
        scale = self.strength * self.alpha
        if scale == 0.0:
            return x
        a = self.sae.encode(x.to(self.sae.W_dec.dtype))[..., self.features].float()
        delta = a @ self.sae.W_dec[self.features].float()
        return x - (scale * delta).to(x.dtype)

    def _edit_hook(self, _mod, _args, output):
        if self.alpha == 0.0:
            return None
        x = output[0] if isinstance(output, tuple) else output
        y = self.edit(x)
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y


__all__ = ["FeatureSteering"]
