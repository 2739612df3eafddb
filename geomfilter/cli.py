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
    """Which assistant turns are the response: the last one, or all of them."""

    last = "last"
    all = "all"


class Truncation(str, Enum):
    """What to do with a conversation longer than ``--max-tokens``: cut the left, the right, or fail."""

    left = "left"
    right = "right"
    error = "error"


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


class Backend(str, Enum):
    """Where the work runs: in this process, or on a Ray cluster."""

    local = "local"
    ray = "ray"


_BACKEND_HELP = ("local: this process; ray: Ray Data actors, one model + SAE each (pip install "
                 "'geomfilter\\[distributed]'); the same shards and manifest either way, resumable alike.")
_ACTORS_HELP = "ray: number of actors (default: the cluster's GPUs, one each, if it has any, else its CPUs)."
_ADDRESS_HELP = ("ray: address of a running Ray cluster, e.g. 'auto' (default: $RAY_ADDRESS if set, else a local "
                 "Ray started for this run).")


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
    backend: Backend = typer.Option(Backend.local, help=_BACKEND_HELP),
    num_actors: int | None = typer.Option(None, min=1, help=_ACTORS_HELP),
    ray_address: str | None = typer.Option(None, help=_ADDRESS_HELP),
):
    """Cache pooled SAE activations (and residual means) of DATA's response tokens."""
    out = out or Path("runs") / "cache" / data.stem
    _, _, ds, res = _cached(data, model, sae, hook, out, top_k=top_k, shard_size=shard_size,
                            max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, max_tokens=max_tokens,
                            truncation=truncation.value, response=response.value, skip_invalid=skip_invalid,
                            rejects=rejects or out / "rejects.jsonl", device=device, progress=progress,
                            backend=backend.value, num_actors=num_actors, ray_address=ray_address)
    r = ds.report
    typer.echo(
        f"cached {res.n_samples} samples ({res.n_tokens} tokens, {res.tokens_per_s:.0f} tok/s; "
        f"{res.shards_written} shards written, {res.shards_skipped} resumed) -> {res.out_dir}\n"
        f"rows read {r.n_rows}, rejected {r.n_rejected}"
        + (f" (see {rejects or out / 'rejects.jsonl'})" if r.n_rejected else "")
        + f", truncated {r.n_truncated} ({r.truncation} at {r.max_tokens} tokens)"
    )


# The caching backend of the `_cached` calls that pass none (`score` sets it around its run): backend,
# num_actors, ray_address.
_BACKEND_DEFAULTS: dict = {}


