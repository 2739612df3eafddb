"""The ``geomfilter`` command line (typer)."""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import DEFAULT_MODEL
from .saes import default_sae_for

app = typer.Typer(
    help="geomfilter: cache SAE activations of chat data, measure decoder-cosine proximity to "
    "harmful features, and filter fine-tuning sets.",
    no_args_is_help=True,
    add_completion=False,
)


class Response(str, Enum):
    last = "last"
    all = "all"


class Truncation(str, Enum):
    left = "left"
    right = "right"
    error = "error"


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def cache(
    data: Path = typer.Argument(..., help="Chat JSONL (messages or prompt/response) or a HF dataset directory."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec: smollm2-135m-instruct, a TL model name, a HF dir or a .gguf file."),
    sae: str | None = typer.Option(None, help="SAE spec: 'release:sae_id', a local sae-lens folder, a bundled alias, or 'none'. Default: the model's bundled SAE if there is one, else none."),
    hook: str | None = typer.Option(None, help="Hook name (default: the SAE's hook, else the model's default mid-depth residual hook)."),
    out: Path | None = typer.Option(None, help="Output directory (default: runs/cache/<data name>)."),
    top_k: int = typer.Option(64, help="SAE latents kept per sample and pooling (sparse top-k)."),
    shard_size: int = typer.Option(512, help="Samples per shard (the unit of resume)."),
    max_batch_tokens: int = typer.Option(2048, help="Token budget of one padded batch (2048 measured fastest on a 2-core CPU)."),
    max_batch_size: int = typer.Option(64, help="Most samples in one batch."),
    max_tokens: int = typer.Option(1024, help="Longer conversations are truncated by --truncation."),
    truncation: Truncation = typer.Option(Truncation.left, help="left: drop the start (keep the response); right: cut the end; error: refuse."),
    response: Response = typer.Option(Response.last, help="Pool the last assistant turn or all assistant turns."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows (written with reasons to the rejects file) instead of stopping."),
    rejects: Path | None = typer.Option(None, help="Rejects file (default: OUT/rejects.jsonl)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Cache pooled SAE activations (and residual means) of DATA's response tokens."""
    out = out or Path("runs") / "cache" / data.stem
    _, _, ds, res = _cached(data, model, sae, hook, out, top_k=top_k, shard_size=shard_size,
                            max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, max_tokens=max_tokens,
                            truncation=truncation.value, response=response.value, skip_invalid=skip_invalid,
                            rejects=rejects or out / "rejects.jsonl", device=device, progress=progress)
    r = ds.report
    typer.echo(
        f"cached {res.n_samples} samples ({res.n_tokens} tokens, {res.tokens_per_s:.0f} tok/s; "
        f"{res.shards_written} shards written, {res.shards_skipped} resumed) -> {res.out_dir}\n"
        f"rows read {r.n_rows}, rejected {r.n_rejected}"
        + (f" (see {rejects or out / 'rejects.jsonl'})" if r.n_rejected else "")
        + f", truncated {r.n_truncated} ({r.truncation} at {r.max_tokens} tokens)"
    )


def _cached(data: Path, model: str, sae: str | None, hook: str | None, out: Path, *, rejects: Path | None = None,
            skip_invalid: bool = False, max_tokens: int = 1024, truncation: str = "left", response: str = "last",
            device: str | None = None, progress: bool = True, **cache_kw):
    """Load model + SAE, prepare DATA and cache it into OUT (resuming); bad input -> exit 2 with the reason."""
    from .cache import CacheMismatchError, cache_activations
    from .data import DataError, prepare_dataset
    from .models import HookNameError, ModelSpecError, load_model
    from .saes import SAECompatibilityError, SAESpecError, load_sae

    sae_spec = sae if sae is not None else default_sae_for(model)
    try:
        m = load_model(model, device=device, progress=progress)
        s = None
        if sae_spec and sae_spec.lower() != "none":
            s = load_sae(sae_spec, device=str(m.device))
        else:
            typer.echo(f"no SAE for {model!r}: caching residual means only (pass --sae to encode)", err=True)
        ds = prepare_dataset(data, m.tokenizer, response=response, max_tokens=max_tokens, truncation=truncation,
                             skip_invalid=skip_invalid, rejects_path=rejects)
        res = cache_activations(m, s, ds, out, hook=hook, progress=progress, **cache_kw)
    except (DataError, ModelSpecError, HookNameError, SAESpecError, SAECompatibilityError,
            CacheMismatchError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    return m, s, ds, res


@app.command()
def hooks(
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    contains: str | None = typer.Option(None, help="Only hooks whose name contains this."),
):
    """List a model's hook names (the values --hook accepts)."""
    from .models import ModelSpecError, load_model

    try:
        m = load_model(model, progress=False)
    except ModelSpecError as e:
        _fail(str(e))
    for name in m.hook_names():
        if contains is None or contains in name:
            typer.echo(name)


@app.command()
def info(cache_dir: Path = typer.Argument(..., help="A cache directory.")):
    """Describe a cache: manifest, sample count, arrays and data report."""
    from .cache import load_cache

    try:
        c = load_cache(cache_dir)
    except (FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    ident = c.manifest["identity"]
    summary = {
        "path": str(c.path),
        "n_samples": len(c),
        "model": ident["model"]["spec"],
        "hook": ident["hook"],
        "sae": ident["sae"],
        "pooling": ident["pooling"],
        "arrays": {k: list(v.shape) for k, v in c.arrays.items()},
        "response_tokens": int(c.arrays["n_tokens"].sum()),
        "versions": c.manifest.get("versions"),
    }
    report = c.path / "data_report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        summary["data_report"] = {k: rep[k] for k in ("n_rows", "n_valid", "n_rejected", "n_truncated", "truncation", "max_tokens")}
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Data files or folders (folders recurse over *.jsonl / *.yaml).")],
    kind: Annotated[str | None, typer.Option(help="Schema of every file (default: detected from the path): reference, "
                                             "finetune, helpful, mixed, judge, questions, probes, capability, heldout, "
                                             "prompts, or chat (any messages JSONL).")] = None,
):
    """Check the schema and labels of data files; list every error (file:line: field), exit 1 if any."""
    from .validate import validate_paths

    try:
        report = validate_paths(paths, kind=kind)
    except ValueError as e:
        _fail(str(e))
    for err in report.errors:
        typer.echo(str(err))
    for f in report.files:
        typer.echo(str(f))
    n_rows = sum(f.rows for f in report.files)
    typer.echo(f"{len(report.files)} files, {n_rows} rows: " + ("ok" if report.ok else f"{len(report.errors)} error(s)"))
    if not report.ok:
        raise typer.Exit(1)


features_app = typer.Typer(help="Inspect SAE features on a dataset.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("top")
def features_top(
    data: Path = typer.Argument(..., help="Chat JSONL or HF dataset directory."),
    feature: list[int] = typer.Option(..., "--feature", "-f", help="Latent id (repeat for several)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    sae: str | None = typer.Option(None, help="SAE spec (default: the model's bundled SAE)."),
    n: int = typer.Option(8, help="Samples to show per feature."),
    pooling: str = typer.Option("max", help="Rank samples by the latent's max or mean over response tokens."),
    tokens: int = typer.Option(6, help="Top tokens to list per sample."),
    out: Path | None = typer.Option(None, help="Cache directory (default: runs/cache/<data name>; reused if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """For each --feature, the samples of DATA where it fires most and the response tokens it fires on."""
    from .cache import load_cache
    from .features import token_activations, top_samples

    if pooling not in ("max", "mean"):
        _fail(f"--pooling must be 'max' or 'mean', got {pooling!r}")
    out = out or Path("runs") / "cache" / data.stem
    m, s, ds, _ = _cached(data, model, sae, None, out, device=device, progress=progress)
    if s is None:
        _fail("features top needs an SAE: pass --sae")
    c = load_cache(out)
    report = []
    for f in feature:
        try:
            hits = top_samples(c, f, n=n, pooling=pooling)
        except ValueError as e:
            _fail(str(e))
        acts = token_activations(m, s, ds, [r for r, _ in hits], f, c.hook)
        report.append({"feature": f, "samples": [
            {"id": a.id, "score": v, "meta": c.meta[r], "top_tokens": a.top(tokens), "marked": a.render()}
            for (r, v), a in zip(hits, acts)]})
    if as_json:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    for item in report:
        typer.secho(f"feature {item['feature']}: {len(item['samples'])} samples with activity ({pooling} pooling)", bold=True)
        for smp in item["samples"]:
            labels = ", ".join(f"{k}={v}" for k, v in smp["meta"].items() if isinstance(v, (str, int, float, bool)))
            toks = "  ".join(f"{t!r}:{v:.2f}" for t, v in smp["top_tokens"])
            typer.echo(f"  {smp['id']}  {smp['score']:.3f}  [{labels}]\n    top tokens: {toks}")


@app.command("train-sae")
def train_sae_cmd(
    corpus: list[Path] = typer.Argument(None, help="Chat JSONL files (default: the SAE corpus generations + project data)."),
    out: Path = typer.Option(..., help="Output folder (sae-lens disk format + metrics.json + train_config.json)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    hook: str | None = typer.Option(None, help="Hook (default: the model's default mid-depth residual hook)."),
    architecture: str = typer.Option("topk", help="topk, standard or jumprelu."),
    d_sae: int = typer.Option(4608, help="Number of latents."),
    k: int = typer.Option(32, help="Active latents per token (topk)."),
    l1_coefficient: float = typer.Option(5.0, help="Sparsity coefficient (standard: L1, jumprelu: L0)."),
    context_size: int = typer.Option(256, help="Tokens per training window."),
    training_tokens: int = typer.Option(2_000_000, help="Training tokens (may exceed the corpus: it is cycled)."),
    batch_tokens: int = typer.Option(4096, help="Tokens per optimiser step."),
    lr: float = typer.Option(4e-4, help="Learning rate."),
    seed: int = typer.Option(0, help="Seed (corpus split, initialisation, data order)."),
    reuse_activations: bool = typer.Option(True, help="Run the model once and cycle over cached activations "
                                           "(--no-reuse-activations: sae-lens runs the model on every batch)."),
    checkpoints: int = typer.Option(0, help="Intermediate checkpoints to save."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Train an SAE with sae-lens on the model's activations, then measure it on held-out text."""
    from .data import DataError
    from .models import HookNameError, ModelSpecError
    from .sae_train import SAETrainConfig, default_corpus, train_sae

    try:
        cfg = SAETrainConfig(corpus=[str(p) for p in (corpus or default_corpus())], out=str(out), model=model, hook=hook,
                             architecture=architecture, d_sae=d_sae, k=k, l1_coefficient=l1_coefficient,
                             context_size=context_size, training_tokens=training_tokens, batch_tokens=batch_tokens,
                             lr=lr, seed=seed, reuse_activations=reuse_activations, n_checkpoints=checkpoints,
                             device=device, progress=progress)
        metrics = train_sae(cfg)
    except (DataError, ModelSpecError, HookNameError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    keys = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered", "ce_loss_clean", "ce_loss_spliced",
            "ce_loss_zero", "seconds_total")
    typer.echo(json.dumps({k: metrics[k] for k in keys}, indent=2))
    typer.echo(f"saved -> {out} (load with SAE.load_from_disk or --sae {out})")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
