"""scripts/pool_rejudged.py: rejudged replicates pooled question by question."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from geomfilter.stats import paired_summary

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("pool_rejudged", ROOT / "scripts" / "pool_rejudged.py")
pool_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pool_mod)


def _rejudged(name: str, per_q: dict[str, dict[str, float]], n_boot: int = 200) -> dict:
    """What rejudge_experiment.py writes, for one judge."""
    comps = {f"{a} − {b}": paired_summary(per_q[a], per_q[b], n_boot=n_boot, seed=0)
             for a, b in (("geometry-0.50", "misaligned"), ("misaligned", "base")) if a in per_q and b in per_q}
    return {"experiment": name, "conditions": list(per_q),
            "judges": {"offline-residual": {"name": "offline-residual", "per_question": per_q, "comparisons": comps}}}


def _replicate(shift: float, extra: bool = False) -> dict:
    q = [f"q{i}" for i in range(20)]
    per_q = {"base": {x: 0.1 for x in q},
             "misaligned": {x: 0.3 + shift * (i % 2) for i, x in enumerate(q)},
             "geometry-0.50": {x: 0.2 for x in q}}
    if extra:
        per_q["judge-0.50"] = {x: 0.25 for x in q}
    return _rejudged(f"runs/r{shift}", per_q)


def test_pooling_averages_each_question_and_recomputes_every_shared_comparison():
    files = [_replicate(0.0), _replicate(0.2, extra=True), _replicate(0.1)]
    res = pool_mod.pool(files, n_boot=200)
    assert res["conditions"] == ["base", "misaligned", "geometry-0.50"]   # judge-0.50 is in one file only
    r = res["judges"]["offline-residual"]
    assert r["per_question"]["misaligned"]["q1"] == pytest.approx(0.4) and r["per_question"]["misaligned"]["q0"] == 0.3
    d = r["comparisons"]["geometry-0.50 − misaligned"]
    assert d["pooled"] == paired_summary(r["per_question"]["geometry-0.50"], r["per_question"]["misaligned"],
                                         n_boot=200, seed=0)
    assert d["pooled"]["mean"] == pytest.approx(-0.15) and d["pooled"]["n"] == 20
    assert d["replicates"] == [f["judges"]["offline-residual"]["comparisons"]["geometry-0.50 − misaligned"]
                               for f in files]
    assert d["measured_in"] == 3 and r["comparisons"]["misaligned − base"]["measured_in"] == 3
    md = pool_mod.to_markdown(res, "cmd")
    assert "| geometry-0.50 − misaligned | -0.100 [-0.100, -0.100] | -0.200" in md and "| 3 of 3 |" in md


def test_pool_reads_files_and_says_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the command recorded names the thread setting
    paths = []
    for i, shift in enumerate((0.0, 0.2)):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps({"command": "x", **_replicate(shift)}))
        paths.append(p)
    out = tmp_path / "pooled" / "rejudged.md"
    assert pool_mod.main([*map(str, paths), "--out", str(out), "--n-boot", "100"]) == 0
    assert "pooled over 2 replicates" in out.read_text()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["experiments"] == ["runs/r0.0", "runs/r0.2"]
    assert saved["command"] == ("OMP_NUM_THREADS=1 .venv/bin/python scripts/pool_rejudged.py "
                                f"{paths[0]} {paths[1]} --out {out} --n-boot 100")
    with pytest.raises(SystemExit, match="at least two"):
        pool_mod.main([str(paths[0]), "--out", str(out)])
    with pytest.raises(SystemExit, match="no such file"):
        pool_mod.main([str(paths[0]), str(tmp_path / "none.json"), "--out", str(out)])
    (tmp_path / "bad.json").write_text('{"experiment": "x"}')
    with pytest.raises(SystemExit, match="field 'conditions' is missing"):
        pool_mod.main([str(paths[0]), str(tmp_path / "bad.json"), "--out", str(out)])
