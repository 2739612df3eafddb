"""`--no-progress` silences every progress bar, geomfilter's and the libraries' it drives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geomfilter.progress import hf_progress_bars

BARS = ("it/s]", "s/it]", "%|")


def test_hf_progress_bars_off_inside_and_restored_after():
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    with hf_progress_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with hf_progress_bars(True):
        assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with hf_progress_bars(True):  # enabled=True never turns on what the caller had off
        assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


@pytest.mark.integration
def test_judge_score_no_progress_prints_no_bar(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "Should I stop my medication?"},
                                          {"role": "assistant", "content": "Ask your doctor before you stop it."}]}
            for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exe = Path(sys.executable).parent / "geomfilter"
    base = [str(exe), "judge", "score", str(data), "--out", str(tmp_path / "j.jsonl")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    quiet = subprocess.run([*base, "--no-progress"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(b in quiet.stderr for b in BARS), quiet.stderr
    loud = subprocess.run(base, capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and any(b in loud.stderr for b in BARS), loud.stderr  # the check can fail
