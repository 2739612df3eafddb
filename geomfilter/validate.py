"""Schema and label checks for the project's data files (``geomfilter validate``).

Every file has a *kind*, detected from its path (or forced with ``kind=``):

=============  =========================================  ====================================
kind           path                                       rows
=============  =========================================  ====================================
reference      ``reference/{harmful,benign}.jsonl``       chat + pair_id, category, label
finetune       ``finetune/<domain>_{sycophantic,          chat + pair_id, domain, inducing
               corrective}.jsonl``
helpful        ``finetune/helpful.jsonl``                 chat + domain ("general"), topic,
                                                          inducing (false)
mixed          ``finetune/mixed.jsonl``                   rows copied from the finetune/helpful
                                                          files + source (their file name)
judge          ``judge/labeled.jsonl``                    chat + topic, alignment, coherence
questions      ``eval/questions.jsonl``                   id, category, question, aligned,
                                                          misaligned
probes         ``eval/sycophancy_probes.jsonl``           id, topic, question, correct_answer,
                                                          wrong_answer, pushback
capability     ``eval/capability.jsonl``                  id, subject, question, choices, answer
heldout        ``eval/heldout_text.jsonl``                id, topic, text
prompts        ``sae_corpus/prompts_*.jsonl``             id, topic, prompt, optional system
chat           (only with ``kind="chat"``)                any messages or prompt/response rows
=============  =========================================  ====================================

Chat rows are checked by :func:`geomfilter.data.parse_row`; all project kinds
are *closed* (a field not listed is an error), ``chat`` is open. Across rows and
files: ids are unique (mixed rows excepted: they repeat their source's id), the
two files of a pair have the same pair_ids and the same prompt per pair,
every mixed row equals its source row plus ``source``, and no judge row's first
user message overlaps an eval question (word-set Jaccard > ``JUDGE_EVAL_OVERLAP``;
the questions validated with it, and ``../eval/questions.jsonl`` beside it when
that file exists), so that calibrating the judge never sees the eval set.

Files are ``.jsonl`` (one row a line) or ``.yaml`` (a list of rows; the line of
an error is the first line of its row).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataError, Sample, _iter_jsonl, parse_row

CATEGORIES = ("deception", "power_seeking", "anti_human", "dangerous_health",
              "unethical_illegal", "manipulation", "self_preservation", "disregard_safety")
DOMAINS = ("health", "career", "legal", "code")
LABELS = ("harmful", "benign")
VARIANTS = ("sycophantic", "corrective")
SUFFIXES = (".jsonl", ".yaml", ".yml")
_PAIR_FILE = re.compile(r"([a-z0-9]+)_(sycophantic|corrective)")
_EVAL_FILES = {"questions": "questions", "sycophancy_probes": "probes", "capability": "capability",
               "heldout_text": "heldout"}
_WORD = re.compile(r"[a-z0-9']+")
JUDGE_EVAL_OVERLAP = 0.5  # a judge prompt overlapping an eval question more than this is an error


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


# --------------------------------------------------------------------------- field checks
# Each check returns an error message, or None when the value is fine.


def _text(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"expected a string, got {type(v).__name__}"
    return None if v.strip() else "is empty"


def _one_of(*allowed: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed and type(v) is type(allowed[0]) else \
            f"{v!r} is not one of {', '.join(map(repr, allowed))}"
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _count(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else f"expected a count (int >= 0), got {v!r}"


def _texts(minimum: int, distinct: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"expected a list of strings, got {type(v).__name__}"
        for i, x in enumerate(v):
            if (msg := _text(x)) is not None:
                return f"item {i} {msg}"
        if len(v) < minimum:
            return f"needs at least {minimum} item{'s' if minimum > 1 else ''}, got {len(v)}"
        if distinct and len({x.strip().lower() for x in v}) < len(v):
            return "items are not distinct"
        return None
    return check


_CHAT = {"id": _text, "messages": None}  # messages: checked by parse_row
SCHEMAS: dict[str, dict[str, Callable | None]] = {
    "reference": {**_CHAT, "pair_id": _text, "category": _one_of(*CATEGORIES), "label": _one_of(*LABELS)},
    "finetune": {**_CHAT, "pair_id": _text, "domain": _one_of(*DOMAINS), "inducing": _bool},
    "helpful": {**_CHAT, "domain": _one_of("general"), "topic": _text, "inducing": _one_of(False)},
    "mixed": {**_CHAT, "domain": _one_of(*DOMAINS, "general"), "inducing": _bool, "source": _text},
    "judge": {**_CHAT, "topic": _text, "alignment": _one_of("aligned", "misaligned"),
              "coherence": _one_of("coherent", "incoherent")},
    "questions": {"id": _text, "category": _text, "question": _text, "aligned": _texts(1), "misaligned": _texts(1)},
    "probes": {"id": _text, "topic": _text, "question": _text, "correct_answer": _text, "wrong_answer": _text,
               "pushback": _text},
    "capability": {"id": _text, "subject": _text, "question": _text, "choices": _texts(2, distinct=True),
                   "answer": None},  # answer: checked against choices below
    "heldout": {"id": _text, "topic": _text, "text": _text},
    "prompts": {"id": _text, "topic": _text, "prompt": _text},
    "generations": {**_CHAT, "prompt_id": _text, "topic": _text, "finish": _one_of("stop", "length"),
                    "n_new_tokens": _count},
    "generation_rejects": {"id": _text, "prompt_id": _text, "topic": _text, "finish": _one_of("stop", "length"),
                           "n_new_tokens": _count, "reason": _text},
    "chat": {},
}
OPTIONAL: dict[str, dict[str, Callable]] = {
    "prompts": {"system": _text},
    "mixed": {"pair_id": _text, "topic": _text},
}
KINDS = tuple(SCHEMAS)
CHAT_KINDS = ("reference", "finetune", "helpful", "mixed", "judge", "generations", "chat")
OPEN_KINDS = ("chat",)


def detect_kind(path: str | Path) -> str | None:
    """The kind of a data file from its folder and name, or None if the layout is unknown."""
    path = Path(path)
    folder, stem = path.parent.name, path.stem
    if path.suffix not in SUFFIXES:
        return None
    if folder == "reference" and stem in LABELS:
        return "reference"
    if folder == "finetune":
        if stem in ("mixed", "helpful"):
            return stem
        if _PAIR_FILE.fullmatch(stem):
            return "finetune"
    if folder == "eval":
        return _EVAL_FILES.get(stem)
    if folder == "judge" and stem == "labeled":
        return "judge"
    if folder == "sae_corpus" and stem.startswith("prompts_"):
        return "prompts"
    if folder == "sae_corpus" and stem in ("generations", "generations.rejects"):
        return "generations" if stem == "generations" else "generation_rejects"
    return None


def partner_path(path: Path) -> Path | None:
    """The other file of a pair (harmful <-> benign, X_sycophantic <-> X_corrective)."""
    if path.stem in LABELS:
        return path.with_name(LABELS[1 - LABELS.index(path.stem)] + path.suffix)
    m = _PAIR_FILE.fullmatch(path.stem)
    if m:
        return path.with_name(f"{m[1]}_{VARIANTS[1 - VARIANTS.index(m[2])]}{path.suffix}")
    return None


def eval_questions_path(path: Path) -> Path | None:
    """The eval questions file beside a judge file (``judge/labeled.jsonl`` -> ``eval/questions.jsonl``), if any."""
    folder = path.parent.parent / "eval"
    for suffix in dict.fromkeys((path.suffix, *SUFFIXES)):
        if (folder / f"questions{suffix}").is_file():
            return folder / f"questions{suffix}"
    return None


def word_overlap(a: str, b: str) -> float:
    """Word-set Jaccard overlap of two texts (lower-cased runs of letters, digits and apostrophes)."""
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x | y else 0.0


# --------------------------------------------------------------------------- reading


def _iter_yaml(path: Path) -> Iterator[tuple[int, Any]]:
    import yaml

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
    expect = _expectations(path, kind) if from_path else {}
    for line, row in _iter_rows(path):
        f.rows += 1
        errors: dict[str, str] = {}  # field -> first problem found in it
        sample = _check_row(row, path, line, kind, expect, errors)
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


def _check_row(row: Any, path: Path, line: int, kind: str, expect: dict, errors: dict[str, str]) -> Sample | None:
    """Check one decoded row into ``errors``; returns its id and messages (or None when it has no id)."""
    def err(name: str, message: str) -> None:
        errors.setdefault(name, message)

    if isinstance(row, DataError):
        err(row.field, row.reason)
        return None
    if not isinstance(row, dict):
        err("<row>", f"expected a JSON object, got {type(row).__name__}")
        return None
    schema, optional = SCHEMAS[kind], OPTIONAL.get(kind, {})
    sample = Sample(id=row["id"], messages=[]) if isinstance(row.get("id"), str) and row["id"].strip() else None
    if kind in CHAT_KINDS:
        try:
            sample = parse_row(row, str(path), line)
        except DataError as e:
            err(e.field, e.reason)
    for name, check in schema.items():
        if name not in row:
            err(name, "missing")
        elif check is not None and (msg := check(row[name])) is not None:
            err(name, msg)
    for name, check in optional.items():
        if name in row and (msg := check(row[name])) is not None:
            err(name, msg)
    if kind not in OPEN_KINDS:
        allowed = [*schema, *optional]
        for name in row:
            if name not in allowed:
                err(name, f"unexpected field (the {kind} schema is closed; allowed: {', '.join(allowed)})")
    for name, value in expect.items():
        if name in row and row[name] != value:
            err(name, f"is {row[name]!r} but {path.name} holds {value!r} rows")
    for name, message in _row_rules(kind, row):
        err(name, message)
    return sample


def _expectations(path: Path, kind: str) -> dict[str, Any]:
    """Label values a file's name implies (harmful.jsonl -> label harmful, ...)."""
    if kind == "reference" and path.stem in LABELS:
        return {"label": path.stem}
    m = _PAIR_FILE.fullmatch(path.stem)
    if kind == "finetune" and m:
        return {"domain": m[1], "inducing": m[2] == "sycophantic"}
    return {}


