"""Filter-run output folders: written atomically, never over an input, never over another run by accident.

A filter run writes ``kept.jsonl``, ``dropped.jsonl``, ``scores.csv`` and
``report.json`` (and ``geomfilter plot`` adds ``plots/``). This module owns
the folder's life cycle:

* :func:`check_filter_out` runs *before* any work: the folder must not hold an
  input of the run, must be writable, and an existing non-empty folder must be
  a filter output of the same input (else :class:`OutputFolderError`, unless
  ``overwrite`` for a filter output of another input; a folder holding anything
  else is never replaced);
* :func:`atomic_dir` writes the whole folder beside its destination and swaps
  it in with renames, so a reader sees the old outputs or the new ones, never a
  mix (and old plots never sit beside a new report);
* :func:`write_filter_outputs` writes the four files; every input row ends in
  ``kept.jsonl`` or ``dropped.jsonl`` exactly as it was in the source file
  (bytes and line endings), with its score and reason in ``scores.csv``;
* :func:`json_text` writes strict JSON (a non-finite number becomes ``null``).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GeomfilterError
from .files import atomic_write_text
from .stats import bootstrap_auroc, precision_at

FILTER_FILES = ("kept.jsonl", "dropped.jsonl", "scores.csv", "report.json")
# Columns of scores.csv written by the filter; a row field of the same name is written as ``row_<name>``.
SCORE_COLUMNS = ("id", "source", "line", "decision", "score", "rank", "reason", "explanation")
ROW_FIELD_PREFIX = "row_"


class OutputFolderError(GeomfilterError, ValueError):
    """An output folder that cannot be written safely (it holds an input, another run, or is not writable)."""


# --------------------------------------------------------------------------- JSON


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None`` and numpy scalars made plain."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any, **kw) -> str:
    """Strict JSON text of ``obj`` (``NaN`` and ``Infinity`` never appear: they become ``null``)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


# --------------------------------------------------------------------------- folders


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def read_filter_report(folder: str | Path) -> dict | None:
    """The ``report.json`` of a filter output folder, or ``None`` when ``folder`` is not one."""
    p = Path(folder) / "report.json"
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rep if isinstance(rep, dict) and "strategy" in rep and "n_input" in rep else None


def _leftovers(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-") or
            p.name.startswith(f".{out.name}.old-")]


