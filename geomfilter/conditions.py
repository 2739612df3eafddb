"""The conditions of an experiment, and the data they are trained and measured on.

:func:`plan_conditions` turns an :class:`~geomfilter.config.ExperimentConfig` into
:class:`Condition` objects, in report order:

* ``base`` and ``misaligned`` (LoRA on the unfiltered mixture);
* ``<strategy>-<fraction>`` for every filtering strategy and removal fraction; with ``filtering.random_draws``
  k > 1, random removal also as ``random-<fraction>-draw1`` ... ``-draw<k-1>`` (other random seeds, the same
  fine-tune: :func:`draw_seed`);
* ``without-<domain>[-<n>]`` for every ``ablations`` entry: the same fine-tune on the mixture without (n of)
  its inducing rows of that domain (``data/without-<domain>[-<n>].jsonl``);
* ``misaligned+realign-N`` for every ``realign.sizes`` N: the misaligned model fine-tuned further
  (LoRA on its merged weights) on the first N of a seeded order of benign rows (``realign.data``);
* gated conditions: gates learned on one narrow domain (base model frozen) attached
  to a condition's model at a scale ``alpha``. Without ``gates.attach`` these are the
  standard two, ``misaligned+mirror-gates`` (``gates.mirror_scale``) and
  ``base+amplify-gates`` (``gates.amplify_scale``); with it, every entry gives
  ``<model>+<family>@<alpha>`` per scale (e.g. ``misaligned+gates@-0.5``,
  ``base+sae-gates@+1``), for the attention gates (``gates``) or the SAE-latent gates
  (``gates-sae``).

:func:`prepare_data` writes what the conditions train on under ``<root>/data/``: the
(seeded subset of the) mixture and the reference sets, or -- with ``data.pairs`` --
the split of sycophantic/corrective pairs by ``pair_id``: the training pairs'
sycophantic rows are the mixture (``data/pairs/train-<domain>.jsonl`` per domain,
which the gates can learn on with ``gates.domain``), the held-out pairs measure the
``sycophancy_preference``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, ExperimentConfig, PairsConfig
from .files import atomic_write_text
from .samples import DataError, jsonl_objects

# gate method -> its name in condition names / in descriptions
GATE_FAMILIES = {"gates": "gates", "gates-sae": "sae-gates", "ablate-harmful": "ablate-harmful"}
GATE_LABELS = {"gates": "gates", "gates-sae": "SAE gates",
               "ablate-harmful": "harmful-feature ablation (1) / steering (> 1)"}
PAIR_SIDES = ("sycophantic", "corrective")


@dataclass
class Condition:
    """One condition of an experiment: what model it evaluates and how that model is made."""

    name: str
    kind: str  # base | finetune | realign | gated
    strategy: str | None = None  # filtered fine-tunes
    fraction: float | None = None
    model_from: str | None = None  # gated: the condition whose model the gates attach to
    gate_scale: float | None = None
    gate_method: str | None = None  # gated: gates (attention) | gates-sae
    realign_n: int | None = None  # realign: benign rows the misaligned model is fine-tuned on
    ablate_domain: str | None = None  # ablation: the domain whose inducing rows are left out of the mixture
    ablate_n: int | None = None  # ablation: how many of them (None: all)
    draw: int = 0  # random removal: which draw (0: the filter seeded by the experiment's seed; see draw_seed)
    compare_with: tuple[str, ...] = ()  # conditions the report also compares this one against (this - that)
    about: str | None = None  # the description, where the kind's standard one does not fit

    def describe(self) -> str:
        """One line for the report."""
        if self.about is not None:
            return self.about
        if self.kind == "base":
            return "the model as it is"
        if self.ablate_domain is not None:
            return (f"LoRA on the mixture without {'all' if self.ablate_n is None else self.ablate_n} of its "
                    f"inducing {self.ablate_domain} rows")
        if self.kind == "finetune" and self.strategy is None:
            return "LoRA on the unfiltered mixture"
        if self.kind == "finetune":
            draw = f" (draw {self.draw})" if self.draw else ""
            return f"LoRA after {self.strategy}{draw} removed {self.fraction:.0%} of the mixture"
        if self.kind == "realign":
            return f"{self.model_from} + LoRA on {self.realign_n} benign rows (re-alignment)"
        return f"{self.model_from} + {GATE_LABELS[self.gate_method or 'gates']} at alpha = {self.gate_scale:+g}"


def condition_name(strategy: str, fraction: float, draw: int = 0) -> str:
    """``geometry-0.50``: the name of a filtered condition; ``random-0.50-draw2``: a further draw of random removal."""
    return f"{strategy}-{fraction:.2f}" + (f"-draw{draw}" if draw else "")


def draw_seed(seed: int, draw: int) -> int:
    """The random filter's seed for draw ``draw`` of an experiment run at ``seed``: ``seed`` itself for draw 0 (the
    one random condition of a config without draws), else a seed derived from both (no two pairs share one)."""
    return seed if draw == 0 else int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def realign_name(n: int) -> str:
    """``misaligned+realign-120``: the name of a re-alignment condition."""
    return f"misaligned+realign-{n}"


def ablation_name(domain: str, n: int | None) -> str:
    """``without-finance`` (all its inducing rows left out), ``without-outdoors-43``: an ablation condition."""
    return f"without-{domain}" if n is None else f"without-{domain}-{n}"


def ablation_file(root: Path, name: str) -> Path:
    """The rows an ablation condition trains on."""
    return Path(root) / "data" / f"{name}.jsonl"


def data_paths(root: Path) -> dict[str, Path]:
    """Where :func:`prepare_data` writes the ``mixture`` and the ``harmful`` and ``benign`` references."""
    out = Path(root) / "data"
    return {"mixture": out / "mixture.jsonl", "harmful": out / "harmful.jsonl", "benign": out / "benign.jsonl"}


def realign_file(root: Path, n: int) -> Path:
    """The benign rows a re-alignment condition trains on."""
    return Path(root) / "data" / f"realign-{n}.jsonl"


def gated_name(model: str, method: str, scale: float) -> str:
    """``misaligned+gates@-0.5``: the name of a gated condition of ``gates.attach``."""
    return f"{model}+{GATE_FAMILIES[method]}@{scale:+g}"


def plan_conditions(cfg: ExperimentConfig) -> list[Condition]:
    """Every condition of the config in report order, ignoring the ``conditions`` selection."""
    domains = cfg.data.pairs.domains
    about = f"LoRA on the sycophantic rows of the training pairs ({', '.join(domains)})" if domains else None
    conds = [Condition("base", "base"), Condition("misaligned", "finetune", about=about)]
    for frac in cfg.filtering.fractions:
        for s in cfg.filtering.strategies:
            for draw in range(cfg.filtering.random_draws if s == "random" else 1):
                conds.append(Condition(condition_name(s, frac, draw), "finetune", strategy=s, fraction=frac,
                                       draw=draw))
    ablations: list[str] = []
    for a in cfg.ablations:  # each also compared with the unfiltered fine-tune and the ablations before it
        name = ablation_name(a.domain, a.n)
        conds.append(Condition(name, "finetune", ablate_domain=a.domain, ablate_n=a.n,
                               compare_with=("misaligned", *ablations)))
        ablations.append(name)
    for n in cfg.realign.sizes:
        conds.append(Condition(realign_name(n), "realign", model_from="misaligned", realign_n=n,
                               compare_with=("base", "misaligned")))
    if cfg.gates.enabled:
        conds += _gated_conditions(cfg, [c.name for c in conds])
    return conds


def _gated_conditions(cfg: ExperimentConfig, models: list[str]) -> list[Condition]:
    if cfg.gates.attach is None:
        return [Condition("misaligned+mirror-gates", "gated", model_from="misaligned",
                          gate_scale=cfg.gates.mirror_scale, gate_method="gates"),
                Condition("base+amplify-gates", "gated", model_from="base", gate_scale=cfg.gates.amplify_scale,
                          gate_method="gates")]
    out: list[Condition] = []
    for a in cfg.gates.attach:
        if a.model not in models:
            raise ConfigError(f"{cfg.source}: field 'gates.attach': unknown model {a.model!r}; gates attach to "
                              f"{', '.join(models)}")
        refs = tuple(r for r in ("base", "misaligned") if r != a.model)
        for s in a.scales:
            out.append(Condition(gated_name(a.model, a.method, s), "gated", model_from=a.model, gate_scale=s,
                                 gate_method=a.method, compare_with=refs))
    names = [c.name for c in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"{cfg.source}: field 'gates.attach': condition {dup!r} is listed twice")
    return out


def select_conditions(cfg: ExperimentConfig, conds: list[Condition]) -> list[Condition]:
    """The conditions to run: all of them, or those ``cfg.conditions`` names (unknown names are an error)."""
    if cfg.conditions is None:
        return conds
    names = {c.name for c in conds}
    unknown = [n for n in cfg.conditions if n not in names]
    if unknown:
        raise ConfigError(f"{cfg.source}: field 'conditions': unknown condition {unknown[0]!r}; "
                          f"this config has {', '.join(c.name for c in conds)}")
    return [c for c in conds if c.name in cfg.conditions]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a text file (JSONL rows kept as they are)."""
    return [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (temp file + rename): a killed run never leaves it cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` (one per line) atomically."""
    write_text(path, "".join(x + "\n" for x in lines))


def pairs_dir(root: Path) -> Path:
    """Where the pair split of an experiment is written."""
    return Path(root) / "data" / "pairs"


def pairs_train_file(root: Path, domain: str) -> Path:
    """The sycophantic rows of one domain's training pairs."""
    return pairs_dir(root) / f"train-{domain}.jsonl"


def heldout_pair_files(root: Path) -> tuple[Path, Path]:
    """The held-out pairs of every domain: the sycophantic rows and the corrective rows."""
    return pairs_dir(root) / "heldout-sycophantic.jsonl", pairs_dir(root) / "heldout-corrective.jsonl"


def _pair_rows(path: Path) -> list[tuple[str, str]]:
    """``(pair_id, row as a JSON line)`` of every row of a pair file."""
    out = []
    for n, row in jsonl_objects(path, ConfigError):
        if row.get("pair_id") is None:
            raise DataError(str(path), n, "pair_id", "missing (data.pairs splits the rows by it)")
        out.append((str(row["pair_id"]), json.dumps(row, ensure_ascii=False)))
    return out


def split_pairs(pairs: PairsConfig, seed: int, root: Path) -> dict[str, dict]:
    """Split each domain's pairs by ``pair_id`` (seeded per domain): ``pairs.holdout`` pairs are held out, the
    rest train. Writes the training and held-out files (:func:`pairs_train_file`, :func:`heldout_pair_files`)
    and ``split.json``; returns per domain the training rows and held-out pairs."""
    held: dict[str, list[str]] = {side: [] for side in PAIR_SIDES}
    info = {}
    for dom in pairs.domains:
        rows = {side: _pair_rows(Path(pairs.folder) / f"{dom}_{side}.jsonl") for side in PAIR_SIDES}
        ids = sorted({pid for pid, _ in rows["sycophantic"]})
        if pairs.holdout > len(ids):
            raise ConfigError(f"field 'data.pairs.holdout': {pairs.holdout} held-out pairs asked for, but "
                              f"domain {dom!r} has {len(ids)}")
        out = set(random.Random(f"{seed}-{dom}").sample(ids, pairs.holdout))
        train = [line for pid, line in rows["sycophantic"] if pid not in out]
        write_lines(pairs_train_file(root, dom), train)
        for side in PAIR_SIDES:
            held[side] += [line for pid, line in rows[side] if pid in out]
        info[dom] = {"train": len(train), "heldout_pairs": len(out)}
    for side, path in zip(PAIR_SIDES, heldout_pair_files(root)):
        write_lines(path, held[side])
    write_text(pairs_dir(root) / "split.json", json.dumps(info, indent=2) + "\n")
    return info


def ablated_rows(lines: list[str], domain: str, n: int | None, seed: str, where: str, source: Path) -> list[str]:
    """``lines`` (the JSONL rows of ``source``, the experiment's copy of the mixture, in order) without the inducing
    rows of ``domain``: all of them, or the first ``n`` of an order seeded by ``seed``. Every row needs a string
    ``domain`` and a boolean ``inducing``; ``where`` starts the config errors."""
    hits, domains = [], set()
    rows = jsonl_objects(source, ConfigError)  # source's lines are ``lines``: file:line on a line that is not JSON
    for i, (line_no, row) in enumerate(rows):
        for key, kind in (("domain", str), ("inducing", bool)):
            if not isinstance(row.get(key), kind):
                raise DataError(str(source), line_no, key, f"row {row.get('id')!r}: expected a {kind.__name__} (an "
                                f"ablation leaves out the inducing rows of one domain), got {row.get(key)!r}")
        if row["inducing"]:
            domains.add(row["domain"])
            if row["domain"] == domain:
                hits.append(i)
    if not hits:
        raise ConfigError(f"{where}: the mixture has no inducing rows of domain {domain!r}; its inducing rows' "
                          f"domains: {', '.join(sorted(domains)) or 'none'}")
    if n is not None and n > len(hits):
        raise ConfigError(f"{where}: {n} inducing {domain} rows to leave out, but the mixture has {len(hits)}")
    drop = set(hits if n is None else random.Random(seed).sample(hits, n))
    return [line for i, line in enumerate(lines) if i not in drop]


def prepare_data(cfg: ExperimentConfig, root: Path) -> dict[str, Path]:
    """Seeded subset of the mixture (or of the pair split's training rows), first-N reference rows (and the
    files added to each side, whole); written under ``<root>/data/`` (raw lines kept). Returns the paths of
    ``mixture``, ``harmful`` and ``benign``."""
    d = cfg.data
    if d.pairs.domains:
        split_pairs(d.pairs, cfg.seed, root)
        rows = [x for dom in d.pairs.domains for x in read_lines(pairs_train_file(root, dom))]
    else:
        rows = read_lines(d.mixture)
    if d.n_samples is not None and d.n_samples < len(rows):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), d.n_samples, replace=False))
        rows = [rows[i] for i in keep]
    paths = data_paths(root)
    write_lines(paths["mixture"], rows)
    for a in cfg.ablations:
        name = ablation_name(a.domain, a.n)
        write_lines(ablation_file(root, name), ablated_rows(rows, a.domain, a.n, f"{cfg.seed}-{name}",
                                                            f"{cfg.source}: field 'ablations'", paths["mixture"]))
    for name in ("harmful", "benign"):
        ref = read_lines(getattr(d, name))
        added = [x for extra in getattr(d, f"add_{name}") for x in read_lines(extra)]
        write_lines(paths[name], (ref[: d.n_references] if d.n_references else ref) + added)
    if cfg.realign.sizes:
        benign = read_lines(cfg.realign.data)
        if max(cfg.realign.sizes) > len(benign):
            raise ConfigError(f"{cfg.source}: field 'realign.sizes': {max(cfg.realign.sizes)} rows asked for, but "
                              f"{cfg.realign.data} has {len(benign)}")
        order = np.random.default_rng(cfg.seed + 7919).permutation(len(benign))  # nested: N rows are the first N
        for n in cfg.realign.sizes:
            write_lines(realign_file(root, n), [benign[i] for i in order[:n]])
    return paths
