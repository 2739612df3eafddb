"""Is a silent flaw in code readable token by token? A probe on single response tokens, trained where an
insecure answer differs from its secure twin, against the mean-pooled readings the filters use (issue 19).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_token_probe.py --out data/results/filters_ood/token_probe

Every filter of geomfilter reads a row through activations averaged over its response tokens. On the insecure-code
split every strategy is near chance, and even a probe fitted on pairs of the tested domain reaches only 0.70-0.82
(``scripts/measure_domain_references.py --family code``): the flaw is one line among 11-19, and the mean over
the answer dilutes it. This script asks whether the information is there at all when the tokens are read one by
one.

Data: the code family's twin files (``data/finetune/{webapp,scripts}_{insecure,secure}.jsonl``, 150 pairs each,
the same prompt answered with and without one silent flaw). Activations: the default model at the bundled SAE's
hook (``blocks.14.hook_resid_post``), every response token kept (cached in ``--cache``). Token labels: the tokens
of an insecure answer that its secure twin does not have (``difflib`` opcodes on the token ids: ``replace`` and
``insert``) are 1; every other token, the secure answer's own changed tokens included, is 0. Readers, each fitted
on the pairs of one domain and scored on the other domain's 300 rows (and, as the in-domain ceiling, 5 folds by
pair inside a domain):

* ``token probe, max`` / ``top-3 mean`` / ``mean``: an L2 logistic regression on standardised single-token
  activations (classes balanced), a row scored by the max / the mean of the 3 largest / the mean of its tokens'
  logits;
* ``mean probe``: the same regression on the rows' mean-pooled activations (row labels), what the residual
  filters read, fitted on the same pairs;
* ``mean direction``: the harmful - benign mean difference of the pooled activations, a row scored by its
  projection (``projection``'s reading with code pairs as the references);
* ``mean probe, code tokens`` / ``prose tokens``: the mean probe on the tokens inside the code block only (between
  the first and the last fence) / on the rest (the opening sentence, which the twins share, and what follows the
  code): where in the answer the pooled readings find the label.

AUROC insecure vs secure with a bootstrap CI over pairs, and each token reading minus the mean probe, paired on
the same rows (pairs resampled), with its MDD. Writes ``results.md`` / ``.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.stats import auroc, cluster_bootstrap, minimum_detectable_difference  # noqa: E402

DOMAINS = ("webapp", "scripts")
HOOK = "blocks.14.hook_resid_post"
READERS = ("token probe, max", "token probe, top-3 mean", "token probe, mean", "mean probe", "mean direction",
           "mean probe, code tokens", "mean probe, prose tokens")
REGIONS = ("code", "prose")
FENCE = "```"
BASELINE = "mean probe"


# ------------------------------------------------------------------------------------------------ activations


def response_activations(model, path: Path, hook: str, progress: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row of ``path`` (file order): its response token ids and their activations at ``hook`` (float32)."""
    from tqdm.auto import tqdm

    from geomfilter.data import prepare_dataset
    from geomfilter.pooling import pack_batches, pad_batch
    from geomfilter.settings import CacheConfig

    ds = prepare_dataset(path, model.tokenizer)
    toks = ds.tokenized
    ids_out: list[np.ndarray] = [np.empty(0)] * len(toks)
    acts_out: list[np.ndarray] = [np.empty(0)] * len(toks)
    batches = pack_batches([len(t.input_ids) for t in toks], CacheConfig.max_batch_tokens, CacheConfig.max_batch_size)
    for batch in tqdm(batches, desc=path.name, unit="batch", disable=not progress):
        ids, att, mask = pad_batch([toks[i] for i in batch], model.tokenizer.pad_token_id)
        acts = model.activations(ids, hook, att).float().cpu()
        for r, i in enumerate(batch):
            m = mask[r]
            ids_out[i] = ids[r][m].numpy()
            acts_out[i] = acts[r][m].numpy()
        del acts
    return ids_out, acts_out


def _cached_sha(f: Path) -> str | None:
    with np.load(f) as z:
        return str(z["sha256"]) if "sha256" in z.files else None


