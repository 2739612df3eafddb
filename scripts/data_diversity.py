"""Diversity report for the project's JSONL data files (stdlib only).

Usage: python scripts/data_diversity.py [FILE_OR_DIR ...]   (default: data/)

For every file it reports, over the *response text* of each row (the last
assistant turn for ``messages`` rows, or the text fields of other schemas):

* ``max_overlap``: the largest word-set Jaccard overlap between any two rows of
  the file, with the two ids (limit 0.80);
* ``max_sentence_repeats``: how often the most repeated sentence occurs
  verbatim across the file (limit 5);
* response length in words (min / median / max; limit ~15-150 words, i.e. about
  20-200 tokens of the SmolLM2 tokenizer).

Exit status 1 when any limit is broken, so CI can run it.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

MAX_OVERLAP = 0.80
MAX_SENTENCE_REPEATS = 5
MIN_WORDS, MAX_WORDS = 12, 150
_WORD = re.compile(r"[a-z0-9']+")
_SENT = re.compile(r"(?<=[.!?])\s+")


def row_texts(row: dict) -> list[str]:
    """The response texts of one row, whatever its schema."""
    if "messages" in row:
        turns = [m["content"] for m in row["messages"] if m.get("role") == "assistant"]
        return turns[-1:] if turns else []
    if "response" in row:
        return [row["response"]]
    out = []
    for key in ("aligned", "misaligned"):
        v = row.get(key)
        out.extend(v if isinstance(v, list) else [v] if isinstance(v, str) else [])
    if "text" in row:
        out.append(row["text"])
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def report_file(path: Path) -> tuple[dict, list[str]]:
    ids, texts = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for j, t in enumerate(row_texts(row)):
            ids.append(f"{row.get('id', f'line{n}')}" + (f"#{j}" if j else ""))
            texts.append(t)
    sets = [frozenset(words(t)) for t in texts]
    best, pair = 0.0, ("", "")
    for i in range(len(sets)):
        a = sets[i]
        if not a:
            continue
        for j in range(i + 1, len(sets)):
            b = sets[j]
            inter = len(a & b)
            if not inter:
                continue
            jac = inter / len(a | b)
            if jac > best:
                best, pair = jac, (ids[i], ids[j])
    sentences = Counter(
        s.strip().lower() for t in texts for s in _SENT.split(t) if len(words(s)) >= 4
    )
    top_sent, top_count = sentences.most_common(1)[0] if sentences else ("", 0)
    lengths = sorted(len(words(t)) for t in texts)
    rep = {
        "file": str(path),
        "texts": len(texts),
        "max_overlap": round(best, 3),
        "max_overlap_pair": list(pair),
        "max_sentence_repeats": top_count,
        "most_repeated_sentence": top_sent[:80],
        "words_min": lengths[0] if lengths else 0,
        "words_median": lengths[len(lengths) // 2] if lengths else 0,
        "words_max": lengths[-1] if lengths else 0,
    }
    problems = []
    if best > MAX_OVERLAP:
        problems.append(f"{path}: rows {pair[0]} and {pair[1]} overlap {best:.2f} > {MAX_OVERLAP}")
    if top_count > MAX_SENTENCE_REPEATS:
        problems.append(f"{path}: sentence repeated {top_count}x: {top_sent[:80]!r}")
    short = [i for i, t in zip(ids, texts) if not MIN_WORDS <= len(words(t)) <= MAX_WORDS]
    if short:
        problems.append(f"{path}: {len(short)} texts outside {MIN_WORDS}-{MAX_WORDS} words, e.g. {short[:3]}")
    return rep, problems


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or [Path("data")]
    files = []
    for t in targets:
        files.extend(sorted(t.rglob("*.jsonl")) if t.is_dir() else [t])
    all_problems = []
    for f in files:
        rep, problems = report_file(f)
        print(json.dumps(rep))
        all_problems.extend(problems)
    for p in all_problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
