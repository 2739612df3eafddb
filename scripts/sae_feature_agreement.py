"""Why geometry's ranking changes from one SAE to the next (issue 19 (e)): which of its parts the SAEs share.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_feature_agreement.py \\
        "seed 0=runs/saes/res14-topk64-t1M" "seed 1=runs/saes/res14-topk64-t1M-s1" ... \\
        --out data/results/filters_ood/sae_study/feature_agreement

Each argument is ``label=SAE`` (a folder or spec). For each SAE, geometry is fitted as ``geomfilter filter`` fits it
(default settings, on ``data/reference/harmful.jsonl`` vs ``benign.jsonl``; the reference caches of
``scripts/measure_filters_ood.py --sae`` in ``--cache-dir`` are reused). Geometry's score of a row reads three things
the SAE supplies, and for every ordered pair of SAEs (A, B) each is compared, a latent of A matched to the latent of B
whose unit decoder direction is closest:

* the **dictionary**: the share of A's latents on the references (among the top latents the cache keeps for one
  reference answer or more: the latents that geometry's targets are drawn from) that B learned too (a match of cosine
  >= ``--match``, 0.7 by default), and the median cosine of their matches;
* the **harmful set**: the share of A's harmful latents that B learned, and the share B also *selected* as harmful
  (a match of cosine >= ``--match`` within B's harmful set), and how much of A's harmful directions lies in the span
  of B's (the mean squared length of their projection on it; random directions: the span's dimension over the
  residual's, e.g. 100 / 576 = 0.17), whether or not single latents match;
* the **proximity field**: over those latents of A that B learned, the Spearman correlation of each latent's
  proximity (its largest decoder cosine to the harmful set) in A with its match's proximity in B. A row's geometry
  score is the activation-weighted mean of its top latents' proximities, so where this correlation is low two SAEs
  rank the same rows differently even when both learned the same latents.

With ``--halves``, each SAE's geometry is also fitted on each of two disjoint halves of the reference pairs (half the
references each, the dictionary the same): the part of the harmful set and proximity field that the references'
sampling moves, to set beside what a change of SAE moves.

And per SAE, its proximity field by each way of measuring proximity (``max``, geometry's default; ``mean``; ``span``):
its spread, and how far it follows which latents fire more on the harmful references than on the benign ones.

Writes ``results.json`` and ``results.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.cache import ActivationCache  # noqa: E402
from geomfilter.features import split_by_pair  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.filtering import make_filter  # noqa: E402
from geomfilter.geometry import PROXIMITIES, feature_proximity, span_basis  # noqa: E402
from geomfilter.pipeline import CacheBuilder, FilterConfig, FilterRunner  # noqa: E402
from geomfilter.stats import spearman  # noqa: E402

REF = ROOT / "data" / "reference"


def fitted_geometry(sae: str, cache_dir: Path, progress: bool = False, halves: bool = False) -> dict[str, dict]:
    """:func:`reference_fits` of geometry with ``sae``, on the reference caches in ``cache_dir`` (made if missing)."""
    builder = CacheBuilder(sae=sae, progress=progress)
    runner = FilterRunner(FilterConfig(data=REF / "harmful.jsonl", harmful=REF / "harmful.jsonl",
                                       benign=REF / "benign.jsonl", sae=sae, cache_dir=cache_dir, progress=progress))
    runner.builder = builder
    return reference_fits(builder.sae, runner.reference_set("harmful"), runner.reference_set("benign"), halves)


def reference_fits(sae, harmful: ActivationCache, benign: ActivationCache, halves: bool = False,
                   **params) -> dict[str, dict]:
    """Geometry (``params``: its settings, default as users get them) fitted on the references: ``"all"``, and with
    ``halves`` also ``"half 0"`` and ``"half 1"``, each fitted on one of two disjoint halves of the reference pairs
    (split as ``harmful_features`` splits them, seed 0). Each: unit decoder directions, harmful ids, every latent's
    proximity, which latents are on the references (in a reference answer's cached top latents), and the number
    of reference rows fitted on."""
    fires_h, fires_b = (harmful.dense("mean") > 0).mean(axis=0), (benign.dense("mean") > 0).mean(axis=0)
    on_refs = (fires_h > 0) | (fires_b > 0)
    refs = {"all": (harmful, benign)}
    if halves:
        mask_h, mask_b = split_by_pair(harmful, 0.5, 0), split_by_pair(benign, 0.5, 0)
        refs["half 0"] = (harmful.select(mask_h), benign.select(mask_b))
        refs["half 1"] = (harmful.select(~mask_h), benign.select(~mask_b))
    out = {}
    for name, (h, b) in refs.items():
        f = make_filter("geometry", sae=sae, **params).fit(h, b)
        out[name] = {"directions": f.directions_, "harmful": np.asarray(f.features_.ids), "proximity": f.proximity_,
                     "on_references": on_refs, "n_rows": (len(h), len(b)), "harm_minus_benign": fires_h - fires_b}
    return out


def proximity_field(fit: dict) -> dict[str, dict]:
    """For each way of measuring a latent's proximity (``PROXIMITIES``), over the latents on the references: its
    10 %, 50 % and 90 % quantiles, and its Spearman correlation with how much more often a latent fires on the harmful
    references than on the benign ones (``harm_minus_benign``: the share of harmful answers it is among the top latents
    of minus the share of benign ones): how much of the harm signal the proximity carries."""
    on = fit["on_references"]
    out = {}
    for agg in PROXIMITIES:
        p = feature_proximity(fit["directions"], fit["harmful"], agg)[on]
        ok = np.isfinite(p)
        q10, q50, q90 = np.quantile(p[ok], [0.1, 0.5, 0.9])
        out[agg] = {"q10": float(q10), "median": float(q50), "q90": float(q90),
                    "spearman_harm_minus_benign": spearman(p[ok], fit["harm_minus_benign"][on][ok])}
    return out


def _best_match(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a`` (unit directions), the index of the closest row of ``b`` and its cosine."""
    idx, cos = np.empty(len(a), dtype=np.int64), np.empty(len(a), dtype=np.float32)
    for i in range(0, len(a), chunk):
        c = a[i:i + chunk] @ b.T
        idx[i:i + chunk] = c.argmax(axis=1)
        cos[i:i + chunk] = c.max(axis=1)
    return idx, cos


def span_overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The mean squared length of the projection of the unit rows ``a`` on the span of the rows ``b``, and what
    random unit rows would give (the span's dimension over the space's)."""
    q = span_basis(b)
    return float(((a.astype(np.float64) @ q) ** 2).sum(axis=1).mean()), q.shape[1] / a.shape[1]


def agreement(a: dict, b: dict, match: float = 0.7) -> dict:
    """How much of SAE ``a``'s geometry SAE ``b`` shares (see the module docstring)."""
    on_refs = np.flatnonzero(a["on_references"])
    j, cos = _best_match(a["directions"][on_refs], b["directions"])
    learned = cos >= match
    h = a["harmful"]
    _, h_cos_any = _best_match(a["directions"][h], b["directions"])
    _, h_cos_sel = _best_match(a["directions"][h], b["directions"][b["harmful"]])
    pa, pb = a["proximity"][on_refs[learned]], b["proximity"][j[learned]]
    ok = np.isfinite(pa) & np.isfinite(pb)
    overlap, chance = span_overlap(a["directions"][h], b["directions"][b["harmful"]])
    return {
        "on_references": int(len(on_refs)), "dictionary_learned": float(learned.mean()),
        "dictionary_median_cos": float(np.median(cos)),
        "harmful": int(len(h)), "harmful_learned": float((h_cos_any >= match).mean()),
        "harmful_selected": float((h_cos_sel >= match).mean()),
        "harmful_median_cos_selected": float(np.median(h_cos_sel)),
        "harmful_span_overlap": overlap, "harmful_span_chance": chance,
        "proximity_spearman": spearman(pa[ok], pb[ok]), "proximity_n": int(ok.sum()),
    }


COLUMNS = (("latents B learned", lambda p: f"{p['dictionary_learned']:.0%}"),
           ("median cos of their matches", lambda p: f"{p['dictionary_median_cos']:.2f}"),
           ("harmful latents B learned", lambda p: f"{p['harmful_learned']:.0%}"),
           ("harmful latents B selected", lambda p: f"{p['harmful_selected']:.0%}"),
           ("median cos to B's harmful set", lambda p: f"{p['harmful_median_cos_selected']:.2f}"),
           ("harmful span overlap (random)", lambda p: f"{p['harmful_span_overlap']:.2f} ({p['harmful_span_chance']:.2f})"),
           ("proximity agreement (latents)", lambda p: f"{p['proximity_spearman']:.2f} ({p['proximity_n']})"))


def render(table: dict) -> str:
    lines = ["# Which parts of geometry two SAEs share (issue 19 (e))\n", f"```\n{table['command']}\n```\n",
             "A latent of A is matched to B's latent of closest decoder direction; learned / selected: a match of "
             f"cosine >= {table['match']} in B's dictionary / in B's harmful set; A's latents: those on the references. "
             "Harmful span overlap: the mean squared length of the projection of A's harmful directions on the span of "
             "B's (random directions: the value in brackets). Proximity agreement: over A's latents that B learned "
             "(how many in brackets), the Spearman correlation of their proximity to the harmful set in A and in B.\n",
             "| A | B | A's latents | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for p in table["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['on_references']} | " + " | ".join(f(p) for _, f in COLUMNS) + " |")
    lines += ["\nEach SAE's proximity field over its latents on the references, by how proximity is measured (`max`: "
              "the cosine to the nearest harmful latent, geometry's default; `mean`; `span`: the cosine to the harmful "
              "set's span): quantiles, and the Spearman correlation with how much more often a latent is among the top "
              "latents of harmful reference answers than of benign ones.\n",
              "| SAE | proximity | 10 % | median | 90 % | Spearman with harmful − benign firing |", "|---|---|---|---|---|---|"]
    for label, field in table["proximity_field"].items():
        for agg, f in field.items():
            lines.append(f"| {label} | {agg} | {f['q10']:.2f} | {f['median']:.2f} | {f['q90']:.2f} | "
                         f"{f['spearman_harm_minus_benign']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("saes", nargs="+", help="label=SAE (folder or spec)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--match", type=float, default=0.7, help="decoder cosine from which two latents are the same")
    ap.add_argument("--halves", action="store_true",
                    help="also fit each SAE's geometry on two disjoint halves of the reference pairs and compare "
                         "them: how much of the harmful set and proximity field the references' sampling moves, "
                         "with the dictionary fixed")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    specs = {}
    for spec in args.saes:
        label, _, sae = spec.partition("=")
        if not (label and sae):
            raise SystemExit(f"{spec!r}: expected label=SAE")
        specs[label] = sae
    if len(specs) < 2:
        raise SystemExit("give two SAEs or more")
    fitted = {label: fitted_geometry(sae, args.cache_dir, args.progress, args.halves) for label, sae in specs.items()}
    pairs = [{"a": a, "b": b, **agreement(fitted[a]["all"], fitted[b]["all"], args.match)}
             for a in fitted for b in fitted if a != b]
    if args.halves:
        pairs += [{"a": f"{label} (half 0)", "b": f"{label} (half 1)",
                   **agreement(fits["half 0"], fits["half 1"], args.match)} for label, fits in fitted.items()]
    table = {"saes": specs, "match": args.match, "pairs": pairs,
             "proximity_field": {label: proximity_field(fits["all"]) for label, fits in fitted.items()},
             "command": script_command(__file__, argv)}
    text = render(table)
    write_json_and_markdown(args.out, "results", table, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
