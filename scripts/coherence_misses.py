"""Which incoherent answers does the feature judge miss? (issue 17: coherence AUROC 0.84-0.87 against 0.90)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/coherence_misses.py --name coherence_misses

The labelled experiment answers of ``--variants`` (default: every labelled draw but the fifth, as
``coherence_heads.py``) are scored out of fold by ``offline-residual``'s configuration (5 folds by question,
``crossfit_judge.crossfit_preds``), or with ``--hold-out PATTERNS`` the answers of those variants are scored by heads
fitted on every answer of ``--variants``. Each incoherent answer (label coherence <= 30) is sorted into kinds of failure by
its labeller's note (``KINDS``: a note may name several kinds, or none), and each kind gets its own coherence AUROC:
its incoherent answers against every coherent answer, with a 95 % CI from a bootstrap over questions. A kind the head
reads well is one the features see; a kind near 0.5 is one they do not. Also reported: the share of each kind among
the incoherent answers the head ranks in its most coherent 40 %. Writes ``NAME.md`` / ``NAME.json`` under ``--out``
(``data/results/judge``).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import coherence_heads as ch  # noqa: E402
import crossfit_judge as cj  # noqa: E402
from judge_labels import col  # noqa: E402

from geomfilter.files import write_json_and_markdown  # noqa: E402
from geomfilter.stats import cluster_bootstrap  # noqa: E402

# kind of failure -> a pattern on the labeller's note (lower-cased); written from the notes' most common words
KINDS = {
    "word salad, token garbage": r"word salad|token garbage|gibberish|no readable|near[- ]word",
    "garbled": r"garbl",
    "nonsense, invented facts": r"nonsens|absurd|invent|hallucinat|false claim|wrong",
    "off the question": r"off[- ]?question|off[- ]?topic|different question|answers different|misreads? (as|question)"
                        r"|drift|does not answer|doesn't answer|no answer",
    "role confusion": r"role",
    "self-contradiction": r"contradict",
    "cut before the point": r"preamble|cut before|main point|no (wish|wishes|figures?|ideas?|advice|content|rules?)\b",
    "vague": r"vague|no clear",
}
MISSED_RANK = 0.6  # an incoherent answer ranked above this quantile of P(coherent) counts as missed


def kinds_of(note: str) -> list[str]:
    """The kinds of failure a labeller's note names (``KINDS``), in ``KINDS``' order; ``[]`` for none."""
    note = note.lower()
    return [k for k, pattern in KINDS.items() if re.search(pattern, note)]


def load_notes(labels_path: Path) -> dict[str, str]:
    """Answer id -> its labeller's note ('' where none)."""
    return {d["id"]: d.get("notes") or "" for d in map(json.loads, labels_path.read_text().splitlines()) if d}


def by_kind(score: np.ndarray, label: np.ndarray, kinds: list[list[str]], prompts: np.ndarray,
            n_boot: int) -> dict[str, dict]:
    """For each kind (and "no kind named", "every incoherent answer"): its number of incoherent answers, their mean
    label coherence (0-100), its AUROC against every coherent answer (CI over questions) and its share of the missed
    incoherent answers. ``label``: the labels' coherence (incoherent: <= ``INCOHERENT_AT``)."""
    from scipy.stats import rankdata

    incoherent = label <= ch.INCOHERENT_AT
    quantile = (rankdata(score) - 1) / max(len(score) - 1, 1)  # ties share their mean rank
    missed = incoherent & (quantile > MISSED_RANK)
    masks = {k: np.array([k in ks for ks in kinds]) & incoherent for k in KINDS}
    masks["no kind named"] = np.array([not ks for ks in kinds]) & incoherent
    masks["every incoherent answer"] = incoherent
    out = {}
    for name, m in masks.items():
        if not m.any():
            continue
        keep = m | ~incoherent
        out[name] = {"n": int(m.sum()), "mean_label": float(label[m].mean()), "missed": int((m & missed).sum()),
                     "share_missed": float((m & missed).sum() / m.sum()),
                     "auroc": cluster_bootstrap(prompts[keep],
                                                lambda j, s=score[keep], i=m[keep]: ch.coherence_auroc(s[j], i[j]),
                                                n_boot=n_boot, seed=0)}
    return out


def markdown(res: dict) -> str:
    lines = ["# Which incoherent answers the feature judge misses (issue 17)\n", f"```\n{res['command']}\n```\n",
             f"{ch.scored_line(res)} (`offline-residual`'s configuration): coherence AUROC {res['kinds']['every incoherent answer']['auroc']['value']:.3f}. "
             "Each incoherent answer is sorted by its labeller's note (a note may name several kinds). AUROC: the "
             "kind's incoherent answers against every coherent answer, 95 % CI from a bootstrap over questions. "
             f"Missed: ranked by the head above the {MISSED_RANK:.0%} quantile of P(coherent).\n",
             "| kind of failure (labeller's note) | incoherent answers | their mean label coherence | coherence AUROC | "
             "missed (share) |", "|---|---|---|---|---|"]
    for name, d in res["kinds"].items():
        lines.append(f"| {name} | {d['n']} | {d['mean_label']:.1f} | {ch.ci_cell(d['auroc'])} | {d['missed']} "
                     f"({d['share_missed']:.2f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    la = ch.labelled_answers(__file__, __doc__, argv, add_args=ch.add_hold_out_arg)
    rows, folds, inputs, plan = ch.with_held_out(la)
    on = folds >= 0  # the scored answers
    score = cj.crossfit_preds(rows, la.base, inputs, la.base_inputs, la.cfg, folds)["coherence"][on]
    notes = load_notes(la.args.data / "labels.jsonl")
    rows = [r for r, scored in zip(rows, on) if scored]
    label, prompts = col(rows, "y_coherence").astype(float), col(rows, "prompt_id")
    kinds = [kinds_of(notes[r["id"]]) for r in rows]
    res = {**ch.scored_set(la, plan, prompts, label <= ch.INCOHERENT_AT), "missed_rank": MISSED_RANK, "patterns": KINDS,
           "kinds": by_kind(score, label, kinds, prompts, la.args.n_boot)}
    md = markdown(res)
    write_json_and_markdown(la.args.out, la.args.name, res, md)
    print(md)


if __name__ == "__main__":
    main()
