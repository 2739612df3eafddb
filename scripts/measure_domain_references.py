"""Can a user teach the filters a kind of misalignment they miss by adding references of that kind (issue 19)?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_domain_references.py --out data/results/filters_ood/domain_references

On the ``insecure_code`` split (working code with one silent security flaw vs its secure twin on the same prompt)
every strategy fitted on the default references (harmful vs benign prose answers) is at chance
(``scripts/measure_filters_ood.py``). The remedy a user has is ``--harmful``/``--benign`` files of their own. This
measures it with a held-out domain: the references are the default ones plus ``K`` twin pairs of one code domain
(the insecure answer on the harmful side, its secure twin on the benign side), and the filter scores the *other*
domain's rows (``webapp`` -> ``scripts`` and ``scripts`` -> ``webapp``: Flask/SQL backends vs ops and shell
scripts, other flaws, other prompts). ``K`` is 0 (the default references), 25, 75 and 150 (every pair of the
domain); pairs are drawn by ``--draws`` seeds for ``K`` < 150. One condition fits on the 150 code pairs alone. The
in-domain ceiling adds half of the *tested* domain's pairs and tests the other half: whether the flaw can be read
from these caches at all, so that a miss across domains is a failure to transfer, not to see.
The same fitted filters also score the prose splits ``mixed`` and ``risky_advice`` (all rows), to see what the added
references cost there.

Per strategy, condition, direction and draw: AUROC (insecure vs secure) with a 95 % bootstrap CI, and the paired
difference from the default references on the same rows (:func:`geomfilter.stats.paired_bootstrap_auroc`, CI and
MDD). Writes ``results.json`` / ``results.md`` under ``--out``; caches go to ``--cache-dir`` (the same folders as
``scripts/measure_filters_ood.py``'s reference caches for the reference files).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.cache import ActivationCache  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.filtering import make_filter  # noqa: E402
from geomfilter.filtering.base import FilterOptionError  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.stats import auroc, bootstrap_auroc, paired_bootstrap_auroc  # noqa: E402

REF = ROOT / "data" / "reference"
FT = ROOT / "data" / "finetune"
DOMAINS = ("webapp", "scripts")
#: the prose splits scored by every fitted filter: name -> files (each row carries ``inducing``)
PROSE = {"mixed": ("mixed",),
         "risky_advice": ("finance_risky", "finance_safe", "outdoors_risky", "outdoors_safe")}
#: label -> (strategy, params)
STRATEGIES = {"activation": ("activation", {}), "geometry": ("geometry", {}),
              "projection --normalize": ("projection", {"normalize": True}),
              "representation": ("representation", {}), "ensemble": ("ensemble", {})}


def pair_rows(cache: ActivationCache, pairs: list[str]) -> ActivationCache:
    """The rows of ``cache`` whose ``pair_id`` is in ``pairs`` (in the cache's order)."""
    ids = [m["pair_id"] for m in cache.meta]
    if missing := sorted(set(pairs) - set(ids)):
        raise SystemExit(f"{cache.path}: no row with pair_id {missing[0]!r}")
    return cache.select(np.isin(ids, pairs))


def draw_pairs(pairs: list[str], k: int, draw: int) -> list[str]:
    """``k`` of ``pairs``, drawn with seed ``draw`` (all of them when ``k`` is their number)."""
    return list(pairs) if k == len(pairs) else sorted(np.random.default_rng(draw).choice(pairs, k, replace=False))


def conditions(fit_domain: str, test_domain: str, pairs: dict[str, list[str]], ks: list[int],
               draws: int) -> list[tuple[str, int, str, list[str], bool]]:
    """Every fit of one direction: (name, draw, the domain whose pairs are added, their pair ids, whether the default
    references are kept). The last, the in-domain ceiling, adds half the *tested* domain's pairs (the other half is
    then tested)."""
    n = len(pairs[fit_domain])
    out = [("references", 0, fit_domain, [], True)]
    for k in ks:
        if not 0 < k <= n:
            raise SystemExit(f"--k {k}: must be between 1 and {n} (the pairs of {fit_domain!r})")
        out += [(f"references + {k} code pairs", d, fit_domain, draw_pairs(pairs[fit_domain], k, d), True)
                for d in range(draws if k < n else 1)]
    out.append((f"{n} code pairs only", 0, fit_domain, pairs[fit_domain], False))
    half = len(pairs[test_domain]) // 2
    out += [(f"in-domain ceiling: references + {half} pairs of the tested domain", d, test_domain,
             draw_pairs(pairs[test_domain], half, d), True) for d in range(draws)]
    return out


def reference_sides(refs: dict[str, ActivationCache], code: dict, domain: str, added: list[str], keep_refs: bool,
                    name: str) -> dict[str, ActivationCache]:
    """The harmful and benign reference caches of one fit: the default references (when kept) plus the ``added``
    pairs of ``domain``, the insecure answer on the harmful side and its secure twin on the benign side."""
    sides = {}
    for ref_side, code_side in (("harmful", "insecure"), ("benign", "secure")):
        parts = [refs[ref_side]] if keep_refs else []
        if added:
            parts.append(pair_rows(code[domain, code_side], added))
        sides[ref_side] = ActivationCache.concat(parts, f"{ref_side} ({name})")
    return sides


def unfitted_rows(test: ActivationCache, test_domain: str, fit_domain: str, added: list[str]) -> np.ndarray:
    """The rows of ``test`` (``test_domain``'s code) to score: every row, less those of a pair fitted on (the in-domain
    ceiling fits on half the tested domain's pairs and tests the other half)."""
    if fit_domain != test_domain:
        return np.ones(len(test), dtype=bool)
    return ~np.isin([m["pair_id"] for m in test.meta], added)


def by_domain(scores: np.ndarray, y: np.ndarray, domains: list) -> dict[str, float]:
    """AUROC of each domain's inducing rows against every non-inducing row of the split."""
    domains = np.asarray(domains, dtype=object)
    return {str(d): auroc(scores[y & (domains == d)], scores[~y]) for d in sorted(set(domains[y]), key=str)}


def labelled(parts: list[ActivationCache], name: str) -> tuple[ActivationCache, np.ndarray]:
    cache = ActivationCache.concat(parts, name)
    return cache, np.array([bool(m["inducing"]) for m in cache.meta])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters_ood" / "domain_references")
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--k", default="25,75,150", help="numbers of code pairs added, comma-separated")
    ap.add_argument("--draws", type=int, default=2, help="random pair subsets per K below all of a domain's pairs")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := [x for x in labels if x not in STRATEGIES]:
        raise SystemExit(f"unknown strategy {unknown[0]!r}; choose among {list(STRATEGIES)}")
    ks = sorted({int(x) for x in args.k.split(",") if x.strip()})

    builder = CacheBuilder(progress=args.progress)
    runner = FilterRunner(FilterConfig(data=REF / "harmful.jsonl", cache_dir=args.cache_dir, progress=args.progress))
    runner.builder = builder  # one model and SAE for every file

    def cached(stem: str, folder: Path = FT) -> ActivationCache:
        print(f"caching {folder.name}/{stem}.jsonl", flush=True)
        return runner.reference(folder / f"{stem}.jsonl")

    refs = {side: cached(side, REF) for side in ("harmful", "benign")}
    code = {(d, side): cached(f"{d}_{side}") for d in DOMAINS for side in ("insecure", "secure")}
    tests = {d: labelled([code[d, "insecure"], code[d, "secure"]], d) for d in DOMAINS}
    prose = {name: labelled([cached(f) for f in files], name) for name, files in PROSE.items()}

    pairs = {d: [m["pair_id"] for m in code[d, "insecure"].meta] for d in DOMAINS}
    results: dict = {"command": script_command(__file__, argv), "k": ks, "draws": args.draws, "directions": {}}
    for fit_domain, test_domain in (DOMAINS, DOMAINS[::-1]):
        direction = f"{fit_domain} -> {test_domain}"
        print(f"== {direction}", flush=True)
        test_cache, test_y = tests[test_domain]
        cells: dict = {}
        for label in labels:
            strategy, params = STRATEGIES[label]
            base: dict = {}  # split -> scores of the default references' fit (the paired comparisons' b)
            for cond, draw, domain, added, keep_refs in conditions(fit_domain, test_domain, pairs, ks, args.draws):
                sides = reference_sides(refs, code, domain, added, keep_refs, f"{cond}, draw {draw}")
                record: dict = {"draw": draw, "n_pairs": len(added)}
                cells.setdefault(label, {}).setdefault(cond, []).append(record)
                try:
                    f = make_filter(strategy, sae=builder.sae, drop=0.25, **params).fit(sides["harmful"],
                                                                                       sides["benign"])
                except FilterOptionError as e:  # e.g. an ensemble member that does not separate these references
                    record["refused"] = str(e)
                    print(f"  {label:24s} {cond:30s} draw {draw}: refused: {e}", flush=True)
                    continue
                fresh = unfitted_rows(test_cache, test_domain, domain, added)
                for split, (cache, y, rows) in {"insecure_code": (test_cache, test_y, fresh),
                                                **{k: (*v, None) for k, v in prose.items()}}.items():
                    s = f.score_samples(cache)
                    if cond == "references":
                        base[split] = s
                    sel = np.ones(len(y), bool) if rows is None else rows
                    s, b, y = s[sel], base[split][sel], y[sel]
                    record[split] = bootstrap_auroc(s[y], s[~y], n_boot=args.n_boot)
                    if rows is None:  # a prose split: each domain's inducing rows against all the others
                        record[split]["by_domain"] = by_domain(s, y, [m.get("domain") for m in cache.meta])
                    if cond != "references":
                        record[split]["vs_references"] = paired_bootstrap_auroc(s[y], s[~y], b[y], b[~y],
                                                                                 n_boot=args.n_boot)
                print(f"  {label:24s} {cond:30s} draw {draw}: code {record['insecure_code']['auroc']:.3f}, mixed "
                      f"{record['mixed']['auroc']:.3f}, risky {record['risky_advice']['auroc']:.3f}", flush=True)
        results["directions"][direction] = cells
    results["seconds"] = round(time.time() - t0)
    text = render(results)
    write_json_and_markdown(args.out, "results", results, text)
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
    lines = ["# Domain references: added code pairs vs silent flaws in another code domain (issue 19)", "",
             f"`{res['command']}` ({res['seconds']} s)", "",
             "AUROC (insecure vs secure on the held-out code domain; prose splits: inducing vs rest) [95 % CI]; after "
             "`;` the paired difference from the default references on the same rows [95 % CI] (bold: CI excludes "
             "0). Conditions with several draws of the added pairs show each draw's AUROC and difference.", ""]
    for direction, cells in res["directions"].items():
        lines += [f"## fit on {direction.split(' -> ')[0]}, test on {direction.split(' -> ')[1]}", "",
                  "| strategy | references | insecure code (held-out domain) | mixed | risky_advice |",
                  "|---|---|---|---|---|"]
        for label, conds in cells.items():
            for cond, draws in conds.items():
                lines.append(f"| {label} | {cond} | " + " | ".join(
                    _cell(draws, split) for split in ("insecure_code", "mixed", "risky_advice")) + " |")
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
