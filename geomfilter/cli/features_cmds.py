"""`geomfilter features top|harmful|diff` and `geomfilter plot`: look at SAE features on a dataset, and at a filter
run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..cache import ActivationCache, load_cache
from ..features import FeatureError, FeatureSet, diff_features, harmful_features, token_activations, top_samples
from ..finetune import FinetuneError
from ..model_diff import diff_caches
from ..pipeline import REFERENCE_DIR, CacheBuilder, FilterConfig, FilterRunner
from ..plots import plot_filter_run
from ..settings import DEFAULT_MODEL
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    ModelOpt,
    ProgressBarsOpt,
    ProgressOpt,
    SaeOpt,
    _fail,
    command_group,
)

features_app = command_group("Inspect SAE features on a dataset.")


@features_app.command("top")
def features_top(
    data: Path = typer.Argument(..., help="Chat JSONL or HF dataset directory."),
    feature: list[int] = typer.Option(..., "--feature", "-f", help="Latent id (repeat for several)."),
    model: ModelOpt = DEFAULT_MODEL,
    sae: SaeOpt = None,
    n: int = typer.Option(8, help="Samples to show per feature."),
    pooling: str = typer.Option("max", help="Rank samples by the latent's max or mean over response tokens."),
    tokens: int = typer.Option(6, help="Top tokens to list per sample."),
    out: Path | None = typer.Option(None, help="Cache directory (default: runs/cache/<data name>; reused if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
):
    """For each --feature, the samples of DATA where it fires most and the response tokens it fires on."""
    if pooling not in ("max", "mean"):
        _fail(f"--pooling must be 'max' or 'mean', got {pooling!r}")
    out = out or Path("runs") / "cache" / data.stem
    builder = CacheBuilder(model, sae, device=device, progress=progress, log=lambda msg: typer.echo(msg, err=True))
    if builder.sae_spec is None:
        _fail("features top needs an SAE: pass --sae")
    ds, _ = builder.build(data, out)
    m, s = builder.model, builder.sae
    c = load_cache(out)
    report = []
    for f in feature:
        hits = top_samples(c, f, n=n, pooling=pooling)
        acts = token_activations(m, s, ds, [r for r, _ in hits], f, c.hook)
        report.append({"feature": f, "samples": [
            {"id": a.id, "score": v, "meta": c.meta[r], "top_tokens": a.top(tokens), "marked": a.render()}
            for (r, v), a in zip(hits, acts)]})
    if as_json:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_top(report, pooling)


def _print_top(report: list[dict], pooling: str) -> None:
    """The text form of ``features top``: per feature, its samples with their labels and top tokens."""
    for item in report:
        typer.secho(f"feature {item['feature']}: {len(item['samples'])} samples with activity ({pooling} pooling)", bold=True)
        for smp in item["samples"]:
            labels = ", ".join(f"{k}={v}" for k, v in smp["meta"].items() if isinstance(v, (str, int, float, bool)))
            toks = "  ".join(f"{t!r}:{v:.2f}" for t, v in smp["top_tokens"])
            typer.echo(f"  {smp['id']}  {smp['score']:.3f}  [{labels}]\n    top tokens: {toks}")


@features_app.command("harmful")
def features_harmful(
    harmful: Path = typer.Option(REFERENCE_DIR / "harmful.jsonl", help="Harmful reference answers (chat JSONL)."),
    benign: Path = typer.Option(REFERENCE_DIR / "benign.jsonl", help="Benign answers to the same prompts."),
    add_harmful: list[Path] | None = typer.Option(None, help="More harmful reference answers, joined to --harmful "
                                                  "(repeatable), as `geomfilter filter` takes them."),
    add_benign: list[Path] | None = typer.Option(None, help="More benign reference answers, joined to --benign "
                                                 "(repeatable): the twins of --add-harmful."),
    model: ModelOpt = DEFAULT_MODEL,
    sae: SaeOpt = None,
    n: int = typer.Option(100, help="Features to select."),
    method: str = typer.Option("contrast", help="contrast (mean harmful - benign) or auroc."),
    min_freq: float = typer.Option(0.05, help="Minimum firing frequency on the harmful rows."),
    select_frac: float = typer.Option(0.5, help="Fraction of pairs that select; the rest measure (1 = all select)."),
    seed: int = typer.Option(0, help="Seed of the split."),
    cache_dir: CacheDirOpt = Path("runs/cache"),
    out: Path | None = typer.Option(None, help="Write the feature set (ids, stats, held-out AUROC) as JSON."),
    show: int = typer.Option(15, help="Rows of the table to print."),
    device: DeviceOpt = None,
    progress: ProgressBarsOpt = True,
):
    """Select harmful-behaviour features from the reference sets; report them and their held-out separation."""
    # the same reference caches `geomfilter score`/`filter` use (and reuse) with this model and SAE
    cfg = FilterConfig(data=harmful, model=model, sae=sae, harmful=harmful, benign=benign,
                       add_harmful=tuple(add_harmful or ()), add_benign=tuple(add_benign or ()),
                       cache_dir=cache_dir, device=device, progress=progress)
    runner = FilterRunner(cfg, log=lambda msg: typer.echo(msg, err=True))
    if runner.builder.sae_spec is None:
        _fail("selecting features needs an SAE: pass --sae")
    runner.check()  # the reference files (named by option), the specs; a note on unpaired added rows
    caches = [runner.reference_set(side) for side in ("harmful", "benign")]
    fs = harmful_features(*caches, n=n, method=method, min_freq=min_freq, select_frac=select_frac, seed=seed)
    typer.echo(f"{len(fs)} harmful features ({method}, min_freq {min_freq}); selection {fs.selection.get('split')}")
    _print_harmful(fs, show)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        fs.save(out)
        typer.echo(f"saved -> {out}")


def _print_harmful(fs: FeatureSet, show: int) -> None:
    """The table of ``features harmful`` (its first ``show`` rows) and the set's held-out AUROC."""
    typer.echo(f"{'id':>6} {'score':>8} {'mean_h':>8} {'mean_b':>8} {'freq_h':>7} {'freq_b':>7} {'auroc':>6}")
    for st in fs.stats[:show]:
        typer.echo(f"{st['id']:>6} {st['score']:>8.4f} {st['mean_pos']:>8.4f} {st['mean_neg']:>8.4f} "
                   f"{st['freq_pos']:>7.2f} {st['freq_neg']:>7.2f} {st['auroc']:>6.3f}")
    if fs.heldout:
        h = fs.heldout
        typer.echo(f"held-out AUROC of the set's summed activation: {h['auroc']:.3f} "
                   f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}] (n = {h['n_pos']} + {h['n_neg']})")