def check_filter_out(out: str | Path, *, data: str | Path, inputs: Sequence[str | Path] = (),
                     overwrite: bool = False) -> None:
    """Refuse an output folder before any work is done.

    ``data`` is the run's input (a file, or a cache directory); ``inputs`` every
    other file the run reads (its source file, the reference sets, ...). Raises
    :class:`OutputFolderError` when ``out`` would hold or replace an input, when
    it is a non-empty folder that is not a filter output, when it is a filter
    output of another input and ``overwrite`` is false, or when it cannot be
    created or written.
    """
    out = Path(out)
    for p in [Path(data), *map(Path, inputs)]:
        if p.exists() and (_inside(p, out) or p.resolve() == out.resolve()):
            raise OutputFolderError(
                f"--out {out} holds an input of this run ({p}); writing there would replace it. "
                "Choose another --out (e.g. a new folder beside it)")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        rep = read_filter_report(out)
        if rep is None:
            raise OutputFolderError(
                f"--out {out} is a non-empty folder that is not a `geomfilter filter` output; "
                "choose a new or empty folder (nothing there is replaced)")
        previous = rep.get("data")
        if previous is not None and Path(previous).resolve() != Path(data).resolve() and not overwrite:
            raise OutputFolderError(
                f"--out {out} holds the filter output of another input ({previous}); "
                "pass --overwrite to replace it, or choose another --out")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{out.name}.tmp-probe{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as e:
        raise OutputFolderError(f"--out {out}: cannot write in {parent} ({e.strerror or e})") from None


def check_scores_out(path: str | Path, *, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse a scores CSV path before any work: a folder, an input of the run, or an unwritable place."""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"--out {path} is a folder; give a CSV file path")
    if any(Path(p).exists() and Path(p).resolve() == path.resolve() for p in inputs):
        raise OutputFolderError(f"--out {path} is an input of this run; writing there would replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"--out {path}: cannot create {path.parent} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputFolderError(f"--out {path}: {path.parent} is not writable")


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` whole (by renames).

    A killed or failed write leaves ``out`` as it was (the temporary folder is
    removed on error, and leftovers of a killed run are removed next time).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in _leftovers(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


# --------------------------------------------------------------------------- rows


def raw_lines(source: str | Path) -> dict[int, bytes] | None:
    """Line number (1-based) -> the line's exact bytes, line ending included; ``None`` if not a file."""
    p = Path(source)
    if not p.is_file():
        return None
    with open(p, "rb") as fh:
        return dict(enumerate(fh, 1))


def _with_newline(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


class _RawRows:
    """The original bytes of input rows, read once per source file."""

    def __init__(self) -> None:
        self._by_source: dict[str, dict[int, bytes] | None] = {}

    def get(self, source: str | None, line: int | None) -> bytes | None:
        if not source or not line:
            return None
        if source not in self._by_source:
            self._by_source[source] = raw_lines(source)
        rows = self._by_source[source]
        return rows.get(line) if rows is not None else None

    def sample(self, s) -> bytes:
        if s.raw is not None:  # read_samples kept the line as it was: no second read of the file
            return s.raw.encode("utf-8", errors="surrogateescape")
        raw = self.get(s.source, s.line)
        if raw is not None:
            return raw
        return json.dumps({"id": s.id, "messages": s.messages, **s.meta}, ensure_ascii=False).encode()

    def reject(self, rej: dict) -> bytes:
        if rej.get("raw") is not None:  # the line as it was in the file
            return str(rej["raw"]).encode("utf-8", errors="surrogateescape")
        raw = self.get(rej.get("file"), rej.get("line"))
        if raw is not None:
            return raw
        return json.dumps(rej.get("row"), ensure_ascii=False).encode()


def _meta_columns(samples: list) -> dict[str, str]:
    """Row fields written to scores.csv -> their column name (``row_<name>`` when the filter uses the name)."""
    keys = sorted({k for s in samples for k, v in s.meta.items() if isinstance(v, (str, int, float, bool))})
    taken = set(SCORE_COLUMNS)
    cols = {}
    for k in keys:
        name = k
        while name in taken:
            name = ROW_FIELD_PREFIX + name
        taken.add(name)
        cols[k] = name
    return cols


def scores_csv_text(result, samples: list, rejects: Sequence[dict] = (), *, decisions: bool = True,
                    columns: dict[str, str] | None = None) -> str:
    """``scores.csv``: one row per input row (id, source, line, decision, score, rank, reason, explanation,
    then the rows' own scalar fields, named by ``columns``: :func:`_meta_columns` unless given).
    ``decisions=False`` (scoring without filtering) writes decision ``scored`` and a reason without a cut."""
    cols = _meta_columns(samples) if columns is None else columns
    fh = io.StringIO(newline="")
    w = csv.writer(fh)
    w.writerow([*SCORE_COLUMNS, *cols.values()])
    for i, s in enumerate(samples):
        if decisions:
            decision, reason = ("kept" if result.kept[i] else "dropped"), result.reason(i)
        else:
            decision = "scored"
            reason = f"{result.strategy} score {result.scores[i]:.4g}, rank {result.rank[i]} of {len(result.ids)}"
        w.writerow([s.id, s.source, s.line, decision, f"{result.scores[i]:.6g}", int(result.rank[i]), reason,
                    json.dumps(result.explanations[i]) if result.explanations else "",
                    *[s.meta.get(k, "") for k in cols]])
    for rej in rejects:
        w.writerow([rej.get("id", ""), rej.get("file", ""), rej.get("line", ""), "dropped", "", "",
                    f"invalid row: {rej.get('field')}: {rej.get('message', rej.get('reason', ''))}", "",
                    *["" for _ in cols]])
    return fh.getvalue()


def write_scores_file(path: str | Path, result, samples: list, rejects: Sequence[dict] = ()) -> None:
    """The scores CSV of a run that filters nothing (decision ``scored``), written atomically."""
    try:
        atomic_write_text(path, scores_csv_text(result, samples, rejects, decisions=False))
    except OSError as e:
        raise OutputFolderError(f"--out {path}: cannot write ({e.strerror or e})") from None


def _label_report(result, samples: list, label: str | None) -> dict | None:
    labels = [s.meta.get(label) for s in samples] if label else []
    if not labels or not all(isinstance(v, bool) for v in labels):
        return None
    y = np.array(labels)
    drop_frac = result.n_dropped / max(len(y), 1)
    rep = {"field": label, **precision_at(result.scores, y, [drop_frac])}
    if y.any() and (~y).any():
        rep["auroc"] = bootstrap_auroc(result.scores[y], result.scores[~y], n_boot=500)
    return rep


def write_filter_outputs(out_dir: str | Path, result, samples: list, *, rejects: Sequence[dict] = (),
                         report_extra: dict | None = None, label: str | None = "inducing") -> dict:
    """Write ``kept.jsonl``, ``dropped.jsonl``, ``scores.csv`` and ``report.json`` atomically; return the report.

    ``result`` is a :class:`~geomfilter.filtering.FilterResult`; ``samples`` the
    dataset's :class:`~geomfilter.data.Sample` objects in cache order (their
    ``source``/``line`` locate the original row, written back byte for byte,
    line ending included). Rows rejected as invalid (``rejects``, from the data
    report) go to ``dropped.jsonl`` too, with their reason, so the two files
    partition the input. If the rows carry a boolean ``label`` field, the report
    gives the dropped set's precision for it against the base rate.

    The folder is written beside ``out_dir`` and swapped in whole
    (:func:`atomic_dir`): the previous outputs, plots included, are replaced.
    An existing ``out_dir`` that is not a filter output folder is refused
    (:class:`OutputFolderError`); nothing else is ever deleted.
    """
    out = Path(out_dir)
    if [s.id for s in samples] != result.ids:
        raise ValueError("samples and filter result disagree on ids/order")
    if out.is_dir() and any(out.iterdir()) and read_filter_report(out) is None:
        raise OutputFolderError(f"{out} is a non-empty folder that is not a filter output; refusing to replace it")
    raw = _RawRows()
    kept_rows, dropped_rows = [], []
    for i, s in enumerate(samples):
        (kept_rows if result.kept[i] else dropped_rows).append((s.line, raw.sample(s)))
    dropped_rows += [(rej.get("line") or 0, raw.reject(rej)) for rej in rejects]
    cols = _meta_columns(samples)
    report = {
        "strategy": result.strategy, "params": result.params,
        "n_input": len(samples) + len(rejects), "n_kept": int(result.kept.sum()),
        "n_dropped": result.n_dropped + len(rejects), "n_dropped_by_score": result.n_dropped,
        "n_rejected_invalid": len(rejects), "drop": result.params.get("drop"), "threshold": result.threshold,
        "score": {"mean": float(result.scores.mean()), "min": float(result.scores.min()),
                  "max": float(result.scores.max())} if len(samples) else {},
    }
    renamed = {k: v for k, v in cols.items() if k != v}
    if renamed:
        report["renamed_columns"] = renamed
    labels = _label_report(result, samples, label)
    if labels is not None:
        report["labels"] = labels
    if report_extra:
        report.update(report_extra)
    with atomic_dir(out) as tmp:
        for name, rows in (("kept.jsonl", kept_rows), ("dropped.jsonl", dropped_rows)):
            with open(tmp / name, "wb") as fh:
                for _, text in sorted(rows, key=lambda t: t[0]):
                    fh.write(_with_newline(text))
        (tmp / "scores.csv").write_text(scores_csv_text(result, samples, rejects, columns=cols), encoding="utf-8",
                                        newline="")
        (tmp / "report.json").write_text(json_text(report, indent=2, default=float) + "\n", encoding="utf-8")
    return report
