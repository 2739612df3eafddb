"""Model specs in, hooked model out.

``load_model(spec)`` loads any spec :mod:`geomfilter.model_specs` resolves
(the embedded default, a ``.gguf`` file, a local HF model directory, a
transformer-lens model name). GGUF files (the embedded default included) are
dequantised to fp32 by ``transformers`` (``gguf_file=``) and, because that
conversion takes ~40 s, saved once as a plain HF directory under the geomfilter
cache dir (``$GEOMFILTER_CACHE_DIR``, default ``~/.cache/geomfilter``).

Why TransformerBridge rather than HookedTransformer
-----------------------------------------------------
The model is wrapped in transformer-lens' ``TransformerBridge``: it runs the
unmodified HF module, so activations equal the plain HF model's bit for bit (a
geometry filter is only as good as the activations it reads), it exposes the
usual TL hook names (``blocks.L.hook_resid_post`` and friends, so sae-lens SAEs
find their hooks), it supports ``stop_at_layer`` (the cache never computes
past the hooked layer) and it is the supported path in transformer-lens 3.9,
where ``HookedTransformer`` is deprecated. TL's weight processing (folding
layer norms, centring) changes activations, so it is off unless asked for
(``process_weights=True``).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import GeomfilterError
from .model_specs import EMBEDDED_HF_NAME, resolve_model_spec
from .progress import hf_progress_bars
from .settings import DEFAULT_MODEL

#: Default hook per model spec: a residual-stream hook in the middle of the model. For SmolLM2 the
#: choice is measured (scripts/choose_hook.py -> data/saes/hook_choice.json): a linear probe separating
#: the harmful vs benign references scores AUROC 0.979 at layer 14 and 0.943-0.980 at layers 4-24; the
#: best layer (18, 0.980) is within 0.002 of layer 14, and layer 14 is mid-depth and cheaper to reach.
DEFAULT_HOOKS = {DEFAULT_MODEL: "blocks.14.hook_resid_post"}

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


class HookNameError(GeomfilterError, ValueError):
    """A hook name the model does not have."""


def cache_dir() -> Path:
    """Where geomfilter keeps converted models (``$GEOMFILTER_CACHE_DIR``)."""
    root = os.environ.get("GEOMFILTER_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "geomfilter"


@dataclass
class HookedModel:
    """A hooked model with its tokenizer and where it came from.

    ``bridge`` is a transformer-lens ``TransformerBridge`` around ``hf_model``
    (the same module: hooks on the bridge see the HF model's activations).
    """

    bridge: Any
    tokenizer: Any
    hf_model: Any
    spec: str
    source: str
    info: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.bridge.cfg.d_model)

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.hf_model.parameters()).device

    def hook_names(self) -> list[str]:
        """Every hook point of the transformer-lens bridge, sorted (the valid ``--hook`` values)."""
        return sorted(self.bridge.hook_dict.keys())

    def default_hook(self) -> str:
        """The hook used when none is given: the model's known default, else the middle block's ``hook_resid_post``."""
        return DEFAULT_HOOKS.get(self.spec, f"blocks.{self.n_layers // 2}.hook_resid_post")

    def validate_hook(self, hook: str) -> str:
        """Return ``hook`` if the model has it, else raise with the valid names."""
        names = self.bridge.hook_dict
        if hook in names:
            return hook
        resid = [f"blocks.{{0..{self.n_layers - 1}}}.hook_resid_{{pre,mid,post}}"]
        close = difflib.get_close_matches(hook, list(names), n=5, cutoff=0.6)
        msg = f"model {self.spec!r} has no hook {hook!r}."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        msg += (
            f" Residual-stream hooks: {resid[0]}; other hooks per block include "
            "hook_attn_out, hook_mlp_out, attn.hook_z, mlp.hook_post. "
            "List them all with `geomfilter hooks --model SPEC`."
        )
        raise HookNameError(msg)

    def hook_d(self, hook: str) -> int:
        """Width of the activation at ``hook`` (probes the model on one token)."""
        self.validate_hook(hook)
        return int(self.activations(torch.zeros(1, 1, dtype=torch.long), hook).shape[-1])

    def activations(self, tokens: torch.Tensor, hook: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Activations ``[B, T, d]`` at ``hook``; the forward pass stops after the hooked block."""
        kw = {} if attention_mask is None else {"attention_mask": attention_mask.to(self.device)}
        with torch.no_grad():
            _, cache = self.bridge.run_with_cache(tokens.to(self.device), names_filter=[hook],
                                                  stop_at_layer=stop_layer(hook, self.n_layers), **kw)
        return cache[hook]


def stop_layer(hook: str, n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs the block ``hook`` lives in (None: full forward)."""
    m = _BLOCK_HOOK.match(hook)
    if not m:
        return None
    layer = int(m.group(1)) + 1
    return layer if layer < n_layers else None


def _gguf_to_hf_dir(gguf: Path, progress: bool = True) -> Path:
    """Dequantise a GGUF file once and keep it as a plain HF directory in the cache."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"[geomfilter] converting {gguf.name} to fp32 once (about a minute); cached at {out}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: plain fp32 now
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "geomfilter_source.json").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out
    os.replace(tmp, out)
    return out


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    process_weights: bool = False,
    progress: bool = True,
) -> HookedModel:
    """Load a model spec as a hooked model (see the module docstring for specs).

    ``process_weights=True`` applies transformer-lens weight processing
    (compatibility mode: folded layer norms etc.); activations then differ from
    the HF model's, so it is off by default.
    """
    kind, location = resolve_model_spec(spec)
    with hf_progress_bars(progress):
        return _load(spec, kind, location, device, dtype, process_weights, progress)


