"""Geometry's out-of-distribution AUROC against the SAE it reads (issue 19 (e)): one table over SAEs.

    .venv/bin/python scripts/compare_sae_ood.py \\
        "bundled=data/saes/smollm2-135m-instruct-res14-topk64:data/results/filters_ood" \\
        "persona=runs/saes/res14-topk64-persona:data/results/filters_ood/sae_persona" \\
        --out data/results/filters_ood/sae_study

Each argument is ``label=SAE_FOLDER:RESULTS_FOLDER``: the SAE (its ``metrics.json`` and ``train_config.json``:
width, corpus, training tokens, explained variance, dead latents) and the ``results.json`` that
``scripts/measure_filters_ood.py --sae SAE_FOLDER`` wrote for it. The table holds, per SAE, the SAE strategies'
AUROC [95 % CI] on every split and the worst split; the residual and text strategies do not read the SAE, so
they are not repeated (see the first results folder).

``--seeds "NAME=label;label;..."`` (repeatable) names SAEs that differ only in ``--seed``: a further table gives,
per strategy and split, the range of their AUROCs (lowest–highest, and the difference). A single SAE's bootstrap CI
does not include this spread between SAEs of one recipe, so a difference between recipes smaller than it is not
evidence of the recipe. With it comes the rank agreement of the rows' scores (``scores.json``) between SAEs: the
Spearman correlation of every pair, pooled into pairs of seeds (both in one ``--seeds`` group) and pairs of recipes
(the rest): how far one SAE's ranking of the rows is that SAE's own. And an ensemble over the seeds: each row's score
the mean over the seeds of its rank within the split, its AUROC [95 % CI] and its paired difference to each seed's
(rows of a split that a strategy was fitted on are left out, as in ``measure_filters_ood.py``; the splits' labels come
from ``--work``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import measure_filters_ood as ood  # noqa: E402
from measure_filters_ood import auroc_cell  # noqa: E402

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.stats import bootstrap_auroc, paired_bootstrap_auroc, spearman  # noqa: E402

#: the strategies of measure_filters_ood.py that read the SAE (features, decoder directions; the default ensemble
#: through its activation member)
SAE_STRATEGIES = ("geometry", "geometry --proximity span", "activation", "ensemble", "gradient", "gradient --agg mean",
                  "geometry (c)", "activation (c)", "gradient (c)")


def _json(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def describe(sae: Path) -> dict:
    """Width, corpus, training tokens and the held-out quality of the SAE in ``sae``."""
    m, t = _json(sae / "metrics.json"), _json(sae / "train_config.json")
    corpus = [Path(c).name if "sae_corpus" not in c else str(Path(*Path(c).parts[-2:])) for c in t["corpus"]]
    return {"d_sae": m["d_sae"], "k": t.get("k"), "training_tokens": m["training_tokens"],
            "corpus_tokens": m["corpus_tokens"], "corpus": corpus, "explained_variance": m["explained_variance"],
            "dead_fraction": m["dead_fraction"], "ce_loss_recovered": m["ce_loss_recovered"]}


def worst(cells: list[dict | None]) -> float:
    """The lowest AUROC over a row's splits (a fold-averaged split counts by its worst fold)."""
    return min(a.get("min_fold", a["auroc"]) for a in cells if a and "auroc" in a)


