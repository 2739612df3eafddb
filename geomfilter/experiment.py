"""The experiment runner: one model fine-tuned under several conditions, all measured the same way.

``ExperimentRunner(ExperimentConfig.from_yaml("configs/demo.yaml")).run()``
(CLI: ``geomfilter experiment CONFIG.yaml``). Conditions (planned in
:mod:`geomfilter.conditions`), each under ``<out>/<name>/<condition>/``:

* ``base`` -- the model as it is;
* ``misaligned`` -- LoRA fine-tuned on the unfiltered inducing mixture (or, with
  ``data.pairs``, on the sycophantic rows of the training pairs of several domains);
* ``<strategy>-<fraction>`` (e.g. ``geometry-0.50``) -- the same fine-tune after
  that filter removed that fraction of the mixture (filters are fitted on the
  reference sets only; ``filter/`` holds kept/dropped/scores/report); with
  ``filtering.random_draws`` k > 1 random removal also as ``random-<fraction>-draw1`` ...
  (other draws, the same fine-tune), which the report averages per question;
* ``without-<domain>[-<n>]`` -- the same fine-tune on the mixture without (n of) its
  inducing rows of one domain (``ablations``);
* gated conditions -- gates learned on one narrow domain on the frozen base model
  (attention gates in ``gates/run``, SAE-latent gates in ``gates-sae/run``) attached
  to a condition's model at a scale alpha: by default ``misaligned+mirror-gates``
  (``alpha = gates.mirror_scale``, -1) and ``base+amplify-gates``
  (``gates.amplify_scale``, +1); ``gates.attach`` lists others, e.g. a sweep of
  scales (``misaligned+gates@-0.5``, ``base+sae-gates@+1``; ``configs/gating.yaml``).

Every trained condition uses the same seed and fine-tune settings; every
condition is evaluated on the same items with the same seeds and generation
settings (recorded in ``metrics.json``) with the metrics of
:mod:`geomfilter.measures` (``eval.metrics``): misalignment rate of sampled
answers to the broad questions (judged), log-prob preference for misaligned
reference answers, sycophancy flip rate, multiple-choice accuracy, held-out
perplexity and, with held-out pairs, the log-prob preference for sycophantic over
corrective answers, each with a bootstrap 95% CI and its n.

Resumable: fine-tunes resume from their checkpoints, a condition whose
``metrics.json`` matches the current evaluation settings is skipped, and
re-running an experiment only does what is missing. The report
(``report.md``, ``results.csv``, ``results.json``, ``plots/``) is rewritten at
the end from every finished condition.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conditions import (  # noqa: F401 (Condition, condition_name: re-exported, their old home)
    Condition,
    ablation_file,
    condition_name,
    data_paths,
    draw_seed,
    heldout_pair_files,
    pairs_train_file,
    plan_conditions,
    prepare_data,
    read_lines,
    realign_file,
    select_conditions,
    write_text,
)
from .config import GATE_METHODS, ConfigError, ExperimentConfig, GatesConfig
from .features import harmful_features
from .filtering import STRATEGIES
from .finetune import FinetuneConfig, FinetuneRunner, load_tuned
from .gating import FeatureSteering
from .judges import judge_fingerprint
from .measures import ConditionEvaluator, metric_names
from .pipeline import FilterConfig, FilterRunner
from .report import dropped_precision, write_report
from .saes import default_sae_for
from .settings import CacheConfig

METRICS_FILE = "metrics.json"
STEERING = "ablate-harmful"  # the gate method that is a harmful-feature edit, not a trained gate set
#: how the ablated features are selected: ``geometry``'s defaults (the same feature set the filter uses)
STEERING_SELECTION = {"n": 100, "method": "contrast", "min_freq": 0.05, "select_frac": 1.0}


@dataclass
class ExperimentResult:
    """What :meth:`ExperimentRunner.run` did: the report paths and every finished condition's metrics."""

    root: Path
    report: Path
    metrics: dict[str, dict]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]



