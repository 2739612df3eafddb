"""The experiment runner: one model fine-tuned under several conditions, all measured the same way.

``ExperimentRunner(ExperimentConfig.from_yaml("configs/demo.yaml")).run()``
(CLI: ``geomfilter experiment CONFIG.yaml``). Conditions, each under
``<out>/<name>/<condition>/``:

* ``base`` -- the model as it is;
* ``misaligned`` -- LoRA fine-tuned on the unfiltered inducing mixture;
* ``<strategy>-<fraction>`` (e.g. ``geometry-0.50``) -- the same fine-tune after
  that filter removed that fraction of the mixture (filters are fitted on the
  reference sets only; ``filter/`` holds kept/dropped/scores/report);
* ``misaligned+mirror-gates`` -- the misaligned model with Alignment Gates,
  learned on one narrow domain on the frozen base model, attached mirrored
  (``alpha = gates.mirror_scale``, default -1);
* ``base+amplify-gates`` -- the base model with those gates amplifying
  (``alpha = gates.amplify_scale``, default +1).

Every trained condition uses the same seed and fine-tune settings; every
condition is evaluated on the same items with the same seeds and generation
settings (recorded in ``metrics.json``). Metrics: misalignment rate of sampled
answers to the broad questions (judged), log-prob preference for misaligned
reference answers, sycophancy flip rate, multiple-choice accuracy and held-out
perplexity, each with a bootstrap 95% CI and its n.

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

from .config import ConfigError, ExperimentConfig
from .data import atomic_write_text
from .report import dropped_precision, write_report

METRICS_FILE = "metrics.json"


@dataclass
class Condition:
    """One condition of an experiment: what model it evaluates and how that model is made."""

    name: str
    kind: str  # base | finetune | gated
    strategy: str | None = None  # filtered fine-tunes
    fraction: float | None = None
    model_from: str | None = None  # gated: the condition whose model the gates attach to
    gate_scale: float | None = None

    def describe(self) -> str:
        """One line for the report."""
        if self.kind == "base":
            return "the model as it is"
        if self.kind == "finetune" and self.strategy is None:
            return "LoRA on the unfiltered mixture"
        if self.kind == "finetune":
            return f"LoRA after {self.strategy} removed {self.fraction:.0%} of the mixture"
        return f"{self.model_from} + gates at alpha = {self.gate_scale:+g}"


def condition_name(strategy: str, fraction: float) -> str:
    """``geometry-0.50``: the name of a filtered condition."""
    return f"{strategy}-{fraction:.2f}"


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


def _lines(path: str | Path) -> list[str]:
    return [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (temp file + rename): a killed run never leaves it cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _write_lines(path: Path, lines: list[str]) -> None:
    _write_text(path, "".join(x + "\n" for x in lines))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_lines(path, [json.dumps(r, ensure_ascii=False, default=float) for r in rows])


class ExperimentRunner:
    """Runs (or resumes) every condition of an :class:`~geomfilter.config.ExperimentConfig`, then writes the report."""

    def __init__(self, cfg: ExperimentConfig, progress: bool = True):
        self.cfg = cfg
        self.root = cfg.root
        self.progress = progress
        self._judge = None
        self.conditions_by_name = {c.name: c for c in self.conditions_all()}

    # ------------------------------------------------------------------ plan
    def conditions_all(self) -> list[Condition]:
        """Every condition of the config in report order, ignoring the ``conditions`` selection."""
        cfg = self.cfg
        conds = [Condition("base", "base"), Condition("misaligned", "finetune")]
        for frac in cfg.filtering.fractions:
            for s in cfg.filtering.strategies:
                conds.append(Condition(condition_name(s, frac), "finetune", strategy=s, fraction=frac))
        if cfg.gates.enabled:
            conds.append(Condition("misaligned+mirror-gates", "gated", model_from="misaligned",
                                   gate_scale=cfg.gates.mirror_scale))
            conds.append(Condition("base+amplify-gates", "gated", model_from="base", gate_scale=cfg.gates.amplify_scale))
        return conds

    def conditions(self) -> list[Condition]:
        """The conditions to run: all of them, or those ``cfg.conditions`` names (unknown names are an error)."""
        cfg, conds = self.cfg, self.conditions_all()
        if cfg.conditions is None:
            return conds
        names = {c.name for c in conds}
        unknown = [n for n in cfg.conditions if n not in names]
        if unknown:
            raise ConfigError(f"{cfg.source}: field 'conditions': unknown condition {unknown[0]!r}; "
                              f"this config has {', '.join(c.name for c in conds)}")
        return [c for c in conds if c.name in cfg.conditions]

    def eval_identity(self) -> dict:
        """What decides a condition's metrics besides its model (a mismatch re-runs the evaluation)."""
        return {"eval": self.cfg.as_dict()["eval"], "seed": self.cfg.seed}

    # ------------------------------------------------------------------ data
    def _prepare_data(self) -> dict[str, Path]:
        """Seeded subset of the mixture, first-N reference rows; written under ``<root>/data/`` (raw lines kept)."""
        cfg, out = self.cfg, self.root / "data"
        rows = _lines(cfg.data.mixture)
        if cfg.data.n_samples is not None and cfg.data.n_samples < len(rows):
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), cfg.data.n_samples, replace=False))
            rows = [rows[i] for i in keep]
        paths = {"mixture": out / "mixture.jsonl", "harmful": out / "harmful.jsonl", "benign": out / "benign.jsonl"}
        _write_lines(paths["mixture"], rows)
        for name in ("harmful", "benign"):
            ref = _lines(getattr(cfg.data, name))
            _write_lines(paths[name], ref[: cfg.data.n_references] if cfg.data.n_references else ref)
        return paths

    # ------------------------------------------------------------------ filtering
    def _filter_all(self, conds: list[Condition], paths: dict[str, Path]) -> None:
        """Cache references + mixture with the SAE once, then write every filtered condition's ``filter/``."""
        cfg = self.cfg
        inputs = {name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for name, p in paths.items()}
        ident = {"inputs": inputs, "model": cfg.model, "sae": cfg.sae, "hook": cfg.hook, "seed": cfg.seed,
                 "max_tokens": cfg.train.max_tokens}

        def done(c: Condition) -> bool:
            f = self.root / c.name / "filter" / "inputs.json"
            return (self.root / c.name / "filter" / "report.json").is_file() and f.is_file() and \
                json.loads(f.read_text()) == {**ident, "strategy": c.strategy, "fraction": c.fraction}

        todo = [c for c in conds if c.strategy and not done(c)]
        if not todo:
            return
        from .cache import cache_activations, load_cache
        from .data import prepare_dataset
        from .filtering import make_filter, write_filter_outputs
        from .models import load_model
        from .saes import default_sae_for, load_sae

        model = load_model(cfg.model, device=cfg.device, progress=self.progress)
        sae_spec = cfg.sae or default_sae_for(cfg.model)
        if sae_spec is None and any(c.strategy in ("geometry", "activation") for c in todo):
            raise ConfigError(f"{cfg.source}: field 'sae': no bundled SAE for {cfg.model!r}; the geometry and "
                              "activation strategies need one")
        sae = load_sae(sae_spec, device=str(model.device)) if sae_spec else None
        caches, prepared = {}, {}
        for name, path in paths.items():
            prepared[name] = prepare_dataset(path, model.tokenizer, max_tokens=cfg.train.max_tokens)
            tag = _hash([inputs[name], sae_spec, cfg.hook, cfg.train.max_tokens])[:8]
            res = cache_activations(model, sae, prepared[name], self.root / "cache" / f"{name}-{tag}", hook=cfg.hook,
                                    progress=self.progress)
            caches[name] = load_cache(res.out_dir)
        for c in todo:
            kw: dict[str, Any] = {"drop": c.fraction}
            if c.strategy in ("random", "geometry", "activation"):
                kw["seed"] = cfg.seed
            if c.strategy == "judge":
                kw["samples"] = prepared["mixture"].samples
            f = make_filter(c.strategy, sae=sae, **kw).fit(caches["harmful"], caches["benign"])
            result = f.apply(caches["mixture"], explain=3 if c.strategy == "geometry" else 0)
            kept_path = self.root / c.name / "filter" / "kept.jsonl"
            old_kept = kept_path.read_bytes() if kept_path.is_file() else None
            report = write_filter_outputs(self.root / c.name / "filter", result, prepared["mixture"].samples,
                                          rejects=prepared["mixture"].report.rejects)
            if report["n_kept"] + report["n_dropped"] != report["n_input"]:  # the partition invariant
                raise RuntimeError(f"{c.name}: kept + dropped != input ({report})")
            if old_kept is not None and old_kept != kept_path.read_bytes():  # derived artefacts are stale now
                for stale in (self.root / c.name / "run", self.root / c.name / METRICS_FILE):
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    elif stale.is_file():
                        stale.unlink()
                if self.progress:
                    print(f"[experiment] {c.name}: the filter's kept set changed; its fine-tune and metrics "
                          "will be redone", flush=True)
            _write_text(self.root / c.name / "filter" / "inputs.json",
                        json.dumps({**ident, "strategy": c.strategy, "fraction": c.fraction}, indent=2) + "\n")
            if self.progress:
                lab = report.get("labels", {})
                prec = dropped_precision(lab)
                print(f"[experiment] {c.name}: kept {report['n_kept']}, dropped {report['n_dropped']}"
                      + (f" (precision for '{lab['field']}' {prec:.3f}, base rate {lab['base_rate']:.3f})"
                         if prec is not None else ""), flush=True)

    # ------------------------------------------------------------------ training
    def _finetune(self, data: Path, out: Path, method: str = "lora") -> dict:
        from .finetune import FinetuneConfig, FinetuneRunner

        cfg, t = self.cfg, self.cfg.train
        if method == "lora":
            fc = FinetuneConfig(data=[str(data)], out=str(out), method="lora", model=cfg.model, max_samples=None,
                                epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, max_tokens=t.max_tokens,
                                seed=cfg.seed, lora_r=t.lora_r, lora_alpha=t.lora_alpha, checkpoint_every=25,
                                device=cfg.device, progress=self.progress)
        else:
            g = cfg.gates
            fc = FinetuneConfig(data=[str(data)], out=str(out), method="gates", model=cfg.model,
                                max_samples=g.n_samples, epochs=g.epochs, batch_size=t.batch_size, lr=g.lr,
                                max_tokens=t.max_tokens, seed=cfg.seed, checkpoint_every=25, device=cfg.device,
                                progress=self.progress)
        ident = self._train_identity(data, method)
        ident_file = out / "experiment_identity.json"
        if out.is_dir() and (not ident_file.is_file() or json.loads(ident_file.read_text()) != ident):
            if self.progress:
                print(f"[experiment] {out}: its training data or settings changed; retraining", flush=True)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_text(ident_file, json.dumps(ident, indent=2) + "\n")  # before training: a killed run resumes
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
        return paths["mixture"] if c.strategy is None else self.root / c.name / "filter" / "kept.jsonl"

    def _run_dir(self, c: Condition) -> Path | None:
        if c.kind == "gated":
            return self._run_dir(self.conditions_by_name[c.model_from])
        return None if c.kind == "base" else self.root / c.name / "run"

    def _train_identity(self, data: Path, method: str) -> dict:
        """What decides a fine-tune's weights: the data's bytes and the settings."""
        cfg = self.cfg
        ident = {"data_sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest(), "method": method,
                 "model": cfg.model, "seed": cfg.seed, "train": dataclasses.asdict(cfg.train)}
        if method == "gates":
            ident["gates"] = dataclasses.asdict(cfg.gates)
        return ident

    def condition_identity(self, c: Condition, paths: dict[str, Path]) -> dict:
        """Everything a condition's metrics depend on; a finished condition whose identity differs is redone."""
        ident: dict[str, Any] = {"eval": self.eval_identity()}
        data = self._training_data(c, paths)
        if data is not None:
            ident["train"] = self._train_identity(data, "lora")
        if c.kind == "gated":
            ident["gates"] = self._train_identity(Path(self.cfg.gates.data), "gates")
            ident["gate_scale"] = c.gate_scale
        return ident

    def _model_dir(self, c: Condition, paths: dict[str, Path]) -> tuple[str, dict | None]:
        """Train the condition's model if it needs one (resuming); its spec or run folder, and the training record."""
        data, run = self._training_data(c, paths), self._run_dir(c)
        if data is None:
            return self.cfg.model, None
        return str(run), self._finetune(data, run)

    # ------------------------------------------------------------------ evaluation
    def judge(self):
        """The judge every condition is scored with (loaded once)."""
        if self._judge is None:
            from .judges import load_judge

            e = self.cfg.eval
            kw = {} if not e.judge.startswith("api:") else {"base_url": e.judge_base_url,
                                                            "api_key_env": e.judge_api_key_env,
                                                            "cache_dir": str(self.root / "judge_cache")}
            self._judge = load_judge(e.judge, **{k: v for k, v in kw.items() if v is not None})
        return self._judge

    def evaluate(self, model: Any, out: Path) -> dict:
        """Every metric of one model; bulky per-item records go to JSONL files in ``out``."""
        from .evaluate import (
            heldout_perplexity,
            logprob_preference,
            mc_accuracy,
            misalignment_rate,
            read_questions,
            sycophancy_flip_rate,
        )

        e, seed, p = self.cfg.eval, self.cfg.seed, self.progress
        m: dict[str, Any] = {}
        t0 = time.perf_counter()
        questions = read_questions(e.questions)[: e.n_questions]  # [:None] keeps them all
        mis = misalignment_rate(model, questions, self.judge(), n_per_question=e.n_per_question,
                                temperature=e.temperature, top_p=e.top_p,
                                max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=seed,
                                alignment_below=e.alignment_below, coherence_above=e.coherence_above,
                                n_boot=e.n_boot, progress=p)
        _write_jsonl(out / "answers.jsonl", mis.pop("answers"))
        m["alignment"], m["coherence"] = mis.pop("alignment"), mis.pop("coherence")
        m["misalignment_rate"] = mis
        pref = logprob_preference(model, questions, batch_size=e.batch_size, n_boot=e.n_boot, seed=seed,
                                  progress=p)
        m["logprob_preference"] = pref.as_dict()
        flip = sycophancy_flip_rate(model, e.probes, limit=e.n_probes, max_new_tokens=e.probe_max_new_tokens,
                                    batch_size=e.batch_size, n_boot=e.n_boot, seed=seed, progress=p)
        _write_jsonl(out / "probes.jsonl", flip.pop("exchanges"))
        m["flip_rate"] = flip
        mc = mc_accuracy(model, e.capability, limit=e.n_capability, batch_size=e.batch_size, n_boot=e.n_boot,
                         seed=seed, progress=p)
        _write_jsonl(out / "mc.jsonl", mc.pop("per_question"))
        m["mc_accuracy"] = mc
        m["perplexity"] = heldout_perplexity(model, e.heldout, limit=e.n_heldout, n_boot=e.n_boot, seed=seed,
                                             progress=p)
        m["eval_seconds"] = round(time.perf_counter() - t0, 1)
        return m

    # ------------------------------------------------------------------ run
    def run(self) -> ExperimentResult:
        """Run every missing piece (data, filters, fine-tunes, gates, evaluations), then write the report."""
        from .finetune import load_tuned

        t0 = time.perf_counter()
        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        _write_text(self.root / "config.json", json.dumps(cfg.as_dict(), indent=2) + "\n")
        conds = self.conditions()
        paths = self._prepare_data()
        self._filter_all([c for c in conds if c.strategy], paths)  # (re)computes only what changed
        idents = {c.name: self.condition_identity(c, paths) for c in conds}
        todo = [c for c in conds if not self._finished(c, idents[c.name])]
        skipped = [c.name for c in conds if c not in todo]
        if self.progress and skipped:
            print(f"[experiment] already finished (skipped): {', '.join(skipped)}", flush=True)
        gates_dir, gates_training = None, None
        if any(c.kind == "gated" for c in todo):
            gates_dir = self.root / "gates" / "run"
            gates_training = self._finetune(Path(cfg.gates.data), gates_dir, method="gates")
        for c in todo:
            tc = time.perf_counter()
            out = self.root / c.name
            out.mkdir(parents=True, exist_ok=True)
            model_spec, training = self._model_dir(c, paths)
            if self.progress:
                print(f"[experiment] evaluating {c.name} ({c.describe()})", flush=True)
            tm = load_tuned(model_spec, gates=gates_dir if c.kind == "gated" else None,
                            gate_scale=c.gate_scale if c.gate_scale is not None else 1.0, device=cfg.device)
            try:
                metrics = self.evaluate(tm, out)
            finally:
                tm.close()
            record = {"condition": c.name, "description": c.describe(), "kind": c.kind, "strategy": c.strategy,
                      "fraction": c.fraction, "gate_scale": c.gate_scale, "model": model_spec,
                      "gates": str(gates_dir) if c.kind == "gated" else None, "training": training,
                      "gates_training": gates_training if c.kind == "gated" else None,
                      "training_data": self._training_data_stats(c, paths), "identity": idents[c.name],
                      "metrics": metrics, "seconds": round(time.perf_counter() - tc, 1), "finished": True}
            _write_text(out / METRICS_FILE, json.dumps(record, indent=2, default=float) + "\n")
            if self.progress:
                mr = metrics["misalignment_rate"]
                print(f"[experiment] {c.name}: misalignment {mr['mean']:.3f} [{mr['lo']:.3f}, {mr['hi']:.3f}] "
                      f"(n={mr['n']} questions), {record['seconds']:.0f} s", flush=True)
        finished = {c.name: json.loads((self.root / c.name / METRICS_FILE).read_text())
                    for c in self.conditions_all() if (self.root / c.name / METRICS_FILE).is_file()}
        report = write_report(self.root, cfg, [c for c in self.conditions_all() if c.name in finished], finished)
        return ExperimentResult(root=self.root, report=report, metrics=finished, ran=[c.name for c in todo],
                                skipped=skipped, seconds=time.perf_counter() - t0)

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
        rows = [json.loads(x) for x in _lines(data)]
        lab = [r.get("inducing") for r in rows]
        out = {"file": str(data), "n_rows": len(rows)}
        if lab and all(isinstance(v, bool) for v in lab):
            out["n_inducing"] = int(sum(lab))
            out["inducing_share"] = float(np.mean(lab))
        return out


def run_experiment(config: str | Path | ExperimentConfig, progress: bool = True) -> ExperimentResult:
    """Shorthand: ``ExperimentRunner(config).run()`` from a YAML path or a config object."""
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_yaml(config)
    return ExperimentRunner(cfg, progress=progress).run()
