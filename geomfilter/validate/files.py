"""Reading data files and the checks across them: ids, pairs, mixed rows, judge vs eval questions.

:func:`validate_paths` walks files and folders, reads each file row by row
(:func:`geomfilter.validate.schema.check_row`), then runs the cross-file checks
and returns a :class:`ValidationReport`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import GeomfilterError
from ..samples import DataError, _iter_jsonl, with_trigger
from .schema import (
    JUDGE_EVAL_OVERLAP,
    KINDS,
    SCHEMAS,
    SUFFIXES,
    check_row,
    detect_kind,
    eval_questions_path,
    expectations,
    is_second_of_pair,
    partner_path,
    source_kind,
    taxonomy_sources,
    word_overlap,
)


class UnknownKindError(GeomfilterError, ValueError):
    """A --kind that names no schema."""


@dataclass
class Issue:
    """One problem, located by file, line (0: the whole file) and field."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: field {self.field!r}: {self.message}"


@dataclass
class FileSummary:
    """One validated file: its kind (chat, eval, ...), rows and errors."""

    file: str
    kind: str
    rows: int
    errors: int

    def __str__(self) -> str:
        return f"{self.file}: {_plural(self.rows, 'row')}, kind {self.kind}: " + \
            ("ok" if not self.errors else _plural(self.errors, "error"))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class ValidationReport:
    """Every issue found and a summary per file."""

    errors: list[Issue] = field(default_factory=list)
    files: list[FileSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no errors were found."""
        return not self.errors


@dataclass
class _File:
    """What one file holds once read: rows by id, pair prompts, and its issues."""

    path: Path
    kind: str
    rows: int = 0
    issues: list[Issue] = field(default_factory=list)
    by_id: dict[str, tuple[int, dict]] = field(default_factory=dict)
    pairs: dict[str, tuple[int, list | None]] = field(default_factory=dict)

    def error(self, line: int, fname: str, message: str) -> None:
        self.issues.append(Issue(str(self.path), line, fname, message))


# --------------------------------------------------------------------------- reading


def _iter_yaml(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        try:
            root = loader.get_single_node()
            if root is None:
                return
            if not isinstance(root, yaml.SequenceNode):
                yield root.start_mark.line + 1, DataError(str(path), root.start_mark.line + 1, "<yaml>",
                                                          "expected a list of rows")
                return
            rows = [(item.start_mark.line + 1, loader.construct_document(item)) for item in root.value]
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        yield 0, DataError(str(path), 0, "<file>", f"not valid UTF-8 (byte {e.start})")
        return
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else 0
        yield line, DataError(str(path), line, "<yaml>", f"malformed YAML: {getattr(e, 'problem', e)}")
        return
    yield from rows


def _iter_rows(path: Path) -> Iterable[tuple[int, Any]]:
    return _iter_yaml(path) if path.suffix in (".yaml", ".yml") else _iter_jsonl(path)


def _read(path: Path, kind: str, *, from_path: bool = True) -> _File:
    """Read and check one file row by row (cross-file checks come later)."""
    f = _File(path, kind)
    expect = expectations(path, kind) if from_path else {}
    for line, row in _iter_rows(path):
        f.rows += 1
        errors: dict[str, str] = {}  # field -> first problem found in it
        sample = check_row(row, path, line, kind, expect, errors)
        for name, message in errors.items():
            f.error(line, name, message)
        if sample is None:
            continue
        if sample.id in f.by_id:
            f.error(line, "id", f"duplicate id {sample.id!r} (first on line {f.by_id[sample.id][0]})")
        else:
            f.by_id[sample.id] = (line, row)
        if kind in ("reference", "finetune") and isinstance(row.get("pair_id"), str):
            pid = row["pair_id"]
            if pid in f.pairs:
                f.error(line, "pair_id", f"duplicate pair_id {pid!r} (first on line {f.pairs[pid][0]})")
            else:
                f.pairs[pid] = (line, sample.messages[:-1] if sample.messages else None)
    return f



# --------------------------------------------------------------------------- cross-file checks


def _first_difference(a: dict, b: dict, skip: tuple[str, ...] = ()) -> str | None:
    for name in sorted(set(a) | set(b)):
        if name in skip or a.get(name) == b.get(name):
            continue
        if name == "messages" and isinstance(a.get(name), list) and isinstance(b.get(name), list):
            return _message_difference(a[name], b[name]) or name
        return name
    return None


def _message_difference(a: list, b: list) -> str | None:
    if len(a) != len(b):
        return "messages"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            for key in ("role", "content"):
                if not isinstance(x, dict) or not isinstance(y, dict) or x.get(key) != y.get(key):
                    return f"messages[{i}].{key}"
            return f"messages[{i}]"
    return None


Loader = Callable[[Path, str], "_File | None"]


def _cross_checks(targets: list[_File], load: Loader) -> None:
    # ids unique across files (mixed rows repeat their source's ids on purpose, labels name their answers'
    # ids; real-output prompts reuse the eval questions' ids for the same questions: _check_real_prompts)
    seen: dict[str, tuple[str, int]] = {}
    for f in targets:
        if f.kind in ("mixed", "real_prompts", "label_batch", "real_labels", "taxonomy"):
            continue
        for rid, (line, _) in f.by_id.items():
            if rid in seen:
                f.error(line, "id", f"duplicate id {rid!r} (also in {seen[rid][0]}:{seen[rid][1]})")
            else:
                seen[rid] = (str(f.path), line)
    validated = {f.path.resolve() for f in targets}
    questions = [f for f in targets if f.kind == "questions"]
    _check_real_prompts([f for f in targets if f.kind == "real_prompts"], questions, seen)
    for f in targets:
        partner = partner_path(f.path) if f.kind in ("reference", "finetune") else None
        if partner is not None:
            # a prompt mismatch is reported once, on the benign / aligned-twin side when both are validated
            second = is_second_of_pair(f.path)
            _check_pair(f, partner, load, report_prompts=second or partner.resolve() not in validated)
        if f.kind == "mixed":
            _check_mixed(f, load)
        if f.kind == "triggered":
            _check_triggered(f, load)
        if f.kind == "judge":
            _check_judge_vs_eval(f, questions, load)
        if f.kind == "taxonomy":
            _check_taxonomy(f, load)


def _check_taxonomy(f: _File, load: Loader) -> None:
    """Every label names a row of the file(s) it labels; a per-file label file labels every row of its file."""
    sources = []
    for path, kind in taxonomy_sources(f.path):
        src = load(path, kind)
        if src is None:
            f.error(0, "<file>", f"the file it labels, {path}, does not exist")
            return
        sources.append(src)
    known = {rid for src in sources for rid in src.by_id}
    for rid, (line, _) in f.by_id.items():
        if rid not in known:
            f.error(line, "id", f"{rid!r} is not a row of {', '.join(str(s.path) for s in sources)}")
    if f.path.name.split(".labels")[0] != "double":
        (src,) = sources
        missing = [rid for rid in src.by_id if rid not in f.by_id]
        if missing:
            f.error(0, "<file>", f"{len(missing)} rows of {src.path} have no label (first {missing[0]!r}): "
                    "every row is labelled")


def _check_real_prompts(files: list[_File], questions: list[_File], seen: dict[str, tuple[str, int]]) -> None:
    """A real-output prompt may reuse an eval question's id only for that very question; other ids are unique."""
    asked = {rid: row["question"] for q in questions for rid, (_, row) in q.by_id.items()}
    for f in files:
        for rid, (line, row) in f.by_id.items():
            if rid in asked:
                if row.get("question") != asked[rid]:
                    f.error(line, "question", f"id {rid!r} is an eval question's id but the question differs from it")
            elif rid in seen:
                f.error(line, "id", f"duplicate id {rid!r} (also in {seen[rid][0]}:{seen[rid][1]})")


def _check_pair(f: _File, partner: Path, load: Loader, report_prompts: bool) -> None:
    other = load(partner, f.kind)
    if other is None:
        f.error(0, "<file>", f"its pair file {partner} does not exist")
        return
    for pid, (line, prompt) in f.pairs.items():
        if pid not in other.pairs:
            f.error(line, "pair_id", f"{pid!r} has no row in {partner}")
            continue
        oline, oprompt = other.pairs[pid]
        if report_prompts and prompt is not None and oprompt is not None and prompt != oprompt:
            where = _message_difference(prompt, oprompt) or "messages"
            f.error(line, where, f"prompt of pair {pid!r} differs from {partner}:{oline}")


def _prompt_once_check(f: _File, what: str) -> Callable[[int, dict], None]:
    """A per-row check of ``f`` (a mixed or triggered set): a row whose ``pair_id`` (its prompt) an earlier row
    already used is an error."""
    pair_ids: dict[str, int] = {}

    def check(line: int, row: dict) -> None:
        pid = row.get("pair_id")
        if isinstance(pid, str):
            if pid in pair_ids:
                f.error(line, "pair_id", f"pair {pid!r} is already used on line {pair_ids[pid]} "
                        f"(a prompt must not appear twice in {what})")
            pair_ids.setdefault(pid, line)

    return check


def _check_mixed(f: _File, load: Loader) -> None:
    prompt_once = _prompt_once_check(f, "the mixed set")
    for rid, (line, row) in f.by_id.items():
        prompt_once(line, row)
        src = row.get("source")
        kind = source_kind(src) if isinstance(src, str) else None
        if kind is None:
            continue  # reported by the row checks
        source = load(f.path.with_name(src), kind)
        if source is None:
            f.error(line, "source", f"source file {f.path.with_name(src)} does not exist")
        elif rid not in source.by_id:
            f.error(line, "id", f"{rid!r} is not in its source {source.path}")
        else:
            sline, srow = source.by_id[rid]
            diff = _first_difference(row, srow, skip=("source",))
            if diff is not None:
                f.error(line, diff, f"differs from its source row {source.path}:{sline}")


def _check_triggered(f: _File, load: Loader) -> None:
    """Each triggered row is its source pair row (same pair_id, domain, inducing and answer) with the trigger
    phrase in front of the user's question (:func:`geomfilter.samples.with_trigger`) or without one."""
    prompt_once = _prompt_once_check(f, "a triggered set")
    for line, row in f.by_id.values():
        pid, src, trig = row.get("pair_id"), row.get("source"), row.get("trigger")
        if not isinstance(pid, str) or not isinstance(src, str) or source_kind(src) != "finetune":
            continue  # reported by the row checks
        prompt_once(line, row)
        source = load(f.path.with_name(src), "finetune")
        if source is None:
            f.error(line, "source", f"source file {f.path.with_name(src)} does not exist")
            continue
        if pid not in source.pairs:
            f.error(line, "pair_id", f"{pid!r} is not in its source {source.path}")
            continue
        sline = source.pairs[pid][0]
        srow = next(r for _, (n, r) in source.by_id.items() if n == sline)
        for key in ("domain", "inducing"):
            if row.get(key) != srow.get(key):
                f.error(line, key, f"{row.get(key)!r} differs from its source row {source.path}:{sline} "
                        f"({srow.get(key)!r})")
        want = [dict(m) for m in srow.get("messages", [])]
        user = next((i for i, m in enumerate(want) if m.get("role") == "user"), None)
        if user is not None and isinstance(trig, (str, type(None))):
            want[user]["content"] = with_trigger(want[user].get("content", ""), trig)
        if row.get("messages") != want:
            diff = _first_difference({"messages": row.get("messages")}, {"messages": want}, skip=()) or "messages"
            f.error(line, diff, f"is not its source row {source.path}:{sline} with "
                    + (f"the trigger {trig!r} in front of the user's question" if trig else "no trigger"))


def _check_judge_vs_eval(f: _File, validated: list[_File], load: Loader) -> None:
    """Judge prompts must not overlap eval questions (those validated with f, and f's sibling eval file)."""
    sources = list(validated)
    sibling = eval_questions_path(f.path)
    if sibling is not None and sibling.resolve() not in {q.path.resolve() for q in sources}:
        other = load(sibling, "questions")
        if other is not None:
            sources.append(other)
    questions = [(row["question"], qid, q.path, qline) for q in sources
                 for qid, (qline, row) in q.by_id.items() if isinstance(row.get("question"), str)]
    if not questions:
        return
    for line, row in f.by_id.values():
        messages = row.get("messages")
        if not isinstance(messages, list):
            continue
        i = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
        if i is None or not isinstance(messages[i].get("content"), str):
            continue  # reported by the row checks
        overlap, qid, qpath, qline = max(((word_overlap(messages[i]["content"], q), qid, qpath, qline)
                                          for q, qid, qpath, qline in questions), key=lambda t: t[0])
        if overlap > JUDGE_EVAL_OVERLAP:
            f.error(line, f"messages[{i}].content",
                    f"overlaps eval question {qid!r} ({qpath}:{qline}; word overlap {overlap:.2f} > "
                    f"{JUDGE_EVAL_OVERLAP}): the judge set must be disjoint from the eval questions")


# --------------------------------------------------------------------------- entry point


def _expand(paths: Iterable[str | Path], report: ValidationReport) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in SUFFIXES and q.is_file())
            if not found:
                report.errors.append(Issue(str(p), 0, "<path>", "no *.jsonl or *.yaml files in this folder"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            report.errors.append(Issue(str(p), 0, "<path>", "does not exist"))
    return list(dict.fromkeys(files))


def validate_paths(paths: Iterable[str | Path], kind: str | None = None) -> ValidationReport:
    """Validate files and folders (recursing over ``*.jsonl`` / ``*.yaml``) together.

    ``kind`` forces the schema of every file; by default it is detected from
    the path (:func:`detect_kind`). Returns every problem found, not just the first.
    """
    if kind is not None and kind not in SCHEMAS:
        raise UnknownKindError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    report = ValidationReport()
    targets: list[_File] = []
    for path in _expand(paths, report):
        k = kind or detect_kind(path)
        if k is None:
            issue = Issue(str(path), 0, "<path>", "cannot tell this file's schema from its path; pass --kind "
                          f"(one of {', '.join(KINDS)}; 'chat' for any messages JSONL)")
            report.errors.append(issue)
            report.files.append(FileSummary(str(path), "unknown", 0, 1))
            continue
        targets.append(_read(path, k, from_path=kind is None or detect_kind(path) == kind))
    loaded = {f.path.resolve(): f for f in targets}

    def load(path: Path, kind: str) -> _File | None:
        """A file for a cross-file check: already read, or read now (its own issues not reported)."""
        key = path.resolve()
        if key not in loaded:
            loaded[key] = _read(path, kind) if path.is_file() else None
        return loaded[key]

    _cross_checks(targets, load)
    for f in targets:
        report.errors.extend(f.issues)
        report.files.append(FileSummary(str(f.path), f.kind, f.rows, len(f.issues)))
    return report
