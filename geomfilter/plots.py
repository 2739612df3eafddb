"""Proximity and comparison plots (matplotlib, headless). Each function saves ``<out>.png`` and ``<out>.svg``.

* :func:`score_violins` - score distributions per group (dataset, domain, label);
* :func:`cosine_heatmap` - decoder cosines of target features vs harmful features;
* :func:`decoder_map` - 2-D PCA of decoder directions, harmful and target features marked;
* :func:`precision_curves` - precision of the dropped set vs fraction removed, one line per strategy;
* :func:`layer_sweep` - a separation metric per layer, one line per strategy;
* :func:`gate_heads` - mean gate movement ``|g - 1|`` per layer and head (attention gates);
* :func:`gate_latents` - SAE-gate movement per latent vs its decoder cosine to the harmful set;
* :func:`condition_bars` - one metric per condition with CI error bars;
* :func:`fraction_curves` - a metric vs removal fraction with CI bands, one line per filter strategy;
* :func:`plot_filter_run` - the plots of a ``geomfilter filter`` output folder (``geomfilter plot``).
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import GeomfilterError  # noqa: E402
from .geometry import unit_directions  # noqa: E402
from .outputs import SCORE_COLUMNS  # noqa: E402
from .saes import default_sae_for, load_sae  # noqa: E402
from .settings import DEFAULT_MODEL  # noqa: E402
from .stats import precision_at  # noqa: E402


def _save(fig, out: str | Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def score_violins(scores: np.ndarray, groups: Sequence, out: str | Path, *, title: str = "Proximity to harmful features",
                  ylabel: str = "score (higher = closer to harmful)") -> list[Path]:
    """Violin + jittered points of ``scores`` per group label (groups sorted by median)."""
    scores = np.asarray(scores, dtype=float)
    groups = np.asarray([str(g) for g in groups])
    names = sorted(set(groups.tolist()), key=lambda g: np.median(scores[groups == g]))
    data = [scores[groups == g] for g in names]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2), 4))
    ax.violinplot(data, showmedians=True, widths=0.8)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=5, alpha=0.4, color="k")
    ax.set_xticks(range(1, len(names) + 1), [f"{g}\n(n={len(d)})" for g, d in zip(names, data)], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def cosine_heatmap(directions: np.ndarray, rows: Sequence[int], cols: Sequence[int], out: str | Path, *,
                   title: str = "Decoder cosine: target vs harmful features") -> list[Path]:
    """Heatmap of decoder cosines, ``rows`` (e.g. the most frequent target features) x ``cols`` (harmful)."""
    rows, cols = list(rows), list(cols)
    cos = directions[rows] @ directions[cols].T
    fig, ax = plt.subplots(figsize=(min(2 + 0.22 * len(cols), 16), min(1.5 + 0.22 * len(rows), 12)))
    lim = float(np.abs(cos).max()) or 1.0
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=6)
    ax.set_xlabel("harmful feature")
    ax.set_ylabel("target feature")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="cosine")
    return _save(fig, out)


def decoder_map(directions: np.ndarray, harmful: Sequence[int], out: str | Path, *,
                highlight: Mapping[str, Sequence[int]] | None = None, max_background: int = 3000,
                title: str = "Decoder directions (PCA)") -> list[Path]:
    """2-D PCA of unit decoder directions: all latents grey, harmful red, other named sets on top."""
    from sklearn.decomposition import PCA  # heavy (scipy, ~1.4 s): loaded only when a decoder map is drawn

    rng = np.random.default_rng(0)
    n = directions.shape[0]
    bg = rng.choice(n, min(n, max_background), replace=False)
    marked = {"harmful": list(harmful), **(highlight or {})}
    fit_rows = np.unique(np.concatenate([bg, *[np.asarray(v, dtype=int) for v in marked.values()]]))
    pca = PCA(2, random_state=0).fit(directions[fit_rows])
    fig, ax = plt.subplots(figsize=(6, 5))
    xy = pca.transform(directions[bg])
    ax.scatter(xy[:, 0], xy[:, 1], s=3, color="0.8", label="all latents (sample)")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for (name, ids), c in zip(marked.items(), colors):
        if len(ids):
            p = pca.transform(directions[list(ids)])
            ax.scatter(p[:, 0], p[:, 1], s=14, color=c, label=f"{name} ({len(ids)})", alpha=0.8)
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ev[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.1%} of variance)")
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=1.5)
    return _save(fig, out)


def precision_curves(scores: Mapping[str, np.ndarray], labels: np.ndarray, out: str | Path, *,
                     fractions: Sequence[float] | None = None, title: str = "Precision of the dropped set") -> list[Path]:
    """Precision of the top-fraction by score, per strategy, with the base rate as a dashed line."""
    labels = np.asarray(labels, dtype=bool)
    fractions = list(fractions or np.linspace(0.02, 0.6, 30))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in scores.items():
        p = precision_at(s, labels, fractions)
        ax.plot([100 * f for f in fractions], [p[f"{f:g}"]["precision"] for f in fractions], label=name)
    ax.axhline(labels.mean(), ls="--", color="k", lw=1, label=f"base rate {labels.mean():.2f}")
    ax.set_xlabel("rows removed (%)")
    ax.set_ylabel("precision (fraction of removed rows that are positive)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def layer_sweep(values: Mapping[str, Mapping[int, float]], out: str | Path, *, ylabel: str = "AUROC",
                title: str = "Separation by layer", errors: Mapping[str, Mapping[int, tuple[float, float]]] | None = None
                ) -> list[Path]:
    """One line per strategy: ``values[strategy][layer]``; optional ``errors`` as (low, high) bars."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_layer in values.items():
        layers = sorted(by_layer)
        y = [by_layer[layer] for layer in layers]
        if errors and name in errors:
            lo = [y[i] - errors[name][layer][0] for i, layer in enumerate(layers)]
            hi = [errors[name][layer][1] - y[i] for i, layer in enumerate(layers)]
            ax.errorbar(layers, y, yerr=[lo, hi], marker="o", capsize=3, label=name)
        else:
            ax.plot(layers, y, marker="o", label=name)
    ax.axhline(0.5, ls=":", color="k", lw=1)
    ax.set_xlabel("layer (residual stream after block)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def gate_heads(head_abs: np.ndarray, layers: Sequence[int], out: str | Path, *,
               title: str = "Attention-gate movement per head") -> list[Path]:
    """Heatmap ``[layer, head]`` of the mean ``|g - 1|`` of learned attention gates."""
    head_abs = np.asarray(head_abs, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * head_abs.shape[1] + 2), max(3.5, 0.25 * len(layers) + 1.5)))
    im = ax.imshow(head_abs, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    ax.set_xticks(range(head_abs.shape[1]), [str(x) for x in range(head_abs.shape[1])], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="mean |g - 1| over response tokens")
    return _save(fig, out)


def gate_latents(effect: np.ndarray, proximity: np.ndarray, moved: Sequence[int], out: str | Path, *,
                 harmful: Sequence[int] = (), title: str = "SAE-gate movement vs proximity to harmful features"
                 ) -> list[Path]:
    """Scatter: each firing latent's gate effect (x, log) vs its max decoder cosine to the harmful set (y)."""
    effect, proximity = np.asarray(effect, dtype=float), np.asarray(proximity, dtype=float)
    ok = (effect > 0) & np.isfinite(proximity)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(effect[ok], proximity[ok], s=5, alpha=0.35, color="0.5", label="latents")
    mv = np.asarray([m for m in moved if ok[m]], dtype=int)
    ax.scatter(effect[mv], proximity[mv], s=16, color="tab:orange", label=f"top {len(mv)} moved")
    hm = np.asarray([h for h in harmful if ok[h]], dtype=int)
    if hm.size:
        ax.scatter(effect[hm], proximity[hm], s=16, marker="x", color="tab:red", label="harmful features")
    ax.set_xscale("log")
    ax.set_xlabel("gate effect: mean |g - 1| * a * ||W_dec|| per token")
    ax.set_ylabel("max decoder cosine to a harmful feature")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, out)


