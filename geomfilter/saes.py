"""SAE specs in, sae-lens SAE out; checks against the model; decoder geometry.

``load_sae(spec)`` understands:

* ``"release:sae_id"`` -- a sae-lens pretrained release, e.g.
  ``gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical`` (loaded with
  ``SAE.from_pretrained``; the release and id are checked offline against the
  directory that ships with sae-lens, with suggestions on a typo);
* a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``, as written
  by ``SAE.save_model``), loaded with ``SAE.load_from_disk``;
* a bundled alias from :data:`BUNDLED_SAES` (SAEs shipped under ``data/saes``).

The SAE is never modified. In particular geomfilter does not call
``fold_W_dec_norm``: decoder *directions* are read as unit-normalised copies
(:func:`decoder_directions`), and a latent's contribution to the residual
stream is ``activation * ||W_dec[i]||`` (:func:`decoder_norms`), which is the
same number whether or not the SAE was loaded with folded norms.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: alias -> folder (relative to ``data/saes``) of SAEs trained and shipped by geomfilter.
BUNDLED_SAES: dict[str, str] = {
    # TopK, 4608 latents, k = 64, blocks.14.hook_resid_post; trained by `make sae` (metrics.json beside it)
    "smollm2-135m-instruct": "smollm2-135m-instruct-res14-topk64",
}


def default_sae_for(model_spec: str) -> str | None:
    """The bundled SAE alias that goes with a model spec, if geomfilter ships one."""
    return model_spec if model_spec in BUNDLED_SAES else None


class SAESpecError(ValueError):
    """An SAE spec that names nothing loadable."""


class SAECompatibilityError(ValueError):
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


def load_sae(spec: str, *, device: str = "cpu", dtype: str = "float32"):
    """Load an SAE spec as a sae-lens ``SAE`` in eval mode (see the module docstring)."""
    from sae_lens import SAE

    kind, where = resolve_sae_spec(spec)
    if kind == "pretrained":
        release, sae_id = where
        sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
        if isinstance(sae, tuple):  # sae-lens < 6 returned (sae, cfg, sparsity)
            sae = sae[0]
    else:
        if not Path(where).is_dir():
            raise SAESpecError(f"bundled SAE {spec!r} is missing its folder {where}")
        sae = SAE.load_from_disk(str(where), device=device, dtype=dtype)
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
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
    import hashlib

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
