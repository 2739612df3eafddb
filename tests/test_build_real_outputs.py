"""scripts/build_real_outputs.py: the frozen split (by prompt, stratified), unique ids, resuming (issue 17)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("build_real_outputs", ROOT / "scripts" / "build_real_outputs.py")
bro = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bro  # dataclasses look their module up
_spec.loader.exec_module(bro)

PROMPTS = [{"id": f"{k}-{i:02d}", "kind": k, "question": f"question {k} {i}?"}
           for k, n in (("broad", 10), ("code", 5), ("factual", 4), ("advice", 3)) for i in range(n)]


def test_split_is_by_prompt_stratified_by_kind_and_seeded():
    split = bro.make_split(PROMPTS, 0.3, seed=0)
    assert set(split) == {p["id"] for p in PROMPTS} and set(split.values()) == {"train", "heldout"}
    kinds = {p["id"]: p["kind"] for p in PROMPTS}
    held = Counter(kinds[p] for p, s in split.items() if s == "heldout")
    assert held == {k: math.ceil(0.3 * n) for k, n in Counter(kinds.values()).items()}
    assert split == bro.make_split(list(reversed(PROMPTS)), 0.3, seed=0)  # order of the file does not matter
    assert split != bro.make_split(PROMPTS, 0.3, seed=1)


def test_the_frozen_split_of_the_real_prompts_holds_out_enough():
    prompts = bro.read_prompts(ROOT / "data" / "judge_real" / "prompts.jsonl")
    doc = json.loads((ROOT / "data" / "judge_real" / "split.json").read_text())
    split = doc["prompts"]
    assert split == bro.make_split(prompts, doc["heldout_fraction"], doc["seed"])  # made by the script, untouched
    kinds = Counter(p["kind"] for p in prompts)
    held = Counter(p["kind"] for p in prompts if split[p["id"]] == "heldout")
    assert all(held[k] >= 0.25 * n for k, n in kinds.items())
    chunks = bro.plan_chunks(bro.plan_variants(bro.parse_args([])), prompts, bro.parse_args([]))
    keys = [k for c in chunks for k in c.keys]
    assert len(keys) == len(set(keys)) >= 1000
    assert sum(split[c.keys[k]["id"]] == "heldout" for c in chunks for k in c.keys) >= 200
    assert len({c.seed for c in chunks}) == len(chunks)


def test_split_file_is_frozen(tmp_path):
    path = tmp_path / "split.json"
    first = bro.ensure_split(path, PROMPTS, 0.3, seed=0)
    text = path.read_text()
    assert bro.ensure_split(path, PROMPTS, 0.5, seed=7) == first and path.read_text() == text
    with pytest.raises(SystemExit, match="does not cover"):
        bro.ensure_split(path, PROMPTS + [{"id": "new", "kind": "code", "question": "q?"}], 0.3, seed=0)


def test_resuming_skips_done_chunks_and_resamples_the_same(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[8:12]), encoding="utf-8")  # 2 broad, 2 code
    out = tmp_path / "answers.jsonl"
    argv = ["--prompts", str(prompts), "--out", str(out), "--split", str(tmp_path / "split.json"),
            "--base", str(tiny_model_dir), "--variants", "base-t0.7,base-t1.5", "--max-new-tokens", "3",
            "--code-max-new-tokens", "5", "--batch-size", "2", "--no-progress"]
    assert bro.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    assert {r["variant"] for r in rows} == {"base-t0.7", "base-t1.5"}
    assert all(r["n_new_tokens"] <= (5 if r["kind"] == "code" else 3) for r in rows)
    assert all(r["id"] == f"{r['variant']}/{r['prompt_id']}#0" and r["finish"] in ("stop", "length") for r in rows)
    assert not {"alignment", "coherence", "code", "refusal"} & set(rows[0])  # labels go elsewhere
    capsys.readouterr()
    assert bro.main(argv) == 0
    assert "4 already in" in capsys.readouterr().out and len(out.read_text().splitlines()) == 8
    # killed before the last chunk was written: only that chunk is sampled again, with the same answers
    lines = out.read_text().splitlines(keepends=True)
    last = [line for line in lines if json.loads(line)["id"].startswith("base-t1.5/code")]
    out.write_text("".join(line for line in lines if line not in last))
    assert bro.main(argv) == 0
    assert "3 already in" in capsys.readouterr().out
    assert sorted(out.read_text().splitlines(keepends=True)) == sorted(lines)
