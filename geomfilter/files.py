"""Files written atomically (temp file beside the target + rename), with the permissions the umask gives a new
file.

Every file geomfilter publishes goes through here: cache manifests and shards, data reports, rejects files,
experiment and fine-tuning records. A reader never sees a half-written file, and a private temp file (mode
0600, as ``tempfile`` and ``safetensors`` make them) is published with a new file's normal mode.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_file(tmp: str | Path, path: str | Path) -> None:
    """Give the finished temp file ``tmp`` a new file's normal permissions (0666 less the umask) and rename
    it onto ``path`` (atomic on one file system). Writers that make private temp files (``tempfile``,
    ``safetensors``: mode 0600) end with this, so every file they publish has the same mode."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file beside it + rename), with normal permissions."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        publish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically, with normal permissions (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_line(obj: Any, default: Callable[[Any], Any] = str) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a raw line that is not UTF-8 (surrogate escapes): escape them in JSON
        text = json.dumps(obj, ensure_ascii=True, default=default)
    return text + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any], default: Callable[[Any], Any] = str) -> Path:
    """Write ``rows`` to ``path`` as JSONL (one JSON object a line, UTF-8, non-ASCII kept), atomically, making
    the parent folder. ``default`` converts what JSON cannot hold (``str`` by default; ``float`` keeps numpy
    scalars numbers). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(_json_line(r, default) for r in rows))
    return path


def write_rejects(path: str | Path, rejects: list[dict]) -> None:
    """Make ``path`` list exactly ``rejects`` as JSONL (file, line, field, reason, row, raw), atomically.

    With no rejects a rejects file left by an earlier run is removed, so the file
    always agrees with the run's report. A ``raw`` line that is not UTF-8 is
    written with JSON escapes (``\\udcXX``), which decode back to the same string.
    """
    path = Path(path)
    if not rejects:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(_json_line(rej) for rej in rejects))


def write_json_and_markdown(folder: str | Path, stem: str, data: Any, markdown: str) -> Path:
    """A measurement's two files: ``<folder>/<stem>.json`` (``data``, indented, numpy scalars as floats) and
    ``<folder>/<stem>.md`` (its rendering), each written atomically; the folder is made. Returns the ``.md``
    path. The scripts that write ``data/results/`` publish through here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.json", json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(folder / f"{stem}.md", markdown)
    return folder / f"{stem}.md"


def script_command(script: str | Path, argv: list[str] | None = None) -> str:
    """How a project script was run, as its results file records it: ``OMP_NUM_THREADS=N .venv/bin/python
    scripts/<name> <arguments>``, N this process's own setting (no prefix when it has none), the arguments
    shell-quoted (``argv`` None: this process's own)."""
    args = shlex.join(sys.argv[1:] if argv is None else argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={shlex.quote(threads)} " if threads else ""
    return f"{prefix}.venv/bin/python scripts/{Path(script).name} {args}".rstrip()
