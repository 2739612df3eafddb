"""The parts every gate family shares (:mod:`geomfilter.gating`): the gate, the record of its movement and the
attach / detach / record / save logic of a set of gates.

* :class:`Gate`: ``g = 1 + bound * (2 sigmoid(W h + b) - 1)``, zero-initialised (open);
* :class:`GateRecorder`: running sums of gate movement while a set is :meth:`GateSet.recording`;
* :class:`GateSet`: hooks a family's gates into a model (``attach`` returns a context manager), saves them as
  ``gates.safetensors`` + ``gates.json``; each family implements ``_install`` and ``config``.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import GeomfilterError

GATES_WEIGHTS = "gates.safetensors"
GATES_CONFIG = "gates.json"
FORMAT_VERSION = 1


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
    """Running sums of gate movement while the gates are :meth:`~GateSet.recording`: ``sums[key][name]``
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


class GateSet(nn.Module):
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

    def attach(self, model: Any, alpha: float | None = None) -> GateSet:
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

    def __enter__(self) -> GateSet:
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
