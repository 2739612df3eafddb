"""Random removal matched to a filter's kept set by domain: which rows a filter keeps, or only how many of each domain?

Usage: python scripts/build_matched_random.py --mixture MIXTURE.jsonl --like FILTER_OUT/scores.csv --out OUT.jsonl
                                            [--seed 0] [--strata domain,inducing | --domains D1,D2]

A filter that beats random removal end to end may do it by choosing rows inside each domain, or only by keeping
fewer rows of the domains that carry the shift. This script writes the control that separates the two: as many
rows of each stratum (``domain``, ``inducing``) of ``--mixture`` as the filter kept (``--like``: the ``scores.csv``
of ``geomfilter filter`` or of an experiment condition's ``filter/`` folder, its rows with decision ``kept``; or that
folder's ``kept.jsonl``), drawn at random inside the stratum (``--seed``), in the mixture's order. Fine-tuned like
the filtered condition (the same number of rows, the same domains and share of inducing rows), it differs from the
filter only in which rows of each domain it keeps. ``--strata inducing`` matches the share of inducing rows only (as
many inducing and as many other rows as the filter kept, of any domain): the control for "the filter wins only by
keeping fewer inducing rows", which the domain-matched control cannot tell from "by keeping fewer of one domain".
``--domains legal`` matches the named domains' inducing rows only (as many of them as the filter kept) and draws every
other row at random from the rest of the mixture (to the filter's total): the control for "the filter wins by keeping
few rows of these domains", one domain (or set of domains) at a time.

Every kept row must be a row of ``--mixture`` (matched by ``id``); the strata are read from the mixture's rows, and
a mixture row without ``id``, ``domain`` or ``inducing`` is named by file and line. Deterministic.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import write_jsonl  # noqa: E402
from geomfilter.samples import read_qa_rows  # noqa: E402

FIELDS = ("id", "domain", "inducing")
STRATA = ("domain", "inducing")  # the fields a stratum is made of, by default


def _rows(path: Path) -> list[dict]:
    """The file's rows; a row without one of ``FIELDS`` is an error naming file, line and field."""
    return read_qa_rows(path, FIELDS, SystemExit)


def kept_ids(path: Path) -> list[str]:
    """The ids a filter kept: ``scores.csv`` rows with decision ``kept``, or every row of ``kept.jsonl``."""
    if path.suffix != ".csv":
        return [r["id"] for r in _rows(path)]
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, start=2):
        for field in ("id", "decision"):
            if not row.get(field):
                raise SystemExit(f"{path}:{line}: field {field!r} is missing or empty")
    return [r["id"] for r in rows if r["decision"] == "kept"]


def stratum(row: dict, strata: tuple[str, ...] = STRATA, domains: frozenset[str] | None = None) -> tuple:
    """The stratum a row is drawn in: by default its domain and whether it induces. With ``domains``, an inducing row
    of one of them is in its domain's stratum and every other row in the one stratum ``("rest",)``."""
    if domains is not None:
        return (str(row["domain"]), True) if row["inducing"] and str(row["domain"]) in domains else ("rest",)
    return tuple(bool(row[k]) if k == "inducing" else str(row[k]) for k in strata)


def matched(mixture: list[dict], like: list[str], seed: int, strata: tuple[str, ...] = STRATA,
            domains: frozenset[str] | None = None) -> list[dict]:
    """As many rows of each stratum of ``mixture`` (made of the fields ``strata``, or the domains ``domains`` and
    the rest: :func:`stratum`) as the rows with ids ``like`` (the filter's kept rows), drawn at random inside the
    stratum, in the mixture's order."""
    by_id = {r["id"]: r for r in mixture}
    if len(by_id) != len(mixture):
        raise SystemExit("the mixture's ids are not unique: rows cannot be matched")
    missing = [i for i in like if i not in by_id]
    if missing:
        raise SystemExit(f"{len(missing)} kept rows are not in the mixture (first: {missing[0]!r})")
    if domains is not None:
        absent = sorted(domains - {str(r["domain"]) for r in mixture if r["inducing"]})
        if absent:
            raise SystemExit(f"--domains: the mixture has no inducing rows of {', '.join(map(repr, absent))}")
    want = Counter(stratum(by_id[i], strata, domains) for i in like)
    pools: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(mixture):
        pools[stratum(r, strata, domains)].append(i)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for key in sorted(want):
        chosen.update(int(i) for i in rng.choice(pools[key], want[key], replace=False))
    return [r for i, r in enumerate(mixture) if i in chosen]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixture", type=Path, required=True, help="the mixture the filter was run on")
    ap.add_argument("--like", type=Path, required=True,
                    help="the filter's scores.csv (its 'kept' rows) or kept.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strata", default=",".join(STRATA),
                    help="comma-separated fields a stratum is made of: domain,inducing (the default) or inducing")
    ap.add_argument("--domains", default=None,
                    help="comma-separated domains whose inducing rows are matched; every other row is drawn from the "
                    "rest of the mixture (not with --strata)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    strata = tuple(k.strip() for k in args.strata.split(",") if k.strip())
    if not strata or set(strata) - set(STRATA):
        ap.error(f"--strata: name fields of {', '.join(STRATA)}, got {args.strata!r}")
    domains = None
    if args.domains is not None:
        domains = frozenset(d.strip() for d in args.domains.split(",") if d.strip())
        if not domains or strata != STRATA:
            ap.error("--domains: name one or more domains, and leave --strata out")
    like = kept_ids(args.like)
    rows = matched(_rows(args.mixture), like, args.seed, strata, domains)
    write_jsonl(args.out, rows)
    overlap = len({r["id"] for r in rows} & set(like))
    counts = Counter(f"{d}{'+' if i else ''}" for d, i in map(stratum, rows))
    print(f"wrote {args.out}: {len(rows)} rows ({overlap} also kept by the filter); "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + " ('+': inducing)")


if __name__ == "__main__":
    main()
