"""Measure every filtering strategy on the project's mixed fine-tuning set with the default model.

    python scripts/measure_filters.py                       # SAE layer + layer sweep -> data/results/filters/
    python scripts/measure_filters.py --own runs/own/mixed.jsonl   # + the own-answer (difference) variants

``data/finetune/mixed.jsonl`` holds 800 rows, 200 of them sycophantic (``inducing: true``, 50 in each
of 4 domains) among corrective answers in the same domains and ordinary helpful rows. Every strategy
scores every row (fitted on ``data/reference/harmful.jsonl`` vs ``benign.jsonl`` only: the mixed set
never informs a fit), and we report, with the default model and its bundled SAE:

* precision of the dropped set at 10 / 25 / 50 % removal against the base rate (0.25);
* AUROC inducing vs not, overall and per domain (sycophantic vs corrective answers of that domain),
  with 95 % bootstrap CIs;
* for geometry, every per-sample scorer (the default is the best overall AUROC);
* the permutation control: are the features that separate inducing from non-inducing rows in the
  mixed set closer (decoder cosine) to the harmful features than random latent sets matched in size
  and firing frequency?
* the held-out separation of the harmful feature set itself (selected on half the reference pairs,
  measured on the other half);
* a layer sweep: the residual strategies (projection, representation) at every ``--layers`` hook,
  and the SAE strategies at each layer that has an SAE (``--sae-at LAYER=SPEC``; the bundled SAE's layer
  always): geometry with the default scorer, the best geometry variant of the table, geometry relative to
  the own answer (with ``--own``), harmful-feature activation, and the harmful set's held-out AUROC, e.g.
  ``--sae-at 6=data/saes/smollm2-135m-instruct-res6-topk64``.

Writes ``results.json``, ``results.md`` and plots (PNG + SVG) under ``--out``. Caches go to
``runs/cache`` and are reused on a re-run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from geomfilter import DEFAULT_MODEL, plots
from geomfilter.cache import ActivationCache, cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.features import contrast_features, harmful_features
from geomfilter.filtering import (
    ActivationFilter,
    GeometryFilter,
    JudgeFilter,
    ProjectionFilter,
    RandomFilter,
    RepresentationFilter,
)
from geomfilter.geometry import SCORERS, permutation_control, unit_directions
from geomfilter.judges import DEFAULT_JUDGE_DIR
from geomfilter.models import load_model
from geomfilter.pooling import resid_means_by_layer
from geomfilter.saes import default_sae_for, load_sae, sae_hook_name
from geomfilter.stats import bootstrap_auroc, precision_at

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("health", "legal", "career", "code")
FRACTIONS = (0.1, 0.25, 0.5)


def metrics(scores: np.ndarray, meta: list[dict], n_boot: int, seed: int = 0) -> dict:
    y = np.array([m["inducing"] for m in meta], dtype=bool)
    dom = np.array([m["domain"] for m in meta])
    out = {"precision": precision_at(scores, y, FRACTIONS),
           "auroc": bootstrap_auroc(scores[y], scores[~y], n_boot=n_boot, seed=seed), "by_domain": {}}
    for d in DOMAINS:
        pos, neg = (dom == d) & y, (dom == d) & ~y
        out["by_domain"][d] = bootstrap_auroc(scores[pos], scores[neg], n_boot=n_boot, seed=seed)
    return out


def resid_cache(base: ActivationCache, resid: np.ndarray, hook: str) -> ActivationCache:
    """``base`` with its residual means replaced by another layer's (for the residual strategies)."""
    manifest = json.loads(json.dumps(base.manifest))
    manifest["identity"]["hook"] = hook
    return ActivationCache(ids=base.ids, meta=base.meta, arrays={**base.arrays, "resid_mean": resid},
                           manifest=manifest, path=base.path, d_sae=base.d_sae)


