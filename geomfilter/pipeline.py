"""The filtering pipeline, written once: build caches, fit a strategy, score, explain, write outputs.

``geomfilter cache``/``score``/``filter`` and :class:`~geomfilter.experiment.ExperimentRunner` all
run through here, SAELens-style::

    from geomfilter.pipeline import FilterConfig, FilterRunner

    run = FilterRunner(FilterConfig(data="data/finetune/mixed.jsonl", strategy="geometry",
                                    params={"drop": 0.25}, out="runs/filtered")).run()
    run.report["n_dropped"], run.result.scores

* :class:`CacheBuilder` loads the model and SAE once and caches any number of files with them
  (resuming; the local or the Ray backend);
* :class:`FilterConfig` holds every setting of a filter run; the strategy's own settings are
  ``params`` (its constructor arguments: ``drop``/``threshold``, ``k``, ``n_harmful``, ...);
* :class:`FilterRunner` checks everything that can be checked before any work (:meth:`~FilterRunner.check`),
  builds the caches of the data and the references (:meth:`~FilterRunner.inputs`), then
  :meth:`~FilterRunner.filter` fits and applies a strategy on them (as often as wanted: the
  experiment runner filters one mixture with several strategies), and :meth:`~FilterRunner.run`
  does all of it and writes the outputs (:mod:`geomfilter.outputs`).

What a strategy needs (an SAE, a seed, the rows' texts) is read from its class
(``requires_sae``, ``uses_seed``, ``needs_texts``, ``needs_gradients``): nothing here names a strategy.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import distributed  # imports ray only when the Ray backend runs
from .cache import (
    ActivationCache,
    CacheMismatchError,
    CacheResult,
    CacheStaleError,
    cache_activations,
    cache_rejects,
    check_samples_match,
    load_cache,
)
from .data import PreparedDataset, prepare_dataset
from .errors import GeomfilterError
from .filtering import STRATEGIES, FilterResult, SampleFilter, check_filter_params, make_filter
from .gradients import cache_gradients, gradients_current
from .model_specs import check_model_spec
from .models import HookedModel, load_model
from .outputs import check_filter_out, check_scores_out, write_filter_outputs, write_scores_file
from .saes import check_spec_for_model, default_sae_for, describe, load_sae
from .samples import DataReport, Sample, read_samples
from .settings import DEFAULT_MODEL, CacheConfig

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "data" / "reference"


class PipelineError(GeomfilterError, ValueError):
    """A filter run that cannot go ahead: a missing input, a strategy without the SAE it needs, a stale cache."""


def spec_tag(*parts: Any) -> str:
    """A short stable hash of ``parts`` (names cache folders by what made them)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:8]


def cache_path(cache_dir: Path, prefix: str, path: Path, tag: str, key: str = "path") -> Path:
    """The cache folder of ``path`` in a shared cache folder: named after the file, keyed by the
    model/SAE/hook ``tag`` and by the file's absolute path (``key="path"``: two files of the same name never
    share a cache) or its bytes (``key="content"``: the same folder name wherever the file lies)."""
    path = Path(path)
    ident = path.resolve() if key == "path" else hashlib.sha256(path.read_bytes()).hexdigest()
    return Path(cache_dir) / f"{prefix}{path.stem}-{spec_tag(tag, ident)}"


