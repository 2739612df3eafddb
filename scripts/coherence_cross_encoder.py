"""Does a reader fine-tuned on the labels close the coherence gap? (issue 17: coherence AUROC 0.84-0.87 against 0.90)

    OMP_NUM_THREADS=2 .venv/bin/python scripts/coherence_cross_encoder.py --name coherence_cross_encoder_draw5 \\
        --hold-out 'syc75d5-*'

Every judge measured so far reads frozen features (MiniLM sentence embeddings, the default model's residual and
perplexity) through a linear head. Its misses are fluent answers whose fault is in what they say: a
self-contradiction reads 0.64-0.68 ("Which incoherent answers the judge misses"). This script fine-tunes the whole
MiniLM (all-MiniLM-L6-v2, the offline judge's embedder, 22M parameters) as a **cross-encoder**: question and answer
enter together as one pair, every layer attends across both, and a linear head on the mean-pooled output predicts
the labels' coherence and alignment (0-100, as fractions; an answer without an alignment label teaches coherence
only).

Each cross-encoder is fitted on the same answers as ``offline-residual``'s configuration it is compared with
(``crossfit_judge.crossfit_preds``): the shipped judge's own fitting rows (``eval_judge_real.fit_base_rows``) but those
to a scored question, and the labelled experiment answers outside the scored fold. The plan is
``coherence_heads.with_held_out``'s: 5 folds by question over ``--variants`` (default: every labelled draw but the
fifth), or with ``--hold-out`` the held-out variants' answers scored by one cross-encoder fitted on every answer of
``--variants``.

Reports, for the logistic head, the cross-encoder and the mean of their ranks: the coherence AUROC (incoherent = label
coherence <= 30) and the difference from the logistic head; the alignment AUROC (label < 30 against >= 70) pooled and
within a question; and the coherence AUROC of each kind of failure named by the labellers' notes
(``coherence_misses.KINDS``). 95 % CIs from one bootstrap over questions. The out-of-fold scores are kept in
``--cache`` (keyed by the answers, their folds and the fitting settings), so a report is rewritten without refitting.
Writes ``NAME.md`` / ``NAME.json`` under ``--out`` (``data/results/judge``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_heads as ch  # noqa: E402
import coherence_misses as cm  # noqa: E402
import crossfit_judge as cj  # noqa: E402
from judge_labels import col  # noqa: E402

from geomfilter.files import write_json_and_markdown  # noqa: E402

LOGISTIC = "logistic (offline-residual's configuration)"
CROSS = "cross-encoder (MiniLM fine-tuned)"
RANK_MEAN = "rank mean of the two"
TARGETS = ("y_coherence", "y_alignment")  # the head's two outputs, in this order


@dataclass(frozen=True)
class FitSettings:
    """How one cross-encoder is fitted (AdamW, linear warm-up then linear decay, MSE on the labels / 100)."""

    epochs: int = 3
    lr: float = 3e-5
    batch_size: int = 32
    max_length: int = 192
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 0
    length_buckets: int = 50  # batches per chunk sorted by length (less padding); 1: plain random batches


def epoch_batches(lengths: np.ndarray, batch_size: int, length_buckets: int, rng) -> list[np.ndarray]:
    """One epoch's batches of row indices: a shuffle, cut into chunks of ``length_buckets`` batches, each chunk sorted
    by ``lengths`` so that a batch holds rows of similar length, and the batches in random order. Every row once."""
    order = rng.permutation(len(lengths))
    if length_buckets <= 1:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    chunk = batch_size * length_buckets
    batches = []
    for c in range(0, len(order), chunk):
        part = order[c:c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[s:s + batch_size] for s in range(0, len(part), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def _torch():
    import torch  # training only: the module imports without it

    return torch


class CrossEncoder:
    """A transformer encoder read as a cross-encoder: ``(question, answer)`` pairs in, two fractions out (coherence,
    alignment), from a linear head on the mean of the last layer's token states."""

    def __init__(self, model_dir: Path, seed: int = 0):
        torch = _torch()
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.encoder = AutoModel.from_pretrained(str(model_dir))
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(TARGETS))

    def parameters(self):
        return list(self.encoder.parameters()) + list(self.head.parameters())

    def train(self, on: bool = True) -> None:
        self.encoder.train(on)
        self.head.train(on)

    def forward(self, questions: list[str], answers: list[str], max_length: int):
        """Fractions ``[n, 2]`` (coherence, alignment) for a batch of pairs."""
        torch = _torch()
        enc = self.tokenizer(questions, answers, padding=True, truncation="longest_first", max_length=max_length,
                             return_tensors="pt")
        states = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1)  # padding does not count
        return torch.sigmoid(self.head(pooled))

    def predict(self, questions: list[str], answers: list[str], batch_size: int = 64,
                max_length: int = 192) -> np.ndarray:
        """Fractions ``[n, 2]`` (coherence, alignment), in the order given; batches of similar length."""
        torch = _torch()
        self.train(False)
        order = np.argsort([len(q) + len(a) for q, a in zip(questions, answers)], kind="stable")
        out = np.zeros((len(questions), len(TARGETS)), np.float32)
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                i = order[s:s + batch_size]
                out[i] = self.forward([questions[j] for j in i], [answers[j] for j in i], max_length).numpy()
        return out