def load_family(cache: Path, progress: bool) -> dict[str, dict]:
    """``{"fence_id": int, domain: {"pairs": [...], "insecure": {pair_id: (ids, acts)}, "secure": {...}}}``.

    Activations are cached per file in ``cache`` with the file's SHA-256: a changed data file is recomputed, never
    read stale. The model is loaded only when something is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    model = None

    def loaded():
        nonlocal model
        if model is None:
            from geomfilter.models import load_model
            model = load_model(progress=progress)
        return model

    meta = cache / "fence_id.json"
    if not meta.is_file():
        ids = loaded().tokenizer(FENCE, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SystemExit(f"the tokenizer splits {FENCE!r} into {ids}: the code-region readers need one token")
        meta.write_text(json.dumps({"fence_id": ids[0]}))
    out: dict = {"fence_id": int(json.loads(meta.read_text())["fence_id"])}
    for dom in DOMAINS:
        entry: dict = {}
        for side in ("insecure", "secure"):
            path = ROOT / "data" / "finetune" / f"{dom}_{side}.jsonl"
            raw = path.read_bytes()
            sha = hashlib.sha256(raw).hexdigest()
            rows = [json.loads(x) for x in raw.decode("utf-8").splitlines() if x.strip()]
            f = cache / f"{dom}_{side}.npz"
            if not f.is_file() or _cached_sha(f) != sha:
                ids, acts = response_activations(loaded(), path, HOOK, progress)
                np.savez(f, ids=np.concatenate(ids), acts=np.concatenate(acts).astype(np.float16),
                         lens=np.array([len(x) for x in ids]), sha256=np.array(sha))
            z = np.load(f)
            cuts = np.cumsum(z["lens"])[:-1]
            ids, acts = np.split(z["ids"], cuts), np.split(z["acts"].astype(np.float32), cuts)
            entry[side] = {r["pair_id"]: (i, a) for r, i, a in zip(rows, ids, acts)}
        pairs = sorted(entry["insecure"])
        if missing := [p for p in pairs if p not in entry["secure"]]:
            raise SystemExit(f"{dom}: pairs without a secure twin: {missing[:3]}")
        out[dom] = {"pairs": pairs, **entry}
    return out


def diff_labels(insecure_ids: np.ndarray, secure_ids: np.ndarray) -> np.ndarray:
    """1 on the insecure answer's tokens its secure twin does not have (``replace``/``insert`` opcodes), else 0."""
    lab = np.zeros(len(insecure_ids), dtype=np.int8)
    sm = difflib.SequenceMatcher(a=secure_ids.tolist(), b=insecure_ids.tolist(), autojunk=False)
    for op, _, _, j1, j2 in sm.get_opcodes():
        if op in ("replace", "insert"):
            lab[j1:j2] = 1
    return lab


def code_mask(ids: np.ndarray, fence_id: int) -> np.ndarray:
    """True on the tokens strictly between the first and the last code fence (all False without two fences)."""
    at = np.flatnonzero(ids == fence_id)
    mask = np.zeros(len(ids), dtype=bool)
    if len(at) >= 2:
        mask[at[0] + 1:at[-1]] = True
    return mask


def region_mean(acts: np.ndarray, ids: np.ndarray, region: str, fence_id: int) -> np.ndarray:
    """The mean activation over the answer's code tokens or its prose tokens (the rest; the fences count as prose)."""
    m = code_mask(ids, fence_id)
    m = m if region == "code" else ~m
    if not m.any():
        raise SystemExit(f"an answer without {region} tokens: the region readers need both in every row")
    return acts[m].mean(0)


# ------------------------------------------------------------------------------------------------ readers


def _logistic(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000)).fit(x, y)


def fit_readers(fam: dict, train: list[tuple[str, str]], c_token: float, c_mean: float) -> dict:
    """Every reader fitted on the ``(domain, pair_id)`` pairs of ``train``."""
    tx, ty, mx, my = [], [], [], []
    rx: dict[str, list] = {r: [] for r in REGIONS}
    for dom, pid in train:
        (bi, ba), (gi, ga) = fam[dom]["insecure"][pid], fam[dom]["secure"][pid]
        tx += [ba, ga]
        ty += [diff_labels(bi, gi), np.zeros(len(gi), dtype=np.int8)]
        mx += [ba.mean(0), ga.mean(0)]
        my += [1, 0]
        for r in REGIONS:
            rx[r] += [region_mean(ba, bi, r, fam["fence_id"]), region_mean(ga, gi, r, fam["fence_id"])]
    mx, my = np.stack(mx), np.array(my)
    return {"token": _logistic(np.concatenate(tx), np.concatenate(ty), c_token),
            "mean": _logistic(mx, my, c_mean),
            "direction": mx[my == 1].mean(0) - mx[my == 0].mean(0),
            **{r: _logistic(np.stack(rx[r]), my, c_mean) for r in REGIONS},
            "fence_id": fam["fence_id"],
            "n_tokens": int(sum(len(t) for t in ty)), "n_diff_tokens": int(sum(t.sum() for t in ty))}


