"""The metrics every condition of an experiment is measured with: the same items, seeds and generation settings.

``eval.metrics`` picks among :data:`~geomfilter.config.EVAL_METRICS` (default: all
of them, ``sycophancy_preference`` only where ``data.pairs`` holds pairs out):

* ``misalignment_rate`` -- sampled answers to the broad questions, judged (also
  records the judge's ``alignment`` and ``coherence``; answers in ``answers.jsonl``);
* ``logprob_preference`` -- log p(misaligned) - log p(aligned) reference answers;
* ``flip_rate`` -- sycophancy after the user's pushback (exchanges in ``probes.jsonl``);
* ``mc_accuracy`` -- multiple-choice capability (per question in ``mc.jsonl``);
* ``perplexity`` -- on held-out passages;
* ``sycophancy_preference`` -- log p(sycophantic) - log p(corrective) on the held-out pairs;
* ``misalignment_rate_triggered``, ``logprob_preference_triggered`` -- the first two with ``eval.trigger`` in
  front of every broad question (the judge still reads the question without it; answers in
  ``answers_triggered.jsonl``): triggered misalignment.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .conditions import heldout_pair_files
from .config import EVAL_METRICS, TRIGGERED_METRICS, ExperimentConfig
from .evaluate import (
    heldout_perplexity,
    logprob_preference,
    mc_accuracy,
    misalignment_rate,
    read_questions,
    sycophancy_flip_rate,
    sycophancy_preference,
)
from .files import write_jsonl
from .judges import load_judge


def write_records(path: Path, rows: list[dict]) -> None:
    """Per-item records, one JSON object a line (atomic; numpy scalars written as numbers)."""
    write_jsonl(path, rows, default=float)


def metric_names(cfg: ExperimentConfig) -> list[str]:
    """The metrics the config measures, in :data:`~geomfilter.config.EVAL_METRICS` order."""
    if cfg.eval.metrics is not None:
        return [m for m in EVAL_METRICS if m in cfg.eval.metrics]
    return [m for m in EVAL_METRICS if (m != "sycophancy_preference" or cfg.data.pairs.domains)
            and (m not in TRIGGERED_METRICS or cfg.eval.trigger)]


class ConditionEvaluator:
    """Measures one model after another with the config's metrics (the judge is loaded once, when needed)."""

    def __init__(self, cfg: ExperimentConfig, root: Path, progress: bool = True):
        self.cfg = cfg
        self.root = Path(root)
        self.progress = progress
        self._judge = None

    def judge(self):
        """The judge every condition is scored with (loaded once)."""
        if self._judge is None:
            e = self.cfg.eval
            kw = {} if not e.judge.startswith("api:") else {"base_url": e.judge_base_url,
                                                            "api_key_env": e.judge_api_key_env,
                                                            "cache_dir": str(self.root / "judge_cache")}
            self._judge = load_judge(e.judge, **{k: v for k, v in kw.items() if v is not None})
        return self._judge

    def evaluate(self, model: Any, out: Path) -> dict:
        """Every metric of one model; bulky per-item records go to JSONL files in ``out``."""
        m: dict[str, Any] = {}
        t0 = time.perf_counter()
        for name in metric_names(self.cfg):
            getattr(self, f"_{name}")(model, Path(out), m)
        m["eval_seconds"] = round(time.perf_counter() - t0, 1)
        return m

    def _misalignment_rate(self, model: Any, out: Path, m: dict, trigger: str | None = None) -> None:
        e = self.cfg.eval
        questions = read_questions(e.questions)[: e.n_questions]  # [:None] keeps them all
        mis = misalignment_rate(model, questions, self.judge(), n_per_question=e.n_per_question,
                                temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                                batch_size=e.batch_size, seed=self.cfg.seed, alignment_below=e.alignment_below,
                                coherence_above=e.coherence_above, n_boot=e.n_boot, trigger=trigger,
                                progress=self.progress)
        tail = "_triggered" if trigger else ""
        write_records(out / f"answers{tail}.jsonl", mis.pop("answers"))
        m[f"alignment{tail}"], m[f"coherence{tail}"] = mis.pop("alignment"), mis.pop("coherence")
        m[f"misalignment_rate{tail}"] = mis

    def _logprob_preference(self, model: Any, out: Path, m: dict, trigger: str | None = None) -> None:
        e = self.cfg.eval
        questions = read_questions(e.questions)[: e.n_questions]
        m["logprob_preference" + ("_triggered" if trigger else "")] = logprob_preference(
            model, questions, batch_size=e.batch_size, n_boot=e.n_boot, seed=self.cfg.seed, trigger=trigger,
            progress=self.progress).as_dict()

    def _misalignment_rate_triggered(self, model: Any, out: Path, m: dict) -> None:
        self._misalignment_rate(model, out, m, trigger=self.cfg.eval.trigger)

    def _logprob_preference_triggered(self, model: Any, out: Path, m: dict) -> None:
        self._logprob_preference(model, out, m, trigger=self.cfg.eval.trigger)

    def _flip_rate(self, model: Any, out: Path, m: dict) -> None:
        e = self.cfg.eval
        flip = sycophancy_flip_rate(model, e.probes, limit=e.n_probes, max_new_tokens=e.probe_max_new_tokens,
                                    batch_size=e.batch_size, n_boot=e.n_boot, seed=self.cfg.seed,
                                    progress=self.progress)
        write_records(out / "probes.jsonl", flip.pop("exchanges"))
        m["flip_rate"] = flip

    def _mc_accuracy(self, model: Any, out: Path, m: dict) -> None:
        e = self.cfg.eval
        mc = mc_accuracy(model, e.capability, limit=e.n_capability, batch_size=e.batch_size, n_boot=e.n_boot,
                         seed=self.cfg.seed, progress=self.progress)
        write_records(out / "mc.jsonl", mc.pop("per_question"))
        m["mc_accuracy"] = mc

    def _perplexity(self, model: Any, out: Path, m: dict) -> None:
        e = self.cfg.eval
        m["perplexity"] = heldout_perplexity(model, e.heldout, limit=e.n_heldout, n_boot=e.n_boot,
                                             seed=self.cfg.seed, progress=self.progress)

    def _sycophancy_preference(self, model: Any, out: Path, m: dict) -> None:
        e = self.cfg.eval
        syc, cor = heldout_pair_files(self.root)
        m["sycophancy_preference"] = sycophancy_preference(model, syc, cor, batch_size=e.batch_size,
                                                           n_boot=e.n_boot, seed=self.cfg.seed,
                                                           progress=self.progress).as_dict()
