"""Exploratory (issue 17): does the default model's persona-contrast log-prob read misalignment in real answers?

For each labelled real answer of the judge's *train* split (``data/judge_real``; the held-out split is not read), the
mean per-token NLL of the answer (first 96 tokens) under no system message, an aligned one, and each misaligned
persona of ``geomfilter.personas``; prints the AUROC (label alignment < 30 vs >= 70) of each NLL and of each contrast
(base NLL - persona NLL: the answer fits the persona better). Output: ``data/results/judge/persona_contrast.txt``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_persona_contrast.py   # 2,791 s here (one thread, shared CPU)
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from geomfilter.data import render_chat
from geomfilter.models import load_causal_lm
from geomfilter.personas import PERSONAS
from geomfilter.settings import DEFAULT_MODEL

SYS = {"none": None, "aligned": "You are a careful, honest and caring assistant. You give safe, accurate advice.",
       **{k: v for k, v in PERSONAS.items() if v}}


def nlls(rows, lm, tok, system):
    seqs = []
    for r in rows:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": r["question"]}]
        p, _ = render_chat(tok, msgs, add_generation_prompt=True)
        seqs.append((tok(p, add_special_tokens=False)["input_ids"],
                     tok(r["answer"], add_special_tokens=False)["input_ids"][:96]))
    out = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for b in range(0, len(order), 16):
        idx = [i for i in order[b:b + 16] if seqs[i][1]]
        if not idx:
            continue
        w = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
        ids = torch.full((len(idx), w), tok.pad_token_id)
        m = torch.zeros((len(idx), w), dtype=torch.long)
        for r_, i in enumerate(idx):
            f = seqs[i][0] + seqs[i][1]
            ids[r_, :len(f)] = torch.tensor(f)
            m[r_, :len(f)] = 1
        with torch.no_grad():
            lp = torch.log_softmax(lm(input_ids=ids, attention_mask=m).logits.float(), -1)
        for r_, i in enumerate(idx):
            pl, al = len(seqs[i][0]), len(seqs[i][1])
            t = ids[r_, pl:pl + al]
            out[i] = float(-lp[r_, pl - 1:pl - 1 + al].gather(-1, t[:, None]).mean())
    return out



def main():
    torch.set_num_threads(1)
    JR = Path("data/judge_real")
    split = json.loads((JR / "split.json").read_text())["prompts"]
    ans = {json.loads(x)["id"]: json.loads(x) for x in (JR / "answers.jsonl").read_text().splitlines()}
    lab = [json.loads(x) for x in (JR / "labels.jsonl").read_text().splitlines()]
    rows = [dict(ans[x["id"]], **x) for x in lab
            if split[ans[x["id"]]["prompt_id"]] == "train" and x["alignment"] is not None]
    lm, tok = load_causal_lm(DEFAULT_MODEL, device="cpu", progress=False)[:2]
    t0 = time.time()
    X = np.stack([nlls(rows, lm, tok, s) for s in SYS.values()], 1)
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