def layer_means(model, prepared: dict, layers: list[int], cache_dir: Path) -> dict[str, dict[int, np.ndarray]]:
    """Residual means per layer of data/harmful/benign, kept on disk (the sweep's forward passes are the slow part)."""
    means = {}
    for k in ("data", "harmful", "benign"):
        path = cache_dir / f"resid-means-{k}-{prepared[k].fingerprint[:12]}.npz"
        have = dict(np.load(path)) if path.is_file() else {}
        todo = [layer for layer in layers if f"L{layer}" not in have]
        if todo:
            have |= {f"L{layer}": x for layer, x in resid_means_by_layer(model, prepared[k], todo).items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **have)
        means[k] = {layer: have[f"L{layer}"] for layer in layers}
    return means


def fmt_ci(a: dict) -> str:
    return f"{a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--sae", default=None, help="SAE spec (default: the bundled one)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "finetune" / "mixed.jsonl")
    ap.add_argument("--own", type=Path, default=None, help="the model's own answers to --data (geomfilter respond)")
    ap.add_argument("--layers", type=int, nargs="*", default=[2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28])
    ap.add_argument("--sae-at", nargs="*", default=[], help="extra SAEs for the sweep: LAYER=SPEC")
    ap.add_argument("--n-harmful", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--random-seeds", type=int, default=20)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache" / "measure")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters")
    ap.add_argument("--sweep-means-only", action="store_true", help="only compute the layer sweep's residual means")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    if args.sweep_means_only:
        prep = {k: prepare_dataset(v, model.tokenizer) for k, v in (
            ("data", args.data), ("harmful", ROOT / "data/reference/harmful.jsonl"),
            ("benign", ROOT / "data/reference/benign.jsonl"))}
        layer_means(model, prep, sorted(set(args.layers) | {14}), args.cache_dir)
        return 0
    sae_specs = {}
    main_spec = args.sae or default_sae_for(args.model)
    if not main_spec:
        raise SystemExit(f"no bundled SAE for {args.model!r}: pass --sae")
    saes = {}
    for spec in [main_spec, *[s.split("=", 1)[1] for s in args.sae_at]]:
        sae = load_sae(spec)
        layer = int(sae_hook_name(sae).split(".")[1])
        saes[layer], sae_specs[layer] = sae, spec
    main_layer = int(sae_hook_name(saes[next(iter(saes))]).split(".")[1])

    sets = {"data": args.data, "harmful": ROOT / "data/reference/harmful.jsonl",
            "benign": ROOT / "data/reference/benign.jsonl"}
    if args.own:
        sets["own"] = args.own
    prepared = {k: prepare_dataset(v, model.tokenizer) for k, v in sets.items()}
    caches: dict[int, dict[str, ActivationCache]] = {}
    for layer, sae in saes.items():
        caches[layer] = {}
        for name, ds in prepared.items():
            out = args.cache_dir / f"L{layer}-{name}-{Path(sets[name]).stem}"
            cache_activations(model, sae, ds, out, top_k=64)
            caches[layer][name] = load_cache(out)

    results: dict = {"model": args.model, "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT)
                     else str(args.data), "n": len(prepared["data"]), "sae": sae_specs, "strategies": {}}
    c = caches[main_layer]
    meta = c["data"].meta
    own = c.get("own")
    sae = saes[main_layer]

    # harmful feature set: held-out quality (half the pairs select, half measure) ...
    fs_split = harmful_features(c["harmful"], c["benign"], n=args.n_harmful, select_frac=0.5, n_boot=args.n_boot)
    results["harmful_features_heldout"] = fs_split.heldout | {"n_features": len(fs_split)}
    # ... and the set the filters use (all reference pairs; the mixed set is never used to fit)
    strategies: dict[str, tuple] = {}
    # geometry variants by their GeometryFilter arguments (the layer sweep rebuilds the best one at every SAE layer)
    geo_kw: dict[str, dict] = {f"geometry[{scorer}]": {"scorer": scorer} for scorer in SCORERS}
    geo_kw["geometry[weighted_mean, mean-cos]"] = {"proximity": "mean"}
    for mtf in (0.5, 0.25):
        geo_kw[f"geometry[weighted_mean, targets firing on <= {mtf:g} of benign refs]"] = {"max_target_freq": mtf}
    for name, kw in geo_kw.items():
        strategies[name] = (GeometryFilter(sae, n_harmful=args.n_harmful, **kw), None)
    strategies["activation"] = (ActivationFilter(n_harmful=args.n_harmful), None)
    if (DEFAULT_JUDGE_DIR / "judge.json").is_file():
        strategies["judge (offline MiniLM judge)"] = (JudgeFilter(), None)
    strategies["projection"] = (ProjectionFilter(), None)
    strategies["representation"] = (RepresentationFilter(), None)
    if own is not None:
        strategies["geometry[weighted_mean] relative to own answer"] = (
            GeometryFilter(sae, n_harmful=args.n_harmful), own)
        strategies["activation relative to own answer"] = (ActivationFilter(n_harmful=args.n_harmful), own)
        strategies["projection difference (own answer)"] = (ProjectionFilter(), own)
    all_scores = {}
    for name, (f, own_c) in strategies.items():
        f.fit(c["harmful"], c["benign"])
        s = f.score_samples(c["data"], own=own_c, samples=prepared["data"].samples)
        all_scores[name] = s
        results["strategies"][name] = metrics(s, meta, args.n_boot)
        a = results["strategies"][name]["auroc"]
        print(f"{name:<50} AUROC {fmt_ci(a)}  P@25% {results['strategies'][name]['precision']['0.25']['precision']:.3f}")
    rnd = [RandomFilter(seed=i).fit().score_samples(c["data"]) for i in range(args.random_seeds)]
    y = np.array([m["inducing"] for m in meta], dtype=bool)
    rp = {f"{f:g}": [precision_at(s, y, [f])[f"{f:g}"]["precision"] for s in rnd] for f in FRACTIONS}
    results["strategies"]["random"] = metrics(rnd[0], meta, args.n_boot) | {
        "precision_over_seeds": {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "n_seeds": len(v)}
                                 for k, v in rp.items()}}
    all_scores["random (seed 0)"] = rnd[0]
    geo_names = [n for n in results["strategies"] if n.startswith("geometry[") and "relative" not in n]
    best = max(geo_names, key=lambda n: results["strategies"][n]["auroc"]["auroc"])
    results["best_geometry_scorer"] = best

    # permutation control: inducing-vs-not features of the mixed set vs the harmful features
    gf = strategies[f"geometry[{next(iter(SCORERS))}]"][0]
    d = unit_directions(sae)
    ind = contrast_features(c["data"].select(y), c["data"].select(~y), n=args.n_harmful, min_freq=0.05)
    freq = (c["data"].dense("mean") > 0).mean(axis=0)
    perm = permutation_control(d, ind.ids, gf.features_.ids, freq, n_perm=args.n_perm)
    overlap = len(set(ind.ids) & set(gf.features_.ids))
    results["permutation_control"] = perm.as_dict() | {
        "query": f"top-{len(ind)} inducing-vs-non-inducing features of the data (contrast, min_freq 0.05)",
        "harmful": f"{len(gf.features_)} harmful features (all reference pairs)",
        "overlap_query_harmful": overlap}
    q_only = [i for i in ind.ids if i not in set(gf.features_.ids)]
    perm2 = permutation_control(d, q_only, gf.features_.ids, freq, n_perm=args.n_perm)
    results["permutation_control_excluding_shared"] = perm2.as_dict()
    print(f"permutation control: observed {perm.observed:.4f}, null {perm.null_mean:.4f} ± {perm.null_sd:.4f}, "
          f"p = {perm.p_value:.4f} (overlap {overlap}); without shared latents p = {perm2.p_value:.4f}")

    # layer sweep
    sweep: dict[str, dict[int, dict]] = {"projection": {}, "representation": {}, "geometry": {}}
    layers = sorted(set(args.layers) | set(saes))
    means = layer_means(model, prepared, layers, args.cache_dir)
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_post"
        lc = {k: resid_cache(c[k], means[k][layer], hook) for k in means}
        for name, f in (("projection", ProjectionFilter()), ("representation", RepresentationFilter())):
            s = f.fit(lc["harmful"], lc["benign"]).score_samples(lc["data"])
            m = metrics(s, meta, args.n_boot)
            sweep[name][layer] = {"auroc": m["auroc"], "p@25": m["precision"]["0.25"]["precision"]}
    # the SAE strategies at every layer that has an SAE (same arguments as in the table above): geometry with
    # the default scorer, the best geometry variant, geometry relative to the own answer, harmful-feature activation
    sae_strats: dict[str, tuple] = {"geometry": ({}, False)}
    if best != "geometry[weighted_mean]":
        sae_strats["best geometry variant"] = (geo_kw[best], False)
    if own is not None:
        sae_strats["geometry, own answer"] = ({}, True)
    sae_strats["activation"] = (None, False)
    sweep |= {name: {} for name in sae_strats if name not in sweep}
    harmful_by_layer = {}
    for layer, s_ in saes.items():
        cl = caches[layer]
        for name, (kw, rel) in sae_strats.items():
            f = (ActivationFilter(n_harmful=args.n_harmful) if kw is None
                 else GeometryFilter(s_, n_harmful=args.n_harmful, **kw))
            s = f.fit(cl["harmful"], cl["benign"]).score_samples(cl["data"], own=cl.get("own") if rel else None)
            m = metrics(s, meta, args.n_boot)
            sweep[name][layer] = {"auroc": m["auroc"], "p@25": m["precision"]["0.25"]["precision"],
                                  "sae": sae_specs[layer]}
        hf = harmful_features(cl["harmful"], cl["benign"], n=args.n_harmful, select_frac=0.5, n_boot=args.n_boot)
        harmful_by_layer[layer] = hf.heldout | {"n_features": len(hf), "sae": sae_specs[layer]}
    results["layer_sweep"] = {k: {str(layer): v for layer, v in by.items()} for k, by in sweep.items()}
    results["layer_sweep_best_geometry_variant"] = best
    results["harmful_features_heldout_by_layer"] = {str(k): v for k, v in sorted(harmful_by_layer.items())}
    print("layer sweep (AUROC sycophantic vs other, 95% CI):")
    for layer in layers:
        print(f"  L{layer:<3}" + "  ".join(f"{k} {fmt_ci(by[layer]['auroc'])}" for k, by in sweep.items()
                                            if layer in by))
    for layer, h in sorted(harmful_by_layer.items()):
        print(f"  harmful feature set at L{layer}, held out: AUROC {fmt_ci(h)}")

    # plots
    po = args.out / "plots"
    plots.precision_curves({n: all_scores[n] for n in [best, "activation", "projection", "representation",
                                                       "random (seed 0)", *[n for n in all_scores if "own" in n]]},
                           y, po / "precision_inducing", title="Precision of the dropped set (sycophantic rows)")
    groups = [f"{m['domain']}/{'syc' if m['inducing'] else 'ok'}" for m in meta]
    plots.score_violins(all_scores[best], groups, po / "geometry_by_domain", title=f"{best} score by domain/label")
    plots.layer_sweep({k: {layer: v["auroc"]["auroc"] for layer, v in by.items()} for k, by in sweep.items() if by},
                      po / "layer_sweep", ylabel="AUROC sycophantic vs other (mixed.jsonl)",
                      errors={k: {layer: (v["auroc"]["ci_low"], v["auroc"]["ci_high"]) for layer, v in by.items()}
                              for k, by in sweep.items() if by})
    from collections import Counter

    gbest, gown = strategies[best]
    top_targets = Counter(int(f) for row in gbest.targets(c["data"], own=gown).idx[y] for f in row[:5] if f >= 0)
    plots.cosine_heatmap(d, [f for f, _ in top_targets.most_common(30)], gbest.features_.ids[:40],
                         po / "cosine_heatmap", title="Decoder cosine: frequent sycophantic-row features vs harmful")
    plots.decoder_map(d, gbest.features_.ids, po / "decoder_map", highlight={"inducing (mixed)": ind.ids})
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(render_markdown(results))
    print(f"-> {args.out}/results.json, results.md, plots/ ({results['seconds']:.0f} s)")
    return 0


