"""Can a user teach the filters a kind of misalignment they miss by adding references of that kind (issue 19)?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_domain_references.py [--family code|sycophancy|persona]

Two out-of-distribution splits of ``scripts/measure_filters_ood.py`` are at chance for every strategy fitted on the
default references (harmful vs benign prose answers): ``insecure_code`` (working code with one silent security flaw vs
its secure twin) and ``persona`` (the default model's answers under a misaligned persona's system message vs its
ordinary answers). The remedy a user has is references of that kind (``geomfilter filter --add-harmful/--add-benign``).
This measures it on held-out groups of a *family*: each group is tested in turn, with pairs of the other groups added
to the references:

* ``code``: the ``webapp`` domain (Flask/SQL backends) and the ``scripts`` domain (ops and shell scripts), 150 pairs
  each, a pair = a flawed answer (harmful side) and its secure twin (benign side);
* ``code_cut``: the same pairs with every answer cut after its last closing code fence, so that the twins (which
  share their opening sentence) differ only inside the code: the secure twins' closing sentences on why the code is
  safe are a tell in prose (``scripts/explore_token_probe.py``);
* ``sycophancy`` (a kind the references hold no category of, in prose): the four domains of ``mixed.jsonl``
  (career, code, health, legal), 160 pairs each, a pair = a sycophantic answer and its corrective twin; three domains
  fit, the fourth is tested;
* ``persona``: the personas ``sycophantic+reckless`` and ``deceptive+hostile``, a pair = one of the 80 prompts (the
  group's two persona answers on the harmful side, the ordinary answer on the benign side). The groups share the
  ordinary answers, so the prompts fitted on are never tested.

``K`` pairs of the fitting groups are added (default: code and sycophancy 25, 75, 150; persona 20, 40, 60; drawn by
``--draws`` seeds below all of their pairs); one fit takes the largest ``K`` alone, without the default references;
the in-group ceiling adds half of the *tested* group's pairs and tests the other half: whether the kind can be read
from these caches at all, so that a miss across groups is a failure to transfer, not to see. The same fitted filters
score the prose splits ``mixed`` (also per domain) and ``risky_advice``, to see what the added references cost there.
No row of a pair fitted on is scored, in any split.

Per strategy, condition, direction and draw: AUROC with a 95 % bootstrap CI, and the paired difference from the
default references on the same rows (:func:`geomfilter.stats.paired_bootstrap_auroc`, CI and MDD). Writes
``results.json`` / ``results.md`` under ``--out`` (default ``data/results/filters_ood/domain_references/FAMILY``);
caches go to ``--cache-dir``, one folder per file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from measure_filters_ood import read_rows  # noqa: E402

from geomfilter.cache import ActivationCache  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown, write_jsonl  # noqa: E402
from geomfilter.filtering import make_filter  # noqa: E402
from geomfilter.filtering.base import FilterOptionError  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.samples import jsonl_objects  # noqa: E402
from geomfilter.stats import auroc, bootstrap_auroc, paired_bootstrap_auroc  # noqa: E402

REF = ROOT / "data" / "reference"
FT = ROOT / "data" / "finetune"
PERSONA = ROOT / "data" / "ood" / "persona_answers.jsonl"
#: family -> (its groups (each tested in turn, the others' pairs added), default numbers of pairs added, what is tested)
FAMILIES = {"code": (("webapp", "scripts"), "25,75,150", "insecure vs secure code, held-out domain"),
            "code_cut": (("webapp", "scripts"), "25,75,150",
                         "insecure vs secure code cut after the last code fence, held-out domain"),
            "sycophancy": (("career", "code", "health", "legal"), "25,75,150",
                           "sycophantic vs corrective answers, held-out domain"),
            "persona": (("sycophantic+reckless", "deceptive+hostile"), "20,40,60",
                        "persona vs ordinary answers, held-out personas and prompts")}
#: the families of twin files ``data/finetune/<group>_<harmful>.jsonl`` / ``<group>_<benign>.jsonl``
TWIN_FILES = {"code": ("insecure", "secure"), "code_cut": ("insecure", "secure"),
              "sycophancy": ("sycophantic", "corrective")}
#: families whose answers are cut after their last closing code fence (written under ``--work``): the twins share their
#: opening sentence, so what is left differs only inside the code
CUT_AFTER_CODE = {"code_cut"}
FENCE = "```"
#: the prose splits scored by every fitted filter: name -> files (each row carries ``inducing``)
PROSE = {"mixed": ("mixed",),
         "risky_advice": ("finance_risky", "finance_safe", "outdoors_risky", "outdoors_safe")}
#: label -> (strategy, params)
STRATEGIES = {"activation": ("activation", {}), "geometry": ("geometry", {}),
              "projection --normalize": ("projection", {"normalize": True}),
              "representation": ("representation", {}), "ensemble": ("ensemble", {}),
              # is the SAE readings' cost on prose a shortage of room in their 100 harmful latents? twice as many
              "activation --n-harmful 200": ("activation", {"n_harmful": 200}),
              "ensemble --n-harmful 200": ("ensemble", {"n_harmful": 200})}


def pair_rows(cache: ActivationCache, pairs: list[str]) -> ActivationCache:
    """The rows of ``cache`` whose ``pair_id`` is in ``pairs`` (in the cache's order)."""
    ids = [m["pair_id"] for m in cache.meta]
    if missing := sorted(set(pairs) - set(ids)):
        raise SystemExit(f"{cache.path}: no row with pair_id {missing[0]!r}")
    return cache.select(np.isin(ids, pairs))


def draw_pairs(pairs: list[str], k: int, draw: int) -> list[str]:
    """``k`` of ``pairs``, drawn with seed ``draw`` (all of them when ``k`` is their number)."""
    return list(pairs) if k == len(pairs) else sorted(np.random.default_rng(draw).choice(pairs, k, replace=False))


def pair_ids(group: dict[str, ActivationCache]) -> list[str]:
    """A group's pairs: the pair ids of its harmful rows, each once, in order."""
    return list(dict.fromkeys(m["pair_id"] for m in group["harmful"].meta))


def conditions(fit_group: str, test_group: str, pairs: dict[str, list[str]], ks: list[int],
               draws: int) -> list[tuple[str, int, str, list[str], bool]]:
    """Every fit of one direction: (name, draw, the group whose pairs are added, their pair ids, whether the default
    references are kept). The fit on the group's pairs alone takes the largest ``k``; the last, the in-group ceiling,
    adds half the *tested* group's pairs (the other half is then tested)."""
    n = len(pairs[fit_group])
    out = [("references", 0, fit_group, [], True)]
    for k in ks:
        if not 0 < k <= n:
            raise SystemExit(f"--k {k}: must be between 1 and {n} (the pairs of {fit_group!r})")
        out += [(f"references + {k} pairs", d, fit_group, draw_pairs(pairs[fit_group], k, d), True)
                for d in range(draws if k < n else 1)]
    out.append((f"{ks[-1]} pairs only", 0, fit_group, draw_pairs(pairs[fit_group], ks[-1], 0), False))
    half = len(pairs[test_group]) // 2
    out += [(f"in-group ceiling: references + {half} pairs of the tested group", d, test_group,
             draw_pairs(pairs[test_group], half, d), True) for d in range(draws)]
    return out


def pooled(groups: list[dict[str, ActivationCache]], name: str) -> dict[str, ActivationCache]:
    """Several groups as one (their harmful rows, their benign rows); a benign cache shared by the groups (the persona
    family's ordinary answers) is taken once."""
    out = {}
    for side in ("harmful", "benign"):
        parts = list({id(g[side]): g[side] for g in groups}.values())
        out[side] = parts[0] if len(parts) == 1 else ActivationCache.concat(parts, f"{name} {side}")
    return out


def reference_sides(refs: dict[str, ActivationCache], group: dict[str, ActivationCache], added: list[str],
                    keep_refs: bool, name: str) -> dict[str, ActivationCache]:
    """The harmful and benign reference caches of one fit: the default references (when kept) plus the ``added``
    pairs of ``group`` (its harmful rows, e.g. the flawed code, on the harmful side; their twins on the benign side)."""
    sides = {}
    for side in ("harmful", "benign"):
        parts = [refs[side]] if keep_refs else []
        if added:
            parts.append(pair_rows(group[side], added))
        sides[side] = ActivationCache.concat(parts, f"{side} ({name})")
    return sides


def unfitted_rows(test: ActivationCache, added: list[str]) -> np.ndarray:
    """The rows of ``test`` to score: those of no pair fitted on (rows without a ``pair_id`` are scored). Code:
    the other domain's pairs are other pairs; persona groups share their prompts' ordinary answers, so the prompts
    fitted on are left out; sycophancy: ``mixed`` holds rows of the pairs fitted on, left out there; the in-group
    ceiling tests the half of the tested group it did not fit on."""
    return ~np.isin([str(m.get("pair_id")) for m in test.meta], list(added))


def by_domain(scores: np.ndarray, y: np.ndarray, domains: list) -> dict[str, float]:
    """AUROC of each domain's inducing rows against every non-inducing row of the split."""
    domains = np.asarray(domains, dtype=object)
    return {str(d): auroc(scores[y & (domains == d)], scores[~y]) for d in sorted(set(domains[y]), key=str)}


def twin_overlap(insecure: ActivationCache, secure: ActivationCache, k: int = 32) -> dict[str, float]:
    """The mean share of a flawed answer's top-``k`` latents (mean-pooled; ``k``: geometry's default number of target
    features) that its secure twin shares, and that another pair's secure answer shares (the next pair's, cyclically)."""
    if insecure.ids and [m["pair_id"] for m in insecure.meta] != [m["pair_id"] for m in secure.meta]:
        raise SystemExit(f"{insecure.path} and {secure.path}: the twins are not in the same pair order")
    top_a, top_b = ([set(row.tolist()) for row in np.argsort(-c.dense(), axis=1)[:, :k]] for c in (insecure, secure))
    share = [len(a & b) / k for a, b in zip(top_a, top_b)]
    other = [len(a & top_b[(i + 1) % len(top_b)]) / k for i, a in enumerate(top_a)]
    return {"twin": float(np.mean(share)), "other_pair": float(np.mean(other)), "k": k}


def score_fit(f, splits: dict[str, tuple[ActivationCache, np.ndarray]], added: list[str], base: dict,
              n_boot: int) -> dict:
    """One fitted filter on every split (name -> cache and labels): AUROC with the rows of the pairs fitted on left
    out, each domain's AUROC on the prose splits, and the paired difference from ``base`` (split -> the default
    references' scores; the first fit, that of the default references, fills it)."""
    record = {}
    for split, (cache, y) in splits.items():
        s = f.score_samples(cache)
        first = split not in base
        if first:
            base[split] = s
        sel = unfitted_rows(cache, added)  # no row of a pair fitted on is scored, in any split
        s, b, y = s[sel], base[split][sel], y[sel]
        record[split] = bootstrap_auroc(s[y], s[~y], n_boot=n_boot)
        if split != "held_out":  # a prose split: each domain's inducing rows against all the others
            record[split]["by_domain"] = by_domain(s, y, [m.get("domain") for m, k in zip(cache.meta, sel) if k])
        if not first:
            record[split]["vs_references"] = paired_bootstrap_auroc(s[y], s[~y], b[y], b[~y], n_boot=n_boot)
    return record


def labelled(parts: list[ActivationCache], name: str) -> tuple[ActivationCache, np.ndarray]:
    cache = ActivationCache.concat(parts, name)
    return cache, np.array([bool(m["inducing"]) for m in cache.meta])


def cut_after_code(path: Path, work: Path) -> Path:
    """``path`` with every answer cut after its last closing code fence, written as ``work/<stem>_cut.jsonl``. The
    project's secure twins tend to close with a sentence on why the code is safe (scripts: 21 words after the code
    against 8 for the flawed answers), a tell in the prose that a filter could read without reading the code."""
    rows = []
    for line, r in jsonl_objects(path, SystemExit):
        last = len(r["messages"]) - 1
        answer = r["messages"][last]["content"]
        if answer.count(FENCE) < 2:
            raise SystemExit(f"{path}:{line}: field 'messages[{last}].content': no closed code block to cut after")
        cut = answer[:answer.rfind(FENCE) + len(FENCE)]
        rows.append({**r, "messages": [*r["messages"][:last], {**r["messages"][last], "content": cut}]})
    return write_jsonl(work / f"{path.stem}_cut.jsonl", rows)


def family_groups(family: str, cached, work: Path) -> dict[str, dict[str, ActivationCache]]:
    """Each group's harmful and benign caches, rows carrying ``pair_id`` and ``inducing``. Code: a domain's flawed
    answers and their secure twins; sycophancy: a domain's sycophantic answers and their corrective twins. Persona: the default model's answers under the group's personas and its ordinary
    answers to the same prompts (``data/ood/persona_answers.jsonl``, paired by prompt: written under ``work`` with
    ``pair_id`` = ``prompt_id``); both groups share the ordinary answers."""
    groups = FAMILIES[family][0]
    if family in TWIN_FILES:
        bad, good = TWIN_FILES[family]
        source = (lambda path: cut_after_code(path, work)) if family in CUT_AFTER_CODE else (lambda path: path)
        return {d: {"harmful": cached(source(FT / f"{d}_{bad}.jsonl")), "benign": cached(source(FT / f"{d}_{good}.jsonl"))}
                for d in groups}
    if not PERSONA.is_file():
        raise SystemExit(f"{PERSONA} is missing: run scripts/build_persona_answers.py first")
    path = write_jsonl(work / "persona_answers.jsonl", [
        {"id": r["id"], "pair_id": r["prompt_id"], "persona": r["persona"], "kind": r["kind"],
         "inducing": r["inducing"], "messages": r["messages"]} for r in read_rows(PERSONA)])
    cache = cached(path)
    persona = np.array([m["persona"] for m in cache.meta])
    ordinary = cache.select(persona == "ordinary")  # one object: pooled() takes it once
    return {g: {"harmful": cache.select(np.isin(persona, g.split("+"))), "benign": ordinary} for g in groups}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=list(FAMILIES), default="code")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default data/results/filters_ood/domain_references/FAMILY)")
    ap.add_argument("--work", type=Path, default=Path("runs/domain"), help="derived data files")
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--k", default=None, help="numbers of pairs added, comma-separated (default: the family's, "
                    + "; ".join(f"{f} {v[1]}" for f, v in FAMILIES.items()) + ")")
    ap.add_argument("--draws", type=int, default=2, help="random pair subsets per K below all of a group's pairs")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := [x for x in labels if x not in STRATEGIES]:
        raise SystemExit(f"unknown strategy {unknown[0]!r}; choose among {list(STRATEGIES)}")
    ks = sorted({int(x) for x in (args.k or FAMILIES[args.family][1]).split(",") if x.strip()})
    out = args.out or ROOT / "data" / "results" / "filters_ood" / "domain_references" / args.family

    builder = CacheBuilder(progress=args.progress)
    runner = FilterRunner(FilterConfig(data=REF / "harmful.jsonl", cache_dir=args.cache_dir, progress=args.progress))
    runner.builder = builder  # one model and SAE for every file

    def cached(path: Path) -> ActivationCache:
        print(f"caching {path}", flush=True)
        return runner.reference(path)

    refs = {side: cached(REF / f"{side}.jsonl") for side in ("harmful", "benign")}
    groups = family_groups(args.family, cached, args.work)
    tests = {g: labelled([groups[g]["harmful"], groups[g]["benign"]], g) for g in groups}
    prose = {name: labelled([cached(FT / f"{f}.jsonl") for f in files], name) for name, files in PROSE.items()}

    results: dict = {"command": script_command(__file__, argv), "family": args.family, "tested": FAMILIES[args.family][2],
                     "k": ks, "draws": args.draws, "directions": {}}
    if args.family in TWIN_FILES:
        results["twin_top_latents"] = {g: twin_overlap(v["harmful"], v["benign"]) for g, v in groups.items()}
    names = list(groups)
    for i in range(len(names)):
        test_group = names[(i + 1) % len(names)]  # two groups: names[0] -> names[1], then the reverse
        fit_group = "+".join(g for g in names if g != test_group)
        sources = {fit_group: pooled([groups[g] for g in names if g != test_group], fit_group),
                   test_group: groups[test_group]}
        pairs = {g: pair_ids(v) for g, v in sources.items()}
        direction = f"{fit_group} -> {test_group}"
        print(f"== {direction}", flush=True)
        splits = {"held_out": tests[test_group], **prose}
        cells: dict = {}
        for label in labels:
            strategy, params = STRATEGIES[label]
            base: dict = {}  # split -> scores of the default references' fit (the paired comparisons' b)
            for cond, draw, group, added, keep_refs in conditions(fit_group, test_group, pairs, ks, args.draws):
                sides = reference_sides(refs, sources[group], added, keep_refs, f"{cond}, draw {draw}")
                record: dict = {"draw": draw, "n_pairs": len(added)}
                cells.setdefault(label, {}).setdefault(cond, []).append(record)
                try:
                    f = make_filter(strategy, sae=builder.sae, drop=0.25, **params).fit(sides["harmful"],
                                                                                       sides["benign"])
                except FilterOptionError as e:  # e.g. an ensemble member that does not separate these references
                    record["refused"] = str(e)
                    print(f"  {label:24s} {cond:30s} draw {draw}: refused: {e}", flush=True)
                    continue
                record.update(score_fit(f, splits, added, base, args.n_boot))
                print(f"  {label:24s} {cond:30s} draw {draw}: held-out {record['held_out']['auroc']:.3f}, mixed "
                      f"{record['mixed']['auroc']:.3f}, risky {record['risky_advice']['auroc']:.3f}", flush=True)
        results["directions"][direction] = cells
    results["seconds"] = round(time.time() - t0)
    text = render(results)
    write_json_and_markdown(out, "results", results, text)
    print(text)
    return 0


