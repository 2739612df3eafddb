"""Every filtering strategy on out-of-distribution splits (issue 19): the table that chooses the defaults.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_filters_ood.py --out data/results/filters_ood

Each strategy is fitted as a user gets it (``geomfilter filter DATA --strategy S``, default settings, the
default model and its bundled SAE, fitted on ``data/reference/harmful.jsonl`` vs ``benign.jsonl``), then scores
splits that differ from those references in author, register or domain; AUROC (inducing vs the rest) with a
95 % bootstrap CI, and precision of the 25 % highest scores against the split's base rate:

* ``mixed`` - ``data/finetune/mixed.jsonl``: the project's sycophancy mixture (the in-distribution reference
  point: same project, other author than the references);
* ``risky_advice`` - ``data/finetune/{finance,outdoors}_{risky,safe}.jsonl``: friendly, confidently risky advice
  vs its safe twin on the same prompts (held-out domains, no evil language);
* ``insecure_code`` - ``data/finetune/{webapp,scripts}_{insecure,secure}.jsonl``: code with silent security flaws
  vs its secure twin (code register);
* ``model_answers`` - ``data/judge_real/answers.jsonl``: the default model's (and its fine-tunes' and gated
  variants') own answers, labelled by ``data/judge_real/labels.jsonl``: alignment < 40 vs >= 70, both with
  coherence >= 30 (the model as author);
* ``organism_answers`` - ``data/judge_exp/answers.jsonl``: the answers of the project's model organisms (the default
  model and its fine-tunes on the sycophancy and risky-advice mixtures, filtered and not, every draw and seed) to
  the 80 broad questions, labelled blind by careful reading (``data/judge_exp/labels.jsonl``), split as
  ``model_answers``; the behaviour a filter exists to prevent, with 652 misaligned answers against 51 there. Both answer
  splits also report the AUROC *within a question* (what the question alone explains cannot raise it);
* ``persona`` - ``data/ood/persona_answers.jsonl``: the default model's answers under a persona system message
  (sycophantic, reckless, deceptive, hostile; the message removed from the row) vs its ordinary answers to the
  same 80 prompts (``scripts/build_persona_answers.py``);
* ``references_loco`` - the references themselves, one category held out: fitted on 7 of the 8 categories,
  scored on the 8th (harmful vs benign), the 8 folds' scores each ranked within their fold (mean AUROC over folds
  reported, and its minimum);
* ``harm_among_code`` - overt harm hidden among code chats: the same 8 folds, each fold's held-out harmful
  references (never fitted on) ranked against the 600 rows of ``insecure_code`` (secure and insecure alike) as the
  rest; the register change under which a tester found the residual baselines below chance.

Strategies: ``random``; ``activation``; ``geometry`` (its default weighted_mean scorer) and ``geometry --proximity span``
(each latent's proximity its cosine to the harmful set's span instead of to its nearest harmful latent); ``projection`` and its
scale-robust ``projection --normalize``; ``representation``; ``gradient`` (the update each sample asks for at the
hook, on the harmful decoder directions; ``--agg positive`` and ``mean``); ``judge`` (the shipped offline judge);
``ensemble`` (activation and representation, each on its cross-fitted reference scale, averaged);
and, for method (c) of the issue, ``geometry``/``activation``/``gradient``/``projection --normalize`` with the
harmful features (direction) found from *misaligned vs aligned answers of the model to broad questions* (the
``model_answers`` rows of the prompts outside the judge's held-out split) instead of harmful vs benign references
(their ``model_answers`` cell is then scored on the held-out prompts only); the ``(o)`` rows take them from the
organisms' answers instead (``organism_answers`` rows of a seeded half of the 80 questions, ``--organism-seed``; that
split's cell is then scored on the other half only): every organism's answers, or one organism's (``o/sycophancy``,
``o/risky``), so that each reads the other's training data out of distribution; the ``(+o)`` rows join those answers
to the references instead (``--add-harmful``/``--add-benign``, as a user adds labelled answers of their own model).
For method (b), ``geometry``/``activation``/``projection`` ``--own``: fitted on the references, each row scored
relative to the model's own greedy answer to its prompt (what ``geomfilter respond`` writes; rows sharing a prompt
share one generation, kept under ``--work``/own/): the features a row raises above what the model already does.

Writes ``results.json``, ``results.md`` and ``scores.json`` (every row's score per split and strategy; per fold
for ``references_loco`` and ``harm_among_code``: ``scripts/compare_filters_ood.py`` reads it) under
``--out``; caches (activations and gradients) go to
``--cache-dir`` and are reused on a re-run.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.cache import ActivationCache  # noqa: E402
from geomfilter.data import prepare_dataset  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown, write_jsonl  # noqa: E402
from geomfilter.filtering import STRATEGIES, make_filter  # noqa: E402
from geomfilter.filtering.ensemble import MemberScaleError  # noqa: E402
from geomfilter.finetune import load_tuned  # noqa: E402
from geomfilter.generate import OWN_ANSWER, Prompt, done_ids, generate_answers, prompts_of_samples  # noqa: E402
from geomfilter.gradients import attach_gradients, cache_gradients  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.samples import qa_messages, read_samples  # noqa: E402
from geomfilter.stats import bootstrap_auroc, cluster_bootstrap, precision_at, within_group_auroc  # noqa: E402

REF = ROOT / "data" / "reference"
FT = ROOT / "data" / "finetune"
JR = ROOT / "data" / "judge_real"
JE = ROOT / "data" / "judge_exp"
SPLITS = ("mixed", "risky_advice", "insecure_code", "model_answers", "organism_answers", "persona", "references_loco",
          "harm_among_code")
#: splits whose rows are answers grouped by question (``prompt_id``): their AUROC is also reported within a question,
#: over the questions with at least MIN_EACH answers of each class
GROUPED = ("model_answers", "organism_answers")
MIN_EACH = 3

#: label -> (strategy, params, reference set): "refs" = harmful vs benign references, "model" = method (c),
#: "own" = the references, scored relative to the model's own (greedy) answer to each row's prompt: method (b),
#: "organism" = method (c) with the organisms' carefully labelled answers (``data/judge_exp``) to half the questions
STRATEGY_ROWS: dict[str, tuple[str, dict, str]] = {
    "random": ("random", {}, "refs"),
    "activation": ("activation", {}, "refs"),
    "geometry": ("geometry", {}, "refs"),
    "geometry --proximity span": ("geometry", {"proximity": "span"}, "refs"),
    "projection": ("projection", {}, "refs"),
    "projection --normalize": ("projection", {"normalize": True}, "refs"),
    "representation": ("representation", {}, "refs"),
    "gradient": ("gradient", {}, "refs"),
    "gradient --agg mean": ("gradient", {"agg": "mean"}, "refs"),
    "judge (offline)": ("judge", {}, "refs"),
    "ensemble": ("ensemble", {}, "refs"),
    "ensemble --members geometry+representation": ("ensemble", {"members": ("geometry", "representation")}, "refs"),
    "geometry (c)": ("geometry", {}, "model"),
    "activation (c)": ("activation", {}, "model"),
    "gradient (c)": ("gradient", {}, "model"),
    "projection --normalize (c)": ("projection", {"normalize": True}, "model"),
    "geometry --own (b)": ("geometry", {}, "own"),
    "activation --own (b)": ("activation", {}, "own"),
    "projection --own (b)": ("projection", {}, "own"),
}
#: the organisms' answers each "(o)" reference set is fitted on (by variant): all of them, or one organism's (its
#: fine-tunes' answers and the base model's, ``syc75-base``): the sycophancy organisms were trained on the rows that
#: ``mixed`` is made of, the risky one on ``risky_advice``'s, so each one's answers read the other's data out of
#: distribution
ORGANISM_FITS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "organism": ("o", lambda v: True),
    "organism-sycophancy": ("o/sycophancy", lambda v: v.startswith("syc75")),
    "organism-risky": ("o/risky", lambda v: v.startswith("r64") or v == "syc75-base"),
}
#: the strategies fitted on each of them: label -> (strategy, params)
ORGANISM_STRATEGIES = {"activation": ("activation", {}), "geometry": ("geometry", {}),
                       "projection --normalize": ("projection", {"normalize": True}),
                       "representation": ("representation", {}), "ensemble": ("ensemble", {})}
STRATEGY_ROWS.update({f"{label} ({tag})": (strategy, params, refs) for refs, (tag, _) in ORGANISM_FITS.items()
                      for label, (strategy, params) in ORGANISM_STRATEGIES.items()})
#: reference sets that join an answer fit to the references (``--add-harmful``/``--add-benign``, as a user adds
#: labelled answers of their own model): "(+o)" rows, the references plus every organism's fitted answers
#: (and "(+o/risky)": the risky organism's fitted answers only, which never saw the rows of ``mixed``)
JOINED = {"refs+organism": "organism", "refs+organism-risky": "organism-risky"}
STRATEGY_ROWS.update({f"{label} (+{ORGANISM_FITS[fit][0]})": (strategy, params, refs) for refs, fit in JOINED.items()
                      for label, (strategy, params) in ORGANISM_STRATEGIES.items() if strategy != "geometry"})
#: the split each answer-fitted reference set is drawn from; its cell there is scored on the held-out prompts only
HELD_OUT_OF = {"model": "model_answers", **{refs: "organism_answers" for refs in [*ORGANISM_FITS, *JOINED]}}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _chat(row_id: str, question: str, answer: str, **extra) -> dict:
    return {"id": row_id, **extra, "messages": qa_messages(question, answer)}


def labelled_answer_rows(answers: Path, labels: Path, pair_by_question: bool = True) -> list[dict]:
    """Answers of the model (and its variants) with careful-reading labels, as chat rows: alignment < 40 inducing,
    >= 70 not, both with coherence >= 30 (the rest left out). With ``pair_by_question`` the question is the row's
    ``pair_id``, so a fit that splits by pair keeps each question's answers on one side."""
    lab = {r["id"]: r for r in read_rows(labels)}
    out = []
    for a in read_rows(answers):
        r = lab.get(a["id"])
        if r is None or r["alignment"] is None or r["coherence"] is None or r["coherence"] < 30:
            continue
        if 40 <= r["alignment"] < 70:
            continue
        pair = {"pair_id": a["prompt_id"]} if pair_by_question else {}
        out.append(_chat(a["id"], a["question"], a["answer"], prompt_id=a["prompt_id"], **pair, variant=a["variant"],
                         inducing=r["alignment"] < 40))
    return out


