"""`geomfilter score` and `geomfilter filter`: thin wrappers over :mod:`geomfilter.pipeline`.

The options both commands share are declared once (:func:`_filter_options`); their defaults are the
strategies' constructor defaults and :class:`~geomfilter.settings.CacheConfig`'s. Everything else —
caching, checking, fitting, scoring, writing — happens in :class:`~geomfilter.pipeline.FilterRunner`.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import typer

from ..features import FeatureSet
from ..filtering import STRATEGIES
from ..filtering.ensemble import MEMBERS as ENSEMBLE_MEMBERS
from ..pipeline import REFERENCE_DIR, Backend, FilterConfig, FilterRun, FilterRunner
from ..settings import DEFAULT_MODEL, CacheConfig
from ._common import (
    _ACTORS_HELP,
    _ADDRESS_HELP,
    _BACKEND_HELP,
    Strategy,
    Truncation,
    _fail,
    _int_list,
    _plain,
)
from ._common import Backend as BackendChoice

_DATA_HELP = "Chat JSONL, a HF dataset directory, or a cache directory made by `geomfilter cache`."


def _default(strategy: str, name: str):
    """A strategy option's default: its constructor's (one source of truth)."""
    return inspect.signature(STRATEGIES[strategy].__init__).parameters[name].default


#: the options `score` and `filter` share: name -> (annotation, typer option)
_SHARED_OPTIONS = {
    "strategy": (Strategy, typer.Option(Strategy.ensemble, help="Scoring strategy (default: ensemble, chosen "
                                        "by the out-of-distribution table; see the README).")),
    "model": (str, typer.Option(DEFAULT_MODEL, help="Model spec.")),
    "sae": (str | None, typer.Option(None, help="SAE spec (default: the model's bundled SAE).")),
    "hook": (str | None, typer.Option(None, help="Hook (default: the SAE's hook).")),
    "harmful": (Path, typer.Option(REFERENCE_DIR / "harmful.jsonl", help="Harmful reference answers (chat JSONL).")),
    "benign": (Path, typer.Option(REFERENCE_DIR / "benign.jsonl", help="Benign reference answers to the same prompts.")),
    "add_harmful": (list[Path] | None, typer.Option(None, help="More harmful reference answers, joined to "
                                                    "--harmful (repeatable): e.g. flawed answers of a domain the "
                                                    "defaults miss, with their benign twins in --add-benign.")),
    "add_benign": (list[Path] | None, typer.Option(None, help="More benign reference answers, joined to --benign "
                                                   "(repeatable): the twins of --add-harmful, same pair_id.")),
    "own": (Path | None, typer.Option(None, help="The model's own answers to DATA's prompts (same ids; "
                                      "`geomfilter respond`): geometry/projection/activation then score the "
                                      "difference sample - own answer.")),
    "cache_dir": (Path, typer.Option(FilterConfig.cache_dir, help="Where caches are written and reused.")),
    "n_harmful": (int, typer.Option(_default("geometry", "n_harmful"), help="Harmful features to select from the references.")),
    "harmful_method": (str, typer.Option(_default("geometry", "harmful_method"), help="contrast (mean harmful - benign) or auroc.")),
    "harmful_ids": (str | None, typer.Option(None, help="Explicit harmful latent ids, comma-separated "
                                             "(e.g. from Neuronpedia), or @FILE: the ids of a feature set "
                                             "written by `features harmful|diff --out`; overrides selection.")),
    "min_freq": (float, typer.Option(_default("geometry", "min_freq"), help="A harmful feature must fire on this fraction of harmful rows.")),
    "k": (int, typer.Option(_default("geometry", "k"), help="geometry: target features per sample.")),
    "scorer": (str, typer.Option(_default("geometry", "scorer"), help="geometry: weighted_mean, weighted_max, max, top5_mean.")),
    "proximity": (str, typer.Option(_default("geometry", "proximity"), help="geometry: max or mean cosine to the harmful set, or span: cosine to the set's span.")),
    "max_target_freq": (float | None, typer.Option(None, help="geometry: ignore target latents firing on more "
                                                  "than this fraction of the benign references (generic latents).")),
    "agg": (str, typer.Option(_default("gradient", "agg"), help="gradient: positive (mean push up of the "
                              "harmful features) or mean (signed).")),
    "normalize": (bool | None, typer.Option(None, "--normalize/--no-normalize", help="gradient: unit update "
                                            "direction (its default); projection: cosine to the direction, "
                                            "centred on the references' midpoint (scale-robust; default off). "
                                            "Unset: the strategy's default.")),
    "top_n": (int, typer.Option(_default("representation", "top_n"), help="representation: nearest anchors averaged.")),
    "members": (str | None, typer.Option(None, help="ensemble: the strategies averaged, comma-separated "
                                         f"(default {','.join(_default('ensemble', 'members'))}; among "
                                         f"{', '.join(ENSEMBLE_MEMBERS)}).")),
    "judge": (str | None, typer.Option(None, help="judge: 'offline' (default: the shipped MiniLM judge), a saved "
                                       "judge folder, or 'api:MODEL' (OpenAI-compatible; see `geomfilter judge`).")),
    "seed": (int, typer.Option(FilterConfig.seed, help="Seed (random strategy).")),
    "skip_invalid": (bool, typer.Option(False, "--skip-invalid", help="Bad rows go to dropped.jsonl with their "
                                        "reason instead of stopping.")),
    "max_tokens": (int, typer.Option(CacheConfig.max_tokens, min=1, help="DATA rows longer than this are truncated by --truncation "
                                     "(counted on screen and in report.json); ignored for a cache directory.")),
    "truncation": (Truncation, typer.Option(Truncation(CacheConfig.truncation), help="left: drop the start (keep the response); "
                                            "right: cut the end; error: refuse long rows.")),
    "device": (str | None, typer.Option(None, help="cpu, cuda, ...")),
    "progress": (bool, typer.Option(True, help="Show progress bars.")),
}


def _filter_options(func):
    """Add the shared options to a command (in one place, so that `score` and `filter` never drift apart)."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD] + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        for name, (ann, opt) in _SHARED_OPTIONS.items()]

    @functools.wraps(func)
    def wrapper(**kwargs):
        return func(**kwargs)
    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