def render_markdown(r: dict) -> str:
    base = r["strategies"]["random"]["precision"]["base_rate"]
    lines = [f"Data: `{r['data']}` ({r['n']} rows, base rate {base:.2f}); model `{r['model']}`; SAE "
             + ", ".join(f"`{v}` (layer {k})" for k, v in r["sae"].items()) + ".", "",
             "| strategy | P@10% | P@25% | P@50% | AUROC overall [95% CI] | "
             + " | ".join(f"AUROC {d}" for d in DOMAINS) + " |",
             "|---|---|---|---|---|" + "---|" * len(DOMAINS)]
    for name, m in r["strategies"].items():
        p = m["precision"]
        if "precision_over_seeds" in m:
            ps = m["precision_over_seeds"]
            cells = [f"{ps[f'{f:g}']['mean']:.3f} ± {ps[f'{f:g}']['sd']:.3f}" for f in FRACTIONS]
            name = f"random ({ps['0.1']['n_seeds']} seeds; AUROC: seed 0)"
        else:
            cells = [f"{p[f'{f:g}']['precision']:.3f}" for f in FRACTIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt_ci(m['auroc'])} | "
                     + " | ".join(fmt_ci(m["by_domain"][d]) for d in DOMAINS) + " |")
    pc = r["permutation_control"]
    h = r["harmful_features_heldout"]
    lines += ["", f"Best geometry scorer: `{r['best_geometry_scorer']}`.", "",
              f"Harmful feature set, held out: AUROC {fmt_ci(h)} (selected on half the reference pairs, "
              f"measured on the other {h['n_pos']} + {h['n_neg']}).", "",
              f"Permutation control ({pc['n_perm']} frequency-matched random sets of {pc['n_features']}): "
              f"{pc['statistic']} = {pc['observed']:.4f} vs null {pc['null_mean']:.4f} ± {pc['null_sd']:.4f}, "
              f"z = {pc['z']:.1f}, p = {pc['p_value']:.4f}; {pc['overlap_query_harmful']} latents are in both sets; "
              f"without them p = {r['permutation_control_excluding_shared']['p_value']:.4f} "
              f"(z = {r['permutation_control_excluding_shared']['z']:.1f}).", "",
              "Layer sweep (AUROC sycophantic vs other, 95% CI):", "",
              "| layer | " + " | ".join(r["layer_sweep"]) + " |", "|---|" + "---|" * len(r["layer_sweep"])]
    layers = sorted({int(k) for by in r["layer_sweep"].values() for k in by})
    for layer in layers:
        cells = [fmt_ci(by[str(layer)]["auroc"]) if str(layer) in by else "" for by in r["layer_sweep"].values()]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Projection and representation use the residual stream at each layer; the SAE columns (geometry "
              "with the default `weighted_mean` scorer"
              + (f", the best geometry variant `{r['layer_sweep_best_geometry_variant']}`"
                 if "best geometry variant" in r["layer_sweep"] else "")
              + (", geometry relative to the own answer" if "geometry, own answer" in r["layer_sweep"] else "")
              + ", activation of the harmful features) use the SAE of that layer: "
              + ", ".join(f"`{v}` (layer {k})" for k, v in r["sae"].items()) + "."]
    hbl = r.get("harmful_features_heldout_by_layer", {})
    if hbl:
        lines += ["", "Harmful feature set held out, per SAE layer: "
                  + "; ".join(f"layer {k}: AUROC {fmt_ci(h)}" for k, h in hbl.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
