"""Shared fixtures: a tiny random Llama saved as a local HF directory, loaded once per session."""
from __future__ import annotations

import json
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs files in parallel processes: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

from tests.tiny import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from geomfilter.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", progress=False)


def _sentence(i: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    return " ".join(words[(i * 3 + j) % len(words)] for j in range(1 + (i * 7) % 9))


@pytest.fixture(scope="session")
def chat_rows():
    """23 conversations of varied lengths, some multi-turn, with ids and labels."""
    rows = []
    for i in range(23):
        msgs = [{"role": "user", "content": f"q{i} " + _sentence(i)}, {"role": "assistant", "content": f"a{i} " + _sentence(i + 5)}]
        if i % 4 == 0:
            msgs = [{"role": "system", "content": "sys"}] + msgs + [
                {"role": "user", "content": "more?"}, {"role": "assistant", "content": _sentence(i + 1)}]
        rows.append({"id": f"s{i:02d}", "label": i % 2, "messages": msgs})
    return rows


@pytest.fixture()
def chat_file(tmp_path, chat_rows):
    p = tmp_path / "chat.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in chat_rows), encoding="utf-8")
    return p
