"""SAE specs in, sae-lens SAE out; checks against the model; decoder geometry.

``load_sae(spec)`` understands:

* ``"release:sae_id"`` -- a sae-lens pretrained release, e.g.
  ``gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical`` (loaded with
  ``SAE.from_pretrained``; the release and id are checked offline against the
  directory that ships with sae-lens, with suggestions on a typo);
* a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``, as written
  by ``SAE.save_model``), loaded with ``SAE.load_from_disk``;
* a bundled alias from :data:`BUNDLED_SAES` (SAEs shipped under ``data/saes``).

:func:`check_spec_for_model` refuses, offline and before any download, an SAE
made for another model than the one in use (sae-lens' directory records each
release's model). A pretrained SAE that is not in the local HF cache while the
Hub is unreachable (or ``HF_HUB_OFFLINE`` is set) fails at once with
:class:`SAESpecError` instead of after huggingface_hub's ~30 s of retries; a
cached copy still loads.

The SAE is never modified. In particular geomfilter does not call
``fold_W_dec_norm``: decoder *directions* are read as unit-normalised copies
(:func:`decoder_directions`), and a latent's contribution to the residual
stream is ``activation * ||W_dec[i]||`` (:func:`decoder_norms`), which is the
same number whether or not the SAE was loaded with folded norms.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .errors import GeomfilterError
from .model_specs import model_name_for_spec, model_spec_for_name, official_model_name, same_model

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: alias -> folder (relative to ``data/saes``) of SAEs trained and shipped by geomfilter.
BUNDLED_SAES: dict[str, str] = {
    # TopK, 4608 latents, k = 64, blocks.14.hook_resid_post; trained by `make sae` (metrics.json beside it)
    "smollm2-135m-instruct": "smollm2-135m-instruct-res14-topk64",
}


def default_sae_for(model_spec: str) -> str | None:
    """The bundled SAE alias that goes with a model spec, if geomfilter ships one."""
    return model_spec if model_spec in BUNDLED_SAES else None


class SAESpecError(GeomfilterError, ValueError):
    """An SAE spec that names nothing loadable."""


class SAECompatibilityError(GeomfilterError, ValueError):
    """An SAE that does not fit the model or hook it is used with."""


def _pretrained_directory() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def resolve_sae_spec(spec: str) -> tuple[str, Any]:
    """Classify an SAE spec: ``("bundled"|"disk", path)`` or ``("pretrained", (release, id))``."""
    if spec in BUNDLED_SAES:
        return "bundled", DATA_DIR / "saes" / BUNDLED_SAES[spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise SAESpecError(f"{path} is a directory but not a sae-lens SAE folder (no cfg.json)")
        return "disk", path
    if ":" in spec:
        release, sae_id = spec.split(":", 1)
        directory = _pretrained_directory()
        if release not in directory:
            close = difflib.get_close_matches(release, list(directory), n=5, cutoff=0.5)
            raise SAESpecError(
                f"unknown sae-lens release {release!r}" + (f" (close: {', '.join(close)})" if close else "")
            )
        ids = list(directory[release].saes_map)
        if sae_id not in ids:
            close = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.5)
            raise SAESpecError(
                f"release {release!r} has no SAE id {sae_id!r}"
                + (f" (close: {', '.join(close)})" if close else f" (first ids: {', '.join(ids[:5])})")
            )
        return "pretrained", (release, sae_id)
    known = sorted(BUNDLED_SAES)
    raise SAESpecError(
        f"unknown SAE spec {spec!r}: expected 'release:sae_id' (sae-lens pretrained), a local folder "
        f"with cfg.json + sae_weights.safetensors, or a bundled alias ({', '.join(known) or 'none bundled yet'})"
    )


def _disk_model_name(folder: Path) -> str | None:
    """The model name a sae-lens folder's ``cfg.json`` records (``metadata.model_name`` or ``model_name``)."""
    try:
        cfg = json.loads((Path(folder) / "cfg.json").read_text())
    except (OSError, ValueError):
        return None
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    name = meta.get("model_name") or cfg.get("model_name")
    return name if isinstance(name, str) and name else None


