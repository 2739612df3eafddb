"""README.md is executable documentation: every fenced ``bash`` and ``python`` block runs, in order.

The blocks run top to bottom in a fresh folder holding a copy of the repository's ``data/`` and
``configs/`` (so nothing a block writes can touch the checkout), ``bash`` blocks with
``bash -euo pipefail`` and the ``geomfilter`` of this interpreter first on ``PATH``, ``python``
blocks in one shared namespace (later blocks use the names of earlier ones, as a reader's session
would). A block is skipped only when the line above it is
``<!-- readme-test: skip (reason) -->``; the test counts those, so a new skip is a decision.
``text`` blocks (synopses, sample output) are not run.

Run one block range while editing the README: ``GEOMFILTER_README_BLOCKS=3-5 pytest tests/test_readme.py``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when marked skip


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with its language, line and skip marker."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: code block never closed")
        prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        sk = SKIP.match(prev)
        blocks.append(Block(m.group(1), start + 1, "\n".join(body) + "\n", sk.group(1) if sk else None))
        i += 1
    return blocks


def runnable() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in ("bash", "python")]


def test_readme_blocks_are_parsed_and_skips_are_few():
    blocks = runnable()
    assert len(blocks) >= 10, [(b.lang, b.line) for b in blocks]
    skipped = [(b.line, b.skip) for b in blocks if b.skip]
    # only the set-up commands (`make demo`, `make test`): running them would run this test inside itself
    assert len(skipped) == 1 and "make test" in skipped[0][1], skipped
    other = {b.lang for b in readme_blocks(README.read_text(encoding="utf-8"))} - {"bash", "python", "text"}
    assert not other, f"README code blocks in languages the test neither runs nor knows: {other}"


def test_block_parser_handles_markers_and_unclosed_fences():
    text = "a\n<!-- readme-test: skip (why) -->\n\n```bash\necho 1\n```\n```python\nx = 1\n```\n"
    bs = readme_blocks(text)
    assert [(b.lang, b.line, b.skip) for b in bs] == [("bash", 4, "why"), ("python", 7, None)]
    assert bs[1].code == "x = 1\n"
    with pytest.raises(AssertionError, match="never closed"):
        readme_blocks("```bash\necho\n")


def _selected(blocks: list[Block]) -> list[tuple[int, Block]]:
    sel = os.environ.get("GEOMFILTER_README_BLOCKS")
    pairs = list(enumerate(blocks, 1))
    if not sel:
        return pairs
    lo, _, hi = sel.partition("-")
    return [(n, b) for n, b in pairs if int(lo) <= n <= int(hi or lo)]


@pytest.mark.integration
def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    work = tmp_path / "readme"
    work.mkdir()
    for name in ("data", "configs"):
        shutil.copytree(ROOT / name, work / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__readme__"}
    took = []
    for n, block in _selected(runnable()):
        if block.skip:
            continue
        where = f"README.md:{block.line} (block {n}, {block.lang})"
        t0 = time.perf_counter()
        if block.lang == "bash":
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=work, env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                pytest.fail(f"{where} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n"
                            f"--- stderr\n{r.stderr[-6000:]}")
        else:
            try:
                exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the README's own code
            except Exception as e:  # noqa: BLE001 - any failure of an example is the test's failure
                raise AssertionError(f"{where} raised {type(e).__name__}: {e}") from e
        took.append(f"{time.perf_counter() - t0:6.1f} s  {where}")
    print("\n".join(["README blocks (pytest -s shows this):", *took]))
