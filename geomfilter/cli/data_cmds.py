"""`geomfilter cache`, `hooks`, `info` and `validate`: cache a dataset's activations; inspect models,
caches and data files."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..cache import ActivationCache, load_cache
from ..models import load_model
from ..pipeline import Backend as BackendSpec
from ..pipeline import CacheBuilder
from ..settings import DEFAULT_MODEL, CacheConfig
from ..validate import validate_paths
from ._common import (
    _ACTORS_HELP,
    _ADDRESS_HELP,
    _BACKEND_HELP,
    Backend,
    DeviceAutoOpt,
    ModelOpt,
    ProgressOpt,
    Response,
    Truncation,
    _fail,
)


def cache(
    data: Path = typer.Argument(..., help="Chat JSONL (messages or prompt/response) or a HF dataset directory."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec: smollm2-135m-instruct, a TL model name, a HF dir or a .gguf file."),
    sae: str | None = typer.Option(None, help="SAE spec: 'release:sae_id', a local sae-lens folder, a bundled alias, or 'none'. Default: the model's bundled SAE if there is one, else none."),
    hook: str | None = typer.Option(None, help="Hook name (default: the SAE's hook, else the model's default mid-depth residual hook)."),
    out: Path | None = typer.Option(None, help="Output directory (default: runs/cache/<data name>)."),
    top_k: int = typer.Option(CacheConfig.top_k, help="SAE latents kept per sample and pooling (sparse top-k)."),
    shard_size: int = typer.Option(CacheConfig.shard_size, help="Samples per shard (the unit of resume)."),
    max_batch_tokens: int = typer.Option(CacheConfig.max_batch_tokens, help="Token budget of one padded batch (2048 measured fastest on a 2-core CPU)."),
    max_batch_size: int = typer.Option(CacheConfig.max_batch_size, help="Most samples in one batch."),
    max_tokens: int = typer.Option(CacheConfig.max_tokens, help="Longer conversations are truncated by --truncation."),
    truncation: Truncation = typer.Option(Truncation(CacheConfig.truncation), help="left: drop the start (keep the response); right: cut the end; error: refuse."),
    response: Response = typer.Option(Response(CacheConfig.response), help="Pool the last assistant turn or all assistant turns."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows (written with reasons to the rejects file) instead of stopping."),
    rejects: Path | None = typer.Option(None, help="Rejects file (default: OUT/rejects.jsonl)."),
    device: DeviceAutoOpt = None,
    progress: ProgressOpt = True,
    backend: Backend = typer.Option(Backend.local, help=_BACKEND_HELP),
    num_actors: int | None = typer.Option(None, min=1, help=_ACTORS_HELP),
    ray_address: str | None = typer.Option(None, help=_ADDRESS_HELP),
):
    """Cache pooled SAE activations (and residual means) of DATA's response tokens."""
    out = out or Path("runs") / "cache" / data.stem
    rejects = rejects or out / "rejects.jsonl"
    builder = CacheBuilder(model, sae, hook, device=device, progress=progress,
                           backend=BackendSpec(backend.value, num_actors, ray_address),
                           log=lambda msg: typer.echo(msg, err=True))
    cfg = CacheConfig(top_k=top_k, shard_size=shard_size, max_batch_tokens=max_batch_tokens,
                      max_batch_size=max_batch_size, max_tokens=max_tokens, truncation=truncation.value,
                      response=response.value)
    ds, res = builder.build(data, out, cache=cfg, skip_invalid=skip_invalid, rejects=rejects)
    r = ds.report
    typer.echo(
        f"cached {res.n_samples} samples ({res.n_tokens} tokens, {res.tokens_per_s:.0f} tok/s; "
        f"{res.shards_written} shards written, {res.shards_skipped} resumed) -> {res.out_dir}\n"
        f"rows read {r.n_rows}, rejected {r.n_rejected}"
        + (f" (see {rejects})" if r.n_rejected else "")
        + f", truncated {r.n_truncated} ({r.truncation} at {r.max_tokens} tokens)"
    )


def hooks(
    model: ModelOpt = DEFAULT_MODEL,
    contains: str | None = typer.Option(None, help="Only hooks whose name contains this."),
    device: DeviceAutoOpt = None,
):
    """List a model's hook names (the values --hook accepts)."""
    for name in load_model(model, device=device, progress=False).hook_names():
        if contains is None or contains in name:
            typer.echo(name)


def info(cache_dir: Path = typer.Argument(..., help="A cache directory.")):
    """Describe a cache: manifest, sample count, arrays and data report (a damaged cache: exit 2, naming the file)."""
    c = load_cache(cache_dir)
    summary = _cache_summary(c)
    report = c.path / "data_report.json"
    if report.is_file():
        try:
            rep = json.loads(report.read_text(encoding="utf-8"))
            summary["data_report"] = {k: rep[k] for k in ("n_rows", "n_valid", "n_rejected", "n_truncated",
                                                          "truncation", "max_tokens")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            _fail(f"{report} cannot be read ({type(e).__name__}: {e}); re-run the same `geomfilter cache` command "
                  "to rewrite it")
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _cache_summary(c: ActivationCache) -> dict:
    """What ``geomfilter info`` prints of a cache's manifest and arrays (a manifest that lacks a field: exit 2)."""
    ident = c.manifest["identity"]
    try:
        return {
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
    except (KeyError, TypeError) as e:
        _fail(f"{c.path / 'manifest.json'} or its shards lack {e} (not a complete geomfilter cache); delete the folder "
              "and re-run `geomfilter cache`")


def validate(
    paths: Annotated[list[Path], typer.Argument(help="Data files or folders (folders recurse over *.jsonl / *.yaml).")],
    kind: Annotated[str | None, typer.Option(help="Schema of every file (default: detected from the path): reference, "
                                             "finetune, helpful, mixed, judge, questions, probes, capability, heldout, "
                                             "prompts, or chat (any messages JSONL).")] = None,
):
    """Check the schema and labels of data files; list every error (file:line: field), exit 1 if any."""
    report = validate_paths(paths, kind=kind)
    for err in report.errors:
        typer.echo(str(err))
    for f in report.files:
        typer.echo(str(f))
    n_rows = sum(f.rows for f in report.files)
    typer.echo(f"{len(report.files)} files, {n_rows} rows: " + ("ok" if report.ok else f"{len(report.errors)} error(s)"))
    if not report.ok:
        raise typer.Exit(1)