def load_causal_lm(spec: str = DEFAULT_MODEL, *, device: str | None = None, dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> tuple[Any, Any, dict]:
    """Load a model spec as a plain HF causal LM (no bridge): ``(hf_model, tokenizer, info)``.

    What fine-tuning (PEFT LoRA, gates) and evaluation use: the same weights
    :func:`load_model` wraps, without transformer-lens' in-place module
    replacement. The tokenizer gets a pad token (eos) when it has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, location = resolve_model_spec(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with hf_progress_bars(progress):
        if kind in ("embedded", "gguf"):
            location = str(_gguf_to_hf_dir(Path(location), progress=progress))
        tokenizer = AutoTokenizer.from_pretrained(location)
        hf_model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {"spec": spec, "kind": kind, "location": location, "n_layers": int(hf_model.config.num_hidden_layers),
            "d_model": int(hf_model.config.hidden_size), "dtype": str(dtype).replace("torch.", "")}
    return hf_model, tokenizer, info


def _load(spec, kind, location, device, dtype, process_weights, progress) -> HookedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind in ("embedded", "gguf"):
        hf_dir = _gguf_to_hf_dir(Path(location), progress=progress)
        name = EMBEDDED_HF_NAME if kind == "embedded" else str(hf_dir)
        location = str(hf_dir)
    else:
        name = location
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge import TransformerBridge

        if kind == "tl_name":
            bridge = TransformerBridge.boot_transformers(location, device=device, dtype=dtype)
            tokenizer, hf_model = bridge.tokenizer, bridge.original_model
        else:
            tokenizer = AutoTokenizer.from_pretrained(location)
            hf_model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    if process_weights:
        bridge.enable_compatibility_mode()
    bridge.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {
        "spec": spec,
        "kind": kind,
        "location": location,
        "hf_name": name,
        "n_layers": int(bridge.cfg.n_layers),
        "d_model": int(bridge.cfg.d_model),
        "process_weights": process_weights,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return HookedModel(bridge=bridge, tokenizer=tokenizer, hf_model=hf_model, spec=spec, source=location, info=info)