def parse_seed_groups(specs: list[str], labels: list[str]) -> dict[str, list[str]]:
    """``NAME=label;label;...`` -> {NAME: [label, ...]} (``;`` since labels may hold commas); every label must be
    one of the SAEs, two at least."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        members = [m.strip() for m in rest.split(";") if m.strip()]
        if not name or len(members) < 2:
            raise SystemExit(f"--seeds {spec!r}: expected NAME=label;label[;...] with two labels or more")
        unknown = [m for m in members if m not in labels]
        if unknown:
            raise SystemExit(f"--seeds {spec!r}: {', '.join(map(repr, unknown))} not among the SAEs ({', '.join(labels)})")
        groups[name] = members
    return groups


def seed_spread(saes: dict, members: list[str], splits: list[str]) -> dict:
    """Per SAE strategy that every member has: per split that every member has, the members' AUROCs, their lowest,
    highest and range; the same for each member's worst split over those shared splits."""
    out: dict = {}
    for strat in SAE_STRATEGIES:
        rows = {m: [saes[m]["splits"].get(s, {}).get(strat) for s in splits] for m in members}
        per_split = {}
        for i, split in enumerate(splits):
            vals = [a["auroc"] for m in members if (a := rows[m][i]) and "auroc" in a]
            if len(vals) == len(members):
                per_split[split] = {"aurocs": vals, "low": min(vals), "high": max(vals), "range": max(vals) - min(vals)}
        if not per_split:  # a strategy that not every member was measured with on any one split
            continue
        shared = [i for i, split in enumerate(splits) if split in per_split]
        worsts = [worst([rows[m][i] for i in shared]) for m in members]
        per_split["worst split"] = {"aurocs": worsts, "low": min(worsts), "high": max(worsts),
                                    "range": max(worsts) - min(worsts)}
        out[strat] = per_split
    return out


def _shown_range(c: dict) -> float:
    """The range as printed: the difference of the bounds rounded to two places, so that a cell adds up."""
    return round(c["high"], 2) - round(c["low"], 2)


def _range_cell(c: dict | None) -> str:
    """``low–high (range)``."""
    return "–" if c is None else f"{c['low']:.2f}–{c['high']:.2f} ({_shown_range(c):.2f})"


def spread_lines(name: str, spread: dict, splits: list[str]) -> list[str]:
    cols = [*splits, "worst split"]
    lines = [f"| strategy | {' | '.join(cols)} | largest range |", "|---|" + "---|" * (len(cols) + 1)]
    for strat, per_split in spread.items():
        cells = [_range_cell(per_split.get(s)) for s in cols]
        largest = max(_shown_range(per_split[s]) for s in splits if s in per_split)  # seed_spread keeps one or more
        lines.append(f"| {strat} | " + " | ".join(cells) + f" | {largest:.2f} |")
    return [f"\nSpread between seeds, {name} (lowest–highest AUROC over the seeds, and the range; "
            "`references_loco` by its mean over folds, the worst split by its worst fold):\n", *lines]


def _check_same_rows(split: str, runs: list[dict], who: str) -> None:
    """Refuse per-row scores of ``split`` that do not cover the same rows in the same order."""
    if any(r["ids"] != runs[0]["ids"] for r in runs):
        raise SystemExit(f"{split}: the {who}' scores.json hold different rows; measure them on the same splits")


def score_agreement(scores: dict[str, dict], groups: dict[str, list[str]]) -> dict:
    """Per SAE strategy and split with per-row scores in two or more SAEs' ``scores.json``: the Spearman correlation
    of the rows' scores for every pair of those SAEs, each pair a ``seeds`` pair (both in one group) or a ``recipes``
    pair, and per kind the mean, lowest and highest (and how many pairs)."""
    same = {frozenset((a, b)) for members in groups.values() for a in members for b in members if a != b}
    out: dict = {}
    for strat in SAE_STRATEGIES:
        for split in dict.fromkeys(sp for sc in scores.values() for sp in sc):
            runs = {lab: r for lab, sc in scores.items() if "ids" in (r := sc.get(split, {})) and r.get(strat)}
            if len(runs) < 2:
                continue  # a fold-averaged split, or a strategy measured with one SAE only
            labels = list(runs)
            _check_same_rows(split, list(runs.values()), "SAEs")
            pairs = [{"a": a, "b": b, "kind": "seeds" if frozenset((a, b)) in same else "recipes",
                      "spearman": spearman(runs[a][strat], runs[b][strat])}
                     for i, a in enumerate(labels) for b in labels[i + 1:]]
            cell: dict = {"pairs": pairs}
            for kind in ("seeds", "recipes"):
                vals = [p["spearman"] for p in pairs if p["kind"] == kind]
                if vals:
                    cell[kind] = {"mean": sum(vals) / len(vals), "low": min(vals), "high": max(vals), "n": len(vals)}
            out.setdefault(strat, {})[split] = cell
    return out