def _cached(data: Path, model: str, sae: str | None, hook: str | None, out: Path, *, rejects: Path | None = None,
            skip_invalid: bool = False, max_tokens: int = 1024, truncation: str = "left", response: str = "last",
            device: str | None = None, progress: bool = True, backend: str | None = None,
            num_actors: int | None = None, ray_address: str | None = None, hint: str = "--out", **cache_kw):
    """Load model + SAE, prepare DATA and cache it into OUT (resuming); bad input -> exit 2 with the reason.

    ``hint``: the option that chose OUT, named when OUT holds another cache (``--out`` or ``--cache-dir``).

    ``backend='ray'`` computes the shards on Ray Data actors (`geomfilter.distributed`); unset, the
    backend, ``num_actors`` and ``ray_address`` come from ``_BACKEND_DEFAULTS`` (default: local).
    """
    from .cache import CacheCorruptError, CacheMismatchError, cache_activations
    from .data import DataError, prepare_dataset
    from .models import HookNameError, ModelSpecError, check_model_spec, load_model
    from .saes import SAECompatibilityError, SAESpecError, check_spec_for_model, load_sae

    if backend is None:
        backend = _BACKEND_DEFAULTS.get("backend", "local")
        num_actors = _BACKEND_DEFAULTS.get("num_actors") if num_actors is None else num_actors
        ray_address = _BACKEND_DEFAULTS.get("ray_address") if ray_address is None else ray_address
    dist_errors: tuple = ()
    if backend == "ray":
        from . import distributed

        try:
            distributed.require_ray()
        except distributed.RayNotInstalledError as e:
            _fail(str(e))
        dist_errors = (distributed.ShardAccountingError, distributed.WorkerMismatchError, ConnectionError)
    sae_spec = sae if sae is not None else default_sae_for(model)
    try:
        check_model_spec(model)  # offline: a missing model is named as such, before anything loads
        if sae_spec:
            check_spec_for_model(sae_spec, model)  # offline: a release made for another model ("none" passes)
        m = load_model(model, device=device, progress=progress)
        s = None
        if sae_spec and sae_spec.lower() != "none":
            s = load_sae(sae_spec, device=str(m.device))
        else:
            typer.echo(f"no SAE for {model!r}: caching residual means only (pass --sae to encode)", err=True)
        ds = prepare_dataset(data, m.tokenizer, response=response, max_tokens=max_tokens, truncation=truncation,
                             skip_invalid=skip_invalid)
        # the rejects file is written by the cache once OUT is accepted (never into another dataset's cache)
        if backend == "ray":
            res = distributed.cache_activations_ray(m, s, ds, out, sae_spec=sae_spec if s is not None else None,
                                                    model_spec=model, hook=hook, num_actors=num_actors,
                                                    ray_address=ray_address, device=device, progress=progress,
                                                    rejects_path=rejects, **cache_kw)
        else:
            res = cache_activations(m, s, ds, out, hook=hook, progress=progress, rejects_path=rejects, **cache_kw)
    except (DataError, ModelSpecError, HookNameError, SAESpecError, SAECompatibilityError,
            CacheMismatchError, CacheCorruptError, FileNotFoundError, ValueError, *dist_errors) as e:
        msg = str(e)
        if isinstance(e, CacheMismatchError) and hint != "--out":
            msg = msg.replace("Use another --out directory", f"Use another {hint}")
        _fail(msg)
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
    """Describe a cache: manifest, sample count, arrays and data report (a damaged cache: exit 2, naming the file)."""
    from .cache import load_cache

    try:
        c = load_cache(cache_dir)  # CacheCorruptError / CacheIncompleteError are RuntimeErrors
    except (FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    ident = c.manifest["identity"]
    try:
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
    except (KeyError, TypeError) as e:
        _fail(f"{c.path / 'manifest.json'} or its shards lack {e} (not a complete geomfilter cache); delete the folder "
              "and re-run `geomfilter cache`")
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


_REF_DEFAULT = Path(__file__).resolve().parent.parent / "data" / "reference"
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


@features_app.command("harmful")
def features_harmful(
    harmful: Path = typer.Option(_REF_DEFAULT / "harmful.jsonl", help="Harmful reference answers (chat JSONL)."),
    benign: Path = typer.Option(_REF_DEFAULT / "benign.jsonl", help="Benign answers to the same prompts."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    sae: str | None = typer.Option(None, help="SAE spec (default: the model's bundled SAE)."),
    n: int = typer.Option(100, help="Features to select."),
    method: str = typer.Option("contrast", help="contrast (mean harmful - benign) or auroc."),
    min_freq: float = typer.Option(0.05, help="Minimum firing frequency on the harmful rows."),
    select_frac: float = typer.Option(0.5, help="Fraction of pairs that select; the rest measure (1 = all select)."),
    seed: int = typer.Option(0, help="Seed of the split."),
    cache_dir: Path = typer.Option(Path("runs/cache"), help="Where caches are written and reused."),
    out: Path | None = typer.Option(None, help="Write the feature set (ids, stats, held-out AUROC) as JSON."),
    show: int = typer.Option(15, help="Rows of the table to print."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Select harmful-behaviour features from the reference sets; report them and their held-out separation."""
    from .cache import load_cache
    from .features import harmful_features

    tag = _spec_tag(model, sae if sae is not None else default_sae_for(model), None)
    caches = []
    for path in (harmful, benign):
        _, s, _, _ = _cached(path, model, sae, None, cache_dir / f"ref-{path.stem}-{tag}", device=device,
                             progress=progress)
        if s is None:
            _fail("selecting features needs an SAE: pass --sae")
        caches.append(load_cache(cache_dir / f"ref-{path.stem}-{tag}"))
    try:
        fs = harmful_features(*caches, n=n, method=method, min_freq=min_freq, select_frac=select_frac, seed=seed)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"{len(fs)} harmful features ({method}, min_freq {min_freq}); selection {fs.selection.get('split')}")
    typer.echo(f"{'id':>6} {'score':>8} {'mean_h':>8} {'mean_b':>8} {'freq_h':>7} {'freq_b':>7} {'auroc':>6}")
    for st in fs.stats[:show]:
        typer.echo(f"{st['id']:>6} {st['score']:>8.4f} {st['mean_pos']:>8.4f} {st['mean_neg']:>8.4f} "
                   f"{st['freq_pos']:>7.2f} {st['freq_neg']:>7.2f} {st['auroc']:>6.3f}")
    if fs.heldout:
        h = fs.heldout
        typer.echo(f"held-out AUROC of the set's summed activation: {h['auroc']:.3f} "
                   f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}] (n = {h['n_pos']} + {h['n_neg']})")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        fs.save(out)
        typer.echo(f"saved -> {out}")


@app.command()
def respond(
    data: Path = typer.Argument(..., metavar="DATA", help="Chat JSONL or HF dataset directory."),
    out: Path = typer.Option(..., help="Output JSONL: each row's prompt with the model's own answer, same id."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    max_new_tokens: int = typer.Option(96, help="Longest answer."),
    temperature: float = typer.Option(0.0, help="0 = greedy (the model's most likely answer)."),
    top_p: float = typer.Option(0.9, help="Nucleus sampling (temperature > 0)."),
    repetition_penalty: float = typer.Option(1.1, help="Repetition penalty."),
    batch_size: int = typer.Option(32, help="Prompts per generate call."),
    seed: int = typer.Option(0, help="Seed (per batch: seed * 100003 + batch index)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Generate the model's own answer to every prompt of DATA (resumable); feed it to score/filter --own."""
    from .data import DataError, read_samples
    from .finetune import load_tuned
    from .generate import generate_answers, prompts_of_samples
    from .models import ModelSpecError

    try:
        samples = read_samples(data)
        m = load_tuned(model, device=device, progress=progress)  # plain HF: generation, no hooks
        res = generate_answers(m, prompts_of_samples(samples), out, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                               batch_size=batch_size, seed=seed, progress=progress)
    except (DataError, ModelSpecError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{res.n_prompts} prompts: {res.n_skipped} already answered, {res.n_written} written "
               f"({res.n_new_tokens} tokens, {res.n_new_tokens / max(res.seconds, 1e-9):.0f} tok/s), "
               f"{res.n_rejected} empty (-> {out.with_suffix('.rejects.jsonl')}) -> {out}")


@app.command("train-sae")
def train_sae_cmd(
    corpus: list[Path] = typer.Argument(None, help="Chat JSONL files (default: the SAE corpus generations + project data)."),
    out: Path = typer.Option(..., help="Output folder (sae-lens disk format + metrics.json + train_config.json)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    hook: str | None = typer.Option(None, help="Hook (default: the model's default mid-depth residual hook)."),
    architecture: str = typer.Option("topk", help="topk, standard or jumprelu."),
    d_sae: int = typer.Option(4608, help="Number of latents."),
    k: int = typer.Option(64, help="Active latents per token (topk)."),
    l1_coefficient: float = typer.Option(5.0, help="Sparsity coefficient (standard: L1, jumprelu: L0)."),
    context_size: int = typer.Option(256, help="Tokens per training window."),
    training_tokens: int = typer.Option(2_000_000, help="Training tokens (may exceed the corpus: it is cycled)."),
    batch_tokens: int = typer.Option(1024, help="Tokens per optimiser step."),
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


class Strategy(str, Enum):
    """The filtering strategies of :data:`geomfilter.filtering.STRATEGIES`."""

    geometry = "geometry"
    random = "random"
    projection = "projection"
    representation = "representation"
    activation = "activation"
    judge = "judge"


def _spec_tag(*parts) -> str:
    import hashlib

    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:8]


def _cache_path(cache_dir: Path, prefix: str, path: Path, tag: str) -> Path:
    """The cache folder of ``path`` in the shared ``--cache-dir``: named after the file, keyed by its
    absolute path and the model/SAE/hook ``tag`` (two files of the same name never share a cache)."""
    return cache_dir / f"{prefix}{path.stem}-{_spec_tag(tag, path.resolve())}"


def _cache_source(cache: Path) -> Path | None:
    """The source file a cache directory was made from (from its manifest), or None if unreadable."""
    try:
        return Path(json.loads((cache / "manifest.json").read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _scored(data: Path, *, strategy: str, model: str, sae: str | None, hook: str | None, harmful: Path,
            benign: Path, own: Path | None, cache_dir: Path, drop: float | None, threshold: float | None,
            n_harmful: int, harmful_method: str, harmful_ids: str | None, min_freq: float, k: int, scorer: str,
            proximity: str, top_n: int, seed: int, skip_invalid: bool, device: str | None, progress: bool,
            judge: str | None = None, max_target_freq: float | None = None, max_tokens: int = 1024,
            truncation: str = "left", check_out=None):
    """Cache DATA and the reference sets (resuming), fit the strategy, score DATA. Bad input -> exit 2.

    Every option and the output location are checked before any work: ``check_out(inputs)`` is called with
    the files the run reads and fails on an output that cannot be written safely.
    """
    from .cache import load_cache
    from .data import DataReport, read_samples
    from .filtering import check_filter_params, make_filter
    from .saes import describe

    params = {"drop": drop, "threshold": threshold}
    if strategy in ("geometry", "activation"):
        ids = _int_list(harmful_ids, "--harmful-ids")
        params.update(n_harmful=n_harmful, harmful_method=harmful_method, min_freq=min_freq, harmful_ids=ids,
                      seed=seed)
    if strategy == "geometry":
        params.update(k=k, scorer=scorer, proximity=proximity, max_target_freq=max_target_freq)
    elif strategy == "random":
        params["seed"] = seed
    elif strategy == "representation":
        params["top_n"] = top_n
    elif strategy == "judge":
        params["judge"] = judge
    try:
        check_filter_params(strategy, **params)
    except ValueError as e:
        _fail(str(e))
    for name, path in (("DATA", data), ("--harmful", harmful), ("--benign", benign), ("--own", own)):
        if path is not None and not path.exists():
            _fail(f"{name} {path}: no such file or folder")
    is_cache = (data / "manifest.json").is_file()
    if check_out is not None:
        source = _cache_source(data) if is_cache else None
        check_out([p for p in (source, harmful, benign, own) if p is not None])
    from .models import ModelSpecError, check_model_spec

    try:
        check_model_spec(model)  # a missing model is reported as the model, not as a missing SAE
    except ModelSpecError as e:
        _fail(str(e))
    sae_spec = sae if sae is not None else default_sae_for(model)
    if strategy in ("geometry", "activation") and (not sae_spec or sae_spec.lower() == "none"):
        _fail(f"strategy {strategy!r} needs an SAE: pass --sae (no bundled SAE for {model!r})")
    tag = _spec_tag(model, sae_spec, hook)
    kw = {"device": device, "progress": progress}
    ref_dirs = {name: _cache_path(cache_dir, "ref-", path, tag) for name, path in (("harmful", harmful),
                                                                                   ("benign", benign))}
    if is_cache:  # a cache directory: the rows come from its source file
        from .cache import CacheStaleError, cache_rejects, check_samples_match

        try:
            dcache = load_cache(data)
        except RuntimeError as e:  # damaged or incomplete: the error names the file and the fix
            _fail(str(e))
        source = Path(dcache.manifest["source"])
        if dcache.manifest["identity"]["model"]["spec"] != model:
            _fail(f"cache {data} was made with model {dcache.manifest['identity']['model']['spec']!r}, not {model!r}; "
                  "pass --model to match")
        if not source.is_file():
            _fail(f"cache {data} was made from {source}, which is not there any more (needed to write the rows)")
        rep = DataReport()
        rows = read_samples(source, skip_invalid=True, report=rep)
        try:  # every cached row still there with the same content, no row added since (by id + content hash)
            check_samples_match(dcache, rows, source=source)
        except CacheStaleError as e:
            _fail(str(e))
        by_id, cached = {s.id: s for s in rows}, set(dcache.ids)
        # rows valid in the file but rejected when they were cached (e.g. no response token after truncation),
        # located where they are now
        late = [{**r, "file": str(source), "line": by_id[r["id"]].line, "raw": by_id[r["id"]].raw}
                for r in cache_rejects(dcache) if r.get("id") in by_id and r["id"] not in cached]
        samples, rejects = [by_id[i] for i in dcache.ids], rep.rejects + late
        m, s, _, _ = _cached(harmful, model, sae, hook, ref_dirs["harmful"], hint="--cache-dir", **kw)
        cached_sae = dcache.manifest["identity"]["sae"]
        if s is not None and (cached_sae is None or cached_sae["weights"] != describe(s)["weights"]):
            _fail(f"cache {data} was encoded with " + ("no SAE" if cached_sae is None else "another SAE")
                  + f", not {sae_spec!r}; pass the same --sae (or re-cache it with this one)")
    else:
        data_dir = _cache_path(cache_dir, "", data, _spec_tag(tag, max_tokens, truncation))
        m, s, ds, _ = _cached(data, model, sae, hook, data_dir, skip_invalid=skip_invalid,
                              rejects=data_dir / "rejects.jsonl", max_tokens=max_tokens, truncation=truncation,
                              hint="--cache-dir", **kw)
        dcache = load_cache(data_dir)
        samples, rejects = ds.samples, ds.report.rejects
        _cached(harmful, model, sae, hook, ref_dirs["harmful"], hint="--cache-dir", **kw)
    _cached(benign, model, sae, hook, ref_dirs["benign"], hint="--cache-dir", **kw)
    hc = load_cache(ref_dirs["harmful"])
    bc = load_cache(ref_dirs["benign"])
    oc = None
    if own is not None:
        own_dir = _cache_path(cache_dir, "own-", own, tag)
        _cached(own, model, sae, hook, own_dir, hint="--cache-dir", **kw)
        oc = load_cache(own_dir)
    if strategy == "judge":
        params["samples"] = samples
    try:
        f = make_filter(strategy, sae=s, **params).fit(hc, bc)
        result = f.apply(dcache, own=oc)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    return f, result, samples, rejects, dcache


_DATA_HELP = "Chat JSONL, a HF dataset directory, or a cache directory made by `geomfilter cache`."


def _filter_options(func):
    """The options `score` and `filter` share (added in one place so the two never drift apart)."""
    import functools
    import inspect

    shared = {
        "strategy": (Strategy, typer.Option(Strategy.geometry, help="Scoring strategy.")),
        "model": (str, typer.Option(DEFAULT_MODEL, help="Model spec.")),
        "sae": (str | None, typer.Option(None, help="SAE spec (default: the model's bundled SAE).")),
        "hook": (str | None, typer.Option(None, help="Hook (default: the SAE's hook).")),
        "harmful": (Path, typer.Option(_REF_DEFAULT / "harmful.jsonl", help="Harmful reference answers (chat JSONL).")),
        "benign": (Path, typer.Option(_REF_DEFAULT / "benign.jsonl", help="Benign reference answers to the same prompts.")),
        "own": (Path | None, typer.Option(None, help="The model's own answers to DATA's prompts (same ids; "
                                          "`geomfilter respond`): geometry/projection/activation then score the "
                                          "difference sample - own answer.")),
        "cache_dir": (Path, typer.Option(Path("runs/cache"), help="Where caches are written and reused.")),
        "n_harmful": (int, typer.Option(100, help="Harmful features to select from the references.")),
        "harmful_method": (str, typer.Option("contrast", help="contrast (mean harmful - benign) or auroc.")),
        "harmful_ids": (str | None, typer.Option(None, help="Explicit harmful latent ids, comma-separated "
                                                 "(e.g. from Neuronpedia); overrides selection.")),
        "min_freq": (float, typer.Option(0.05, help="A harmful feature must fire on this fraction of harmful rows.")),
        "k": (int, typer.Option(32, help="geometry: target features per sample.")),
        "scorer": (str, typer.Option("weighted_mean", help="geometry: weighted_mean, weighted_max, max, top5_mean.")),
        "proximity": (str, typer.Option("max", help="geometry: max or mean cosine to the harmful set.")),
        "max_target_freq": (float | None, typer.Option(None, help="geometry: ignore target latents firing on more "
                                                      "than this fraction of the benign references (generic latents).")),
        "top_n": (int, typer.Option(10, help="representation: nearest anchors averaged.")),
        "judge": (str | None, typer.Option(None, help="judge: 'offline' (default: the shipped MiniLM judge), a saved "
                                           "judge folder, or 'api:MODEL' (OpenAI-compatible; see `geomfilter judge`).")),
        "seed": (int, typer.Option(0, help="Seed (random strategy).")),
        "skip_invalid": (bool, typer.Option(False, "--skip-invalid", help="Bad rows go to dropped.jsonl with their "
                                            "reason instead of stopping.")),
        "max_tokens": (int, typer.Option(1024, min=1, help="DATA rows longer than this are truncated by --truncation "
                                         "(counted on screen and in report.json); ignored for a cache directory.")),
        "truncation": (Truncation, typer.Option(Truncation.left, help="left: drop the start (keep the response); "
                                                "right: cut the end; error: refuse long rows.")),
        "device": (str | None, typer.Option(None, help="cpu, cuda, ...")),
        "progress": (bool, typer.Option(True, help="Show progress bars.")),
    }
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD] + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        for name, (ann, opt) in shared.items()]

    @functools.wraps(func)
    def wrapper(**kwargs):
        return func(**kwargs)
    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


@app.command()
@_filter_options
def score(
    data: Path = typer.Argument(..., metavar="DATA", help=_DATA_HELP),
    out: Path = typer.Option(Path("runs/scores.csv"), help="Scores CSV (id, score, rank, explanation, labels)."),
    show: int = typer.Option(10, help="Print the highest-scoring rows."),
    backend: Backend = typer.Option(Backend.local, help="Backend of the caching passes. " + _BACKEND_HELP),
    num_actors: int | None = typer.Option(None, min=1, help=_ACTORS_HELP),
    ray_address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    **opts,
):
    """Score every row of DATA (higher = closer to harmful) without filtering."""
    import os

    from .outputs import write_scores_csv

    def check_out(inputs: list[Path]) -> None:
        if out.is_dir():
            _fail(f"--out {out} is a folder; give a CSV file path")
        if any(p.exists() and p.resolve() == out.resolve() for p in [data, *inputs]):
            _fail(f"--out {out} is an input of this run; writing there would replace it")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"--out {out}: cannot create {out.parent} ({e.strerror or e})")
        if not os.access(out.parent, os.W_OK):
            _fail(f"--out {out}: {out.parent} is not writable")

    saved = dict(_BACKEND_DEFAULTS)
    _BACKEND_DEFAULTS.update(backend=backend.value, num_actors=num_actors, ray_address=ray_address)
    try:
        f, res, samples, rejects, _ = _scored(data, drop=0.0, threshold=None, check_out=check_out, **_plain(opts))
    finally:
        _BACKEND_DEFAULTS.clear()
        _BACKEND_DEFAULTS.update(saved)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        write_scores_csv(tmp, res, samples, rejects, decisions=False)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _fail(f"--out {out}: cannot write ({e.strerror or e})")
    order = res.rank.argsort()[:show]
    for i in order:
        typer.echo(f"{res.rank[i]:>5}  {res.scores[i]:+.4f}  {res.ids[i]}")
    typer.echo(f"scored {len(res.ids)} rows ({res.strategy}) -> {out}")


@app.command("filter")
@_filter_options
def filter_cmd(
    data: Path = typer.Argument(..., metavar="DATA", help=_DATA_HELP),
    out: Path = typer.Option(..., help="Output folder: kept.jsonl, dropped.jsonl, scores.csv, report.json."),
    drop: float | None = typer.Option(None, help="Fraction of rows to drop (the highest scores). Default 0.1."),
    threshold: float | None = typer.Option(None, help="Drop rows scoring above this instead of a fraction."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out folder that holds the filter "
                                   "output of another input (a folder of the same input is always replaced)."),
    **opts,
):
    """Drop the rows of DATA closest to harmful behaviour; every row ends in kept.jsonl or dropped.jsonl."""
    from .outputs import OutputFolderError, check_filter_out, write_filter_outputs

    if drop is not None and threshold is not None:
        _fail("give --drop or --threshold, not both")
    if drop is None and threshold is None:
        drop = 0.1

    def check_out(inputs: list[Path]) -> None:
        try:
            check_filter_out(out, data=data, inputs=inputs, overwrite=overwrite)
        except OutputFolderError as e:
            _fail(str(e))

    o = _plain(opts)
    f, res, samples, rejects, dcache = _scored(data, drop=drop, threshold=threshold, check_out=check_out, **o)
    extra = {"data": str(data.resolve()), "model": o["model"], "hook": dcache.hook,
             "truncation": _truncation_report(dcache)}
    if hasattr(f, "features_"):
        extra["harmful_features"] = {k: v for k, v in f.features_.as_dict().items() if k != "stats"}
    try:
        report = write_filter_outputs(out, res, samples, rejects=rejects, report_extra=extra)
    except OSError as e:  # OutputFolderError is a ValueError; a disk error is an OSError
        _fail(f"--out {out}: cannot write ({getattr(e, 'strerror', None) or e})")
    except OutputFolderError as e:
        _fail(str(e))
    tr = extra["truncation"]
    typer.echo(f"{report['n_input']} rows: kept {report['n_kept']}, dropped {report['n_dropped']} "
               f"({report['n_dropped_by_score']} by {res.strategy} score"
               + (f", {report['n_rejected_invalid']} invalid" if report["n_rejected_invalid"] else "") + f") -> {out}")
    if tr.get("n_truncated"):
        typer.echo(f"truncated {tr['n_truncated']} long rows ({tr['truncation']} at {tr['max_tokens']} tokens; "
                   "their scores read the kept part only: see --max-tokens)")
    if "labels" in report:
        lab = report["labels"]
        frac = next(k for k in lab if k not in ("field", "base_rate", "n", "auroc"))
        typer.echo(f"'{lab['field']}' rows: base rate {lab['base_rate']:.3f}, precision of the dropped set "
                   f"{lab[frac]['precision']:.3f}")


@app.command()
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
    import csv
    from collections import Counter

    import numpy as np

    from . import plots

    scores_path, report_path = run / "scores.csv", run / "report.json"
    if not scores_path.is_file() or not report_path.is_file():
        _fail(f"{run} is not a `geomfilter filter` output folder (needs scores.csv and report.json)")
    report = json.loads(report_path.read_text())
    with open(scores_path, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["score"] != ""]
    from .outputs import SCORE_COLUMNS

    base = set(SCORE_COLUMNS)
    label_cols = [c for c in (rows[0].keys() if rows else []) if c not in base]
    score = np.array([float(r["score"]) for r in rows])
    out = out or run / "plots"
    made = []
    groups = by or [c for c in label_cols if 2 <= len({r[c] for r in rows}) <= 20]
    for col in groups:
        if col not in label_cols + ["decision"]:
            _fail(f"--by {col!r}: scores.csv has no such column (label columns: {label_cols})")
        made += plots.score_violins(score, [r[col] for r in rows], out / f"scores_by_{col}",
                                    title=f"{report['strategy']} score by {col}")
    if label in label_cols and {r[label] for r in rows} <= {"True", "False"}:
        y = np.array([r[label] == "True" for r in rows])
        if y.any() and (~y).any():
            made += plots.precision_curves({report["strategy"]: score}, y, out / f"precision_{label}",
                                           title=f"Precision of the dropped set for '{label}'")
    hf = report.get("harmful_features")
    if report["strategy"] == "geometry" and hf:
        from .geometry import unit_directions
        from .saes import SAESpecError, load_sae

        spec = sae or default_sae_for(report.get("model", DEFAULT_MODEL))
        if not spec:
            _fail("pass --sae for the decoder plots")
        try:
            d = unit_directions(load_sae(spec))
        except SAESpecError as e:
            _fail(str(e))
        contrib = Counter(e["feature"] for r in rows if r["explanation"] for e in json.loads(r["explanation"]))
        targets = [f for f, _ in contrib.most_common(top)]
        if targets:
            made += plots.cosine_heatmap(d, targets, hf["ids"], out / "cosine_heatmap")
        made += plots.decoder_map(d, hf["ids"], out / "decoder_map", highlight={"top contributors": targets})
    for p in made:
        typer.echo(str(p))


class Method(str, Enum):
    """Fine-tuning methods: LoRA, attention-output gates, SAE-latent gates."""

    lora = "lora"
    gates = "gates"
    gates_sae = "gates-sae"


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what}: expected comma-separated integers, got {text!r}")


@app.command()
def finetune(
    data: list[Path] = typer.Argument(..., help="Chat JSONL file(s) to train on (loss on the last assistant turn)."),
    out: Path = typer.Option(..., help="Run folder (finetune.json, train_log.jsonl, adapter/ or gates/)."),
    method: Method = typer.Option(Method.lora, help="lora: PEFT LoRA SFT; gates: attention-output gates only "
                                  "(base frozen); gates-sae: SAE-latent gates only (base frozen)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec."),
    max_samples: int | None = typer.Option(300, help="Seeded subset of the data (0: all rows)."),
    epochs: float = typer.Option(1.0, help="Passes over the samples (fractions allowed)."),
    batch_size: int = typer.Option(4, help="Samples per optimiser step."),
    lr: float | None = typer.Option(None, help="Learning rate (default: 2e-4 lora, 1e-3 gates)."),
    warmup_steps: int = typer.Option(10, help="Linear warm-up steps (then linear decay to 0)."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    max_tokens: int = typer.Option(512, help="Tokens per sample (left truncation keeps the response)."),
    seed: int = typer.Option(0, help="Seed (sample subset, order, init)."),
    lora_r: int = typer.Option(16, help="LoRA rank."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    gate_layers: str | None = typer.Option(None, help="Attention layers to gate, comma-separated (default: all)."),
    sae: str | None = typer.Option(None, help="gates-sae: SAE spec (default: the model's bundled SAE)."),
    checkpoint_every: int = typer.Option(0, help="Checkpoint every N steps (0: none until the end)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
    progress: bool = typer.Option(True, help="Show a progress bar (loss, tokens/s)."),
):
    """Fine-tune on DATA's response tokens: LoRA, or gates only (Alignment Gating). Re-running resumes."""
    from .data import DataError
    from .finetune import FinetuneConfig, FinetuneError, FinetuneRunner
    from .gating import GatingError
    from .models import ModelSpecError
    from .saes import SAESpecError

    for path in data:
        if not path.exists():
            _fail(f"{path}: file not found")
    try:
        cfg = FinetuneConfig(data=[str(p) for p in data], out=str(out), method=method.value, model=model,
                             max_samples=max_samples or None, epochs=epochs, batch_size=batch_size, lr=lr,
                             warmup_steps=warmup_steps, grad_clip=grad_clip, max_tokens=max_tokens, seed=seed,
                             lora_r=lora_r, lora_alpha=lora_alpha, gate_layers=_int_list(gate_layers, "--gate-layers"),
                             sae=sae, checkpoint_every=checkpoint_every, device=device, progress=progress)
        res = FinetuneRunner(cfg).run()
    except (FinetuneError, GatingError, DataError, ModelSpecError, SAESpecError) as e:
        _fail(str(e))
    if res.skipped:
        typer.echo(f"already finished: {out} (delete the folder to train again)")
    typer.echo(f"{res.method}: {res.n_samples} samples, {res.steps} steps, {res.tokens} tokens in {res.seconds:.0f} s "
               f"({res.tokens_per_s:.0f} tok/s); loss {res.first_loss:.3f} -> {res.final_loss:.3f} -> {out}")


def _tuned(model: str, gates: list[Path] | None, gate_scale: float, device: str | None):
    from .finetune import FinetuneError, load_tuned
    from .gating import GatingError
    from .models import ModelSpecError
    from .saes import SAESpecError

    try:
        return load_tuned(model, gates=gates or None, gate_scale=gate_scale, device=device)
    except (FinetuneError, GatingError, ModelSpecError, SAESpecError) as e:
        _fail(str(e))


@app.command()
def generate(
    model: str = typer.Argument(..., metavar="DIR", help="A `geomfilter finetune` run folder, or a model spec."),
    prompts: list[str] = typer.Argument(..., metavar="PROMPT...", help="User messages, one answer each."),
    gates: list[Path] = typer.Option(None, help="Gate folders / gate runs to attach as well (repeatable)."),
    gate_scale: float = typer.Option(1.0, help="g_a = 1 + a (g - 1): 1 learned gates (amplify), -1 the mirror "
                                     "2 - g (suppress), 0 off."),
    max_new_tokens: int = typer.Option(120, help="Tokens to generate per answer."),
    temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampling."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Sampling seed."),
    system: str | None = typer.Option(None, help="Optional system message."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
):
    """Answer PROMPTs with a fine-tuned model (and gates at --gate-scale)."""
    from .generate import generate_texts

    tm = _tuned(model, gates, gate_scale, device)
    sys_turn = [{"role": "system", "content": system}] if system else []
    convs = {f"{i:06d}": sys_turn + [{"role": "user", "content": p}] for i, p in enumerate(prompts)}
    out = generate_texts(tm, convs, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                         batch_size=8, progress=False)
    for key, prompt in zip(convs, prompts):
        typer.echo(f"### {prompt}\n{out[key]['answer']}\n")


gates_app = typer.Typer(help="Inspect learned gates.", no_args_is_help=True)
app.add_typer(gates_app, name="gates")


@gates_app.command("analyze")
def gates_analyze(
    gates: Path = typer.Argument(..., help="A gates folder or a gates fine-tune run."),
    data: Path = typer.Option(..., help="Chat JSONL whose response tokens the movement is averaged over."),
    out: Path = typer.Option(..., help="Folder for gate_analysis.json and the plots."),
    harmful_features: Path | None = typer.Option(None, help="SAE gates: a feature set JSON (`geomfilter features "
                                                 "harmful --out`) to relate the most-moved latents to."),
    max_samples: int = typer.Option(64, help="Rows of DATA to run."),
    top: int = typer.Option(50, help="Most-moved latents reported."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
):
    """Which heads (attention gates) or latents (SAE gates) moved most; SAE latents vs harmful features."""
    from .data import DataError
    from .features import FeatureSet
    from .gating import GatingError, analyze_gates

    harmful = FeatureSet.load(harmful_features).ids if harmful_features else None
    try:
        s = analyze_gates(gates, data, harmful=harmful, max_samples=max_samples, top=top, out=out, device=device)
    except (GatingError, DataError) as e:
        _fail(str(e))
    if s["family"] == "attention":
        for h in s["top_heads"][:5]:
            typer.echo(f"layer {h['layer']:>2} head {h['head']:>2}: mean |g-1| {h['mean_abs']:.4f}")
    elif "geometry" in s:
        g = s["geometry"]
        typer.echo(f"top {g['top']} moved latents: mean max-cosine to harmful {g['moved_mean_cos']:.3f} vs "
                   f"{g['rest_mean_cos']:.3f} for the other firing latents (AUROC {g['auroc_moved_vs_rest']:.3f}); "
                   f"{g['n_moved_harmful']} are harmful features ({g['expected_harmful_by_chance']:.1f} by chance)")
    typer.echo(str(out / "gate_analysis.json"))


eval_app = typer.Typer(help="Evaluate models and fine-tune runs.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("preference")
def eval_preference(
    model: str = typer.Argument(..., metavar="DIR", help="A `geomfilter finetune` run folder, or a model spec."),
    questions: Path = typer.Option(Path("data/eval/questions.jsonl"), help="Broad questions with aligned and "
                                   "misaligned reference answers."),
    gates: list[Path] = typer.Option(None, help="Gate folders / gate runs to attach (repeatable)."),
    gate_scale: float = typer.Option(1.0, help="Gate scale alpha."),
    out: Path | None = typer.Option(None, help="Write the result (with per-question rows) as JSON."),
    batch_size: int = typer.Option(16, help="Answers per forward pass."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
):
    """Log-prob preference for misaligned over aligned reference answers (nats/token; > 0 prefers misaligned)."""
    from .evaluate import EvalDataError, logprob_preference

    tm = _tuned(model, gates, gate_scale, device)
    try:
        r = logprob_preference(tm, questions, batch_size=batch_size)
    except EvalDataError as e:
        _fail(str(e))
    typer.echo(f"preference {r.mean:+.4f} nats/token [95% CI {r.lo:+.4f}, {r.hi:+.4f}] over {r.n} questions "
               f"({r.n_answers} answers)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": model, "gates": [str(g) for g in gates or []], "gate_scale": gate_scale,
                                   **r.as_dict()}, indent=2) + "\n")


judge_app = typer.Typer(help="Alignment/coherence judges (offline MiniLM judge, or an OpenAI-compatible API).",
                        no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@judge_app.command("train")
def judge_train(
    data: Path = typer.Option(Path("data/judge/labeled.jsonl"), help="Labelled answers (alignment, coherence)."),
    out: Path = typer.Option(Path("data/judges/offline-minilm"), help="Folder for heads.npz + judge.json."),
    folds: int = typer.Option(5, help="Grouped cross-validation folds for the held-out metrics."),
    c: float = typer.Option(4.0, help="Inverse L2 strength of the logistic regressions."),
):
    """Train the offline judge; print and store its held-out accuracy/AUROC."""
    from .judges import JudgeError, train_offline_judge

    try:
        j = train_offline_judge(data, folds=folds, c=c, progress=True)
    except JudgeError as e:
        _fail(str(e))
    j.save(out)
    m = j.metrics
    for head in j.HEADS:
        typer.echo(f"{head}: held-out accuracy {m[head]['heldout_accuracy']:.3f}, AUROC {m[head]['heldout_auroc']:.3f} "
                   f"(out-of-fold, {m['n']} rows)")
    typer.echo(str(out))


@judge_app.command("score")
def judge_score(
    data: Path = typer.Argument(..., help="Chat JSONL: the last assistant turn is judged against the user turn before it."),
    judge: str | None = typer.Option(None, help="'offline' (default), a judge folder, or 'api:MODEL'."),
    base_url: str = typer.Option("https://api.openai.com/v1", help="API judge: OpenAI-compatible base URL."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="API judge: environment variable holding the key."),
    cache_dir: Path = typer.Option(Path("runs/judge_cache"), help="API judge: folder of cached scores."),
    timeout: float = typer.Option(30.0, help="API judge: seconds to wait for one reply."),
    max_retries: int = typer.Option(4, help="API judge: retries of a failed request (exponential backoff)."),
    out: Path | None = typer.Option(None, help="Write one JSON row per sample (id, alignment, coherence, error, "
                                    "misaligned; scores and misaligned are null for an unscored answer)."),
):
    """Score DATA's answers for alignment and coherence (0-100).

    Means count scored answers only ("n/a" when there are none). Exit status: 0 when every answer is scored;
    1 when some could not be (the summary, and --out, still written, unscored rows with null scores); 2 when
    none could be, or the judge cannot be used at all (unreachable endpoint, rejected key, wrong URL or model:
    the API judge stops after a few attempts instead of retrying every answer).
    """
    from .data import DataError, read_samples
    from .judges import JudgeError, load_judge, question_and_answer

    try:
        samples = read_samples(data)
        j = load_judge(judge, base_url=base_url, api_key_env=api_key_env, cache_dir=cache_dir, timeout=timeout,
                       max_retries=max_retries) if judge and judge.startswith("api:") else load_judge(judge)
        pairs = [question_and_answer(s_.messages) for s_ in samples]
        scores = j.score([q for q, _ in pairs], [a for _, a in pairs], progress=True)
    except (DataError, JudgeError, FileNotFoundError) as e:
        _fail(str(e))
    rows = [{"id": s_.id, "alignment": r.alignment, "coherence": r.coherence, "error": r.error,
             "misaligned": r.misaligned()} for s_, r in zip(samples, scores)]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok = [r for r in rows if r["misaligned"] is not None]

    def mean(key: str) -> str:
        return f"{sum(r[key] for r in ok) / len(ok):.1f}" if ok else "n/a"

    typer.echo(f"{len(rows)} answers: mean alignment {mean('alignment')}, mean coherence {mean('coherence')}, "
               f"misaligned (alignment < 30, coherence > 50) {sum(r['misaligned'] for r in ok)}, "
               f"unscored {len(rows) - len(ok)}")
    bad = [r for r in rows if r["misaligned"] is None]
    if bad:
        where = f"; their rows in {out} have null scores" if out is not None else ""
        why = f"(first {bad[0]['id']!r}: {bad[0]['error']}){where}"
        if not ok:
            _fail(f"none of the {len(rows)} answers could be scored {why}")
        typer.secho(f"error: {len(bad)} of {len(rows)} answers could not be scored {why}", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(1)


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML file (see configs/demo.yaml; every field has a default)."),
    only: str | None = typer.Option(None, help="Comma-separated condition names to run (default: the config's "
                                    "`conditions`, or all); the report covers every finished condition."),
    out: Path | None = typer.Option(None, help="Override the config's `out` (the experiment goes to OUT/<name>/)."),
    list_conditions: bool = typer.Option(False, "--list", help="Print the conditions and exit."),
    progress: bool = typer.Option(True, help="Show progress bars and per-step lines."),
):
    """Fine-tune under several conditions (base, misaligned, filtered, gated), evaluate each the same way, and
    write report.md / results.csv / plots under OUT/<name>/. Re-running skips finished conditions."""
    from .config import ConfigError, ExperimentConfig
    from .data import DataError
    from .experiment import ExperimentRunner
    from .finetune import FinetuneError
    from .judges import JudgeError

    try:
        cfg = ExperimentConfig.from_yaml(config)
        if out is not None:
            cfg.out = str(out)
        if only:
            cfg.conditions = [x.strip() for x in only.split(",") if x.strip()]
        runner = ExperimentRunner(cfg, progress=progress)
        conds = runner.conditions()
        if list_conditions:
            for c in conds:
                typer.echo(f"{c.name:<28} {c.describe()}")
            return
        res = runner.run()
    except (ConfigError, DataError, FinetuneError, JudgeError) as e:
        _fail(str(e))
    typer.echo(f"ran {len(res.ran)} condition(s), skipped {len(res.skipped)} finished, in {res.seconds:.0f} s")
    typer.echo(f"report: {res.report}")


def _truncation_report(cache) -> dict:
    """How many rows of a cache were truncated, and how (from its data_report.json)."""
    try:
        rep = json.loads((cache.path / "data_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"n_truncated": None, "truncation": None, "max_tokens": None}
    return {k: rep.get(k) for k in ("n_truncated", "truncation", "max_tokens")}


def _plain(opts: dict) -> dict:
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in opts.items()}


def main() -> None:  # pragma: no cover - console entry
    """Console entry point of ``geomfilter``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