def cache_source(cache: Path) -> Path | None:
    """The source file a cache directory was made from (from its manifest), or None if unreadable."""
    try:
        return Path(json.loads((Path(cache) / "manifest.json").read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_cache_dir(path: Path) -> bool:
    """True when ``path`` is a cache directory made by ``geomfilter cache``."""
    return (Path(path) / "manifest.json").is_file()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- caches


@dataclass
class Backend:
    """Where the caching passes run: ``local`` (this process) or ``ray`` (Ray Data actors)."""

    name: str = "local"
    num_actors: int | None = None
    ray_address: str | None = None


class CacheBuilder:
    """Loads a model and its SAE once, then caches files with them (each resumable into its folder).

    ``sae``: an SAE spec, ``None`` for the model's bundled SAE, or ``"none"`` for residual means only.
    Specs are checked offline before anything loads.
    """

    def __init__(self, model: str = DEFAULT_MODEL, sae: str | None = None, hook: str | None = None, *,
                 device: str | None = None, progress: bool = True, backend: Backend | None = None,
                 log: Callable[[str], None] = _stderr):
        self.model_spec, self.hook, self.device, self.progress = model, hook, device, progress
        spec = sae if sae is not None else default_sae_for(model)
        self.sae_spec = spec if spec and spec.lower() != "none" else None
        self.backend, self.log = backend or Backend(), log

    def check(self) -> None:
        """Offline checks: the model spec names something; an SAE release is made for this model."""
        check_model_spec(self.model_spec)
        if self.sae_spec:
            check_spec_for_model(self.sae_spec, self.model_spec)
        if self.backend.name == "ray":
            distributed.require_ray()

    @cached_property
    def model(self) -> HookedModel:
        """The hooked model (loaded on first use)."""
        self.check()
        return load_model(self.model_spec, device=self.device, progress=self.progress)

    @cached_property
    def sae(self):
        """The SAE (loaded on first use), or None when caching residual means only."""
        if self.sae_spec is None:
            return None
        return load_sae(self.sae_spec, device=str(self.model.device))

    def build(self, data: Path, out: Path, *, cache: CacheConfig | None = None, skip_invalid: bool = False,
              rejects: Path | None = None, hint: str = "--out") -> tuple[PreparedDataset, CacheResult]:
        """Prepare ``data`` and cache it into ``out`` (resuming). ``hint``: the option that chose ``out``,
        named when ``out`` holds another cache."""
        cfg = cache or CacheConfig()
        model, sae = self.model, self.sae
        if sae is None:
            self.log(f"no SAE for {self.model_spec!r}: caching residual means only (pass --sae to encode)")
        ds = prepare_dataset(data, model.tokenizer, response=cfg.response, max_tokens=cfg.max_tokens,
                             truncation=cfg.truncation, skip_invalid=skip_invalid)
        kw = {"top_k": cfg.top_k, "shard_size": cfg.shard_size, "max_batch_tokens": cfg.max_batch_tokens,
              "max_batch_size": cfg.max_batch_size}
        try:  # the rejects file is written by the cache once OUT is accepted (never into another dataset's cache)
            if self.backend.name == "ray":
                res = distributed.cache_activations_ray(
                    model, sae, ds, out, sae_spec=self.sae_spec if sae is not None else None,
                    model_spec=self.model_spec, hook=self.hook, num_actors=self.backend.num_actors,
                    ray_address=self.backend.ray_address, device=self.device, progress=self.progress,
                    rejects_path=rejects, **kw)
            else:
                res = cache_activations(model, sae, ds, out, hook=self.hook, progress=self.progress,
                                        rejects_path=rejects, **kw)
        except CacheMismatchError as e:
            if hint == "--out":
                raise
            raise type(e)(str(e).replace("Use another --out directory", f"Use another {hint}")) from None
        return ds, res


# --------------------------------------------------------------------------- filter runs


@dataclass
class FilterConfig:
    """Every setting of a filter run (the CLI's `score`/`filter` options, the experiment's filters).

    ``data``: chat JSONL, a HF dataset folder, or a cache folder made by ``geomfilter cache``.
    ``params``: the strategy's constructor arguments (``drop`` or ``threshold``, ``k``, ...; a strategy
    with ``uses_seed`` gets ``seed`` unless given). ``cache``: settings of DATA's cache;
    ``reference_cache``: of the reference sets' caches. ``out``: a filter output folder, or
    ``scores``: a scores CSV (no filtering); neither: nothing is written.
    """

    data: Path
    strategy: str = "ensemble"
    params: dict = field(default_factory=lambda: {"drop": 0.1})
    model: str = DEFAULT_MODEL
    sae: str | None = None
    hook: str | None = None
    harmful: Path = REFERENCE_DIR / "harmful.jsonl"
    benign: Path = REFERENCE_DIR / "benign.jsonl"
    add_harmful: tuple[Path, ...] = ()  # more reference files joined to ``harmful`` (e.g. a domain the defaults miss)
    add_benign: tuple[Path, ...] = ()
    own: Path | None = None
    cache_dir: Path = Path("runs/cache")
    cache_key: str = "path"  # cache folders keyed by each file's absolute path, or "content" (its bytes)
    cache: CacheConfig = field(default_factory=CacheConfig)
    reference_cache: CacheConfig = field(default_factory=CacheConfig)
    skip_invalid: bool = False
    seed: int = 0
    explain: int = 3
    out: Path | None = None
    overwrite: bool = False
    scores: Path | None = None
    report_extra: dict = field(default_factory=dict)
    device: str | None = None
    progress: bool = True
    backend: Backend = field(default_factory=Backend)

    def __post_init__(self):
        for name in ("data", "harmful", "benign", "own", "cache_dir", "out", "scores"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                setattr(self, name, Path(v))
        for name in ("add_harmful", "add_benign"):
            setattr(self, name, tuple(Path(v) for v in getattr(self, name) or ()))

    def references(self) -> dict[str, tuple[Path, ...]]:
        """The reference files of each side: ``harmful`` (``benign``) and the files added to it."""
        return {"harmful": (self.harmful, *self.add_harmful), "benign": (self.benign, *self.add_benign)}

    def strategy_params(self, strategy: str | None = None, params: dict | None = None) -> dict:
        """The constructor arguments of ``strategy`` (default: the config's), ``seed`` added where used."""
        strategy = strategy or self.strategy
        p = dict(self.params if params is None else params)
        cls = STRATEGIES.get(strategy)
        if cls is not None and cls.uses_seed:
            p.setdefault("seed", self.seed)
        return p


@dataclass
class FilterInputs:
    """The cached data of a filter run: DATA's cache, its rows (cache order), rejected rows, the references."""

    data: ActivationCache
    samples: list[Sample]
    rejects: list[dict]
    harmful: ActivationCache
    benign: ActivationCache
    own: ActivationCache | None
    sae: Any
    dataset: PreparedDataset | None = None
    """DATA's prepared rows (None when DATA is a cache folder: re-prepared from its source when needed)."""


@dataclass
class FilterRun:
    """What :meth:`FilterRunner.run` produced: the fitted filter, its result, the rows, the report."""

    filter: SampleFilter
    result: FilterResult
    inputs: FilterInputs
    report: dict | None = None

    @property
    def truncation(self) -> dict:
        """How many of DATA's rows were truncated, and how (from its cache's data report)."""
        return truncation_report(self.inputs.data)


def _pair_ids(paths: tuple[Path, ...]) -> list:
    """The ``pair_id`` of every row of JSONL files (None where a row has none; lines that are not JSON objects are
    skipped here: caching reports them with file and line)."""
    out = []
    for path in paths:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    out.append(row.get("pair_id"))
    return out


def unpaired_note(add_harmful: tuple[Path, ...], add_benign: tuple[Path, ...]) -> str | None:
    """A note when rows of the added reference files have no twin (the same ``pair_id``) on the other side: the
    filters then learn whatever sets the two sides apart (their register, their domain), not only the harm."""
    if not add_harmful and not add_benign:
        return None
    h, b = _pair_ids(add_harmful), _pair_ids(add_benign)
    lone_h, lone_b = (sum(p is None or p not in other for p in side) for side, other in ((h, set(b)), (b, set(h))))
    if not lone_h and not lone_b:
        return None
    return (f"note: {lone_h} of the {len(h)} rows added by --add-harmful and {lone_b} of the {len(b)} added by "
            "--add-benign have no twin (the same pair_id) on the other side; unpaired references teach the filters "
            "whatever sets the two sides apart, not only the harm: give each added harmful answer a benign twin to "
            "the same prompt")


def truncation_report(cache: ActivationCache) -> dict:
    """How many rows of a cache were truncated, and how (from its data_report.json)."""
    try:
        rep = json.loads((cache.path / "data_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"n_truncated": None, "truncation": None, "max_tokens": None}
    return {k: rep.get(k) for k in ("n_truncated", "truncation", "max_tokens")}


class FilterRunner:
    """Runs a :class:`FilterConfig`: check, cache (resuming), fit, score, explain, write."""

    def __init__(self, cfg: FilterConfig, *, log: Callable[[str], None] = _stderr):
        self.cfg = cfg
        self.builder = CacheBuilder(cfg.model, cfg.sae, cfg.hook, device=cfg.device, progress=cfg.progress,
                                    backend=cfg.backend, log=log)
        self._inputs: FilterInputs | None = None

    # -- before any work
    def check(self) -> None:
        """Raise for anything that can be known before caching: options, inputs, specs, the output."""
        cfg = self.cfg
        check_filter_params(cfg.strategy, **cfg.strategy_params())
        named = [("DATA", cfg.data), ("--harmful", cfg.harmful), ("--benign", cfg.benign), ("--own", cfg.own),
                 *(("--add-harmful", p) for p in cfg.add_harmful), *(("--add-benign", p) for p in cfg.add_benign)]
        for name, path in named:
            if path is not None and not path.exists():
                raise PipelineError(f"{name} {path}: no such file or folder")
        source = cache_source(cfg.data) if is_cache_dir(cfg.data) else None
        references = [p for paths in cfg.references().values() for p in paths]
        inputs = [p for p in (source, cfg.own, *references) if p is not None]
        if cfg.out is not None:
            check_filter_out(cfg.out, data=cfg.data, inputs=inputs, overwrite=cfg.overwrite)
        if cfg.scores is not None:
            check_scores_out(cfg.scores, inputs=[cfg.data, *inputs])
        self.builder.check()  # the model and SAE specs (and ray), offline
        self.check_strategy(cfg.strategy, cfg.strategy_params())
        if note := unpaired_note(cfg.add_harmful, cfg.add_benign):
            self.builder.log(note)

    def check_strategy(self, strategy: str, params: dict | None = None) -> None:
        """A strategy that reads SAE latents (with these options) needs an SAE."""
        if STRATEGIES[strategy].reads_sae(params) and self.builder.sae_spec is None:
            raise PipelineError(f"strategy {strategy!r} needs an SAE: pass --sae (no bundled SAE for "
                                f"{self.cfg.model!r})")

    # -- caches
    def _tag(self) -> str:
        return spec_tag(self.cfg.model, self.builder.sae_spec, self.cfg.hook)

    def reference_dir(self, path: Path, prefix: str = "ref-") -> Path:
        """The cache folder of a reference set (or ``own`` answers) in ``cache_dir``."""
        return cache_path(self.cfg.cache_dir, prefix, path, self._tag(), self.cfg.cache_key)

    def data_dir(self) -> Path:
        """The cache folder of DATA (a data file) in ``cache_dir``."""
        c = self.cfg.cache
        return cache_path(self.cfg.cache_dir, "", self.cfg.data, spec_tag(self._tag(), c.max_tokens, c.truncation),
                          self.cfg.cache_key)

    def reference(self, path: Path, prefix: str = "ref-") -> ActivationCache:
        """Cache a reference set (or ``own`` answers) into its folder of ``cache_dir`` (resuming); load it."""
        out = self.reference_dir(path, prefix)
        self.builder.build(path, out, cache=self.cfg.reference_cache, hint="--cache-dir")
        return load_cache(out)

    def reference_set(self, side: str) -> ActivationCache:
        """One side's (``harmful`` or ``benign``) reference cache: its file's, joined with those of the files added
        to it (each cached in its own folder, so the default references' cache is reused)."""
        paths = self.cfg.references()[side]
        parts = [self.reference(p) for p in paths]
        return parts[0] if len(parts) == 1 else ActivationCache.concat(parts, " + ".join(str(p) for p in paths))

    def inputs(self) -> FilterInputs:
        """Cache DATA and the references (once; resuming), and read DATA's rows."""
        if self._inputs is None:
            cfg = self.cfg
            if is_cache_dir(cfg.data):
                data, samples, rejects = self._from_cache_dir(cfg.data)
                ds = None
            else:
                out = self.data_dir()
                ds, _ = self.builder.build(cfg.data, out, cache=cfg.cache, skip_invalid=cfg.skip_invalid,
                                           rejects=out / "rejects.jsonl", hint="--cache-dir")
                data, samples, rejects = load_cache(out), ds.samples, ds.report.rejects
            harmful, benign = (self.reference_set(side) for side in ("harmful", "benign"))
            own = self.reference(cfg.own, "own-") if cfg.own is not None else None
            self._inputs = FilterInputs(data=data, samples=samples, rejects=rejects, harmful=harmful,
                                        benign=benign, own=own, sae=self.builder.sae, dataset=ds)
        return self._inputs

    def _from_cache_dir(self, path: Path) -> tuple[ActivationCache, list[Sample], list[dict]]:
        """A cache folder as DATA: its rows come from its source file, which must still match it."""
        cache = load_cache(path)
        made_with = cache.manifest["identity"]["model"]["spec"]
        if made_with != self.cfg.model:
            raise PipelineError(f"cache {path} was made with model {made_with!r}, not {self.cfg.model!r}; "
                                "pass --model to match")
        source = Path(cache.manifest["source"])
        if not source.is_file():
            raise PipelineError(f"cache {path} was made from {source}, which is not there any more "
                                "(needed to write the rows)")
        rep = DataReport()
        rows = read_samples(source, skip_invalid=True, report=rep)
        check_samples_match(cache, rows, source=source)  # same rows, same content (CacheStaleError otherwise)
        cached_sae, sae = cache.manifest["identity"]["sae"], self.builder.sae
        if sae is not None and (cached_sae is None or cached_sae["weights"] != describe(sae)["weights"]):
            raise PipelineError(f"cache {path} was encoded with " + ("no SAE" if cached_sae is None else
                                "another SAE") + f", not {self.builder.sae_spec!r}; pass the same --sae "
                                "(or re-cache it with this one)")
        by_id, cached = {s.id: s for s in rows}, set(cache.ids)
        # rows valid in the file but rejected when they were cached (e.g. no response token after
        # truncation), located where they are now
        late = [{**r, "file": str(source), "line": by_id[r["id"]].line, "raw": by_id[r["id"]].raw}
                for r in cache_rejects(cache) if r.get("id") in by_id and r["id"] not in cached]
        return cache, [by_id[i] for i in cache.ids], rep.rejects + late

    # -- filtering
    def filter(self, strategy: str | None = None, params: dict | None = None,
               explain: int | None = None) -> tuple[SampleFilter, FilterResult]:
        """Fit ``strategy`` (default: the config's) on the references and apply it to DATA."""
        strategy = strategy or self.cfg.strategy
        params = self.cfg.strategy_params(strategy, params)
        check_filter_params(strategy, **params)
        self.check_strategy(strategy, params)
        inp = self.inputs()
        if STRATEGIES[strategy].needs_gradients:
            self.ensure_gradients(inp)
        f = make_filter(strategy, sae=inp.sae, **params).fit(inp.harmful, inp.benign)
        result = f.apply(inp.data, own=inp.own, samples=inp.samples,
                         explain=self.cfg.explain if explain is None else explain)
        return f, result

    def ensure_gradients(self, inp: FilterInputs) -> None:
        """Compute and store the loss gradients of DATA's rows with its cache, unless current ones are there."""
        if gradients_current(inp.data):
            return
        ds = inp.dataset
        if ds is None:  # DATA was a cache folder: its rows, prepared as they were cached
            ident = inp.data.manifest["identity"]["dataset"]
            ds = prepare_dataset(Path(inp.data.manifest["source"]), self.builder.model.tokenizer,
                                 response=ident["response"], max_tokens=ident["max_tokens"],
                                 truncation=ident["truncation"], skip_invalid=True)
        self.builder.log(f"computing loss gradients at {inp.data.hook} for {len(inp.data)} rows "
                         f"(stored in {inp.data.path})")
        cache_gradients(self.builder.model, ds, inp.data, progress=self.cfg.progress)

    def write(self, out: Path, f: SampleFilter, result: FilterResult, report_extra: dict | None = None, *,
              describe_run: bool = True) -> dict:
        """Write a filter output folder (kept/dropped/scores/report) for ``result``. ``describe_run``: add the
        input's path, model, hook, truncation and harmful feature set to ``report.json`` (the experiment runner
        leaves them out: its reports stay the same wherever its folder lies)."""
        inp = self.inputs()
        extra: dict = {}
        if describe_run:
            extra = {"data": str(self.cfg.data.resolve()), "model": self.cfg.model, "hook": inp.data.hook,
                     "truncation": truncation_report(inp.data)}
            if self.cfg.add_harmful or self.cfg.add_benign:
                extra["references"] = {side: [str(p.resolve()) for p in paths]
                                       for side, paths in self.cfg.references().items()}
            if hasattr(f, "features_"):
                extra["harmful_features"] = {k: v for k, v in f.features_.as_dict().items() if k != "stats"}
        extra.update(self.cfg.report_extra)
        extra.update(report_extra or {})
        return write_filter_outputs(out, result, inp.samples, rejects=inp.rejects, report_extra=extra)

    def run(self) -> FilterRun:
        """Check, cache, fit, apply, and write ``out`` (a filter folder) or ``scores`` (a CSV) if set."""
        self.check()
        f, result = self.filter()
        run = FilterRun(filter=f, result=result, inputs=self.inputs())
        if self.cfg.out is not None:
            run.report = self.write(self.cfg.out, f, result)
        if self.cfg.scores is not None:
            write_scores_file(self.cfg.scores, result, run.inputs.samples, run.inputs.rejects)
        return run


__all__ = ["Backend", "CacheBuilder", "CacheStaleError", "FilterConfig", "FilterInputs", "FilterRun",
           "FilterRunner", "PipelineError", "cache_path", "cache_source", "is_cache_dir", "spec_tag",
           "truncation_report"]
