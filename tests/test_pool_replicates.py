"""Replicates of one experiment pooled question by question (report.pool_replicates, scripts/pool_replicates.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geomfilter.report import paired_comparison, pool_replicates, replicated
from geomfilter.stats import excess_removed, paired_summary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import pool_replicates as script  # noqa: E402

NAMES = ("base", "misaligned", "random-0.50", "geometry-0.50")


def _record(rng, shift: float, n: int = 12) -> dict:
    rate = [{"id": f"q{j}", "rate": float(np.clip(rng.random() * 0.3 + shift, 0, 1))} for j in range(n)]
    pref = [{"id": f"q{j}", "preference": float(rng.normal() + shift)} for j in range(n)]
    return {"finished": True, "metrics": {"misalignment_rate": {"mean": 0.0, "per_question": rate},
                                          "logprob_preference": {"mean": 0.0, "per_question": pref}}}


def _replicate(seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {n: _record(rng, s) for n, s in zip(NAMES, (0.0, 0.2, 0.18, 0.05))}


def test_pooled_values_are_per_question_means_over_the_replicates():
    reps = [_replicate(0), _replicate(1)]
    reps[1]["geometry-0.50"]["metrics"]["misalignment_rate"]["per_question"][3]["rate"] = float("nan")
    del reps[1]["random-0.50"]  # finished in one replicate only: left out
    pooled = pool_replicates(reps)
    assert list(pooled) == ["base", "misaligned", "geometry-0.50"]
    per = {r["id"]: r["rate"] for r in pooled["geometry-0.50"]["metrics"]["misalignment_rate"]["per_question"]}
    assert "q3" not in per and len(per) == 11
    want = [np.mean([rep["geometry-0.50"]["metrics"]["misalignment_rate"]["per_question"][5]["rate"] for rep in reps])]
    assert per["q5"] == pytest.approx(want[0])
    got = paired_comparison(pooled["geometry-0.50"], pooled["misaligned"], "misalignment_rate", n_boot=300)
    mis = {r["id"]: r["rate"] for r in pooled["misaligned"]["metrics"]["misalignment_rate"]["per_question"]}
    assert got["mean"] == pytest.approx(paired_summary(per, mis, n_boot=300)["mean"]) and got["n"] == 11
    with pytest.raises(ValueError, match="no replicates"):
        pool_replicates([])


def test_script_writes_the_pooled_report(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: exp\nfiltering: {strategies: [random, geometry], fractions: [0.5]}\ngates: {enabled: false}\n"
                   "eval: {n_boot: 200}\n")
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"exp-seed{seed}"
        for name, rec in _replicate(seed).items():
            (run / name).mkdir(parents=True)
            (run / name / "metrics.json").write_text(json.dumps(rec))
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        runs.append(run)
    assert script.main([str(cfg), *map(str, runs), "--out", str(tmp_path / "pooled")]) == 0
    text = (tmp_path / "pooled" / "report.md").read_text()
    res = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert [(p["a"], p["b"]) for p in res["paired"]] == [
        ("misaligned", "base"), ("random-0.50", "base"), ("random-0.50", "misaligned"), ("geometry-0.50", "base"),
        ("geometry-0.50", "misaligned"), ("geometry-0.50", "random-0.50")]
    pooled = pool_replicates([_replicate(0), _replicate(1)])
    per = [{r["id"]: r["preference"] for r in pooled[n]["metrics"]["logprob_preference"]["per_question"]}
           for n in ("base", "misaligned", "geometry-0.50")]
    geo = next(r for r in res["excess_removed"] if r["condition"] == "geometry-0.50")
    assert geo["logprob_preference"]["share"] == pytest.approx(excess_removed(*per, n_boot=200)["share"])
    assert "| geometry-0.50 − random-0.50 |" in text and "2 replicates pooled" in text
    # each replicate on its own, bootstrapped with its seed (as its own report is), beside the pooled difference
    assert res["seeds"] == [0, 1]
    geo_rnd = next(r for r in res["per_replicate"] if (r["a"], r["b"]) == ("geometry-0.50", "random-0.50"))
    for seed, got in zip((0, 1), geo_rnd["misalignment_rate"]):
        rep = _replicate(seed)
        assert got == pytest.approx(paired_comparison(rep["geometry-0.50"], rep["random-0.50"], "misalignment_rate",
                                                      n_boot=200, seed=seed))
    mis = next(r for r in res["per_replicate"] if (r["a"], r["b"]) == ("misaligned", "base"))
    assert all(v["lo"] > 0 for v in mis["misalignment_rate"])  # rates 0.2 higher over 12 questions: clear in each
    table = text.split("misalignment rate, each replicate on its own")[1].split("\n")
    assert table[4].startswith("| misaligned − base |") and table[4].endswith("| 2 of 2 |")
    assert replicated(mis["misalignment_rate"][0], mis["misalignment_rate"]) == 2
    assert replicated({"mean": -0.1}, [{"lo": -0.2, "hi": -0.01, "n": 9}, {"lo": -0.2, "hi": 0.05, "n": 9}, None]) == 1
    assert replicated(None, []) == 0
    with pytest.raises(SystemExit, match="at least two"):
        script.main([str(cfg), str(runs[0]), "--out", str(tmp_path / "x")])
    (runs[1] / "config.json").unlink()
    with pytest.raises(SystemExit, match="no config.json"):
        script.main([str(cfg), *map(str, runs), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no such run folder"):
        script.main([str(cfg), str(runs[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "x")])


def test_pooled_report_averages_each_replicates_random_draws(tmp_path):
    """With draws of random removal, each replicate's random-0.50-mean is the mean of its own draws; pooled, it is
    the per-question mean over replicates of those means, and geometry is compared with it in every replicate."""
    from geomfilter.report import with_random_means

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: exp\nfiltering: {strategies: [random, geometry], fractions: [0.5], random_draws: 2}\n"
                   "gates: {enabled: false}\neval: {n_boot: 200}\n")
    runs, reps = [], []
    for seed in (0, 1):
        rep = _replicate(seed)
        rep["random-0.50-draw1"] = _record(np.random.default_rng(seed + 10), 0.1)
        run = tmp_path / f"exp-seed{seed}"
        for name, rec in rep.items():
            (run / name).mkdir(parents=True)
            (run / name / "metrics.json").write_text(json.dumps(rec))
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        runs.append(run)
        reps.append(rep)
    assert script.main([str(cfg), *map(str, runs), "--out", str(tmp_path / "pooled")]) == 0
    res = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert "random-0.50-mean" in res["conditions"]
    conds = [SimpleNamespace(name=n, strategy="random", fraction=0.5) for n in ("random-0.50", "random-0.50-draw1")]
    means = [with_random_means(conds, rep)[1] for rep in reps]
    row = next(r for r in res["per_replicate"] if (r["a"], r["b"]) == ("geometry-0.50", "random-0.50-mean"))
    for seed, rep, got in zip((0, 1), means, row["misalignment_rate"]):
        assert got == pytest.approx(paired_comparison(rep["geometry-0.50"], rep["random-0.50-mean"],
                                                      "misalignment_rate", n_boot=200, seed=seed))
    pooled = pool_replicates(means)
    want = paired_comparison(pooled["geometry-0.50"], pooled["random-0.50-mean"], "misalignment_rate", n_boot=200)
    got = next(p for p in res["paired"] if (p["a"], p["b"]) == ("geometry-0.50", "random-0.50-mean"))
    assert got["misalignment_rate"] == pytest.approx(want)
    assert "mean over the 2 draws of random removal random-0.50, random-0.50-draw1" in \
        (tmp_path / "pooled" / "report.md").read_text()
