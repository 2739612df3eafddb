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
    max_batch_tokens: int = typer.Option(8192, help="Token budget of one padded batch."),
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
    from .cache import CacheMismatchError, cache_activations
    from .data import DataError, prepare_dataset
    from .models import HookNameError, ModelSpecError, load_model
    from .saes import SAECompatibilityError, SAESpecError, load_sae

    out = out or Path("runs") / "cache" / data.stem
    sae_spec = sae if sae is not None else default_sae_for(model)
    try:
        m = load_model(model, device=device, progress=progress)
        s = None
        if sae_spec and sae_spec.lower() != "none":
            s = load_sae(sae_spec, device=str(m.device))
        else:
            typer.echo(f"no SAE for {model!r}: caching residual means only (pass --sae to encode)", err=True)
        ds = prepare_dataset(data, m.tokenizer, response=response.value, max_tokens=max_tokens,
                             truncation=truncation.value, skip_invalid=skip_invalid,
                             rejects_path=rejects or out / "rejects.jsonl")
        res = cache_activations(m, s, ds, out, hook=hook, top_k=top_k, shard_size=shard_size,
                                max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, progress=progress)
    except (DataError, ModelSpecError, HookNameError, SAESpecError, SAECompatibilityError,
            CacheMismatchError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    r = ds.report
    typer.echo(
        f"cached {res.n_samples} samples ({res.n_tokens} tokens, {res.tokens_per_s:.0f} tok/s; "
        f"{res.shards_written} shards written, {res.shards_skipped} resumed) -> {res.out_dir}\n"
        f"rows read {r.n_rows}, rejected {r.n_rejected}"
        + (f" (see {rejects or out / 'rejects.jsonl'})" if r.n_rejected else "")
        + f", truncated {r.n_truncated} ({r.truncation} at {r.max_tokens} tokens)"
    )


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


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