def agreement_lines(agreement: dict) -> list[str]:
    splits = list(dict.fromkeys(s for per_split in agreement.values() for s in per_split))
    lines = ["\nRank agreement of the rows' scores between SAEs (Spearman; mean (lowest–highest) over the pairs of seeds "
             "of one recipe, then over the pairs of different recipes):\n",
             "| strategy | pairs | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
    for strat, per_split in agreement.items():
        for kind in ("seeds", "recipes"):
            cells = [per_split.get(s, {}).get(kind) for s in splits]
            if not any(cells):
                continue
            n = next(c["n"] for c in cells if c)
            lines.append(f"| {strat} | {kind} ({n}) | " + " | ".join(
                f"{c['mean']:.2f} ({c['low']:.2f}–{c['high']:.2f})" if c else "–" for c in cells) + " |")
    return lines


def seed_ensemble(scores: dict[str, dict], members: list[str], rows: dict[str, dict[str, dict]],
                  held_rows: dict[str, set[str]], n_boot: int = 1000) -> dict:
    """Per SAE strategy and split with per-row scores from every member: each row's mean over ``members`` of its
    rank within the split (ties averaged, scaled to 0-1), the AUROC of that mean with its CI, and its paired
    bootstrap difference to each member (``rows``: split -> id -> row with ``inducing``; ``held_rows``: the rows a
    strategy fitted on part of a split is scored on)."""
    out: dict = {}
    for strat in SAE_STRATEGIES:
        for split in scores[members[0]]:
            runs = [scores[m].get(split, {}) for m in members]
            if not all("ids" in r and r.get(strat) for r in runs):
                continue
            _check_same_rows(split, runs, "seeds")
            ids = runs[0]["ids"]
            keep = np.array([not ood.fitted_on(strat, split) or i in held_rows.get(split, ()) for i in ids])
            y = np.array([bool(rows[split][i]["inducing"]) for i in ids])[keep]
            member = [np.asarray(r[strat], dtype=np.float64)[keep] for r in runs]
            ens = np.mean([rankdata(m) / len(m) for m in member], axis=0)
            cell = bootstrap_auroc(ens[y], ens[~y], n_boot=n_boot)
            cell["vs_seeds"] = {m: paired_bootstrap_auroc(ens[y], ens[~y], sc[y], sc[~y], n_boot=n_boot)
                                for m, sc in zip(members, member)}
            cell["seeds_mean"] = float(np.mean([d["b"] for d in cell["vs_seeds"].values()]))
            out.setdefault(strat, {})[split] = cell
    return out


def ensemble_lines(name: str, ensemble: dict) -> list[str]:
    splits = list(dict.fromkeys(s for per_split in ensemble.values() for s in per_split))
    lines = [f"\nSAE-seed ensemble, {name}: each row's mean rank over the seeds. AUROC [95 % CI]; the seeds' mean "
             "AUROC; the ensemble's paired difference to each seed (lowest, highest), and at how many seeds its CI is "
             "above 0:\n", "| strategy | " + " | ".join(splits) + " | worst split |", "|---|" + "---|" * (len(splits) + 1)]
    for strat, per_split in ensemble.items():
        cells = []
        for split in splits:
            c = per_split.get(split)
            if c is None:
                cells.append("–")
                continue
            diffs = [d["diff"] for d in c["vs_seeds"].values()]
            above = sum(d["ci_low"] > 0 for d in c["vs_seeds"].values())
            cells.append(f"{auroc_cell(c)}; seeds {c['seeds_mean']:.2f}; {min(diffs):+.2f} to {max(diffs):+.2f}, "
                         f"above at {above} of {len(diffs)}")
        worst_split = min(c["auroc"] for c in per_split.values())
        lines.append(f"| {strat} | " + " | ".join(cells) + f" | {worst_split:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="label=SAE_FOLDER:RESULTS_FOLDER")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", action="append", default=[], metavar="NAME=label;label;...",
                    help="SAEs that differ only in their seed: adds the spread of their AUROCs, the rank agreement "
                         "of their scores and their ensemble")
    ap.add_argument("--work", type=Path, default=Path("runs/ood"),
                    help="measure_filters_ood.py's --work (the splits, for the ensemble's labels)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    table: dict = {"saes": {}, "command": script_command(__file__, argv)}
    for spec in args.runs:
        label, _, rest = spec.partition("=")
        sae, _, res = rest.partition(":")
        if not (label and sae and res):
            raise SystemExit(f"{spec!r}: expected label=SAE_FOLDER:RESULTS_FOLDER")
        r = _json(Path(res) / "results.json")
        table["saes"][label] = {"sae": sae, "results": res, **describe(Path(sae)),
                                "splits": {s: {k: v for k, v in cells.items() if k in SAE_STRATEGIES}
                                           for s, cells in r["splits"].items()}}
    splits = list(dict.fromkeys(s for v in table["saes"].values() for s in v["splits"]))
    lines = ["# Geometry out of distribution vs the SAE (issue 19 (e))\n", f"```\n{table['command']}\n```\n",
             "| SAE | latents | training tokens | corpus tokens | explained variance | dead | CE recovered |",
             "|---|---|---|---|---|---|---|"]
    for label, v in table["saes"].items():
        lines.append(f"| {label} | {v['d_sae']} | {v['training_tokens']:,} | {v['corpus_tokens']:,} | "
                     f"{v['explained_variance']:.3f} | {v['dead_fraction']:.1%} | {v['ce_loss_recovered']:.3f} |")
    lines += ["", "AUROC [95 % CI] of the SAE strategies (bold: CI above 0.5; explained variance etc. on each SAE's "
              "own held-out windows).\n",
              "| strategy | SAE | " + " | ".join(splits) + " | worst split |", "|---|---|" + "---|" * (len(splits) + 1)]
    for strat in SAE_STRATEGIES:
        for label, v in table["saes"].items():
            cells = [v["splits"].get(s, {}).get(strat) for s in splits]
            if not any(cells):
                continue
            lines.append(f"| {strat} | {label} | " + " | ".join(auroc_cell(a) for a in cells) + f" | {worst(cells):.2f} |")
    groups = parse_seed_groups(args.seeds, list(table["saes"]))
    spreads = {name: seed_spread(table["saes"], members, splits) for name, members in groups.items()}
    if spreads:
        table["seed_spread"] = spreads
    for name, spread in spreads.items():
        lines += spread_lines(f"{name} ({', '.join(groups[name])})", spread, splits)
    if groups:
        scores = {label: _json(Path(v["results"]) / "scores.json") for label, v in table["saes"].items()}
        table["score_agreement"] = score_agreement(scores, groups)
        lines += agreement_lines(table["score_agreement"])
        seeds = {ood.results_seed(Path(table["saes"][m]["results"])) for members in groups.values() for m in members}
        if len(seeds) > 1:
            raise SystemExit(f"the seed groups' results were made with different --organism-seed ({sorted(seeds)})")
        rows, held_rows = ood.scored_rows(args.work / "splits", seeds.pop())
        table["seed_ensemble"] = {name: seed_ensemble(scores, members, rows, held_rows, args.n_boot)
                                  for name, members in groups.items()}
        for name, ensemble in table["seed_ensemble"].items():
            lines += ensemble_lines(f"{name} ({', '.join(groups[name])})", ensemble)
    text = "\n".join(lines) + "\n"
    write_json_and_markdown(args.out, "results", table, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