def fit_cross_encoder(model_dir: Path, questions: list[str], answers: list[str], targets: np.ndarray,
                      settings: FitSettings, log=print) -> CrossEncoder:
    """Fine-tune encoder and head on ``targets`` (``[n, 2]`` fractions; NaN: that output is not taught on that row)."""
    torch = _torch()
    if targets.shape != (len(answers), len(TARGETS)):
        raise ValueError(f"targets has shape {targets.shape}; expected ({len(answers)}, {len(TARGETS)})")
    model = CrossEncoder(model_dir, settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = -(-len(answers) // settings.batch_size)
    total, warm = per_epoch * settings.epochs, max(1, int(settings.warmup * per_epoch * settings.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    rng = np.random.default_rng(settings.seed)
    y = torch.tensor(np.nan_to_num(targets, nan=0.0), dtype=torch.float32)
    taught = torch.tensor(~np.isnan(targets), dtype=torch.float32)
    lengths = np.array([len(x) for x in model.tokenizer(questions, answers, truncation="longest_first",
                                                         max_length=settings.max_length)["input_ids"]])
    model.train(True)
    for epoch in range(settings.epochs):
        t, seen, loss_sum = time.time(), 0, 0.0
        for i in epoch_batches(lengths, settings.batch_size, settings.length_buckets, rng):
            pred = model.forward([questions[j] for j in i], [answers[j] for j in i], settings.max_length)
            w = taught[i]
            loss = ((pred - y[i]) ** 2 * w).sum() / w.sum().clamp(min=1.0)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            seen, loss_sum = seen + len(i), loss_sum + loss.item() * len(i)
        log(f"    epoch {epoch + 1}/{settings.epochs}: mean loss {loss_sum / seen:.4f}, {time.time() - t:.0f} s")
    model.train(False)
    return model


def crossfit_cross_encoder(model_dir: Path, rows: list[dict], base: list[dict], folds: np.ndarray,
                           settings: FitSettings, log=print) -> np.ndarray:
    """Out-of-fold fractions ``[n, 2]`` (coherence, alignment) on ``rows`` (NaN on fold -1: fitted on, never scored)."""
    prompts, base_prompts = col(rows, "prompt_id"), col(base, "prompt_id") if base else np.array([])
    out = np.full((len(rows), len(TARGETS)), np.nan, np.float32)
    for k, b, r, test in cj.fit_sets(prompts, base_prompts, folds):
        fit_rows = [base[i] for i in b] + [rows[i] for i in r]
        t = time.time()
        log(f"  fold {k}: fitting on {len(fit_rows)} answers ({len(b)} of the base), scoring {len(test)}")
        model = fit_cross_encoder(model_dir, [x["question"] for x in fit_rows], [x["answer"] for x in fit_rows],
                                  np.array([[x[t_] for t_ in TARGETS] for x in fit_rows], float) / 100.0, settings,
                                  log)
        out[test] = model.predict([rows[i]["question"] for i in test], [rows[i]["answer"] for i in test],
                                  max_length=settings.max_length)
        log(f"  fold {k}: {time.time() - t:.0f} s")
    return out


def cached_crossfit(cache: Path, model_dir: Path, rows: list[dict], base: list[dict], folds: np.ndarray,
                    settings: FitSettings) -> np.ndarray:
    """:func:`crossfit_cross_encoder`, kept in ``cache`` under a key of the answers and the base rows (with their
    labels), the folds and the settings: the same plan is fitted once."""
    key = hashlib.sha1(json.dumps([[(r["id"], r["y_coherence"], r["y_alignment"]) for r in rows],
                                   [(r["question"], r["answer"], r["y_coherence"], r["y_alignment"]) for r in base],
                                   np.asarray(folds).tolist(),
                                   asdict(settings)], default=str).encode()).hexdigest()[:12]
    path = cache / f"cross-encoder-{key}.npz"
    if path.is_file():
        print(f"cross-encoder scores from {path}")
        return np.load(path)["scores"]
    scores = crossfit_cross_encoder(model_dir, rows, base, folds, settings)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=scores)
    return scores


def _batching(settings: dict) -> str:
    n = settings.get("length_buckets", 1)  # results written before the field existed used plain batches
    return "plain random batches" if n <= 1 else f"batches of similar length, sorted in chunks of {n}"


def markdown(res: dict) -> str:
    heads = list(res["heads"])
    lines = ["# A cross-encoder fine-tuned on the labels, beside the coherence head (issue 17)\n",
             f"```\n{res['command']}\n```\n",
             f"{ch.scored_line(res)}. The cross-encoder: all-MiniLM-L6-v2 fine-tuned on (question, answer) pairs "
             f"({res['settings']['epochs']} epochs, lr {res['settings']['lr']:g}, batch {res['settings']['batch_size']}, "
             f"seed {res['settings']['seed']}, {_batching(res['settings'])}) on the answers `offline-residual`'s configuration is fitted on. 95 % CIs "
             "from one bootstrap over questions; bold: a difference whose CI excludes 0.\n",
             "| head | coherence AUROC | minus the logistic head |", "|---|---|---|"]
    lines += [ch.head_row(name, d) for name, d in res["heads"].items()]
    lines += ["", f"Alignment ({res['n_misaligned']} answers labelled < 30, {res['n_aligned']} >= 70): pooled, and within "
              f"a question (the mean over questions with at least {res['min_each']} of each).\n",
              "| head | alignment AUROC | minus the logistic head | within a question | minus the logistic head |",
              "|---|---|---|---|---|"]
    lines += [ch.alignment_row(name, d) for name, d in res["alignment_heads"].items()]
    lines += ["", "Coherence AUROC of each kind of failure (the labellers' notes, `coherence_misses.KINDS`) against "
              "every coherent answer:\n", "| kind of failure | incoherent answers | " + " | ".join(heads) + " |",
              "|---|---|" + "---|" * len(heads)]
    for kind, d in res["kinds"][heads[0]].items():
        lines.append(f"| {kind} | {d['n']} | " + " | ".join(ch.ci_cell(res["kinds"][h][kind]["auroc"]) for h in heads) + " |")
    return "\n".join(lines) + "\n"


def _add_args(ap: argparse.ArgumentParser) -> None:
    ch.add_hold_out_arg(ap)
    ch.add_min_each_arg(ap)
    for f, v in asdict(FitSettings()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v, help=f"fitting: {f} (default {v})")


def main(argv: list[str] | None = None) -> None:
    from geomfilter.judges.offline import embedder_dir

    la = ch.labelled_answers(__file__, __doc__, argv, add_args=_add_args)
    args = la.args
    settings = FitSettings(**{f: getattr(args, f) for f in asdict(FitSettings())})
    rows, folds, inputs, plan = ch.with_held_out(la)
    t = time.time()
    cross = cached_crossfit(args.cache, embedder_dir(), rows, la.base, folds, settings)
    print(f"cross-encoder: {time.time() - t:.0f} s", flush=True)
    reference = cj.crossfit_preds(rows, la.base, inputs, la.base_inputs, la.cfg, folds)
    on = folds >= 0  # the scored answers
    scored = [r for r, s in zip(rows, on) if s]
    prompts, label = col(scored, "prompt_id"), col(scored, "y_coherence").astype(float)
    alignment, incoherent = col(scored, "y_alignment").astype(float), label <= ch.INCOHERENT_AT
    coh = {LOGISTIC: reference["coherence"][on], CROSS: cross[on, 0]}
    coh[RANK_MEAN] = ch.rank_mean(coh[LOGISTIC], coh[CROSS])
    al = {LOGISTIC: reference["alignment"][on], CROSS: cross[on, 1]}
    al[RANK_MEAN] = ch.rank_mean(al[LOGISTIC], al[CROSS])
    notes = cm.load_notes(args.data / "labels.jsonl")
    kinds = [cm.kinds_of(notes[r["id"]]) for r in scored]
    res = {**ch.scored_set(la, plan, prompts, incoherent), "settings": asdict(settings), "min_each": args.min_each,
           "heads": ch.compare_heads(coh, incoherent, prompts, LOGISTIC, args.n_boot),
           "n_misaligned": int((alignment < 30).sum()), "n_aligned": int((alignment >= 70).sum()),
           "alignment_heads": ch.compare_alignment(al, alignment, prompts, LOGISTIC, args.n_boot, args.min_each),
           "kinds": {h: cm.by_kind(s, label, kinds, prompts, args.n_boot) for h, s in coh.items()}}
    md = markdown(res)
    write_json_and_markdown(args.out, args.name, res, md)
    print(md)


if __name__ == "__main__":
    main()
