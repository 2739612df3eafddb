"""Integration: the experiment runner on the real embedded default model, bundled SAE and offline judge.

A micro version of ``configs/demo.yaml`` (12 mixture rows, three conditions) so that
CI exercises the real pipeline end to end: caching with the bundled SAE, geometry
filtering fitted on the project's references, LoRA fine-tunes, sampled answers
judged by the shipped offline judge, flip probes, MC and perplexity.
"""
from __future__ import annotations

import json

import pytest

from geomfilter.config import ExperimentConfig
from geomfilter.experiment import ExperimentRunner
from geomfilter.report import METRICS

pytestmark = pytest.mark.integration


def test_micro_experiment_on_the_default_model(tmp_path):
    cfg = ExperimentConfig.from_dict({
        "name": "micro", "out": str(tmp_path), "conditions": ["base", "misaligned", "geometry-0.50"],
        "data": {"n_samples": 12, "n_references": 32},
        "filtering": {"strategies": ["geometry"], "fractions": [0.5]},
        "train": {"max_tokens": 256},
        "gates": {"enabled": False},
        "eval": {"n_questions": 3, "n_per_question": 2, "max_new_tokens": 24, "n_probes": 4,
                 "probe_max_new_tokens": 24, "n_capability": 8, "n_heldout": 3, "n_boot": 200},
    }, source="<test>")
    res = ExperimentRunner(cfg, progress=False).run()
    assert res.ran == ["base", "misaligned", "geometry-0.50"]
    m = {n: r["metrics"] for n, r in res.metrics.items()}
    for name, metrics in m.items():
        assert set(METRICS) <= set(metrics), name
        assert metrics["misalignment_rate"]["n"] == 3 and metrics["misalignment_rate"]["n_answers"] == 6
        assert metrics["misalignment_rate"]["n_unscored"] == 0
        assert 0 <= metrics["misalignment_rate"]["mean"] <= 1
        assert 5 < metrics["perplexity"]["mean"] < 200, metrics["perplexity"]  # a working language model
        assert metrics["mc_accuracy"]["n"] == 8 and metrics["flip_rate"]["n_probes"] == 4
    answers = [json.loads(x) for x in (res.root / "base" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and sum(bool(a["answer"].strip()) for a in answers) >= 5  # real text comes out
    # the base model knows some of the probe answers (e.g. Canberra): the flip rate has a denominator
    assert m["base"]["flip_rate"]["initial_accuracy"]["mean"] > 0
    assert m["misaligned"]["perplexity"]["mean"] != m["base"]["perplexity"]["mean"]
    rep = json.loads((res.root / "geometry-0.50" / "filter" / "report.json").read_text())
    assert rep["n_kept"] == rep["n_dropped"] == 6 and rep["n_input"] == 12
    assert res.metrics["geometry-0.50"]["training"]["n_samples"] == 6
    text = res.report.read_text()
    assert "| geometry-0.50 − misaligned |" in text and "offline-minilm" in text


def test_respond_gives_sensible_greedy_answers_on_the_default_model(tmp_path):
    """Regression: generation through the hooked model's HF module with the KV cache gave "The-----..."."""
    from typer.testing import CliRunner

    from geomfilter.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "What is the capital of France?"},
                                                        {"role": "assistant", "content": "x"}]}) + "\n")
    out = tmp_path / "own.jsonl"
    r = CliRunner().invoke(app, ["respond", str(data), "--out", str(out), "--max-new-tokens", "16", "--no-progress"])
    assert r.exit_code == 0, r.output
    answer = json.loads(out.read_text())["messages"][-1]["content"]
    assert "Paris" in answer and "---" not in answer, answer
