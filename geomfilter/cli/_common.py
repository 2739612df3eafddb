"""What every ``geomfilter`` command module shares: the error handler, the option enums and the typed
options that several commands declare alike."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from ..errors import GeomfilterError


def _fail(msg: str) -> NoReturn:
    """Print ``error: MSG`` (red) on stderr and exit with status 2: the CLI's answer to a user-fixable error."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


class GeomfilterGroup(TyperGroup):
    """A command group whose commands end on a :class:`~geomfilter.errors.GeomfilterError` with
    ``error: <message>`` on stderr and exit status 2 (any other exception is a bug and shows its traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the chosen command; a user-fixable error becomes :func:`_fail`."""
        try:
            return super().invoke(ctx)
        except GeomfilterError as e:
            _fail(str(e))


def command_group(help: str, **kw: Any) -> typer.Typer:
    """A ``typer.Typer`` whose commands go through :class:`GeomfilterGroup` (every app of the CLI is one)."""
    return typer.Typer(cls=GeomfilterGroup, help=help, no_args_is_help=True, **kw)


class Response(str, Enum):
    """Which assistant turns are the response: the last one, or all of them."""

    last = "last"
    all = "all"


class Truncation(str, Enum):
    """What to do with a conversation longer than ``--max-tokens``: cut the left, the right, or fail."""

    left = "left"
    right = "right"
    error = "error"


class Backend(str, Enum):
    """Where the work runs: in this process, or on a Ray cluster."""

    local = "local"
    ray = "ray"


class Strategy(str, Enum):
    """The filtering strategies of :data:`geomfilter.filtering.STRATEGIES`."""

    geometry = "geometry"
    random = "random"
    projection = "projection"
    representation = "representation"
    activation = "activation"
    judge = "judge"
    gradient = "gradient"
    ensemble = "ensemble"


class Method(str, Enum):
    """Fine-tuning methods: LoRA, attention-output gates, SAE-latent gates."""

    lora = "lora"
    gates = "gates"
    gates_sae = "gates-sae"


_BACKEND_HELP = ("local: this process; ray: Ray Data actors, one model + SAE each (pip install "
                 "'geomfilter\\[distributed]'); the same shards and manifest either way, resumable alike.")
_ACTORS_HELP = "ray: number of actors (default: the cluster's GPUs, one each, if it has any, else its CPUs)."
_ADDRESS_HELP = ("ray: address of a running Ray cluster, e.g. 'auto' (default: $RAY_ADDRESS if set, else a local "
                 "Ray started for this run).")

# Options several commands declare alike (the default goes in the signature: ``model: ModelOpt = DEFAULT_MODEL``).
ModelOpt = Annotated[str, typer.Option(help="Model spec.")]
SaeOpt = Annotated[str | None, typer.Option(help="SAE spec (default: the model's bundled SAE).")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, ...")]
DeviceAutoOpt = Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]
ProgressBarsOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
CacheDirOpt = Annotated[Path, typer.Option(help="Where caches are written and reused.")]


def _int_list(text: str | None, what: str) -> list[int] | None:
    """``"1,2, 3"`` -> ``[1, 2, 3]`` (``None`` stays ``None``); anything else fails naming the option ``what``."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what}: expected comma-separated integers, got {text!r}")


def _str_list(text: str, what: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty list fails naming the option ``what``."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        _fail(f"{what}: expected comma-separated names, got {text!r}")
    return items


def _plain(opts: dict) -> dict:
    """``opts`` with every enum option replaced by its value."""
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in opts.items()}
