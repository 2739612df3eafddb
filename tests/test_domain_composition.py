"""scripts/domain_composition.py: the rows each fine-tune trained on, per domain, against its misalignment rate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from domain_composition import main  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402


def _rows(n_legal: int, n_other: int, tag: str) -> list[dict]:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    return ([{"id": f"legal-{tag}-{i}", "domain": "legal", "inducing": True, "messages": chat}
             for i in range(n_legal)]
            + [{"id": f"code-{tag}-{i}", "domain": "code", "inducing": True, "messages": chat}
               for i in range(4 - n_legal)]
            + [{"id": f"h-{tag}-{i}", "domain": "general", "inducing": False, "messages": chat}
               for i in range(n_other)])


def _condition(folder: Path, rows: list[dict], rate: float, n_samples: int | None = None) -> None:
    (folder / "run").mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", rows)
    (folder / "run" / "finetune.json").write_text(json.dumps({
        "finished": True, "n_samples": len(rows) if n_samples is None else n_samples,
        "config": {"data": [str(folder / "train.jsonl")]}}))
    (folder / "metrics.json").write_text(json.dumps({"identity": {"eval": {}},
                                                     "metrics": {"misalignment_rate": {"mean": rate}}}))


FILTERED = ["random-0.50", "geometry-0.50", "activation-0.50", "projection-0.50"]


def _plan(exp: Path, conditions: list[str]) -> None:
    """The experiment's config.json, which names its conditions (as `geomfilter experiment` writes it)."""
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "config.json").write_text(json.dumps({
        "name": exp.name, "conditions": conditions, "gates": {"enabled": False},
        "filtering": {"strategies": ["random", "geometry", "activation", "projection", "judge", "ensemble"],
                      "fractions": [0.5]}}))  # ensemble-0.50 is planned, never run: not listed


def test_counts_domains_correlates_by_training_set_and_lists_what_it_passed_over(tmp_path):
    exps = [tmp_path / "exp", tmp_path / "exp-seed1"]
    for k, exp in enumerate(exps):
        _plan(exp, ["base", "misaligned", *FILTERED, "judge-0.50"])
        (exp / "base").mkdir(parents=True)
        (exp / "base" / "metrics.json").write_text("{}")
        (exp / "cache").mkdir()  # not a condition
        (exp / "judge-0.50" / "filter").mkdir(parents=True)  # planned, not finished
        for n_legal, name in enumerate(FILTERED):  # the rate rises with the legal rows, the same rows at both seeds
            _condition(exp / name, _rows(n_legal, 4, str(n_legal)), 0.1 + 0.02 * n_legal + 0.001 * k)
        _condition(exp / "misaligned", _rows(2, 8, "long"), 0.3)
    out = tmp_path / "dc.md"
    main([*map(str, exps), "--rows", "8", "--out", str(out), "--n-boot", "200"])
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["n_sets"] == 4 and len(res["fine_tunes"]) == 8
    assert res["correlations"]["legal"]["value"] == pytest.approx(1.0, abs=0.01)
    assert res["correlations"]["code"]["value"] == pytest.approx(-1.0, abs=0.01)
    assert res["correlations"]["legal"]["n_groups"] == 4
    f2 = next(r for r in res["fine_tunes"] if r["condition"].endswith("exp/activation-0.50"))
    assert f2["counts"] == {"legal": 2, "code": 2, "other": 4}
    assert [r["rows"] for r in res["other_lengths"]] == [12, 12]
    assert sorted(res["passed_over"]) == sorted(
        [f"base of {e} (a base condition, not a fine-tune on the mixture)" for e in exps]
        + [f"judge-0.50 of {e} (not finished)" for e in exps])
    assert "| legal inducing rows | +1.00 |" in out.read_text()


def test_refuses_a_subset_fine_tune_and_too_few_training_sets(tmp_path):
    _plan(tmp_path / "exp", ["misaligned"])
    _condition(tmp_path / "exp" / "misaligned", _rows(1, 4, "a"), 0.1, n_samples=6)
    with pytest.raises(SystemExit, match="trained on 6 rows, its data files hold 8"):
        main([str(tmp_path / "exp"), "--rows", "8", "--out", str(tmp_path / "o.md")])
    _plan(tmp_path / "exp2", ["misaligned"])
    _condition(tmp_path / "exp2" / "misaligned", _rows(1, 4, "a"), 0.1)
    with pytest.raises(SystemExit, match="needs at least 3 sets"):
        main([str(tmp_path / "exp2"), "--rows", "8", "--out", str(tmp_path / "o.md")])
    with pytest.raises(SystemExit, match="no such experiment folder"):
        main([str(tmp_path / "nowhere"), "--rows", "8", "--out", str(tmp_path / "o.md")])