def check_spec_for_model(sae_spec: str, model_spec: str) -> None:
    """Refuse an SAE spec made for another model than ``model_spec``; offline, before any download.

    The SAE's model is the release's ``model`` in sae-lens' directory (pretrained), or the
    ``model_name`` in a local/bundled folder's ``cfg.json``; the model's is what ``model_spec``
    names (:func:`geomfilter.model_specs.model_name_for_spec`). It raises
    :class:`SAECompatibilityError` only when both are known model names and surely differ
    (:func:`geomfilter.model_specs.same_model`: aliases, org prefixes and base vs chat variants match);
    a local HF directory or ``.gguf`` model, or a folder recording no recognisable model, passes,
    and :func:`check_compatible` checks widths once both are loaded. ``"none"`` passes. Raises
    :class:`SAESpecError` / :class:`~geomfilter.model_specs.ModelSpecError` for a spec that names nothing.
    """
    if sae_spec.lower() == "none":
        return
    kind, where = resolve_sae_spec(sae_spec)
    if kind == "pretrained":
        release, _ = where
        sae_model: str | None = _pretrained_directory()[release].model
        what = f"SAE release {release!r}"
    else:
        sae_model = _disk_model_name(where)
        if sae_model is None or official_model_name(sae_model) is None:
            return  # records no model we can name: unsure, let check_compatible decide after loading
        what = f"SAE {sae_spec!r}"
    model_name = model_name_for_spec(model_spec)
    if model_name is None or same_model(sae_model, model_name):
        return
    raise SAECompatibilityError(
        f"{what} is for model {sae_model!r}, not {model_spec!r} "
        f"({'; '.join(_alternatives(sae_model, model_spec, model_name))})"
    )


def _alternatives(sae_model: str, model_spec: str, model_name: str) -> list[str]:
    """What to do instead, for :func:`check_spec_for_model`'s message."""
    hints = [] if model_name == model_spec else [f"{model_spec!r} is {model_name}"]
    own_spec = model_spec_for_name(sae_model)
    if own_spec is not None:
        hints.append(f"use it with --model {own_spec}")
    bundled = default_sae_for(model_spec)
    if bundled is not None:
        hints.append(f"for {model_spec!r} leave out --sae to use its bundled SAE {bundled!r}")
    releases = sorted((r for r, lookup in _pretrained_directory().items() if same_model(lookup.model, model_name)),
                      key=lambda r: ("-res" not in r, r))  # residual-stream releases first
    if releases:
        hints.append(f"sae-lens releases for {model_name}: {', '.join(releases[:5])}"
                     + (", ..." if len(releases) > 5 else ""))
    elif bundled is None:
        hints.append(f"sae-lens has no release for {model_name}; train one with `geomfilter train-sae`")
    return hints