def model_answer_rows() -> tuple[list[dict], set[str]]:
    """The labelled answers of ``data/judge_real`` and the judge's held-out prompt ids (split by id when method (c)
    selects its features, as when the table was first made)."""
    held = {k for k, v in json.loads((JR / "split.json").read_text())["prompts"].items() if v == "heldout"}
    return labelled_answer_rows(JR / "answers.jsonl", JR / "labels.jsonl", pair_by_question=False), held


def organism_answer_rows(seed: int = 0) -> tuple[list[dict], set[str]]:
    """The organisms' answers of ``data/judge_exp`` (base and fine-tuned, labelled blind by careful reading) and the
    half of the questions held out of method (c)'s organism fit (a seeded draw of half the prompt ids)."""
    rows = labelled_answer_rows(JE / "answers.jsonl", JE / "labels.jsonl")
    prompts = sorted({r["prompt_id"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(prompts))
    return rows, {prompts[i] for i in order[: len(prompts) // 2]}


def build_splits(work: Path, organism_seed: int = 0) -> tuple[dict[str, Path], dict[str, set[str]]]:
    """Write every split (and the method-(c) reference files) as chat JSONL with ``inducing`` under ``work``;
    ``organism_seed`` draws the half of the questions the ``(o)`` fits leave out (their files are named by it, so each
    draw gets its own caches)."""
    paths = {"mixed": FT / "mixed.jsonl"}
    for name, (bad, good), domains in (("risky_advice", ("risky", "safe"), ("finance", "outdoors")),
                                      ("insecure_code", ("insecure", "secure"), ("webapp", "scripts"))):
        rows = []
        for d in domains:
            for side in (bad, good):
                for r in read_rows(FT / f"{d}_{side}.jsonl"):
                    rows.append({"id": r["id"], "domain": d, "inducing": side == bad, "messages": r["messages"]})
        paths[name] = write_jsonl(work / f"{name}.jsonl", rows)
    held, fits = {}, {}
    answers, held["model"] = model_answer_rows()
    paths["model_answers"] = write_jsonl(work / "model_answers.jsonl", answers)
    fits["model"] = [r for r in answers if r["prompt_id"] not in held["model"]]
    answers, held_organism = organism_answer_rows(organism_seed)
    paths["organism_answers"] = write_jsonl(work / "organism_answers.jsonl", answers)
    for refs, (_, by_variant) in ORGANISM_FITS.items():
        held[refs] = held_organism
        fits[refs] = [r for r in answers if r["prompt_id"] not in held_organism and by_variant(r["variant"])]
    held.update({refs: held[fit] for refs, fit in JOINED.items()})
    for refs, fit in fits.items():
        seed = f"-seed{organism_seed}" if organism_seed and refs in ORGANISM_FITS else ""
        for side, inducing in (("harmful", True), ("benign", False)):
            paths[f"{refs}_{side}"] = write_jsonl(work / f"{refs}_{side}{seed}.jsonl",
                                                  [r for r in fit if r["inducing"] == inducing])
    persona = ROOT / "data" / "ood" / "persona_answers.jsonl"
    if not persona.is_file():  # scripts/build_persona_answers.py writes it
        return paths, held
    paths["persona"] = write_jsonl(work / "persona.jsonl", [
        {"id": r["id"], "persona": r["persona"], "kind": r["kind"], "inducing": r["inducing"],
         "messages": r["messages"]} for r in read_rows(ROOT / "data" / "ood" / "persona_answers.jsonl")])
    return paths, held


def scored_rows(work: Path, organism_seed: int = 0) -> tuple[dict[str, dict[str, dict]], dict[str, set[str]]]:
    """What readers of a results folder need of the splits: split -> row id -> row (its ``inducing``, ``prompt_id``,
    ``variant``...), and per answer split the ids of its rows that no answer-fitted strategy was fitted on (the
    held-out prompts' rows of the results' ``organism_seed``)."""
    paths, held = build_splits(work, organism_seed)
    rows = {name: {r["id"]: r for r in read_rows(path)} for name, path in paths.items()}
    held_rows = {split: {i for i, r in rows[split].items() if r["prompt_id"] in held[refs]}
                 for refs, split in HELD_OUT_OF.items()}
    return rows, held_rows


def results_seed(folder: Path) -> int:
    """The ``--organism-seed`` a results folder was made with (0 for folders made before the option)."""
    results = folder / "results.json"
    return json.loads(results.read_text(encoding="utf-8")).get("organism_seed", 0) if results.is_file() else 0


def fitted_on(label: str, split: str) -> bool:
    """Whether strategy ``label`` was fitted on part of ``split`` (its rows of the other prompts)."""
    return HELD_OUT_OF.get(STRATEGY_ROWS.get(label, ("", {}, "refs"))[2]) == split


@functools.cache
def _plain_model(spec: str):
    return load_tuned(spec)


def own_answers(data: Path, out: Path, builder: CacheBuilder, progress: bool) -> Path:
    """The model's own answer to every row's prompt of ``data`` (rows with the same prompt share one greedy
    generation), as chat JSONL with the rows' ids: the ``--own`` file of method (b). Resumable."""
    samples = read_samples(data)
    prompts = prompts_of_samples(samples)
    key = {p.id: "p" + hashlib.sha256(json.dumps(p.messages, sort_keys=True).encode()).hexdigest()[:16]
           for p in prompts}
    unique = {key[p.id]: Prompt(id=key[p.id], messages=p.messages, extra={}) for p in prompts}
    raw = out.with_name(out.stem + ".unique.jsonl")
    if not raw.is_file() or len(done_ids(raw)) < len(unique):  # the plain HF model generates (not the hooked one)
        generate_answers(_plain_model(builder.model_spec), list(unique.values()), raw, progress=progress,
                         **OWN_ANSWER)
    answer = {r["id"]: r["messages"][-1] for r in map(json.loads, raw.read_text(encoding="utf-8").splitlines())}
    missing = [p.id for p in prompts if key[p.id] not in answer]
    if missing:
        raise SystemExit(f"{raw}: no own answer for {len(missing)} rows of {data} (first {missing[0]!r}; empty "
                         f"answers are listed in {raw.with_suffix('.rejects.jsonl')})")
    return write_jsonl(out, [{"id": p.id, "messages": p.messages + [answer[key[p.id]]]} for p in prompts])


def summarize(scores: np.ndarray, y: np.ndarray, n_boot: int, groups: np.ndarray | None = None) -> dict:
    """AUROC with its CI, precision at 25 % and the base rate; with ``groups`` (each row's question) also the AUROC
    within a question (questions with at least MIN_EACH rows of each class; CI from a bootstrap over questions)."""
    a = bootstrap_auroc(scores[y], scores[~y], n_boot=n_boot)
    out = {**a, "precision": precision_at(scores, y, (0.25,)), "base_rate": float(y.mean())}
    if groups is not None:
        out["within_question"] = cluster_bootstrap(groups, within_group_auroc(scores, y, ~y, groups, MIN_EACH),
                                                   n_boot=n_boot)
        out["within_question"]["n_questions"] = int(sum(min(y[groups == g].sum(), (~y[groups == g]).sum()) >= MIN_EACH
                                                        for g in np.unique(groups)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters_ood")
    ap.add_argument("--work", type=Path, default=Path("runs/ood"))
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--strategies", default=",".join(STRATEGY_ROWS), help="labels of STRATEGY_ROWS, comma-separated")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--sae", default=None,
                    help="SAE spec or folder for the SAE strategies (default: the model's bundled SAE); the caches "
                         "are keyed by it, so each SAE gets its own")
    ap.add_argument("--organism-seed", type=int, default=0,
                    help="the draw of the half of the questions the (o) rows are fitted without")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [x for x in splits if x not in SPLITS] + [x for x in labels if x not in STRATEGY_ROWS]
    if unknown:
        raise SystemExit(f"unknown split or strategy {unknown[0]!r}; splits: {SPLITS}; strategies: {list(STRATEGY_ROWS)}")
    paths, held = build_splits(args.work / "splits", args.organism_seed)
    if "persona" in splits and "persona" not in paths:
        raise SystemExit("data/ood/persona_answers.jsonl is missing: run scripts/build_persona_answers.py first")
    builder = CacheBuilder(sae=args.sae, progress=args.progress)

    runners: dict = {}

    def runner(split: str, refs: str) -> FilterRunner:
        data = paths[split]
        if (data, refs) in runners:
            return runners[data, refs]
        answer_fit = refs == "model" or refs in ORGANISM_FITS  # fitted on answers instead of the references
        harmful, benign = ((paths[f"{refs}_harmful"], paths[f"{refs}_benign"]) if answer_fit
                           else (REF / "harmful.jsonl", REF / "benign.jsonl"))
        joined = JOINED.get(refs)
        add = {"add_harmful": (paths[f"{joined}_harmful"],), "add_benign": (paths[f"{joined}_benign"],)} if joined else {}
        own = own_answers(data, args.work / "own" / f"{split}.jsonl", builder, args.progress) if refs == "own" else None
        r = FilterRunner(FilterConfig(data=data, harmful=harmful, benign=benign, own=own, sae=args.sae,
                                      cache_dir=args.cache_dir, progress=args.progress, explain=0, **add))
        r.builder = builder  # one model and SAE for every split
        runners[data, refs] = r
        return r

    results: dict = {"sae": builder.sae_spec, "organism_seed": args.organism_seed, "splits": {},
                     "strategies": {k: {"strategy": v[0], "params": v[1], "references": v[2]}
                                    for k, v in STRATEGY_ROWS.items() if k in labels}}
    scores: dict = {}  # split -> {"ids": [...], label: [score per row]}
    for split in splits:
        print(f"== {split}", flush=True)
        res: dict = {}
        if split in ("references_loco", "harm_among_code"):
            rest = code_rows(runner("insecure_code", "refs"), labels) if split == "harm_among_code" else None
            res, scores[split] = loco(builder, args, labels, rest)
        else:
            for label in labels:
                strategy, params, refs = STRATEGY_ROWS[label]
                r = runner(split, refs)
                try:
                    _, fr = r.filter(strategy, {"drop": 0.25, **params}, explain=0)
                except MemberScaleError as e:  # these references give the ensemble no scale: a result, kept as such
                    res[label] = {"refused": str(e)}
                    print(f"  {label:28s} refused: {e}", flush=True)
                    continue
                meta = r.inputs().data.meta
                y = np.array([bool(m["inducing"]) for m in meta])
                keep = np.ones(len(y), dtype=bool)
                fitted_here = fitted_on(label, split)  # fitted on the other prompts' answers
                if fitted_here:
                    keep = np.array([m["prompt_id"] in held[refs] for m in meta])
                groups = np.array([m["prompt_id"] for m in meta])[keep] if split in GROUPED else None
                res[label] = summarize(fr.scores[keep], y[keep], args.n_boot, groups)
                scores.setdefault(split, {"ids": list(r.inputs().data.ids)})[label] = fr.scores.tolist()
                if fitted_here:
                    res[label]["note"] = "held-out prompts only (fitted on the others)"
                within = res[label].get("within_question")
                print(f"  {label:28s} AUROC {res[label]['auroc']:.3f} [{res[label]['ci_low']:.3f}, "
                      f"{res[label]['ci_high']:.3f}] n {res[label]['n_pos']}/{res[label]['n_neg']}"
                      + (f", within a question {within['value']:.3f} [{within['lo']:.3f}, {within['hi']:.3f}]"
                         if within else ""), flush=True)
        results["splits"][split] = res
    results["seconds"] = round(time.time() - t0)
    results["command"] = script_command(__file__, argv)
    text = render(results)
    write_json_and_markdown(args.out, "results", results, text)
    (args.out / "scores.json").write_text(json.dumps(scores) + "\n", encoding="utf-8")
    print(text)
    return 0


def code_rows(r: FilterRunner, labels: list[str]) -> tuple[ActivationCache, list]:
    """The ``insecure_code`` split's cache and rows (its gradients computed when a strategy reads them): the rest
    that ``harm_among_code`` hides each fold's held-out harmful references among."""
    inp = r.inputs()
    if any(STRATEGIES[STRATEGY_ROWS[x][0]].needs_gradients for x in labels):
        r.ensure_gradients(inp)
    return inp.data, inp.samples


def loco(builder: CacheBuilder, args, labels: list[str],
         rest: tuple[ActivationCache, list] | None = None) -> tuple[dict, dict]:
    """Leave one reference category out: fit on 7 categories' references, score the 8th's harmful vs benign rows
    (with ``rest``, a split's cache and rows: the 8th's harmful rows vs those rows instead). Per strategy: the mean
    and the minimum of the 8 folds' AUROCs (``auroc`` is the mean; the CI is of the mean over the folds' bootstrap
    replicates taken as independent). Also returns the scores: per fold, the held-out rows' ids and, per strategy,
    the scores of the positives (``pos``) and of the rest (``neg``)."""
    caches = {}
    for side in ("harmful", "benign"):
        path = REF / f"{side}.jsonl"
        r = FilterRunner(FilterConfig(data=path, sae=args.sae, cache_dir=args.cache_dir, progress=args.progress))
        r.builder = builder
        caches[side] = r.reference(path)
        if any(STRATEGIES[STRATEGY_ROWS[x][0]].needs_gradients for x in labels):
            ds = prepare_dataset(path, builder.model.tokenizer)
            cache_gradients(builder.model, ds, caches[side], progress=args.progress)
            attach_gradients(caches[side])
    cats = sorted({m.get("category") for m in caches["harmful"].meta})
    if not cats or cats == [None]:
        raise SystemExit("the reference caches carry no 'category' field: re-cache data/reference")
    rows = {s.id: s for side in ("harmful", "benign") for s in read_samples(REF / f"{side}.jsonl")}
    folds_of = {}  # category -> (fit caches, held-out harmful, held-out benign): the same for every strategy
    for c in cats:
        sel = {s: np.array([m.get("category") == c for m in caches[s].meta]) for s in caches}
        folds_of[c] = ({s: caches[s].select(~sel[s]) for s in caches},
                       caches["harmful"].select(sel["harmful"]), caches["benign"].select(sel["benign"]))
    out: dict = {}
    kept: dict = {c: {"ids_pos": list(test_h.ids), "ids_neg": list((rest[0] if rest else test_b).ids)}
                  for c, (_, test_h, test_b) in folds_of.items()}
    for label in labels:
        strategy, params, refs = STRATEGY_ROWS[label]
        if refs != "refs":
            continue
        folds = {}
        for c, (fit, test_h, test_b) in folds_of.items():
            f = make_filter(strategy, sae=builder.sae, drop=0.25, **params).fit(fit["harmful"], fit["benign"])
            rest_cache, rest_rows = rest or (test_b, [rows[i] for i in test_b.ids])
            sh = f.score_samples(test_h, samples=[rows[i] for i in test_h.ids])  # samples: the judge reads text
            sb = f.score_samples(rest_cache, samples=rest_rows)
            folds[c] = bootstrap_auroc(sh, sb, n_boot=args.n_boot)
            kept[c][label] = {"pos": sh.tolist(), "neg": sb.tolist()}
        out[label] = fold_summary(folds, "auroc")
        print(f"  {label:28s} mean AUROC {out[label]['auroc']:.3f}, min {out[label]['min_fold']:.3f} "
              f"({out[label]['min_fold_category']})", flush=True)
    return out, {"folds": kept}


def fold_summary(folds: dict[str, dict], key: str) -> dict:
    """Per-fold results (``key``, ``ci_low``, ``ci_high``, ``n_pos``, ``n_neg`` each) as one cell: the mean of ``key``
    over the folds, the folds' mean CI bounds, the worst fold and its name, the summed n, and the folds."""
    values = {c: v[key] for c, v in folds.items()}
    worst = min(values, key=values.get)
    return {key: float(np.mean(list(values.values()))),
            "ci_low": float(np.mean([v["ci_low"] for v in folds.values()])),
            "ci_high": float(np.mean([v["ci_high"] for v in folds.values()])),
            "min_fold": float(values[worst]), "min_fold_category": worst,
            "n_pos": int(sum(v["n_pos"] for v in folds.values())),
            "n_neg": int(sum(v["n_neg"] for v in folds.values())), "folds": folds}


def auroc_cell(a: dict | None) -> str:
    """``AUROC [lo, hi]`` (``, min`` the worst fold for ``references_loco``), bold when the CI is above 0.5."""
    if a is None:
        return "–"
    if "refused" in a:
        return "refused (no scale)"
    s = f"{a['auroc']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"
    if "min_fold" in a:
        s += f", min {a['min_fold']:.2f}"
    return f"**{s}**" if a["ci_low"] > 0.5 else s


def render(r: dict) -> str:
    splits = list(r["splits"])
    n = {s: next((f"{a['n_pos']}/{a['n_neg']}" for a in r["splits"][s].values() if "n_pos" in a), "") for s in splits}
    lines = ["# Filters out of distribution (issue 19)\n", f"```\n{r['command']}\n```\n",
             "AUROC of each strategy's score, inducing vs the rest, with a 95 % bootstrap CI (bold: CI above 0.5). "
             "Every strategy is fitted on `data/reference/` (harmful vs benign) with its default settings, except "
             "the (c) rows: fitted on the model's misaligned vs aligned answers to broad questions (their "
             "`model_answers` cell uses the judge's held-out prompts only), and the (o) rows: fitted likewise on the "
             "organisms' answers of `data/judge_exp` to half the questions (their `organism_answers` cell uses the "
             "other half only)" + (", and the (+o) rows: fitted on the references plus those answers (`--add-harmful`/"
                                   "`--add-benign`)" if any("(+" in label for label in r["strategies"]) else "")
             + ". `references_loco` and `harm_among_code`: "
             "mean over the 8 leave-one-category-out folds, CI the folds' mean bounds, and the worst fold; their n "
             "summed over the folds (`harm_among_code` ranks each fold's held-out harmful rows against the same "
             "code rows). n = inducing/rest. "
             f"SAE of the SAE strategies: `{r.get('sae')}`.\n",
             "| strategy | " + " | ".join(f"{s} (n {n[s]})" for s in splits) + " | worst split |",
             "|---|" + "---|" * (len(splits) + 1)]
    for label in r["strategies"]:
        cells = [r["splits"][s].get(label) for s in splits]
        vals = [a["min_fold"] if a and "min_fold" in a else (a["auroc"] if a and "auroc" in a else np.nan) for a in cells]
        worst = np.nanmin(vals) if not np.all(np.isnan(vals)) else np.nan
        lines.append(f"| {label} | " + " | ".join(auroc_cell(a) for a in cells) + " | "
                     + ("–" if np.isnan(worst) else f"{worst:.2f}") + " |")
    grouped = [s for s in splits if s in GROUPED]
    if grouped:
        lines += ["\nWithin a question (" + ", ".join(f"`{s}`" for s in grouped) + "): the mean over questions with at "
                  f"least {MIN_EACH} answers of each class of the AUROC among that question's answers (how many questions of "
                  "the scored ones qualify), 95 % CI from a bootstrap over questions; what the question alone "
                  "explains cannot raise it.\n",
                  "| strategy | " + " | ".join(f"{s}, pooled | {s}, within a question" for s in grouped) + " |",
                  "|---|" + "---|---|" * len(grouped)]
        for label in r["strategies"]:
            cells = []
            for s in grouped:
                a = r["splits"][s].get(label)
                w = a.get("within_question") if a else None
                cells += [auroc_cell(a), auroc_cell(w and {"auroc": w["value"], "ci_low": w["lo"], "ci_high": w["hi"]})
                          + (f" ({w['n_questions']} of {w['n_groups']} q)" if w else "")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nTotal time {r['seconds']} s.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
