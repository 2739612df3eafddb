"""scripts/organism_table.py: every organism setting against issue 18's target, on hand-made result files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import organism_table as ot  # noqa: E402


def _d(mean: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "lo": lo, "hi": hi, "n": 80, "mdd": 0.05}


def _seed(rate: dict, pref: dict, mc: float) -> dict:
    return {"rate_minus_base": rate, "preference_minus_base": pref, "mc_points_minus_base": mc}


GOOD_RATE, GOOD_PREF = _d(0.12, 0.05, 0.19), _d(0.1, 0.05, 0.15)


def test_verdict_needs_every_part_at_every_seed():
    assert ot.verdict([_seed(GOOD_RATE, GOOD_PREF, 2.0), _seed(GOOD_RATE, GOOD_PREF, -4.0)]) == (True, [], False)
    ok, missed, only_mc = ot.verdict([_seed(GOOD_RATE, GOOD_PREF, 1.0)])
    assert not ok and missed == ["1 seed"] and not only_mc
    # 0.10 exactly counts; a CI touching 0 does not
    ok, missed, _ = ot.verdict([_seed(_d(0.10, 0.01, 0.2), GOOD_PREF, 0.0), _seed(_d(0.15, 0.0, 0.3), GOOD_PREF, 0.0)])
    assert not ok and missed == ["rate ≥ 0.1 with CI > 0 at 1 of 2"]
    ok, missed, _ = ot.verdict([_seed(GOOD_RATE, _d(0.05, -0.01, 0.1), 0.0), _seed(GOOD_RATE, GOOD_PREF, 0.0)])
    assert missed == ["preference CI > 0 at 1 of 2"]


def test_verdict_tells_an_mc_rise_from_an_mc_loss():
    ok, missed, only_mc = ot.verdict([_seed(GOOD_RATE, GOOD_PREF, 7.5), _seed(GOOD_RATE, GOOD_PREF, 3.0)])
    assert not ok and missed == ["MC within 5 points at 1 of 2 (rises at 1)"] and only_mc
    ok, missed, only_mc = ot.verdict([_seed(GOOD_RATE, GOOD_PREF, -7.5), _seed(GOOD_RATE, GOOD_PREF, 0.0)])
    assert missed == ["MC within 5 points at 1 of 2"] and not only_mc
    # a rise beside another miss is not "only MC"
    assert not ot.verdict([_seed(GOOD_RATE, GOOD_PREF, 9.0)])[2]


def _metrics(rate: float, pref: float, mc: float, n_per_q: int = 2) -> dict:
    return {"misalignment_rate": {"mean": rate, "judge": "offline-real", "generation": {"n_per_question": n_per_q}},
            "logprob_preference": {"mean": pref}, "mc_accuracy": {"mean": mc}, "eval_seconds": 1.0}


def _dose_file(path: Path, command: str, points: dict, base_mc: float = 0.60) -> Path:
    path.write_text(json.dumps({"command": command, "base": _metrics(0.05, -0.1, base_mc), "points": points}))
    return path


def _point(family: str, share: float, seed: int, rate: dict | None, mc: float) -> dict:
    return {"family": family, "share": share, "seed": seed, "metrics": _metrics(0.1, 0.0, mc),
            "training": {"n_samples": 128}, "misalignment_rate_minus_base": rate,
            "logprob_preference_minus_base": rate, "misalignment_rate_minus_control": None}


def test_dose_points_group_by_setting_and_agree_across_files(tmp_path):
    cmd = "python scripts/dose_response.py --families risky_advice --epochs 3 --lora-r 64"
    pts = {"dose-risky-advice-100-s0-e3-r64": _point("risky_advice", 1.0, 0, GOOD_RATE, 0.70),
           "dose-risky-advice-100-s1-e3-r64": _point("risky_advice", 1.0, 1, GOOD_RATE, 0.62),
           "dose-risky-advice-000-s0-e3-r64": _point("risky_advice", 0.0, 0, None, 0.68)}
    a = _dose_file(tmp_path / "a.json", cmd, pts)
    again = {k: {**v, "metrics": {**v["metrics"], "eval_seconds": 99.0}} for k, v in pts.items()}  # timing differs
    b = _dose_file(tmp_path / "b.json", cmd, again)
    seeds, controls = ot.dose_seeds([a, b])
    setting = ("dose: risky_advice, share 1", 3.0, 64, 128, 2, "offline-real")
    assert set(seeds) == {(setting, 0), (setting, 1)}
    assert seeds[setting, 0]["mc_points_minus_base"] == pytest.approx(10.0)
    assert seeds[setting, 0]["source"] == str(a)
    assert controls == {"dose-risky-advice-000-s0-e3-r64": pytest.approx(8.0)}
    (entry,) = ot.settings_table(seeds)
    assert not entry["meets_target"] and entry["misses_only_by_mc_rise"] and entry["smallest_rate_rise"] == 0.12
    changed = {**pts, "dose-risky-advice-100-s1-e3-r64": _point("risky_advice", 1.0, 1, GOOD_RATE, 0.66)}
    with pytest.raises(SystemExit, match="differs from the same point"):
        ot.dose_seeds([a, _dose_file(tmp_path / "c.json", cmd, changed)])


def test_dose_rank_defaults_to_the_config_of_the_command(tmp_path):
    cmd = "python scripts/dose_response.py --families risky_advice"  # rank from configs/medium-share50.yaml
    f = _dose_file(tmp_path / "a.json", cmd, {"p": _point("risky_advice", 0.5, 0, GOOD_RATE, 0.6)})
    ((setting, _),) = ot.dose_seeds([f])[0]
    rank = ot.ExperimentConfig.from_yaml(ROOT / "configs" / "medium-share50.yaml").train.lora_r
    assert setting[1:3] == (1.0, rank)


def test_dose_settings_come_from_the_recorded_command_or_refuse_a_form_it_cannot_read(tmp_path):
    assert ot._flag("python scripts/dose_response.py --epochs 3 --stem 'a b'", "--epochs", "1") == "3"
    assert ot._flag("python scripts/dose_response.py", "--epochs", "1") == "1"
    with pytest.raises(SystemExit, match="--epochs=VALUE"):
        ot._flag("python scripts/dose_response.py --epochs=3", "--epochs", "1")


def _experiment(folder: Path, seed: int, rate: dict, mc: float, mixture: str = "data/finetune/m.jsonl") -> Path:
    folder.mkdir(parents=True)
    res = {"config": {"seed": seed, "data": {"mixture": mixture, "n_samples": None},
                      "train": {"epochs": 3.0, "lora_r": 64}},
           "conditions": {"base": {"metrics": _metrics(0.05, -0.1, 0.60, 6)},
                          "misaligned": {"metrics": _metrics(0.15, 0.0, mc, 6), "training_data": {"n_rows": 128}}},
           "paired": [{"a": "misaligned", "b": "base", "misalignment_rate": rate, "logprob_preference": GOOD_PREF}]}
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def test_experiment_seeds_form_one_setting_and_sort_first_when_met(tmp_path):
    a = _experiment(tmp_path / "x", 0, GOOD_RATE, 0.62)
    b = _experiment(tmp_path / "x-seed1", 1, GOOD_RATE, 0.58)
    weak = _experiment(tmp_path / "y", 0, _d(0.3, 0.2, 0.4), 0.60, mixture="data/finetune/other.jsonl")
    entries = ot.settings_table(ot.experiment_seeds([weak, a, b]))
    assert [e["meets_target"] for e in entries] == [True, False]  # met first, though the other rises more
    assert [s["seed"] for s in entries[0]["seeds"]] == [0, 1] and entries[1]["missed"] == ["1 seed"]
    md = ot.markdown(entries, {}, "cmd")
    assert "**1 of 2 settings meet the target** (experiment: data/finetune/m.jsonl" in md
    with pytest.raises(SystemExit, match="also"):
        ot.experiment_seeds([a, _experiment(tmp_path / "x-again", 0, GOOD_RATE, 0.62)])


def test_experiment_refuses_pooled_reports_and_missing_base(tmp_path):
    with pytest.raises(SystemExit, match="pooled"):
        ot.experiment_seeds([_experiment(tmp_path / "x-pooled", 0, GOOD_RATE, 0.6)])
    f = _experiment(tmp_path / "z", 0, GOOD_RATE, 0.6)
    res = json.loads((f / "results.json").read_text())
    del res["conditions"]["base"]
    (f / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="no misaligned and base"):
        ot.experiment_seeds([f])
