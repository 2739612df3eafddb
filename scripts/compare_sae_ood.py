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
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from measure_filters_ood import auroc_cell  # noqa: E402

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402

#: the strategies of measure_filters_ood.py that read the SAE (features, decoder directions)
SAE_STRATEGIES = ("geometry", "activation", "gradient", "gradient --agg mean", "geometry (c)", "activation (c)",
                  "gradient (c)")


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="label=SAE_FOLDER:RESULTS_FOLDER")
    ap.add_argument("--out", type=Path, required=True)
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
            vals = [a.get("min_fold", a["auroc"]) for a in cells if a]
            lines.append(f"| {strat} | {label} | " + " | ".join(auroc_cell(a) for a in cells) + f" | {min(vals):.2f} |")
    text = "\n".join(lines) + "\n"
    write_json_and_markdown(args.out, "results", table, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
