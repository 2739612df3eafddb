"""The ``geomfilter`` command line (typer): ``app`` and the console entry point ``main``.

One module per command group; this one lays the commands out in the order ``geomfilter --help`` lists them.
Every group is a :class:`~geomfilter.cli._common.GeomfilterGroup`: a ``GeomfilterError`` ends a command with
``error: <message>`` on stderr and exit status 2.
"""
from __future__ import annotations

from . import data_cmds, eval_cmds, features_cmds, filter_cmds, generate_cmds, train_cmds
from ._common import command_group

app = command_group(
    "geomfilter: cache SAE activations of chat data, measure decoder-cosine proximity to "
    "harmful features, and filter fine-tuning sets.",
    add_completion=False,
)

for _name, _command in (
    ("cache", data_cmds.cache),
    ("hooks", data_cmds.hooks),
    ("info", data_cmds.info),
    ("validate", data_cmds.validate),
    ("respond", generate_cmds.respond),
    ("train-sae", train_cmds.train_sae_cmd),
    ("score", filter_cmds.score),
    ("filter", filter_cmds.filter_cmd),
    ("plot", features_cmds.plot),
    ("finetune", train_cmds.finetune),
    ("generate", generate_cmds.generate),
    ("experiment", eval_cmds.experiment),
):
    app.command(_name)(_command)
del _name, _command
app.add_typer(features_cmds.features_app, name="features")
app.add_typer(train_cmds.gates_app, name="gates")
app.add_typer(eval_cmds.eval_app, name="eval")
app.add_typer(eval_cmds.judge_app, name="judge")


def main() -> None:  # pragma: no cover - console entry
    """Console entry point of ``geomfilter``."""
    app(prog_name="geomfilter")


__all__ = ["app", "main"]