def _hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or ``None`` when it answers (or we cannot tell).

    ``HF_HUB_OFFLINE`` set, or one HEAD request to the endpoint (huggingface_hub's own session, so
    ``HF_ENDPOINT``, proxies and custom clients apply; huggingface_hub's metadata timeout) that fails
    to connect. A single try: huggingface_hub itself retries a failed connection ~30 s with backoff.
    """
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError:  # pragma: no cover - sae-lens depends on it
        return None
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=float(constants.HF_HUB_ETAG_TIMEOUT))
    except Exception as e:  # noqa: BLE001 - classified below
        if _is_connection_error(e):
            return f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable: {str(e) or type(e).__name__}"
        return None
    return None


def _is_connection_error(e: BaseException) -> bool:
    """A failure to reach a server (httpx/requests transport errors, socket errors), not an HTTP answer."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException", "TimeoutError",
                         "gaierror", "OfflineModeIsEnabled"})


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """huggingface_hub offline mode for the block (cached files load, nothing is requested)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _from_pretrained(release: str, sae_id: str, device: str, dtype: str):
    """``SAE.from_pretrained`` that fails fast, naming the release, when the Hub cannot serve it."""
    from huggingface_hub import errors as hf_errors
    from sae_lens import SAE

    repo = _pretrained_directory()[release].repo_id
    reason = _hub_unreachable_reason()
    try:
        with _hub_offline(reason is not None):
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as e:
        what = f"cannot load SAE {release}:{sae_id} (hub repo {repo})"
        if reason is not None and isinstance(e, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            raise SAESpecError(
                f"{what}: {reason}, and it is not in the local Hugging Face cache; connect to the network "
                "(or download it once where you have one), or pass a local sae-lens folder or a bundled alias as --sae"
            ) from e
        if isinstance(e, hf_errors.GatedRepoError) or getattr(getattr(e, "response", None), "status_code", None) == 401:
            raise SAESpecError(f"{what}: the repo is gated or needs a token; run `hf auth login` ({e})") from e
        if isinstance(e, hf_errors.RepositoryNotFoundError):
            raise SAESpecError(f"{what}: the repo is not on the hub (or is private): {e}") from e
        if isinstance(e, (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError)) or _is_connection_error(e):
            raise SAESpecError(f"{what}: downloading from the Hugging Face Hub failed: {e}") from e
        raise
    return sae[0] if isinstance(sae, tuple) else sae  # sae-lens < 6 returned (sae, cfg, sparsity)


def load_sae(spec: str, *, device: str = "cpu", dtype: str = "float32"):
    """Load an SAE spec as a sae-lens ``SAE`` in eval mode (see the module docstring)."""
    from sae_lens import SAE

    kind, where = resolve_sae_spec(spec)
    if kind == "pretrained":
        sae = _from_pretrained(*where, device=device, dtype=dtype)
    else:
        if not Path(where).is_dir():
            raise SAESpecError(f"bundled SAE {spec!r} is missing its folder {where}")
        sae = SAE.load_from_disk(str(where), device=device, dtype=dtype)
    if getattr(sae.cfg, "normalize_activations", "none") == "expected_average_only_in":
        raise SAESpecError(
            f"SAE {spec!r} expects its inputs scaled by a dataset norm factor that was never folded into its weights "
            "(normalize_activations='expected_average_only_in'), and sae-lens does not scale them when it encodes: its "
            "latents would be wrong. Fold the factor (sae.fold_activation_norm_scaling_factor(f); sae-lens' "
            "pretrained_saes.yaml lists it as norm_scaling_factor) and save the SAE again")
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
        if not p.is_contiguous():  # Llama Scope's W_dec is a transpose: SAE.save_model would refuse it
            p.data = p.data.contiguous()
    return sae


def sae_hook_name(sae) -> str | None:
    """The hook an SAE was trained on (``cfg.metadata.hook_name``, older sae-lens ``cfg.hook_name``), or ``None``."""
    meta = getattr(sae.cfg, "metadata", None)
    return getattr(meta, "hook_name", None) if meta is not None else getattr(sae.cfg, "hook_name", None)


def sae_model_name(sae) -> str | None:
    """The model name an SAE's config records (``cfg.metadata.model_name`` or ``cfg.model_name``), or ``None``."""
    meta = getattr(sae.cfg, "metadata", None)
    return getattr(meta, "model_name", None) if meta is not None else getattr(sae.cfg, "model_name", None)


def check_compatible(sae, model, hook: str | None = None) -> str:
    """Check an SAE against a :class:`~geomfilter.models.HookedModel`; return the hook to use.

    The hook is ``hook`` if given, else the SAE's own hook. It must exist in
    the model, agree with the SAE's hook (when the SAE records one), and the
    activation width there must equal the SAE's ``d_in``.
    """
    own = sae_hook_name(sae)
    use = hook or own
    if use is None:
        raise SAECompatibilityError("the SAE records no hook_name; pass the hook explicitly (--hook)")
    model.validate_hook(use)
    if own is not None and hook is not None and own != hook:
        raise SAECompatibilityError(
            f"the SAE was trained on hook {own!r} but hook {hook!r} was requested; "
            f"drop --hook to use {own!r}, or pick an SAE trained on {hook!r}"
        )
    width = model.hook_d(use)
    if int(sae.cfg.d_in) != width:
        raise SAECompatibilityError(
            f"SAE d_in={sae.cfg.d_in} does not match the model's activation width {width} at {use!r} "
            f"(model {model.spec!r}; the SAE was trained for model {sae_model_name(sae)!r})"
        )
    return use


def decoder_norms(sae) -> torch.Tensor:
    """``||W_dec[i]||`` for every latent, float32 on CPU."""
    return sae.W_dec.detach().float().norm(dim=1).cpu()


def decoder_directions(sae) -> torch.Tensor:
    """Unit-normalised decoder directions ``[d_sae, d_in]`` (float32, CPU; zero rows stay zero)."""
    w = sae.W_dec.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weights_fingerprint(module: torch.nn.Module, max_elems: int = 1 << 16) -> str:
    """Short hash of a module's parameters (names, shapes and leading values of each)."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        t = p.detach().float().cpu().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(t[:max_elems].numpy().tobytes())
        h.update(str(float(t.double().sum())).encode())
    return h.hexdigest()[:16]


def describe(sae) -> dict:
    """JSON-able identity of an SAE, for manifests."""
    cfg = sae.cfg
    return {
        "weights": weights_fingerprint(sae),
        "architecture": type(sae).__name__,
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "hook_name": sae_hook_name(sae),
        "model_name": sae_model_name(sae),
        "dtype": str(getattr(cfg, "dtype", "")),
    }