@features_app.command("diff")
def features_diff(
    data: list[Path] = typer.Argument(None, help="Chat JSONL file(s) both models read (default: the reference sets)."),
    tuned: Path = typer.Option(..., help="A finished LoRA run folder (`geomfilter finetune --out`)."),
    sae: SaeOpt = None,
    n: int = typer.Option(100, help="Features to select."),
    rank: str = typer.Option("mean", help="mean (mean rise over rows) or t (paired t: raised on most rows)."),
    cache_dir: CacheDirOpt = Path("runs/cache"),
    out: Path | None = typer.Option(None, help="Write the feature set as JSON (usable as --harmful-ids' source)."),
    show: int = typer.Option(15, help="Rows of the table to print."),
    device: DeviceOpt = None,
    progress: ProgressBarsOpt = True,
):
    """Model diffing: the SAE latents a fine-tune raises most on DATA, read by its base model and by the fine-tune."""
    if rank not in ("mean", "t"):
        _fail(f"--rank must be 'mean' or 't', got {rank!r}")
    files = list(data) or [REFERENCE_DIR / "harmful.jsonl", REFERENCE_DIR / "benign.jsonl"]
    try:
        pairs = diff_caches(tuned, files, sae=sae, cache_dir=cache_dir, device=device, progress=progress,
                            log=lambda msg: typer.echo(msg, err=True))
        before_all = ActivationCache.concat([b for b, _ in pairs], "base")
        fs = diff_features(before_all, ActivationCache.concat([t for _, t in pairs], str(tuned)), n=n, rank=rank)
    except (FinetuneError, FeatureError) as e:
        _fail(str(e))
    typer.echo(f"{len(fs)} latents raised by {tuned} on the {len(before_all)} rows of "
               f"{', '.join(map(str, files))} (ranked by {rank})")
    typer.echo(f"{'id':>6} {'mean_diff':>9} {'t':>8} {'raised':>7}")
    for st in fs.stats[:show]:
        typer.echo(f"{st['id']:>6} {st['mean_diff']:>9.4f} {st['t']:>8.2f} {st['raised_share']:>7.2f}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        fs.save(out)
        typer.echo(f"saved -> {out}")


def plot(
    run: Path = typer.Argument(..., metavar="OUT", help="A `geomfilter filter` output folder (scores.csv + report.json)."),
    by: list[str] = typer.Option(None, help="Label columns to group scores by (default: every label column with "
                                 "2..20 values)."),
    label: str = typer.Option("inducing", help="Boolean column for the precision curve (skipped if absent)."),
    sae: str | None = typer.Option(None, help="SAE for the decoder plots (default: the model's bundled SAE)."),
    top: int = typer.Option(30, help="Target features in the cosine heatmap (the most frequent top contributors)."),
    out: Path | None = typer.Option(None, help="Plot folder (default: OUT/plots)."),
):
    """Plots of a filter run: score violins per label, precision curve, cosine heatmap, decoder PCA map."""
    for p in plot_filter_run(run, by=by, label=label, sae=sae, top=top, out=out):
        typer.echo(str(p))