def condition_bars(values: Mapping[str, Mapping[str, float]], out: str | Path, *, ylabel: str,
                   title: str = "", zero_line: bool = True) -> list[Path]:
    """Bars per condition (``{"mean", "lo", "hi"}`` each) with asymmetric CI error bars."""
    names = list(values)
    mean = np.array([values[n]["mean"] for n in names], dtype=float)
    lo = np.array([values[n]["lo"] for n in names], dtype=float)
    hi = np.array([values[n]["hi"] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 4.2))
    ax.bar(range(len(names)), mean, yerr=[mean - lo, hi - mean], capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    if zero_line:
        ax.axhline(0, color="0.3", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, out)


def fraction_curves(curves: Mapping[str, Mapping[float, Mapping[str, float]]], out: str | Path, *, ylabel: str,
                    title: str = "", reference: Mapping[str, float] | None = None) -> list[Path]:
    """``curves[strategy][fraction] = {"mean", "lo", "hi"}``: one line per strategy with its CI band;
    ``reference`` (e.g. the base model) is drawn as a horizontal line with its band."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (name, pts) in enumerate(sorted(curves.items())):
        xs = sorted(pts)
        mean = np.array([pts[x]["mean"] for x in xs], dtype=float)
        lo = np.array([pts[x]["lo"] for x in xs], dtype=float)
        hi = np.array([pts[x]["hi"] for x in xs], dtype=float)
        color = f"C{i}"
        ax.plot(xs, mean, marker="o", color=color, label=name)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
    if reference is not None:
        ax.axhline(reference["mean"], color="0.3", ls="--", lw=1, label="base model")
        ax.axhspan(reference["lo"], reference["hi"], color="0.5", alpha=0.1)
    ax.set_xlabel("fraction of the mixture removed (0 = unfiltered fine-tune)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, out)


# --------------------------------------------------------------------------- a filter run's plots


class PlotInputError(GeomfilterError, ValueError):
    """What a plot was asked to draw is not there: not a filter output folder, no such column, no SAE."""


def plot_filter_run(run_dir: str | Path, *, by: Sequence[str] | None = None, label: str = "inducing",
                    sae: str | None = None, top: int = 30, out: str | Path | None = None) -> list[Path]:
    """The plots of a ``geomfilter filter`` output folder; returns the files written (under ``out``,
    default ``RUN_DIR/plots``).

    * score violins per label column in ``by`` (default: every label column with 2..20 values);
    * the precision curve of the dropped set for the boolean column ``label`` (skipped if absent);
    * geometry runs: the cosine heatmap of the ``top`` most frequent top contributors vs the harmful features,
      and the decoder PCA map, from ``sae`` (default: the run model's bundled SAE).

    Raises :class:`PlotInputError` for a folder without scores.csv / report.json, an unknown ``by`` column, or
    no SAE for the decoder plots.
    """
    run_dir = Path(run_dir)
    report, rows, label_cols = _read_filter_run(run_dir)
    score = np.array([float(r["score"]) for r in rows])
    out = Path(out) if out is not None else run_dir / "plots"
    made: list[Path] = []
    for col in by or [c for c in label_cols if 2 <= len({r[c] for r in rows}) <= 20]:
        if col not in label_cols + ["decision"]:
            raise PlotInputError(f"--by {col!r}: scores.csv has no such column (label columns: {label_cols})")
        made += score_violins(score, [r[col] for r in rows], out / f"scores_by_{col}",
                              title=f"{report['strategy']} score by {col}")
    if label in label_cols and {r[label] for r in rows} <= {"True", "False"}:
        y = np.array([r[label] == "True" for r in rows])
        if y.any() and (~y).any():
            made += precision_curves({report["strategy"]: score}, y, out / f"precision_{label}",
                                     title=f"Precision of the dropped set for '{label}'")
    hf = report.get("harmful_features")
    if report["strategy"] == "geometry" and hf:
        spec = sae or default_sae_for(report.get("model", DEFAULT_MODEL))
        if not spec:
            raise PlotInputError("pass --sae for the decoder plots")
        made += _decoder_plots(unit_directions(load_sae(spec)), rows, hf["ids"], top, out)
    return made


def _read_filter_run(run_dir: Path) -> tuple[dict, list[dict], list[str]]:
    """A filter run's report, its scored rows (scores.csv, unscored rows left out) and their label columns."""
    scores_path, report_path = run_dir / "scores.csv", run_dir / "report.json"
    if not scores_path.is_file() or not report_path.is_file():
        raise PlotInputError(f"{run_dir} is not a `geomfilter filter` output folder (needs scores.csv and report.json)")
    report = json.loads(report_path.read_text())
    with open(scores_path, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["score"] != ""]
    label_cols = [c for c in (rows[0].keys() if rows else []) if c not in set(SCORE_COLUMNS)]
    return report, rows, label_cols


def _decoder_plots(directions: np.ndarray, rows: list[dict], harmful: Sequence[int], top: int,
                   out: Path) -> list[Path]:
    """Cosine heatmap of the ``top`` most frequent top contributors (the rows' explanations) vs the harmful
    features, and the decoder PCA map with both marked."""
    contrib = Counter(e["feature"] for r in rows if r["explanation"] for e in json.loads(r["explanation"]))
    targets = [f for f, _ in contrib.most_common(top)]
    made = cosine_heatmap(directions, targets, harmful, out / "cosine_heatmap") if targets else []
    return made + decoder_map(directions, harmful, out / "decoder_map", highlight={"top contributors": targets})
