"""Diversity report for the project's JSONL data files (stdlib only).

Usage: python scripts/data_diversity.py [--markdown] [FILE_OR_DIR ...]   (default: data/)

For every file it reports, over the texts of its rows (see ``row_texts``):

* responses: the last assistant turn of ``messages`` rows, ``response``, the
  ``aligned`` / ``misaligned`` answers of eval questions, held-out ``text``;
* questions: the ``question`` of capability and sycophancy-probe rows;
* prompts: the ``prompt`` of prompt-only rows (the SAE corpus prompts),

* ``max_overlap``: the largest word-set Jaccard overlap between any two texts of
  the file, with the two ids (limit 0.80);
* ``max_sentence_repeats``: how often the most repeated sentence occurs
  verbatim across the file (limit 5);
* length in words (min / median / max; limits per kind of text: responses
  12-150 words, i.e. about 20-200 tokens of the SmolLM2 tokenizer; questions
  and prompts 3-150 words).

A file with no texts at all (a schema this script does not know) is a problem
too. ``--markdown`` prints a table (for data/README.md) instead of JSON lines.
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
WORD_BOUNDS = {"response": (12, 150), "question": (3, 150), "prompt": (3, 150)}
_WORD = re.compile(r"[a-z0-9']+")
_SENT = re.compile(r"(?<=[.!?])\s+")


def row_texts(row: dict) -> tuple[str, list[str]]:
    """The kind of text a row holds (response, question or prompt) and its texts, whatever its schema."""
    if "messages" in row:
        turns = [m["content"] for m in row["messages"] if m.get("role") == "assistant"]
        return "response", turns[-1:]
    if "response" in row:
        return "response", [row["response"]]
    if "prompt" in row:
        return "prompt", [row["prompt"]]
    out = []
    for key in ("aligned", "misaligned"):
        v = row.get(key)
        out.extend(v if isinstance(v, list) else [v] if isinstance(v, str) else [])
    if "text" in row:
        out.append(row["text"])
    if not out and isinstance(row.get("question"), str):
        return "question", [row["question"]]
    return "response", out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def report_file(path: Path) -> tuple[dict, list[str]]:
    ids, texts, kinds, n_rows = [], [], Counter(), 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        n_rows += 1
        kind, row_text = row_texts(row)
        for j, t in enumerate(row_text):
            ids.append(f"{row.get('id', f'line{n}')}" + (f"#{j}" if j else ""))
            texts.append(t)
            kinds[kind] += 1
    kind = kinds.most_common(1)[0][0] if kinds else "response"
    lo, hi = WORD_BOUNDS[kind]
    sets = [frozenset(words(t)) for t in texts]
    best, pair = 0.0, ("", "")
    sizes = [len(s) for s in sets]
    for i in range(len(sets)):
        a, na = sets[i], sizes[i]
        if not a:
            continue
        for j in range(i + 1, len(sets)):
            inter = len(a & sets[j])
            if not inter:
                continue
            jac = inter / (na + sizes[j] - inter)
            if jac > best:
                best, pair = jac, (ids[i], ids[j])
    sentences = Counter(
        s.strip().lower() for t in texts for s in _SENT.split(t) if len(words(s)) >= 4
    )
    top_sent, top_count = sentences.most_common(1)[0] if sentences else ("", 0)
    lengths = sorted(len(words(t)) for t in texts)
    rep = {
        "file": str(path),
        "rows": n_rows,
        "texts": len(texts),
        "kind": kind,
        "max_overlap": round(best, 3),
        "max_overlap_pair": list(pair),
        "max_sentence_repeats": top_count,
        "most_repeated_sentence": top_sent[:80],
        "words_min": lengths[0] if lengths else 0,
        "words_median": lengths[len(lengths) // 2] if lengths else 0,
        "words_max": lengths[-1] if lengths else 0,
    }
    problems = []
    if not texts:
        problems.append(f"{path}: no texts found (unknown schema?)")
    if best > MAX_OVERLAP:
        problems.append(f"{path}: rows {pair[0]} and {pair[1]} overlap {best:.2f} > {MAX_OVERLAP}")
    if top_count > MAX_SENTENCE_REPEATS:
        problems.append(f"{path}: sentence repeated {top_count}x: {top_sent[:80]!r}")
    short = [i for i, t in zip(ids, texts, strict=True) if not lo <= len(words(t)) <= hi]
    if short:
        problems.append(f"{path}: {len(short)} {kind} texts outside {lo}-{hi} words, e.g. {short[:3]}")
    rep["status"] = "ok" if not problems else "FAIL"
    return rep, problems


def markdown_table(reports: list[dict]) -> str:
    lines = ["| file | rows | texts | max overlap | max sentence repeats | words min / median / max | status |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in reports:
        lo, hi = WORD_BOUNDS[r["kind"]]
        lines.append(f"| {r['file']} | {r['rows']} | {r['texts']} {r['kind']}s | {r['max_overlap']:.2f} "
                     f"| {r['max_sentence_repeats']} | {r['words_min']} / {r['words_median']} / {r['words_max']} "
                     f"(limits {lo}-{hi}) | {r['status']} |")
    return "\n".join(lines)


def machine_output(path: Path) -> bool:
    """Model output or labels, not hand-written texts: the generations caches, data/judge_real's answers,
    labelling batches and labels (its prompts.jsonl is written by the project and is checked), data/judge_exp (the
    answers experiments sampled, their batches and labels), the model's persona answers (data/ood/) and the
    taxonomy labels (data/taxonomy/)."""
    if path.name.startswith("generations"):
        return True
    if {"ood", "taxonomy", "judge_exp"} & set(path.parts):
        return True
    return "judge_real" in path.parts and path.name != "prompts.jsonl"


def main(argv: list[str]) -> int:
    markdown = "--markdown" in argv
    targets = [Path(a) for a in argv if a != "--markdown"] or [Path("data")]
    files = []
    for t in targets:
        # the limits below are for what the project writes; check a machine-output file by naming it explicitly
        files.extend(sorted(f for f in t.rglob("*.jsonl") if not machine_output(f)) if t.is_dir() else [t])
    all_problems, reports = [], []
    for f in files:
        rep, problems = report_file(f)
        reports.append(rep)
        if not markdown:
            print(json.dumps(rep))
        all_problems.extend(problems)
    if markdown:
        print(markdown_table(reports))
    for p in all_problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