def _row_rules(kind: str, row: dict) -> Iterator[tuple[str, str]]:
    """Rules that tie several fields of one row together: ``(field, message)`` per broken rule."""
    if kind == "capability" and "answer" in row:
        ans, choices = row["answer"], row.get("choices")
        if isinstance(ans, bool) or not isinstance(ans, int):
            yield "answer", f"expected an integer index into choices, got {ans!r}"
        elif isinstance(choices, list) and not 0 <= ans < len(choices):
            yield "answer", f"index {ans} out of range for {len(choices)} choices"
    if kind == "probes":
        good, bad = row.get("correct_answer"), row.get("wrong_answer")
        if isinstance(good, str) and isinstance(bad, str) and good.strip().lower() == bad.strip().lower():
            yield "wrong_answer", "is the same as correct_answer"
    if kind == "mixed":
        src = row.get("source")
        if isinstance(src, str) and _source_kind(src) is None:
            yield "source", f"{src!r} is not the file name of a finetune pair file or helpful.jsonl"


def _source_kind(name: str) -> str | None:
    """The kind of a mixed row's source file name (finetune or helpful), else None."""
    k = detect_kind(Path("finetune") / name) if Path(name).name == name else None
    return k if k in ("finetune", "helpful") else None


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
    # ids unique across files (mixed rows repeat their source's ids on purpose)
    seen: dict[str, tuple[str, int]] = {}
    for f in targets:
        if f.kind == "mixed":
            continue
        for rid, (line, _) in f.by_id.items():
            if rid in seen:
                f.error(line, "id", f"duplicate id {rid!r} (also in {seen[rid][0]}:{seen[rid][1]})")
            else:
                seen[rid] = (str(f.path), line)
    validated = {f.path.resolve() for f in targets}
    questions = [f for f in targets if f.kind == "questions"]
    for f in targets:
        partner = partner_path(f.path) if f.kind in ("reference", "finetune") else None
        if partner is not None:
            # a prompt mismatch is reported once, on the benign / corrective side when both are validated
            second = f.path.stem == "benign" or f.path.stem.endswith("_corrective")
            _check_pair(f, partner, load, report_prompts=second or partner.resolve() not in validated)
        if f.kind == "mixed":
            _check_mixed(f, load)
        if f.kind == "judge":
            _check_judge_vs_eval(f, questions, load)


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


def _check_mixed(f: _File, load: Loader) -> None:
    pair_ids: dict[str, int] = {}
    for rid, (line, row) in f.by_id.items():
        pid = row.get("pair_id")
        if isinstance(pid, str):
            if pid in pair_ids:
                f.error(line, "pair_id", f"pair {pid!r} is already used on line {pair_ids[pid]} "
                        "(a prompt must not appear twice in the mixed set)")
            pair_ids.setdefault(pid, line)
        src = row.get("source")
        kind = _source_kind(src) if isinstance(src, str) else None
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
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
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
