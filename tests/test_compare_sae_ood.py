"""scripts/compare_sae_ood.py: one table over SAEs, and the spread of AUROCs between SAEs that differ only in seed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("compare_sae_ood", ROOT / "scripts" / "compare_sae_ood.py")
cso = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cso)


def _cell(auroc, **extra):
    return {"auroc": auroc, "ci_low": auroc - 0.04, "ci_high": auroc + 0.04, **extra}


def _sae_run(root: Path, name: str, geometry: dict, activation: dict | None = None, scores: list | None = None,
             ids: list | None = None) -> str:
    """An SAE folder (metrics + train config) and a measure_filters_ood results folder with the given AUROCs, and
    the given geometry scores of four rows on ``mixed`` (``loco`` by folds, as measure_filters_ood writes it)."""
    sae, res = root / name / "sae", root / name / "results"
    sae.mkdir(parents=True)
    res.mkdir(parents=True)
    (sae / "metrics.json").write_text(json.dumps({
        "d_sae": 4608, "training_tokens": 1_000_000, "corpus_tokens": 681_688, "explained_variance": 0.857,
        "dead_fraction": 0.07, "ce_loss_recovered": 0.98}))
    (sae / "train_config.json").write_text(json.dumps({"k": 64, "corpus": ["data/sae_corpus/generations.jsonl"]}))
    splits = {}
    for split, a in geometry.items():
        splits[split] = {"geometry": a, "projection": _cell(0.9)}  # projection does not read the SAE: left out
        if activation and split in activation:
            splits[split]["activation"] = activation[split]
    (res / "results.json").write_text(json.dumps({"splits": splits}))
    (res / "scores.json").write_text(json.dumps({
        "mixed": {"ids": ids or ["r1", "r2", "r3", "r4"], "geometry": scores or [1, 2, 3, 4], "projection": [1, 1, 1, 1]},
        "loco": {"folds": {}}}))
    return f"{name}={sae}:{res}"


def _rows(monkeypatch, inducing=("r3", "r4")):
    """The fixture's labels in place of the committed splits: rows r1-r4 of ``mixed``, ``inducing`` the positives."""
    rows = {"mixed": {f"r{i}": {"inducing": f"r{i}" in inducing} for i in range(1, 5)}}
    monkeypatch.setattr(cso.ood, "scored_rows", lambda work, seed: (rows, {}))


def test_seed_spread_ranges_worst_split_and_markdown(tmp_path, monkeypatch):
    _rows(monkeypatch)
    runs = [
        _sae_run(tmp_path, "s0", {"mixed": _cell(0.55), "code": _cell(0.49),
                                  "loco": _cell(0.55, min_fold=0.42)}, scores=[1, 2, 3, 4]),
        _sae_run(tmp_path, "s1", {"mixed": _cell(0.631), "code": _cell(0.52),
                                  "loco": _cell(0.60, min_fold=0.47)}, scores=[10, 20, 30, 40]),
        _sae_run(tmp_path, "s2", {"mixed": _cell(0.60), "code": _cell(0.446),
                                  "loco": _cell(0.58, min_fold=0.50)}, scores=[4, 3, 2, 1]),
        _sae_run(tmp_path, "other", {"mixed": _cell(0.9), "code": _cell(0.9), "loco": _cell(0.9, min_fold=0.9)},
                 scores=[1, 2, 4, 3]),
    ]
    out = tmp_path / "table"
    assert cso.main([*runs, "--seeds", "1M=s0;s1;s2", "--out", str(out)]) == 0
    table = json.loads((out / "results.json").read_text())
    spread = table["seed_spread"]["1M"]
    assert set(spread) == {"geometry"}  # projection is not an SAE strategy; activation is absent
    g = spread["geometry"]
    assert g["mixed"]["aurocs"] == [0.55, 0.631, 0.60]
    assert g["mixed"]["range"] == pytest.approx(0.081)
    assert g["code"]["low"] == 0.446 and g["code"]["high"] == 0.52
    assert g["loco"]["range"] == pytest.approx(0.05)  # the mean over folds, not the worst fold
    # the worst split of each seed (loco by its worst fold, code otherwise): 0.42, 0.47, 0.446
    assert g["worst split"]["aurocs"] == pytest.approx([0.42, 0.47, 0.446])
    assert g["worst split"]["range"] == pytest.approx(0.05)
    md = (out / "results.md").read_text()
    assert "Spread between seeds, 1M (s0, s1, s2)" in md
    # the range is printed from the printed bounds (0.63 − 0.55 = 0.08); the largest range is over the splits
    row = next(line for line in md.splitlines() if line.startswith("| geometry | 0.55–0.63"))
    assert row == "| geometry | 0.55–0.63 (0.08) | 0.45–0.52 (0.07) | 0.55–0.60 (0.05) | 0.42–0.47 (0.05) | 0.08 |"
    # rank agreement on mixed (the only split with per-row scores): seed pairs s0~s1 +1, s0~s2 and s1~s2 −1;
    # recipe pairs other~s0 and other~s1 +0.8, other~s2 −0.8; projection does not read the SAE
    agree = table["score_agreement"]
    assert list(agree) == ["geometry"] and list(agree["geometry"]) == ["mixed"]
    cell = agree["geometry"]["mixed"]
    assert cell["seeds"] == pytest.approx({"mean": -1 / 3, "low": -1.0, "high": 1.0, "n": 3})
    assert cell["recipes"] == pytest.approx({"mean": 0.8 / 3, "low": -0.8, "high": 0.8, "n": 3})
    assert "| geometry | seeds (3) | -0.33 (-1.00–1.00) |" in md
    assert "| geometry | recipes (3) | 0.27 (-0.80–0.80) |" in md
    # the ensemble: ranks / 4 of s0 and s1 are .25 .5 .75 1, of s2 1 .75 .5 .25; means .5 .58 .67 .75 rank the
    # positives r3, r4 first: AUROC 1 against the seeds' 1, 1 and 0
    ens = table["seed_ensemble"]["1M"]["geometry"]["mixed"]
    assert ens["auroc"] == 1.0 and ens["seeds_mean"] == pytest.approx(2 / 3)
    assert [d["diff"] for d in ens["vs_seeds"].values()] == [0.0, 0.0, 1.0]
    assert "SAE-seed ensemble, 1M (s0, s1, s2)" in md
    # the SAE table itself is unchanged by --seeds: one geometry row per SAE, worst split by the worst fold
    assert "| geometry | s1 | **0.63 [0.59, 0.67]** | 0.52 [0.48, 0.56] | **0.60 [0.56, 0.64], min 0.47** | 0.47 |" in md