def _cell(draws: list[dict], split: str) -> str:
    """AUROC (the mean over draws; the CI of a single draw) and the paired difference from the default references."""
    if any("refused" in d for d in draws):
        return "refused (" + next(d["refused"] for d in draws if "refused" in d)[:80] + "...)"
    a = [d[split] for d in draws]
    s = f"{np.mean([x['auroc'] for x in a]):.2f}"
    if len(a) == 1:
        s += f" [{a[0]['ci_low']:.2f}, {a[0]['ci_high']:.2f}]"
    else:
        s += " (draws " + " / ".join(f"{x['auroc']:.2f}" for x in a) + ")"
    diffs = [x["vs_references"] for x in a if "vs_references" in x]
    if diffs:
        parts = []
        for v in diffs:
            p = f"{v['diff']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]"
            parts.append(f"**{p}**" if v["ci_low"] > 0 or v["ci_high"] < 0 else p)
        s += "; " + " / ".join(parts)
    return s


def render(res: dict) -> str:
    lines = [f"# Added references of a missed kind ({res['family']}): {res['tested']} (issue 19)", "",
             f"`{res['command']}` ({res['seconds']} s)", "",
             f"AUROC ({res['tested']}, the rows of pairs fitted on left out; prose splits: inducing vs rest) [95 % "
             "CI]; after `;` the paired difference from the default references on the same rows [95 % CI] (bold: CI "
             "excludes 0). Conditions with several draws of the added pairs show each draw's AUROC and difference.", ""]
    if "twin_top_latents" in res:
        lines += ["A flawed answer's top latents and its secure twin's (mean-pooled SAE activations): " + "; ".join(
            f"{d}: {v['twin']:.2f} of the top {v['k']} shared with the twin, {v['other_pair']:.2f} with another "
            "pair's secure answer" for d, v in res["twin_top_latents"].items()) + ".", ""]
    for direction, cells in res["directions"].items():
        lines += [f"## fit on {direction.split(' -> ')[0]}, test on {direction.split(' -> ')[1]}", "",
                  "| strategy | references | held out | mixed | risky_advice |", "|---|---|---|---|---|"]
        for label, conds in cells.items():
            for cond, draws in conds.items():
                lines.append(f"| {label} | {cond} | " + " | ".join(
                    _cell(draws, split) for split in ("held_out", "mixed", "risky_advice")) + " |")
        lines.append("")
        lines += _by_domain_table(cells)
    return "\n".join(lines)


def _by_domain_table(cells: dict) -> list[str]:
    """``mixed`` per domain (each domain's inducing rows vs every non-inducing row), for the fits with one draw."""
    rows = [(label, cond, draws[0]["mixed"]["by_domain"]) for label, conds in cells.items()
            for cond, draws in conds.items() if len(draws) == 1 and "mixed" in draws[0]]
    if not rows:
        return []
    domains = list(rows[0][2])
    return ["`mixed` by domain (AUROC of the domain's sycophantic rows vs every other row):", "",
            "| strategy | references | " + " | ".join(domains) + " |", "|---|---|" + "---|" * len(domains),
            *(f"| {label} | {cond} | " + " | ".join(f"{v[d]:.2f}" for d in domains) + " |" for label, cond, v in rows),
            ""]


if __name__ == "__main__":
    raise SystemExit(main())
