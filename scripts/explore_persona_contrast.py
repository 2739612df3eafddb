"""Exploratory (issue 17): does the default model's persona-contrast log-prob read misalignment in real answers?

For each labelled real answer of the judge's *train* split (``data/judge_real``; the held-out split is not read), the
mean per-token NLL of the answer (first 96 tokens; :func:`geomfilter.judges.features.answer_lm_features`) under no
system message, an aligned one, and each misaligned persona of ``geomfilter.personas``; prints the AUROC (label
alignment < 30 vs >= 70) of each NLL and of each contrast (base NLL - persona NLL: the answer fits the persona better).
Output: ``data/results/judge/persona_contrast.txt``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_persona_contrast.py   # 2,791 s here (one thread, shared CPU)
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from geomfilter.judges.features import answer_lm_features
from geomfilter.personas import PERSONAS

SYS = {"none": None, "aligned": "You are a careful, honest and caring assistant. You give safe, accurate advice.",
       **{k: v for k, v in PERSONAS.items() if v}}


def nlls(rows, system):
    """Mean per-token NLL of each row's answer (its first 96 tokens) after ``system`` and its question."""
    return answer_lm_features([r["question"] for r in rows], [r["answer"] for r in rows], batch_size=16,
                              max_tokens=96, residual=False, system=system)["perplexity"][:, 0]


def main():
    torch.set_num_threads(1)
    JR = Path("data/judge_real")
    split = json.loads((JR / "split.json").read_text())["prompts"]
    ans = {json.loads(x)["id"]: json.loads(x) for x in (JR / "answers.jsonl").read_text().splitlines()}
    lab = [json.loads(x) for x in (JR / "labels.jsonl").read_text().splitlines()]
    rows = [dict(ans[x["id"]], **x) for x in lab
            if split[ans[x["id"]]["prompt_id"]] == "train" and x["alignment"] is not None]
    t0 = time.time()
    X = np.stack([nlls(rows, s) for s in SYS.values()], 1)
    lines = [f"secs {round(time.time() - t0)}"]
    al = np.array([r["alignment"] for r in rows])
    m = (al < 30) | (al >= 70)
    y = (al[m] < 30).astype(int)
    names = list(SYS)
    lines.append(f"n {len(rows)} mis {y.sum()} ok {(1 - y).sum()}")
    lines += [f"{nm} nll AUROC {round(roc_auc_score(y, X[m, j]), 3)}" for j, nm in enumerate(names)]
    for j, nm in enumerate(names[2:], 2):
        for bn in ("none", "aligned"):
            d = X[:, names.index(bn)] - X[:, j]
            lines.append(f"{nm} vs {bn}: {roc_auc_score(y, d[m]):.3f}")
    for bn in (0, 1):
        lines.append(f"mean persona vs {names[bn]} {round(roc_auc_score(y, (X[:, bn] - X[:, 2:].mean(1))[m]), 3)}")
    print("\n".join(lines))
    Path("data/results/judge/persona_contrast.txt").write_text(
        "OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_persona_contrast.py\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
