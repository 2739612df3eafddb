"""What a fine-tune is: its settings, its result and its run folder's ``finetune.json`` (no torch needed).

:class:`FinetuneConfig` holds every setting and its default; the experiment
config (:mod:`geomfilter.config`) and the CLI take their fine-tune defaults from
it. :mod:`geomfilter.finetune` runs the training.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GeomfilterError
from .settings import DEFAULT_MODEL

METHODS = ("lora", "gates", "gates-sae")
DEFAULT_LR = {"lora": 2e-4, "gates": 1e-3, "gates-sae": 1e-3}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUN_FILE = "finetune.json"


#: options of method gates-sae only (:class:`~geomfilter.gating.SAEGates`); their defaults are the paper's gate
SAE_GATE_OPTIONS = ("gate_bound", "gate_normalize", "gate_sink_ratio")


class FinetuneError(GeomfilterError, ValueError):
    """A fine-tuning config or run folder that cannot be used."""


@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tune's result (saved in ``finetune.json``)."""

    data: list[str]
    out: str
    method: str = "lora"
    model: str = DEFAULT_MODEL
    max_samples: int | None = 300  # seeded subset of the data (None: all of it)
    epochs: float = 1.0
    batch_size: int = 4  # samples per optimiser step
    lr: float | None = None  # None: DEFAULT_LR[method]
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_tokens: int = 512  # per sample (left truncation keeps the response)
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    gate_layers: list[int] | None = None  # attention gates: None = every layer
    sae: str | None = None  # gates-sae: SAE spec (None: the model's bundled SAE)
    gate_bound: float = 1.0  # gates-sae: g in (1 - bound, 1 + bound); 1 = the paper's 2 * sigmoid
    gate_normalize: bool = False  # gates-sae: the gate reads the residual divided by its RMS
    gate_sink_ratio: float | None = None  # gates-sae: tokens above this multiple of the median norm stay ungated
    checkpoint_every: int = 0  # steps; 0: only the final weights (and a checkpoint on interruption)
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise FinetuneError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        if not self.data:
            raise FinetuneError("no training data given")
        for name in ("batch_size", "max_tokens", "lora_r"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0:
            raise FinetuneError(f"epochs must be > 0, got {self.epochs}")
        if self.max_samples is not None and self.max_samples < 1:
            raise FinetuneError(f"max_samples must be >= 1 or None, got {self.max_samples}")
        if not 0.0 < self.gate_bound <= 1.0:
            raise FinetuneError(f"gate_bound must be in (0, 1], got {self.gate_bound}")
        if self.method != "gates-sae" and self.sae_gate_options_set():
            raise FinetuneError("gate_bound, gate_normalize and gate_sink_ratio are options of method gates-sae, "
                                f"not {self.method}")
        if self.gate_sink_ratio is not None and self.gate_sink_ratio <= 1.0:
            raise FinetuneError(f"gate_sink_ratio must be > 1, got {self.gate_sink_ratio}")

    def sae_gate_options_set(self) -> list[str]:
        """The options of :data:`SAE_GATE_OPTIONS` that differ from their defaults."""
        return [k for k in SAE_GATE_OPTIONS if getattr(self, k) != getattr(FinetuneConfig, k)]

    @property
    def learning_rate(self) -> float:
        """``lr`` if set, else the method's default learning rate."""
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])

    def identity(self) -> dict:
        """The fields that decide the weights (a resumed run must match them)."""
        d = dataclasses.asdict(self)
        for k in ("out", "checkpoint_every", "device", "progress"):
            d.pop(k)
        for k in SAE_GATE_OPTIONS:  # at their defaults they are left out: runs from before them stay valid
            if k not in self.sae_gate_options_set():
                d.pop(k)
        d["lr"] = self.learning_rate
        return d


@dataclass
class FinetuneResult:
    """Summary of a fine-tuning run (also recorded in the run folder's ``finetune.json``)."""

    out: Path
    method: str
    n_samples: int
    steps: int
    tokens: int  # all tokens processed (prompt + response)
    response_tokens: int  # tokens the loss was computed on
    seconds: float
    tokens_per_s: float
    first_loss: float
    final_loss: float  # mean over the last 10% of steps
    skipped: bool = False  # the run was already finished
    stopped_early: bool = False  # stop_after was hit: resumable

    def as_dict(self) -> dict:
        """The result as JSON-able data."""
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d



def read_run(folder: str | Path) -> dict:
    """The ``finetune.json`` of a finished run folder (clear error otherwise)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FinetuneError(f"{folder} is not a fine-tune run folder (no {RUN_FILE})")
    meta = json.loads(path.read_text())
    if not meta.get("finished"):
        raise FinetuneError(f"{folder}: the fine-tune has not finished (run it again to resume)")
    return meta