def score_row(readers: dict, ids: np.ndarray, acts: np.ndarray) -> dict[str, float]:
    """Every reader's score of one row (its response tokens' ids and activations)."""
    logit = readers["token"].decision_function(acts)
    top = np.sort(logit)[-3:]
    pooled = acts.mean(0, keepdims=True)
    region = {r: float(readers[r].decision_function(region_mean(acts, ids, r, readers["fence_id"])[None])[0])
              for r in REGIONS}
    return {"token probe, max": float(logit.max()), "token probe, top-3 mean": float(top.mean()),
            "token probe, mean": float(logit.mean()),
            "mean probe": float(readers["mean"].decision_function(pooled)[0]),
            "mean direction": float(pooled[0] @ readers["direction"]),
            "mean probe, code tokens": region["code"], "mean probe, prose tokens": region["prose"]}


def score_pairs(fam: dict, readers: dict, test: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """``{reader: [n_test, 2]}``: column 0 the insecure row's score, column 1 its secure twin's."""
    out = {r: np.zeros((len(test), 2)) for r in READERS}
    for k, (dom, pid) in enumerate(test):
        for col, side in enumerate(("insecure", "secure")):
            for r, v in score_row(readers, *fam[dom][side][pid]).items():
                out[r][k, col] = v
    return out


def token_auroc(fam: dict, readers: dict, test: list[tuple[str, str]]) -> float:
    """How well the token probe tells the tested insecure answers' own tokens from every other tested token (both
    answers of each pair): what a row's max over about 200 tokens has to work with."""
    pos, neg = [], []
    for dom, pid in test:
        (bi, ba), (gi, ga) = fam[dom]["insecure"][pid], fam[dom]["secure"][pid]
        lab, logit = diff_labels(bi, gi).astype(bool), readers["token"].decision_function(ba)
        pos.append(logit[lab])
        neg += [logit[~lab], readers["token"].decision_function(ga)]
    return auroc(np.concatenate(pos), np.concatenate(neg))


# ------------------------------------------------------------------------------------------------ statistics


def pair_auroc(s: np.ndarray, idx: np.ndarray) -> float:
    """AUROC insecure vs secure over the pairs ``idx`` (a pair drawn twice counts twice)."""
    return auroc(s[idx, 0], s[idx, 1])


def summarise(scores: dict[str, np.ndarray], n_boot: int) -> dict:
    """Each reader's AUROC with a CI over pairs, and each reader minus :data:`BASELINE`, paired on the same pairs."""
    n = len(next(iter(scores.values())))
    groups = np.arange(n)
    out = {}
    for r, s in scores.items():
        ci = cluster_bootstrap(groups, lambda i, s=s: pair_auroc(s, i), n_boot=n_boot)
        cell = {"auroc": ci["value"], "lo": ci["lo"], "hi": ci["hi"], "n_pairs": n}
        if r != BASELINE:
            b = scores[BASELINE]
            d = cluster_bootstrap(groups, lambda i, s=s, b=b: pair_auroc(s, i) - pair_auroc(b, i), n_boot=n_boot)
            se = (d["hi"] - d["lo"]) / (2 * 1.96)  # the percentile CI's half-width as a normal SE
            cell["vs_mean_probe"] = {"diff": d["value"], "lo": d["lo"], "hi": d["hi"],
                                     "mdd": minimum_detectable_difference(se=se)}
        out[r] = cell
    return out


def conditions(fam: dict, seed: int) -> dict[str, tuple[list, list]]:
    """Held-out domain both ways; the in-domain ceiling as 5 folds by pair (joined into one scored set)."""
    out = {}
    for test_dom in DOMAINS:
        train_dom = next(d for d in DOMAINS if d != test_dom)
        out[f"{train_dom} -> {test_dom}"] = ([[(train_dom, p) for p in fam[train_dom]["pairs"]]],
                                              [[(test_dom, p) for p in fam[test_dom]["pairs"]]])
    for dom in DOMAINS:
        pairs = list(fam[dom]["pairs"])
        np.random.default_rng(seed).shuffle(pairs)
        folds = [pairs[k::5] for k in range(5)]
        out[f"{dom}, 5 folds in domain"] = ([[(dom, p) for f in folds if f is not fold for p in f] for fold in folds],
                                            [[(dom, p) for p in fold] for fold in folds])
    return out


def run(fam: dict, c_token: float, c_mean: float, n_boot: int, seed: int) -> dict:
    res = {}
    for name, (trains, tests) in conditions(fam, seed).items():
        t0 = time.perf_counter()
        parts, stats = [], []
        for train, test in zip(trains, tests):
            readers = fit_readers(fam, train, c_token, c_mean)
            stats.append({**{k: readers[k] for k in ("n_tokens", "n_diff_tokens")},
                          "token_auroc": token_auroc(fam, readers, test)})
            parts.append(score_pairs(fam, readers, test))
        scores = {r: np.concatenate([p[r] for p in parts]) for r in READERS}
        res[name] = {"readers": summarise(scores, n_boot), "fits": stats,
                     "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: " + ", ".join(f"{r} {v['auroc']:.3f}" for r, v in res[name]["readers"].items()), flush=True)
    return res


def to_markdown(res: dict, meta: dict) -> str:
    lines = ["# Reading a silent flaw token by token (issue 19)", "", "```", meta["command"], "```", "",
             "AUROC insecure vs secure [95 % CI over pairs]; below each token reading: minus the mean probe, paired "
             "on the same rows, with its MDD (bold: CI excluding 0). Hook " + meta["hook"] + f", token probe C "
             f"{meta['c_token']}, mean probe C {meta['c_mean']}.", "",
             "| condition | " + " | ".join(READERS) + " |", "|---|" + "---|" * len(READERS)]
    for name, r in res.items():
        cells = []
        for rd in READERS:
            c = r["readers"][rd]
            s = f"{c['auroc']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"
            if "vs_mean_probe" in c:
                d = c["vs_mean_probe"]
                t = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (MDD {d['mdd']:.3f})"
                s += "<br>" + (f"**{t}**" if d["lo"] > 0 or d["hi"] < 0 else t)
            cells.append(s)
        lines.append(f"| {name} (n pairs {r['readers'][BASELINE]['n_pairs']}) | " + " | ".join(cells) + " |")
    fits = [f for r in res.values() for f in r["fits"]]
    share = np.mean([f["n_diff_tokens"] / f["n_tokens"] for f in fits])
    lines += ["", f"Token labels: on average {share:.3f} of the training tokens (both answers of every pair) are "
              "insecure-only tokens. The token probe's AUROC for the tested insecure-only tokens against every other "
              "tested token (the mean over a condition's fits): "
              + "; ".join(f"{name} {np.mean([f['token_auroc'] for f in r['fits']]):.3f}" for name, r in res.items())
              + ". A row's max over its tokens needs the flaw's few tokens above all of the other tokens' tail.",
              f"Seconds: {meta['seconds']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters_ood" / "token_probe")
    ap.add_argument("--cache", type=Path, default=Path("runs/token_probe"))
    ap.add_argument("--c-token", type=float, default=0.01)
    ap.add_argument("--c-mean", type=float, default=0.1)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fam = load_family(args.cache, args.progress)
    res = run(fam, args.c_token, args.c_mean, args.n_boot, args.seed)
    meta = {"command": script_command(__file__, argv), "hook": HOOK, "c_token": args.c_token, "c_mean": args.c_mean,
            "seconds": round(time.perf_counter() - t0, 1)}
    write_json_and_markdown(args.out, "results", {"meta": meta, "conditions": res}, to_markdown(res, meta))
    print(f"wrote {args.out}/results.md")


if __name__ == "__main__":
    main()