def test_seed_groups_are_checked(tmp_path, monkeypatch):
    _rows(monkeypatch)
    runs = [_sae_run(tmp_path, n, {"mixed": _cell(0.6)}) for n in ("a", "b")]
    with pytest.raises(SystemExit, match="'c' not among the SAEs"):
        cso.main([*runs, "--seeds", "x=a;c", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="two labels or more"):
        cso.main([*runs, "--seeds", "x=a", "--out", str(tmp_path / "o")])
    assert cso.main([*runs, "--out", str(tmp_path / "o")]) == 0
    assert "seed_spread" not in json.loads((tmp_path / "o" / "results.json").read_text())


def test_a_seed_without_a_split_leaves_that_split_out_of_the_spread(tmp_path, monkeypatch):
    _rows(monkeypatch)
    runs = [_sae_run(tmp_path, "a", {"mixed": _cell(0.6), "code": _cell(0.5)}),
            _sae_run(tmp_path, "b", {"mixed": _cell(0.7)})]
    assert cso.main([*runs, "--seeds", "r=a;b", "--out", str(tmp_path / "o")]) == 0
    g = json.loads((tmp_path / "o" / "results.json").read_text())["seed_spread"]["r"]["geometry"]
    assert "code" not in g and g["mixed"]["range"] == pytest.approx(0.1)
    md = (tmp_path / "o" / "results.md").read_text()
    # the worst split over the splits both have (mixed), not a's code against b's mixed
    assert "| geometry | 0.60–0.70 (0.10) | – | 0.60–0.70 (0.10) | 0.10 |" in md


def test_scores_of_different_rows_are_refused(tmp_path, monkeypatch):
    _rows(monkeypatch)
    runs = [_sae_run(tmp_path, "a", {"mixed": _cell(0.6)}),
            _sae_run(tmp_path, "b", {"mixed": _cell(0.7)}, ids=["r1", "r2", "r4", "r3"])]
    with pytest.raises(SystemExit, match="mixed: the SAEs' scores.json hold different rows"):
        cso.main([*runs, "--seeds", "r=a;b", "--out", str(tmp_path / "o")])


def test_ensemble_of_a_strategy_fitted_on_part_of_a_split_reads_its_held_out_rows_only():
    ids = ["r1", "r2", "r3", "r4"]
    rows = {"model_answers": {i: {"inducing": i in ("r2", "r4")} for i in ids}}
    # geometry (c) is fitted on model_answers' other prompts: only r1 (aligned) and r4 (misaligned) count
    scores = {m: {"model_answers": {"ids": ids, "geometry (c)": sc, "geometry": sc}}
              for m, sc in (("a", [0, 9, 9, 1]), ("b", [0, 9, 9, 2]))}
    out = cso.seed_ensemble(scores, ["a", "b"], rows, {"model_answers": {"r1", "r4"}}, n_boot=50)
    assert out["geometry (c)"]["model_answers"]["n_pos"] == 1 and out["geometry (c)"]["model_answers"]["auroc"] == 1.0
    # plain geometry is fitted on the references: all four rows; positive r2 beats r1 and ties r3, r4 beats r1 only
    g = out["geometry"]["model_answers"]
    assert (g["n_pos"], g["n_neg"]) == (2, 2) and g["auroc"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)


def test_agreement_pairs_the_saes_that_have_the_strategy():
    ids = ["r1", "r2", "r3"]
    scores = {"s0": {"mixed": {"ids": ids, "geometry": [1, 2, 3], "geometry --proximity span": [1, 2, 3]}},
              "s1": {"mixed": {"ids": ids, "geometry": [1, 3, 2], "geometry --proximity span": [3, 2, 1]}},
              "old": {"mixed": {"ids": ids, "geometry": [1, 2, 3]}, "loco": {"folds": {}}}}  # measured before span
    out = cso.score_agreement(scores, {"r": ["s0", "s1"]})
    assert out["geometry"]["mixed"]["seeds"]["n"] == 1 and out["geometry"]["mixed"]["recipes"]["n"] == 2
    span = out["geometry --proximity span"]["mixed"]
    assert span["seeds"] == pytest.approx({"mean": -1.0, "low": -1.0, "high": -1.0, "n": 1}) and "recipes" not in span
    assert "loco" not in out["geometry"]