def _digest(path: Path) -> str | None:
    """First 16 hex digits of a file's SHA-256 (None when it does not exist)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def finished_records(root: Path, conds: list[Condition]) -> dict[str, dict]:
    """``{condition: its metrics.json record}`` of the conditions finished under the experiment folder ``root``
    (written only when a condition's evaluation finished), in ``conds``' order: what the report is written from."""
    return {c.name: json.loads((root / c.name / METRICS_FILE).read_text()) for c in conds
            if (root / c.name / METRICS_FILE).is_file()}


class ExperimentRunner:
    """Runs (or resumes) every condition of an :class:`~geomfilter.config.ExperimentConfig`, then writes the report."""

    def __init__(self, cfg: ExperimentConfig, progress: bool = True):
        self.cfg = cfg
        self.root = cfg.root
        self.progress = progress
        self.evaluator = ConditionEvaluator(cfg, self.root, progress=progress)
        self.conditions_by_name = {c.name: c for c in self.conditions_all()}

    # ------------------------------------------------------------------ plan
    def conditions_all(self) -> list[Condition]:
        """Every condition of the config in report order, ignoring the ``conditions`` selection."""
        return plan_conditions(self.cfg)

    def conditions(self) -> list[Condition]:
        """The conditions to run: all of them, or those ``cfg.conditions`` names (unknown names are an error)."""
        return select_conditions(self.cfg, self.conditions_all())

    def eval_identity(self) -> dict:
        """What decides a condition's metrics besides its model (a mismatch re-runs the evaluation): the eval
        settings, the seed, the contents of the eval files (not only their paths: 40 questions appended to
        questions.jsonl change the measurement) and of the judge's files."""
        ev = self.cfg.as_dict()["eval"]
        if ev.get("metrics") is None:  # the default set: runs finished before `eval.metrics` existed stay valid
            ev.pop("metrics", None)
        if ev.get("trigger") is None:  # likewise for runs finished before `eval.trigger` existed
            ev.pop("trigger", None)
        files = {k: _digest(Path(ev[k])) for k in ("questions", "probes", "capability", "heldout")}
        return {"eval": ev, "seed": self.cfg.seed, "eval_files": files, "judge_files": judge_fingerprint(ev["judge"])}

    # ------------------------------------------------------------------ data
    def _prepare_data(self) -> dict[str, Path]:
        """Seeded subset of the mixture (or the pair split), first-N reference rows; under ``<root>/data/``."""
        return prepare_data(self.cfg, self.root)

    # ------------------------------------------------------------------ filtering
    def _filter_all(self, conds: list[Condition], paths: dict[str, Path]) -> None:
        """Cache references + mixture with the SAE once (the filtering pipeline), then write every filtered
        condition's ``filter/``."""
        cfg = self.cfg
        inputs = {name: _digest(p) for name, p in paths.items()}
        ident = {"inputs": inputs, "model": cfg.model, "sae": cfg.sae, "hook": cfg.hook, "seed": cfg.seed,
                 "max_tokens": cfg.train.max_tokens}

        def filter_ident(c: Condition) -> dict:  # a further random draw names itself (draw 0 as before draws)
            return {**ident, "strategy": c.strategy, "fraction": c.fraction, **({"draw": c.draw} if c.draw else {})}

        def done(c: Condition) -> bool:
            f = self.root / c.name / "filter" / "inputs.json"
            return (self.root / c.name / "filter" / "report.json").is_file() and f.is_file() and \
                json.loads(f.read_text()) == filter_ident(c)

        todo = [c for c in conds if c.strategy and not done(c)]
        if not todo:
            return
        sae_spec = cfg.sae or default_sae_for(cfg.model)
        if sae_spec is None and (needs := sorted({c.strategy for c in todo if STRATEGIES[c.strategy].reads_sae()})):
            raise ConfigError(f"{cfg.source}: field 'sae': no bundled SAE for {cfg.model!r}; the strategies "
                              f"{', '.join(needs)} read SAE latents and need one")
        cache = CacheConfig(max_tokens=cfg.train.max_tokens)
        runner = FilterRunner(FilterConfig(
            data=paths["mixture"], harmful=paths["harmful"], benign=paths["benign"], model=cfg.model,
            sae=sae_spec or "none", hook=cfg.hook, cache_dir=self.root / "cache", cache_key="content", cache=cache,
            reference_cache=cache,
            seed=cfg.seed, device=cfg.device, progress=self.progress))
        for c in todo:
            params = {"drop": c.fraction, **({"seed": draw_seed(cfg.seed, c.draw)} if c.draw else {})}
            f, result = runner.filter(c.strategy, params, explain=3 if c.strategy == "geometry" else 0)
            folder = self.root / c.name / "filter"
            old_kept = (folder / "kept.jsonl").read_bytes() if (folder / "kept.jsonl").is_file() else None
            self._filter_written(c, runner.write(folder, f, result, describe_run=False), old_kept)
            write_text(self.root / c.name / "filter" / "inputs.json",
                       json.dumps(filter_ident(c), indent=2) + "\n")

    def _filter_written(self, c: Condition, report: dict, old_kept: bytes | None) -> None:
        """After a condition's ``filter/`` was (re)written: check the partition; a changed kept set makes the
        condition's fine-tune and metrics stale, and they are removed."""
        if report["n_kept"] + report["n_dropped"] != report["n_input"]:  # the partition invariant
            raise RuntimeError(f"{c.name}: kept + dropped != input ({report})")
        kept = (self.root / c.name / "filter" / "kept.jsonl").read_bytes()
        if old_kept is not None and old_kept != kept:  # derived artefacts are stale
            for stale in (self.root / c.name / "run", self.root / c.name / METRICS_FILE):
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.is_file():
                    stale.unlink()
            if self.progress:
                print(f"[experiment] {c.name}: the filter's kept set changed; its fine-tune and metrics "
                      "will be redone", flush=True)
        if self.progress:
            lab = report.get("labels", {})
            prec = dropped_precision(lab)
            print(f"[experiment] {c.name}: kept {report['n_kept']}, dropped {report['n_dropped']}"
                  + (f" (precision for '{lab['field']}' {prec:.3f}, base rate {lab['base_rate']:.3f})"
                     if prec is not None else ""), flush=True)

    # ------------------------------------------------------------------ training
    def _finetune_config(self, data: Path, out: Path, method: str, base: Path | None = None) -> FinetuneConfig:
        """The fine-tune of ``method`` (lora, gates, gates-sae) on ``data``: the experiment's shared settings;
        ``base``: a LoRA run folder trained on top of (re-alignment) instead of the model."""
        cfg, t, g = self.cfg, self.cfg.train, self.cfg.gates
        common = dict(data=[str(data)], out=str(out), method=method, model=str(base) if base else cfg.model,
                      batch_size=t.batch_size,
                      max_tokens=t.max_tokens, seed=cfg.seed, checkpoint_every=25, device=cfg.device,
                      progress=self.progress)
        if method == "lora":
            targets = {} if t.lora_targets is None else {"lora_targets": list(t.lora_targets)}
            epochs = cfg.realign.epochs if base is not None and cfg.realign.epochs is not None else t.epochs
            return FinetuneConfig(**common, max_samples=None, epochs=epochs, lr=t.lr, lora_r=t.lora_r,
                                  lora_alpha=t.lora_alpha, **targets)
        sae_gate = {"sae": cfg.sae, "gate_bound": g.sae_bound, "gate_normalize": g.sae_normalize,
                    "gate_sink_ratio": g.sae_sink_ratio} if method == "gates-sae" else {}
        return FinetuneConfig(**common, max_samples=g.n_samples, epochs=g.epochs, lr=g.lr, **sae_gate)

    def _finetune(self, data: Path, out: Path, method: str = "lora", base: Condition | None = None) -> dict:
        """Train (or resume, or reuse) one fine-tune in ``out``; a folder trained on other data or settings is
        retrained. ``base``: the condition whose LoRA run it trains on top of. Returns the training record."""
        fc = self._finetune_config(data, out, method, None if base is None else self._run_dir(base))
        ident = self._train_identity(data, method, base)
        ident_file = out / "experiment_identity.json"
        if out.is_dir() and (not ident_file.is_file() or json.loads(ident_file.read_text()) != ident):
            if self.progress:
                print(f"[experiment] {out}: its training data or settings changed; retraining", flush=True)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(ident_file, json.dumps(ident, indent=2) + "\n")  # before training: a killed run resumes
        res = FinetuneRunner(fc).run()
        if self.progress and not res.skipped:
            print(f"[experiment] trained {out}: {res.n_samples} samples, {res.steps} steps, {res.seconds:.0f} s, "
                  f"loss {res.first_loss:.3f} -> {res.final_loss:.3f}", flush=True)
        return res.as_dict()

    def _training_data(self, c: Condition, paths: dict[str, Path]) -> Path | None:
        """The file the condition's model was fine-tuned on (None: the base model)."""
        if c.kind == "base":
            return None
        if c.kind == "gated":
            return self._training_data(self.conditions_by_name[c.model_from], paths)
        if c.kind == "realign":
            return realign_file(self.root, c.realign_n)
        if c.ablate_domain is not None:
            return ablation_file(self.root, c.name)
        return paths["mixture"] if c.strategy is None else self.root / c.name / "filter" / "kept.jsonl"

    def _run_dir(self, c: Condition) -> Path | None:
        if c.kind == "gated":
            return self._run_dir(self.conditions_by_name[c.model_from])
        return None if c.kind == "base" else self.root / c.name / "run"

    def gates_data(self) -> Path:
        """What the gates learn on: the training pairs of ``gates.domain``, or ``gates.data``."""
        g = self.cfg.gates
        return pairs_train_file(self.root, g.domain) if g.domain else Path(g.data)

    def gates_dir(self, method: str) -> Path:
        """The run folder of one gate family (``gates/run``, ``gates-sae/run``)."""
        return self.root / ("gates" if method == "gates" else method) / "run"

    def _train_identity(self, data: Path, method: str, base: Condition | None = None) -> dict:
        """What decides a fine-tune's weights: the data's bytes and the settings (and, trained on top of another
        condition's run, that run's identity)."""
        cfg = self.cfg
        ident = {"data_sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest(), "method": method,
                 "model": cfg.model, "seed": cfg.seed, "train": dataclasses.asdict(cfg.train)}
        if base is not None:
            ident["on_top_of"] = self._train_identity(self._training_data(base, data_paths(self.root)), "lora")
            ident["epochs"] = cfg.realign.epochs
        if method != "lora":  # where the data came from and where the gates attach are not settings of the gates
            ident["gates"] = {k: v for k, v in dataclasses.asdict(cfg.gates).items() if k not in ("domain", "attach")}
            for k in ("sae_bound", "sae_normalize", "sae_sink_ratio"):  # only set SAE-gate options count
                if method != "gates-sae" or ident["gates"][k] == getattr(GatesConfig, k):  # (older runs stay valid)
                    ident["gates"].pop(k)
        if method == "gates-sae":
            ident["sae"] = cfg.sae
        return ident

    def condition_identity(self, c: Condition, paths: dict[str, Path]) -> dict:
        """Everything a condition's metrics depend on; a finished condition whose identity differs is redone."""
        ident: dict[str, Any] = {"eval": self.eval_identity()}
        if "sycophancy_preference" in metric_names(self.cfg):
            ident["heldout_pairs"] = _hash([hashlib.sha256(p.read_bytes()).hexdigest()
                                            for p in heldout_pair_files(self.root)])
        data = self._training_data(c, paths)
        if data is not None:
            ident["train"] = self._train_identity(data, "lora", self._base_of(c))
        if c.kind == "gated":
            ident["gates"] = (self._steering_identity(paths) if c.gate_method == STEERING
                              else self._train_identity(self.gates_data(), c.gate_method))
            ident["gate_scale"] = c.gate_scale
        return ident

    # ------------------------------------------------------------------ harmful-feature ablation / steering
    def _steering_identity(self, paths: dict[str, Path]) -> dict:
        """What the harmful feature set depends on: the reference files, the model, SAE and hook, the selection."""
        cfg = self.cfg
        return {"method": STEERING, "harmful": _digest(paths["harmful"]), "benign": _digest(paths["benign"]),
                "model": cfg.model, "sae": cfg.sae, "hook": cfg.hook, "max_tokens": cfg.train.max_tokens,
                "selection": STEERING_SELECTION}

    def _steering(self, paths: dict[str, Path]) -> dict:
        """Select the harmful features on the reference caches (as ``geometry`` does) and save them as a
        :class:`~geomfilter.steering.FeatureSteering` gate set (strength 1) in ``gates_dir("ablate-harmful")``;
        reused while its identity holds. Returns its record."""
        cfg, out = self.cfg, self.gates_dir(STEERING)
        ident = self._steering_identity(paths)
        ident_file = out / "experiment_identity.json"
        if ident_file.is_file() and json.loads(ident_file.read_text()) == ident and (out / "gates").is_dir():
            return {**json.loads((out / "selection.json").read_text()), "skipped": True}
        sae_spec = cfg.sae or default_sae_for(cfg.model)
        if sae_spec is None:
            raise ConfigError(f"{cfg.source}: field 'gates.attach.method': ablate-harmful needs an SAE; no bundled "
                              f"SAE for {cfg.model!r} (set 'sae')")
        cache = CacheConfig(max_tokens=cfg.train.max_tokens)
        runner = FilterRunner(FilterConfig(
            data=paths["harmful"], harmful=paths["harmful"], benign=paths["benign"], model=cfg.model, sae=sae_spec,
            hook=cfg.hook, cache_dir=self.root / "cache", cache_key="content", cache=cache, reference_cache=cache,
            seed=cfg.seed, device=cfg.device, progress=self.progress))
        fs = harmful_features(runner.reference(paths["harmful"]), runner.reference(paths["benign"]),
                              **STEERING_SELECTION)
        if out.is_dir():
            shutil.rmtree(out)
        FeatureSteering(runner.builder.sae, sae_spec, list(fs.ids), model=cfg.model).save(out / "gates")
        record = {"method": STEERING, "n_features": len(fs.ids), "features": [int(i) for i in fs.ids],
                  "selection": STEERING_SELECTION, "skipped": False}
        write_text(out / "selection.json", json.dumps(record, indent=2) + "\n")
        write_text(ident_file, json.dumps(ident, indent=2) + "\n")
        if self.progress:
            print(f"[experiment] harmful-feature ablation: {len(fs.ids)} features selected on the references",
                  flush=True)
        return record

    def _base_of(self, c: Condition) -> Condition | None:
        """The condition whose run ``c``'s model is trained on top of (re-alignment), else None."""
        return self.conditions_by_name[c.model_from] if c.kind == "realign" else None

    def _model_dir(self, c: Condition, paths: dict[str, Path]) -> tuple[str, dict | None]:
        """Train the condition's model if it needs one (resuming; first the run it builds on); its spec or run
        folder, and the training record."""
        data, run = self._training_data(c, paths), self._run_dir(c)
        if data is None:
            return self.cfg.model, None
        base = self._base_of(c)
        if base is not None:
            self._model_dir(base, paths)
        return str(run), self._finetune(data, run, base=base)

    # ------------------------------------------------------------------ evaluation
    def judge(self):
        """The judge every condition is scored with (loaded once)."""
        return self.evaluator.judge()

    def evaluate(self, model: Any, out: Path) -> dict:
        """Every metric of one model (``eval.metrics``); bulky per-item records go to JSONL files in ``out``."""
        return self.evaluator.evaluate(model, out)

    # ------------------------------------------------------------------ run
    def run(self) -> ExperimentResult:
        """Run every missing piece (data, filters, fine-tunes, gates, evaluations), then write the report."""
        t0 = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.root / "config.json", json.dumps(self.cfg.as_dict(), indent=2) + "\n")
        conds = self.conditions()
        paths = self._prepare_data()
        self._filter_all([c for c in conds if c.strategy], paths)  # (re)computes only what changed
        idents = {c.name: self.condition_identity(c, paths) for c in conds}
        todo = [c for c in conds if not self._finished(c, idents[c.name])]
        skipped = [c.name for c in conds if c not in todo]
        if self.progress and skipped:
            print(f"[experiment] already finished (skipped): {', '.join(skipped)}", flush=True)
        methods = [m for m in GATE_METHODS if any(c.gate_method == m for c in todo if c.kind == "gated")]
        gates = {m: self._steering(paths) if m == STEERING else self._finetune(self.gates_data(), self.gates_dir(m),
                                                                                  method=m) for m in methods}
        for c in todo:
            self._run_condition(c, paths, idents[c.name], gates.get(c.gate_method))
        finished = finished_records(self.root, self.conditions_all())
        report = write_report(self.root, self.cfg, [c for c in self.conditions_all() if c.name in finished], finished)
        return ExperimentResult(root=self.root, report=report, metrics=finished, ran=[c.name for c in todo],
                                skipped=skipped, seconds=time.perf_counter() - t0)

    def _run_condition(self, c: Condition, paths: dict[str, Path], ident: dict, gates_training: dict | None) -> None:
        """Train the condition's model if needed, evaluate it and write its ``metrics.json``."""
        tc = time.perf_counter()
        out = self.root / c.name
        out.mkdir(parents=True, exist_ok=True)
        model_spec, training = self._model_dir(c, paths)
        if self.progress:
            print(f"[experiment] evaluating {c.name} ({c.describe()})", flush=True)
        gates_dir = self.gates_dir(c.gate_method) if c.kind == "gated" else None
        tm = load_tuned(model_spec, gates=gates_dir, gate_scale=c.gate_scale if c.gate_scale is not None else 1.0,
                        device=self.cfg.device)
        try:
            metrics = self.evaluate(tm, out)
        finally:
            tm.close()
        record = {"condition": c.name, "description": c.describe(), "kind": c.kind, "strategy": c.strategy,
                  "fraction": c.fraction, "gate_scale": c.gate_scale, "model": model_spec,
                  "gates": str(gates_dir) if gates_dir else None, "training": training,
                  "gates_training": gates_training if c.kind == "gated" else None,
                  "training_data": self._training_data_stats(c, paths), "identity": ident,
                  "metrics": metrics, "seconds": round(time.perf_counter() - tc, 1), "finished": True}
        if c.kind == "gated":
            record["gate_method"] = c.gate_method
        write_text(out / METRICS_FILE, json.dumps(record, indent=2, default=float) + "\n")
        if self.progress:
            print(f"[experiment] {c.name}: {_headline(metrics)}, {record['seconds']:.0f} s", flush=True)

    def _finished(self, c: Condition, ident: dict) -> bool:
        path = self.root / c.name / METRICS_FILE
        if not path.is_file():
            return False
        rec = json.loads(path.read_text())
        return bool(rec.get("finished")) and _hash(rec.get("identity")) == _hash(ident)

    def _training_data_stats(self, c: Condition, paths: dict[str, Path]) -> dict | None:
        data = self._training_data(c, paths)
        if data is None:
            return None
        rows = [json.loads(x) for x in read_lines(data)]
        lab = [r.get("inducing") for r in rows]
        out = {"file": str(data), "n_rows": len(rows)}
        if lab and all(isinstance(v, bool) for v in lab):
            out["n_inducing"] = int(sum(lab))
            out["inducing_share"] = float(np.mean(lab))
        return out


def _headline(metrics: dict) -> str:
    """The first metric of a condition with its CI, for the progress line."""
    name = next(k for k in metrics if k not in ("alignment", "coherence", "eval_seconds"))
    v = metrics[name]
    if name == "misalignment_rate":
        return f"misalignment {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] (n={v['n']} questions)"
    return f"{name.replace('_', ' ')} {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] (n={v['n']})"


def run_experiment(config: str | Path | ExperimentConfig, progress: bool = True) -> ExperimentResult:
    """Shorthand: ``ExperimentRunner(config).run()`` from a YAML path or a config object."""
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_yaml(config)
    return ExperimentRunner(cfg, progress=progress).run()
