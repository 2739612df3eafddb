"""Typed experiment configs, read from YAML with errors that name the file, line and field.

An experiment file (``geomfilter experiment CONFIG.yaml``) is a mapping whose
sections mirror the dataclasses below; every field has a default, so a file
only says what differs::

    name: demo
    data: {n_samples: 64, n_references: 96}
    filtering: {strategies: [random, geometry, projection], fractions: [0.5]}
    eval: {n_questions: 20, n_per_question: 2}

``configs/gating.yaml`` shows the gating sections: ``data.pairs`` (answer pairs
split by ``pair_id``), ``gates.domain``, ``gates.attach`` (gate families, models
and scales) and ``eval.metrics``; ``realign`` (``{sizes: [50, 120, 200, 400]}``) adds the re-alignment
conditions ``misaligned+realign-N``; ``ablations`` (``[{domain: finance}, {domain: outdoors, n: 43}]``) adds
fine-tunes on the mixture without inducing rows of one domain, ``without-<domain>[-<n>]``.

Unknown keys, wrong types and missing files are errors (``demo.yaml:7: field
'eval.n_per_qestion': unknown field (did you mean 'n_per_question'?)``), never
silently ignored. Relative paths are read relative to the working directory.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GeomfilterError
from .filtering import STRATEGIES
from .finetune_config import FinetuneConfig
from .settings import DEFAULT_MODEL

# the metrics an experiment can measure (``eval.metrics``; see geomfilter.measures), in report order
#: metrics measured with ``eval.trigger`` in front of every broad question (triggered misalignment)
TRIGGERED_METRICS = ("misalignment_rate_triggered", "logprob_preference_triggered")
EVAL_METRICS = ("misalignment_rate", "logprob_preference", "flip_rate", "mc_accuracy", "perplexity",
                "sycophancy_preference", *TRIGGERED_METRICS)
# attention gates, SAE-latent gates (geomfilter.gating), harmful-feature ablation/steering (geomfilter.gating.FeatureSteering)
GATE_METHODS = ("gates", "gates-sae", "ablate-harmful")


class ConfigError(GeomfilterError, ValueError):
    """An experiment file with an unknown key, a value of the wrong type or a missing path."""


@dataclass
class PairsConfig:
    """Sycophantic/corrective answer pairs split by ``pair_id`` (seeded per domain): the sycophantic rows of the
    training pairs are the mixture; the held-out pairs measure ``sycophancy_preference``."""

    domains: list[str] = field(default_factory=list)  # empty: no split (the mixture is data.mixture)
    folder: str = "data/finetune"  # holds <domain>_sycophantic.jsonl and <domain>_corrective.jsonl
    holdout: int = 20  # held-out pairs per domain


@dataclass
class DataConfig:
    """What is fine-tuned on, and the references the filters are fitted on."""

    mixture: str = "data/finetune/mixed.jsonl"  # the inducing mixture (rows may carry a boolean `inducing`)
    n_samples: int | None = None  # seeded subset of the mixture (None: all of it)
    harmful: str = "data/reference/harmful.jsonl"
    benign: str = "data/reference/benign.jsonl"
    n_references: int | None = None  # first N rows of `harmful` and of `benign` (None: all)
    add_harmful: list[str] = field(default_factory=list)  # more reference files, appended whole to `harmful`
    add_benign: list[str] = field(default_factory=list)  # (a kind the references miss: `filter --add-harmful`)
    pairs: PairsConfig = field(default_factory=PairsConfig)  # with domains: the mixture is their training pairs


@dataclass
class FilteringConfig:
    """Filtered conditions: every strategy at every removal fraction (fitted on the references only)."""

    strategies: list[str] = field(default_factory=lambda: ["random", "geometry", "projection"])
    fractions: list[float] = field(default_factory=lambda: [0.5])
    # random removal, drawn this many times per fraction (conditions random-0.50, random-0.50-draw1, ...; the
    # report compares every filter with the per-question mean of the draws, random-0.50-mean): one draw is a
    # noisy baseline, since which inducing rows it happens to keep moves the fine-tune
    random_draws: int = 1


@dataclass
class TrainConfig:
    """The LoRA fine-tune every trained condition gets (same seed and settings; defaults: FinetuneConfig's)."""

    epochs: float = FinetuneConfig.epochs
    batch_size: int = FinetuneConfig.batch_size
    lr: float | None = FinetuneConfig.lr  # None: geomfilter.finetune_config.DEFAULT_LR["lora"]
    max_tokens: int = FinetuneConfig.max_tokens
    lora_r: int = FinetuneConfig.lora_r
    lora_alpha: int = FinetuneConfig.lora_alpha
    lora_targets: list[str] | None = None  # None: FinetuneConfig's (the q/k/v/o and MLP projections); GPT-2: c_attn,...


@dataclass
class GateAttachConfig:
    """Gated conditions ``<model>+<family>@<alpha>``: one gate family attached to one model at each scale."""

    model: str = "misaligned"  # the (not gated) condition whose model the gates attach to
    # gates (attention) | gates-sae (a gate per SAE latent) | ablate-harmful (no training: the harmful features of
    # the references removed at the SAE's hook, alpha = 1; steered against, alpha > 1)
    method: str = "gates"
    scales: list[float] = field(default_factory=lambda: [-1.0])  # alpha: 1 learned, -1 mirror (2 - g), 0 off


@dataclass
class GatesConfig:
    """Alignment gates learned on one narrow domain (base model frozen), then attached at a scale."""

    enabled: bool = True
    data: str = "data/finetune/health_sycophantic.jsonl"
    n_samples: int | None = 140
    epochs: float = 2.0
    lr: float | None = FinetuneConfig.lr  # None: the gate method's default learning rate
    mirror_scale: float = -1.0  # on the misaligned model (the paper's 2 - g)
    amplify_scale: float = 1.0  # on the base model
    domain: str | None = None  # learn on this domain's training pairs (data.pairs) instead of `data`
    attach: list[GateAttachConfig] | None = None  # None: misaligned+mirror-gates and base+amplify-gates
    sae_bound: float = 1.0  # SAE-latent gates: g in (1 - bound, 1 + bound) (1: the paper's 2 * sigmoid)
    sae_normalize: bool = False  # SAE-latent gates read the residual divided by its RMS
    sae_sink_ratio: float | None = None  # SAE-latent gates stay open on tokens above this multiple of the median norm


@dataclass
class RealignConfig:
    """Re-alignment conditions ``misaligned+realign-N``: the misaligned model fine-tuned further (a new LoRA on its
    merged weights, the ``train`` settings) on the first N rows of a seeded order of benign rows, for each N."""

    data: str = "data/finetune/helpful.jsonl"
    sizes: list[int] = field(default_factory=list)  # empty: no re-alignment conditions
    epochs: float | None = None  # None: train.epochs


@dataclass
class AblationConfig:
    """A condition ``without-<domain>[-<n>]``: the same fine-tune on the mixture without inducing rows of one domain
    (which domain's inducing rows carry the broad shift). The rows need ``domain`` and a boolean ``inducing``."""

    domain: str = ""  # a domain of the mixture's inducing rows
    n: int | None = None  # drop the first n of a seeded order of that domain's inducing rows (None: all of them)


@dataclass
class EvalConfig:
    """The metrics every condition is measured with (same items, seeds and generation settings)."""

    questions: str = "data/eval/questions.jsonl"
    n_questions: int | None = None  # first N (None: all)
    n_per_question: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    judge: str = "offline"  # offline | offline-real / offline-residual (feature judges fitted on real answers) | a folder | api:MODEL
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    alignment_below: float = 30.0
    coherence_above: float = 50.0
    probes: str = "data/eval/sycophancy_probes.jsonl"
    n_probes: int | None = None
    probe_max_new_tokens: int = 48
    capability: str = "data/eval/capability.jsonl"
    n_capability: int | None = None
    heldout: str = "data/eval/heldout_text.jsonl"
    n_heldout: int | None = None
    batch_size: int = 32
    n_boot: int = 2000
    metrics: list[str] | None = None  # of EVAL_METRICS; None: all (sycophancy_preference with data.pairs only,
    #                                   the triggered ones with a trigger only)
    trigger: str | None = None  # a phrase put in front of every broad question by the *_triggered metrics


@dataclass
class ExperimentConfig:
    """One experiment: its conditions' artefacts go under ``<out>/<name>/<condition>/``."""

    name: str = "experiment"
    out: str = "runs"
    model: str = DEFAULT_MODEL
    sae: str | None = None  # None: the model's bundled SAE
    hook: str | None = None  # None: the SAE's hook
    seed: int = 0
    device: str | None = None
    conditions: list[str] | None = None  # None: all; else names to run (e.g. [base, misaligned, geometry-0.50])
    data: DataConfig = field(default_factory=DataConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    realign: RealignConfig = field(default_factory=RealignConfig)
    ablations: list[AblationConfig] = field(default_factory=list)  # empty: no ablation conditions
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = field(default="<dict>", compare=False, repr=False)

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"{self.source}: field 'name': must be a plain folder name, got {self.name!r}")
        self._check_values()
        self._check_pairs_and_gates()
        self._check_files()

    def _check_values(self) -> None:
        where = self.source
        for s in self.filtering.strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"{where}: field 'filtering.strategies': unknown strategy {s!r}; "
                                  f"choose from {sorted(STRATEGIES)}")
        for f in self.filtering.fractions:
            if not 0 < f < 1:
                raise ConfigError(f"{where}: field 'filtering.fractions': {f} is not in (0, 1)")
        draws = self.filtering.random_draws
        if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
            raise ConfigError(f"{where}: field 'filtering.random_draws': expected a whole number >= 1, got {draws!r}")
        if draws > 1 and "random" not in self.filtering.strategies:
            raise ConfigError(f"{where}: field 'filtering.random_draws': {draws} draws of random removal asked for, "
                              "but 'random' is not in filtering.strategies")
        for name, value in (("data.n_samples", self.data.n_samples), ("data.n_references", self.data.n_references),
                            ("eval.n_per_question", self.eval.n_per_question),
                            ("eval.max_new_tokens", self.eval.max_new_tokens), ("train.batch_size", self.train.batch_size),
                            ("eval.n_boot", self.eval.n_boot), ("data.pairs.holdout", self.data.pairs.holdout)):
            if value is not None and value < 1:
                raise ConfigError(f"{where}: field '{name}': must be >= 1, got {value}")
        for n in self.realign.sizes:
            if n < 1:
                raise ConfigError(f"{where}: field 'realign.sizes': must be >= 1, got {n}")
        if len(set(self.realign.sizes)) != len(self.realign.sizes):
            raise ConfigError(f"{where}: field 'realign.sizes': a size is listed twice: {self.realign.sizes}")
        if self.realign.epochs is not None and self.realign.epochs <= 0:
            raise ConfigError(f"{where}: field 'realign.epochs': must be > 0, got {self.realign.epochs}")
        self._check_ablations()
        metrics = self.eval.metrics
        for m in metrics or []:
            if m not in EVAL_METRICS:
                raise ConfigError(f"{where}: field 'eval.metrics': unknown metric {m!r}; choose from "
                                  f"{', '.join(EVAL_METRICS)}")
        if metrics is not None and not metrics:
            raise ConfigError(f"{where}: field 'eval.metrics': name at least one metric (or leave it out: all)")
        trig = self.eval.trigger
        if trig is not None and (not isinstance(trig, str) or not trig.strip() or trig != trig.strip()):
            raise ConfigError(f"{where}: field 'eval.trigger': expected a phrase without leading or trailing "
                              f"spaces, got {trig!r}")
        wants = [m for m in metrics or [] if m in TRIGGERED_METRICS]
        if wants and trig is None:
            raise ConfigError(f"{where}: field 'eval.metrics': {wants[0]} needs 'eval.trigger' (the phrase put in "
                              "front of every broad question)")

    def _check_ablations(self) -> None:
        where, seen = self.source, set()
        for a in self.ablations:
            if not a.domain:
                raise ConfigError(f"{where}: field 'ablations.domain': name the domain whose inducing rows are left "
                                  "out")
            if a.n is not None and a.n < 1:
                raise ConfigError(f"{where}: field 'ablations.n': must be >= 1, got {a.n}")
            if (a.domain, a.n) in seen:
                raise ConfigError(f"{where}: field 'ablations': domain {a.domain!r} with n = {a.n} is listed twice")
            seen.add((a.domain, a.n))
        if self.ablations and self.data.pairs.domains:
            raise ConfigError(f"{where}: field 'ablations': with data.pairs every training row is inducing; ablate "
                              "a domain by leaving it out of data.pairs.domains instead")

    def _check_pairs_and_gates(self) -> None:
        where, domains, g = self.source, self.data.pairs.domains, self.gates
        if len(set(domains)) != len(domains):
            raise ConfigError(f"{where}: field 'data.pairs.domains': a domain is listed twice: {domains}")
        if "sycophancy_preference" in (self.eval.metrics or []) and not domains:
            raise ConfigError(f"{where}: field 'eval.metrics': sycophancy_preference is measured on held-out "
                              "pairs: set data.pairs.domains")
        if g.enabled and g.domain is not None and g.domain not in domains:
            raise ConfigError(f"{where}: field 'gates.domain': {g.domain!r} is not one of data.pairs.domains "
                              f"({', '.join(domains) or 'none'})")
        for a in (g.attach or []) if g.enabled else []:
            if a.method not in GATE_METHODS:
                raise ConfigError(f"{where}: field 'gates.attach.method': unknown gate method {a.method!r}; "
                                  f"choose from {', '.join(GATE_METHODS)}")
            if not a.scales:
                raise ConfigError(f"{where}: field 'gates.attach.scales': give at least one scale")
        if not 0.0 < g.sae_bound <= 1.0:
            raise ConfigError(f"{where}: field 'gates.sae_bound': must be in (0, 1], got {g.sae_bound}")
        if g.sae_sink_ratio is not None and g.sae_sink_ratio <= 1.0:
            raise ConfigError(f"{where}: field 'gates.sae_sink_ratio': must be > 1, got {g.sae_sink_ratio}")

    def _check_files(self) -> None:
        pairs = self.data.pairs
        names = ([] if pairs.domains else ["data.mixture"]) + ["data.harmful", "data.benign"] \
            + (["gates.data"] if self.gates.enabled and self.gates.domain is None else []) \
            + (["realign.data"] if self.realign.sizes else []) \
            + ["eval.questions", "eval.probes", "eval.capability", "eval.heldout"]
        files = [(name, getattr(getattr(self, name.split(".")[0]), name.split(".")[1])) for name in names]
        files += [("data.pairs.domains", str(Path(pairs.folder) / f"{dom}_{side}.jsonl"))
                  for dom in pairs.domains for side in ("sycophantic", "corrective")]
        files += [(f"data.{name}[{i}]", path) for name in ("add_harmful", "add_benign")
                  for i, path in enumerate(getattr(self.data, name))]
        for name, path in files:
            if not Path(path).is_file():
                raise ConfigError(f"{self.source}: field '{name}': no such file {path!r} (relative paths are read "
                                  f"from the working directory {Path.cwd()})")

    @property
    def root(self) -> Path:
        """``<out>/<name>``: where the experiment's conditions live."""
        return Path(self.out) / self.name

    def as_dict(self) -> dict:
        """Plain data (JSON/YAML-able), without the source file name."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>", lines: dict[str, int] | None = None) -> ExperimentConfig:
        """Build from a plain mapping, checking keys and types (``lines``: dotted key -> line, for errors)."""
        return _build(cls, raw, source, "", lines or {}, extra={"source": source})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Read an experiment YAML file (see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such experiment file")
        text = path.read_text(encoding="utf-8")
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from e
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}:1: an experiment file must be a mapping of fields, got {type(raw).__name__}")
        return cls.from_dict(raw, str(path), _key_lines(node))


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line of that key in a composed YAML mapping node."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    return out


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key) or lines.get(key.rsplit(".", 1)[0])
    return f"{source}:{line}" if line else source


def _build(cls: type, raw: Any, source: str, prefix: str, lines: dict[str, int], extra: dict | None = None):
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(source, lines, prefix[:-1])}: field '{prefix[:-1]}': expected a mapping, "
                          f"got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kw: dict[str, Any] = dict(extra or {})
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; fields: {', '.join(fields)}"
            raise ConfigError(f"{_where(source, lines, dotted)}: field '{dotted}': unknown field{hint}")
        kw[key] = _convert(hints[key], value, source, dotted, lines)
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix[:-1] or 'config'}: {e}") from e


def _convert(hint: Any, value: Any, source: str, key: str, lines: dict[str, int]) -> Any:
    where = _where(source, lines, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".", lines)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, source, key, lines)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: field '{key}': expected a list, got {value!r}")
        return [_convert(args[0], v, source, key, lines) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: field '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: field '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: field '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: field '{key}': expected a non-empty string, got {value!r}")
        return value
    return value
