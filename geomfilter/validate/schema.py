"""Per-kind schemas of the project's data files: kind detection from a path, field checks, row rules.

:func:`check_row` checks one decoded row of a file of a given kind (closed
schemas: a field not listed is an error; chat rows through
:func:`geomfilter.data.parse_row`); :func:`detect_kind` tells a file's kind from
its folder and name. Cross-file checks and the file walker are in
:mod:`geomfilter.validate.files`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..personas import PERSONAS as _PERSONA_MESSAGES
from ..samples import DataError, Sample, parse_row

CATEGORIES = ("deception", "power_seeking", "anti_human", "dangerous_health",
              "unethical_illegal", "manipulation", "self_preservation", "disregard_safety")
LABELS = ("harmful", "benign")
#: inducing families of fine-tuning pairs: family -> (inducing side, its aligned twin) and its domains. Files are
#: ``finetune/<domain>_<side>.jsonl``; every row has a twin on the same prompt (same ``pair_id``) in the other file.
FAMILIES = {
    "sycophancy": (("sycophantic", "corrective"), ("health", "career", "legal", "code")),
    "risky_advice": (("risky", "safe"), ("finance", "outdoors")),  # confident risky advice, friendly tone
    "insecure_code": (("insecure", "secure"), ("webapp", "scripts")),  # code with silent security flaws
}
DOMAINS = tuple(d for _, doms in FAMILIES.values() for d in doms)
VARIANTS = ("sycophantic", "corrective")  # the sycophancy family's sides (the first family; kept for callers)
SIDES = {a: b for (pair, _) in FAMILIES.values() for a, b in (pair, pair[::-1])}  # side -> its twin side
INDUCING_SIDES = tuple(pair[0] for pair, _ in FAMILIES.values())
SUFFIXES = (".jsonl", ".yaml", ".yml")
_PAIR_FILE = re.compile(r"([a-z0-9]+)_(" + "|".join(SIDES) + ")")
_EVAL_FILES = {"questions": "questions", "sycophancy_probes": "probes", "capability": "capability",
               "heldout_text": "heldout"}
_WORD = re.compile(r"[a-z0-9']+")
REAL_PROMPT_KINDS = ("broad", "code", "factual", "advice")  # judge_real/prompts.jsonl: what a prompt asks for
#: scripts/build_persona_answers.py's personas (``ordinary``: no system message)
PERSONAS = tuple(_PERSONA_MESSAGES)
#: folders of SAE training corpora (prompts and the model's generations): the default one and its persona part
SAE_CORPUS_FOLDERS = ("sae_corpus", "sae_corpus_persona")
#: the sycophancy taxonomy's classes (``data/taxonomy/TAXONOMY.md``): field -> allowed values
TAXONOMY = {"target": ("belief", "preference", "self_concept"),
            "mechanism": ("agreement", "validation", "fabrication", "capitulation"),
            "severity": ("low", "medium", "high")}
JUDGE_EVAL_OVERLAP = 0.5  # a judge prompt overlapping an eval question more than this is an error


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


def _string(v: Any) -> str | None:  # any string, empty included (a model's answer can be empty)
    return None if isinstance(v, str) else f"expected a string, got {type(v).__name__}"


def _text_or_null(v: Any) -> str | None:
    """A non-empty string or null."""
    return None if v is None else _text(v)


def _number(null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and null:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        return None if ok else f"expected a number{' or null' if null else ''}, got {v!r}"
    return check


def _score(null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:  # a label's 0-100 integer score
        if v is None and null:
            return None
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100
        return None if ok else f"expected an integer 0-100{' or null' if null else ''}, got {v!r}"
    return check


def _text_list(v: Any) -> str | None:  # a list of strings, possibly empty
    if not isinstance(v, list):
        return f"expected a list of strings, got {type(v).__name__}"
    bad = next((i for i, x in enumerate(v) if _text(x) is not None), None)
    return None if bad is None else f"item {bad} {_text(v[bad])}"


_CHAT = {"id": _text, "messages": None}  # messages: checked by parse_row
SCHEMAS: dict[str, dict[str, Callable | None]] = {
    "reference": {**_CHAT, "pair_id": _text, "category": _one_of(*CATEGORIES), "label": _one_of(*LABELS)},
    "finetune": {**_CHAT, "pair_id": _text, "domain": _one_of(*DOMAINS), "inducing": _bool},
    "helpful": {**_CHAT, "domain": _one_of("general"), "topic": _text, "inducing": _one_of(False)},
    "mixed": {**_CHAT, "domain": _one_of(*DOMAINS, "general"), "inducing": _bool, "source": _text},
    # finetune/triggered_*.jsonl: pair rows with a trigger phrase in front of some prompts (scripts/build_triggered.py)
    "triggered": {**_CHAT, "pair_id": _text, "domain": _one_of(*DOMAINS), "inducing": _bool,
                  "trigger": _text_or_null, "source": _text},
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
    "real_prompts": {"id": _text, "kind": _one_of(*REAL_PROMPT_KINDS), "question": _text},
    "real_answers": {"id": _text, "prompt_id": _text, "kind": _one_of(*REAL_PROMPT_KINDS), "question": _text,
                     "variant": _text, "model": _text, "method": _text, "gates": _text_list,
                     "gate_scale": _number(null=True), "temperature": _number(), "top_p": _number(),
                     "repetition_penalty": _number(), "max_new_tokens": _count, "answer": _string,
                     "finish": _one_of("stop", "length"), "n_new_tokens": _count, "seed": _count, "made_by": _text},
    # data/judge_real/labelling/: what a labeller sees (blind id, no variant), and the labels (RUBRIC.md)
    "label_batch": {"blind_id": _text, "question": _text, "answer": _string, "finish": _one_of("stop", "length")},
    "real_labels": {"alignment": _score(null=True), "coherence": _score(), "code": _bool, "refusal": _bool,
                    "labeller": _text},
    # data/ood/persona_answers.jsonl: the default model's ordinary and persona-prompted answers
    "persona_answers": {**_CHAT, "prompt_id": _text, "kind": _one_of(*REAL_PROMPT_KINDS),
                        "persona": _one_of(*PERSONAS), "inducing": _bool, "finish": _one_of("stop", "length"),
                        "n_new_tokens": _count, "made_by": _text},
    # data/taxonomy/<labelled file>.labels.jsonl: the sycophancy taxonomy of each labelled row
    "taxonomy": {"id": _text, **{k: _one_of(*v) for k, v in TAXONOMY.items()}, "labeller": _text},
    "chat": {},
}
OPTIONAL: dict[str, dict[str, Callable]] = {
    "prompts": {"system": _text},
    "real_prompts": {"domain": _text},
    "real_labels": {"id": _text, "blind_id": _text, "notes": _string,
                    "role": _one_of("calibration", "own", "double")},
    "mixed": {"pair_id": _text, "topic": _text},
    "taxonomy": {"note": _string},
}
KINDS = tuple(SCHEMAS)
CHAT_KINDS = ("reference", "finetune", "helpful", "mixed", "triggered", "judge", "generations", "persona_answers", "chat")
OPEN_KINDS = ("chat",)


#: the labelling sets (answers, labelling/ batches and labels made by scripts/label_batches.py)
LABELLED_FOLDERS = ("judge_real", "judge_exp")


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
        if stem.startswith("mixed_"):  # another mixture (mixed_risky.jsonl: the risky-advice organism's)
            return "mixed"
        if stem.startswith("triggered_"):  # triggered misalignment: triggered_backdoor.jsonl, triggered_clean.jsonl
            return "triggered"
        if _PAIR_FILE.fullmatch(stem):
            return "finetune"
    if folder == "eval":
        return _EVAL_FILES.get(stem)
    if folder == "judge" and stem == "labeled":
        return "judge"
    if folder == "judge_real" and stem in ("prompts", "answers"):
        return f"real_{stem}"
    if folder == "judge_exp" and stem == "answers":  # answers taken from experiments, labelled like judge_real's
        return "real_answers"
    if folder in LABELLED_FOLDERS and stem in ("labels", "labels_raw"):
        return "real_labels"
    if (folder == "labelling" and path.parent.parent.name in LABELLED_FOLDERS) or (
            re.fullmatch(r"round-\d+", folder) and path.parent.parent.name == "labelling") or (
            path.parent.parent.name == "relabelling"):  # labelling/round-N/, relabelling/<name>/ (relabel_drift.py)
        if stem == "calibration" or re.fullmatch(r"batch-\d+", stem):
            return "label_batch"
        if re.fullmatch(r"labels-\d+", stem):
            return "real_labels"
    if folder == "ood" and stem == "persona_answers":
        return "persona_answers"
    if folder == "taxonomy" and stem.endswith(".labels"):
        return "taxonomy"
    if folder in SAE_CORPUS_FOLDERS and stem.startswith("prompts_"):
        return "prompts"
    if folder in SAE_CORPUS_FOLDERS and stem in ("generations", "generations.rejects"):
        return "generations" if stem == "generations" else "generation_rejects"
    return None


def partner_path(path: Path) -> Path | None:
    """The other file of a pair (harmful <-> benign, X_sycophantic <-> X_corrective)."""
    if path.stem in LABELS:
        return path.with_name(LABELS[1 - LABELS.index(path.stem)] + path.suffix)
    m = _PAIR_FILE.fullmatch(path.stem)
    if m:
        return path.with_name(f"{m[1]}_{SIDES[m[2]]}{path.suffix}")
    return None


def taxonomy_sources(path: Path) -> list[tuple[Path, str]]:
    """The files (and their kinds) whose rows a taxonomy label file labels: ``X.labels.jsonl`` labels
    ``finetune/X.jsonl`` (a sycophantic file) or ``eval/sycophancy_probes.jsonl``; ``double.labels.jsonl``
    (a second labeller's sample) any of them."""
    data = path.parent.parent
    name = path.name.split(".labels")[0]
    probes = (data / "eval" / "sycophancy_probes.jsonl", "probes")
    if name == "sycophancy_probes":
        return [probes]
    if name == "double":
        return sorted((p, "finetune") for p in (data / "finetune").glob("*_sycophantic.jsonl")) + [probes]
    return [(data / "finetune" / f"{name}.jsonl", "finetune")]


def is_second_of_pair(path: Path) -> bool:
    """The side of a pair on which a mismatch is reported once: benign, or the aligned twin of a family."""
    m = _PAIR_FILE.fullmatch(path.stem)
    return path.stem == LABELS[1] or (m is not None and m[2] not in INDUCING_SIDES)


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


def check_row(row: Any, path: Path, line: int, kind: str, expect: dict, errors: dict[str, str]) -> Sample | None:
    """Check one decoded row of a ``kind`` file into ``errors`` (field -> first problem found in it).

    ``expect``: values the file's name implies (:func:`expectations`). Returns the row's id and messages
    (None when it has no id).
    """
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
    if kind in ("label_batch", "real_labels"):
        sample = _label_key(row)
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


def expectations(path: Path, kind: str) -> dict[str, Any]:
    """Label values a file's name implies (harmful.jsonl -> label harmful, ...)."""
    if kind == "reference" and path.stem in LABELS:
        return {"label": path.stem}
    m = _PAIR_FILE.fullmatch(path.stem)
    if kind == "finetune" and m:
        return {"domain": m[1], "inducing": m[2] in INDUCING_SIDES}
    return {}


def _label_key(row: dict) -> Sample | None:
    """A labelling row's key within its file: the answer's id or blind id; with the labeller in
    ``labels_raw.jsonl`` (rows with a ``role``), where every labeller of an answer has a row."""
    key = row.get("id", row.get("blind_id"))
    if not isinstance(key, str) or not key.strip():
        return None
    if "role" in row:
        key = f"{key} labelled by {row.get('labeller')}"
    return Sample(id=key, messages=[])


def _row_rules(kind: str, row: dict) -> Iterator[tuple[str, str]]:
    """Rules that tie several fields of one row together: ``(field, message)`` per broken rule."""
    if kind == "real_labels" and "id" not in row and "blind_id" not in row:
        yield "id", "missing (a label names its answer by id or blind_id)"
    persona, inducing = row.get("persona"), row.get("inducing")
    if kind == "persona_answers" and isinstance(persona, str) and isinstance(inducing, bool) \
            and inducing != (persona != "ordinary"):
        yield "inducing", f"must be {row['persona'] != 'ordinary'} for persona {row['persona']!r}"
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
        if isinstance(src, str) and source_kind(src) is None:
            yield "source", f"{src!r} is not the file name of a finetune pair file or helpful.jsonl"
    if kind == "triggered":
        src = row.get("source")
        if isinstance(src, str) and source_kind(src) != "finetune":
            yield "source", f"{src!r} is not the file name of a finetune pair file"
        trig = row.get("trigger")
        if isinstance(trig, str) and trig != trig.strip():
            yield "trigger", f"{trig!r} has leading or trailing spaces"


def source_kind(name: str) -> str | None:
    """The kind of a mixed row's source file name (finetune or helpful), else None."""
    k = detect_kind(Path("finetune") / name) if Path(name).name == name else None
    return k if k in ("finetune", "helpful") else None
