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
:meth:`~_GateSet.recording`) and relates the most-moved SAE latents to harmful features.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import GeomfilterError
from .saes import load_sae, sae_hook_name

GATES_WEIGHTS = "gates.safetensors"
GATES_CONFIG = "gates.json"
FORMAT_VERSION = 1
_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:\.|$)")


class GatingError(GeomfilterError, ValueError):
    """Gates that do not fit the model they are attached to, or an unreadable gates folder."""


def torch_module(model: Any) -> nn.Module:
    """The torch module of a HookedModel, a TunedModel or a plain (peft) HF model."""
    return getattr(model, "hf_model", model)


class Gate(nn.Module):
    """``g = 1 + bound * (2 * sigmoid(W h' + b) - 1)``, zero-initialised (open: ``g == 1``).

    ``bound`` 1 (the default) is the paper's ``2 * sigmoid(W h + b)`` in ``(0, 2)``; a smaller bound keeps
    ``g`` (and its mirror ``2 - g``) in ``(1 - bound, 1 + bound)``. ``normalize``: ``h'`` is ``h`` divided by
    its root mean square over the width, so a token whose residual norm is far above the others' (the first
    token, an attention sink) does not saturate the gate; otherwise ``h' = h``.
    """

    def __init__(self, d_in: int, d_out: int, bound: float = 1.0, normalize: bool = False):
        super().__init__()
        if not 0.0 < bound <= 1.0:
            raise GatingError(f"gate bound must be in (0, 1], got {bound}")
        self.bound, self.normalize = float(bound), bool(normalize)
        self.proj = nn.Linear(d_in, d_out)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """The gate at scale ``alpha``: ``1 + alpha * (g - 1)``."""
        h = h.to(self.proj.weight.dtype)
        if self.normalize:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        g = 2.0 * torch.sigmoid(self.proj(h))
        if self.bound != 1.0:
            g = 1.0 + self.bound * (g - 1.0)
        return g if alpha == 1.0 else 1.0 + alpha * (g - 1.0)


class GateRecorder:
    """Running sums of gate movement while the gates are :meth:`~_GateSet.recording`: ``sums[key][name]``
    (per gated unit, summed over the tokens ``mask`` counts) and ``sums[key]["_n"]`` (their number)."""

    def __init__(self):
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.mask: torch.Tensor | None = None  # [B, T] tokens that count

    def add(self, key: str, name: str, value: torch.Tensor) -> None:
        """Add ``value [B, T, d]`` summed over the counted tokens."""
        if self.mask is not None and self.mask.shape == value.shape[:2]:
            value = value * self.mask[..., None].to(value.dtype)
        total = value.detach().float().sum(dim=(0, 1)).cpu()
        slot = self.sums.setdefault(key, {})
        slot[name] = slot[name] + total if name in slot else total

    def count(self, key: str, value: torch.Tensor) -> None:
        """Add the number of counted tokens of ``value [B, T, ...]`` to ``key``'s ``_n``."""
        n = float(self.mask.sum()) if self.mask is not None and self.mask.shape == value.shape[:2] else float(
            value.shape[0] * value.shape[1])
        slot = self.sums.setdefault(key, {})
        slot["_n"] = slot.get("_n", torch.tensor(0.0)) + n


class _GateSet(nn.Module):
    """Shared attach/detach/save logic of the two gate families."""

    family = ""

    def __init__(self):
        super().__init__()
        self.alpha = 1.0
        self._handles: list = []
        self._recorder: GateRecorder | None = None

    # -- attaching ------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: Any, alpha: float | None = None) -> _GateSet:
        """Hook the gates into ``model`` (``alpha``: the gate scale, default 1 = learned gates).

        Returns self, which is also a context manager that detaches on exit::

            with gates.attach(model, alpha=-1):
                model.generate(...)
        """
        if self.attached:
            raise GatingError("these gates are already attached; detach() them first")
        if alpha is not None:
            self.alpha = float(alpha)
        self._handles = self._install(torch_module(model))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> _GateSet:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @contextlib.contextmanager
    def recording(self, model: Any) -> Iterator[GateRecorder]:
        """Record the gates' movement at alpha = 1 while ``model`` runs inside the block (attaching the gates
        to it if they are not attached); their scale and attachment are restored after."""
        was_attached, alpha = self.attached, self.alpha
        rec = GateRecorder()
        self._recorder = rec
        if not was_attached:
            self.attach(torch_module(model), alpha=1.0)
        else:
            self.alpha = 1.0
        try:
            yield rec
        finally:
            self._recorder = None
            self.alpha = alpha
            if not was_attached:
                self.detach()

    def _install(self, model: nn.Module) -> list:
        raise NotImplementedError

    # -- saving ---------------------------------------------------------------------------------
    def config(self) -> dict:
        raise NotImplementedError

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """Write ``gates.safetensors`` (the gate parameters only) and ``gates.json`` (their config)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / GATES_WEIGHTS))
        cfg = {"format_version": FORMAT_VERSION, **self.config(), **(extra or {})}
        (folder / GATES_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        return folder


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


class AttentionGates(_GateSet):
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
# SAE-latent gates (our extension)
# ---------------------------------------------------------------------------------------------
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


class _SAEHookSet(_GateSet):
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


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_gates(folder: str | Path, *, sae: Any = None, device: str | None = None) -> AttentionGates | SAEGates:
    """Load gates saved by :meth:`_GateSet.save` (an SAE-gates folder loads its SAE by spec unless ``sae`` is given)."""
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
        gates: _GateSet = AttentionGates(cfg["layers"], cfg["d_in"], cfg["d_out"], cfg["n_heads"], model=cfg.get("model"))
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