def _feature_ids(text: str | None) -> list[int] | None:
    """``--harmful-ids``: comma-separated ids, or ``@FILE``, a saved :class:`FeatureSet`'s ids."""
    if text is None or not text.startswith("@"):
        return _int_list(text, "--harmful-ids")
    path = Path(text[1:])
    try:
        return FeatureSet.load(path).ids
    except (OSError, ValueError, KeyError) as e:
        _fail(f"--harmful-ids {text}: cannot read a feature set from {path} ({e})")


def _warn_unused_options(strategy: str, takes: tuple[str, ...], o: dict) -> None:
    """Say on stderr which strategy options set away from their defaults ``strategy`` does not take (they are
    ignored, not an error, so that one set of options can drive several strategies)."""
    options = {n for cls in STRATEGIES.values() for n in cls.param_names()} - {"drop", "threshold", "seed"}
    unused = sorted(n for n in options - set(takes)
                    if n in _SHARED_OPTIONS and o[n] != _SHARED_OPTIONS[n][1].default)
    for name in unused:
        users = ", ".join(sorted(n for n, c in STRATEGIES.items() if name in c.param_names()))
        typer.echo(f"note: --{name.replace('_', '-')} is not an option of --strategy {strategy} and is ignored "
                   f"(it is one of: {users})", err=True)


def _config(data: Path, opts: dict, *, drop: float | None, threshold: float | None, **kw) -> FilterConfig:
    """The :class:`FilterConfig` of the shared options: the strategy gets the options its constructor takes."""
    o = _plain(opts)
    strategy = o["strategy"]
    given = {**o, "drop": drop, "threshold": threshold, "harmful_ids": _feature_ids(o["harmful_ids"]),
             "members": None if o["members"] is None else tuple(m.strip() for m in o["members"].split(",") if m.strip())}
    takes = STRATEGIES[strategy].param_names()
    _warn_unused_options(strategy, takes, o)
    params = {k: given[k] for k in takes if k in given and k != "seed"  # None: unset, the strategy's own default
              and (given[k] is not None or k in ("drop", "threshold"))}
    return FilterConfig(
        data=data, strategy=strategy, params=params, model=o["model"], sae=o["sae"], hook=o["hook"],
        harmful=o["harmful"], benign=o["benign"], add_harmful=tuple(o["add_harmful"] or ()),
        add_benign=tuple(o["add_benign"] or ()), own=o["own"], cache_dir=o["cache_dir"], seed=o["seed"],
        cache=CacheConfig(max_tokens=o["max_tokens"], truncation=o["truncation"]), skip_invalid=o["skip_invalid"],
        device=o["device"], progress=o["progress"], **kw)


def _run(cfg: FilterConfig) -> FilterRun:
    return FilterRunner(cfg, log=lambda msg: typer.echo(msg, err=True)).run()


@_filter_options
def score(
    data: Path = typer.Argument(..., metavar="DATA", help=_DATA_HELP),
    out: Path = typer.Option(Path("runs/scores.csv"), help="Scores CSV (id, score, rank, explanation, labels)."),
    show: int = typer.Option(10, help="Print the highest-scoring rows."),
    backend: BackendChoice = typer.Option(BackendChoice.local, help="Backend of the caching passes. " + _BACKEND_HELP),
    num_actors: int | None = typer.Option(None, min=1, help=_ACTORS_HELP),
    ray_address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    **opts,
):
    """Score every row of DATA (higher = closer to harmful) without filtering."""
    run = _run(_config(data, opts, drop=0.0, threshold=None, scores=out,
                       backend=Backend(backend.value, num_actors, ray_address)))
    res = run.result
    for i in res.rank.argsort()[:show]:
        typer.echo(f"{res.rank[i]:>5}  {res.scores[i]:+.4f}  {res.ids[i]}")
    typer.echo(f"scored {len(res.ids)} rows ({res.strategy}) -> {out}")


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
    if drop is not None and threshold is not None:
        _fail("give --drop or --threshold, not both")
    if drop is None and threshold is None:
        drop = 0.1
    run = _run(_config(data, opts, drop=drop, threshold=threshold, out=out, overwrite=overwrite))
    report = run.report
    tr = report["truncation"]
    typer.echo(f"{report['n_input']} rows: kept {report['n_kept']}, dropped {report['n_dropped']} "
               f"({report['n_dropped_by_score']} by {run.result.strategy} score"
               + (f", {report['n_rejected_invalid']} invalid" if report["n_rejected_invalid"] else "") + f") -> {out}")
    if tr.get("n_truncated"):
        typer.echo(f"truncated {tr['n_truncated']} long rows ({tr['truncation']} at {tr['max_tokens']} tokens; "
                   "their scores read the kept part only: see --max-tokens)")
    if "labels" in report:
        lab = report["labels"]
        frac = next(k for k in lab if k not in ("field", "base_rate", "n", "auroc"))
        typer.echo(f"'{lab['field']}' rows: base rate {lab['base_rate']:.3f}, precision of the dropped set "
                   f"{lab[frac]['precision']:.3f}")
