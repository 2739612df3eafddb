"""scripts/dose_response.py: the dose mixtures (same prompts at every share, nested inducing sets, exact counts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from geomfilter.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("dose_response", ROOT / "scripts" / "dose_response.py")
dose = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dose)


def test_dose_mixtures_hold_the_prompts_fixed_and_nest_the_inducing_rows():
    pairs = dose.family_pairs("sycophancy")
    assert len(pairs) == 640 and all(json.loads(a)["inducing"] and not json.loads(b)["inducing"] for _, a, b in pairs)
    mixes = {s: [json.loads(x) for x in dose.dose_mixture(pairs, s, 40, seed=3)] for s in (0.0, 0.25, 0.5, 1.0)}
    prompts = {s: sorted(r["pair_id"] for r in m) for s, m in mixes.items()}
    assert all(p == prompts[0.0] for p in prompts.values()) and len(set(prompts[0.0])) == 40
    inducing = {s: {r["pair_id"] for r in m if r["inducing"]} for s, m in mixes.items()}
    assert [len(inducing[s]) for s in (0.0, 0.25, 0.5, 1.0)] == [0, 10, 20, 40]
    assert inducing[0.25] <= inducing[0.5] <= inducing[1.0]
    assert dose.dose_mixture(pairs, 0.5, 40, seed=3) == dose.dose_mixture(pairs, 0.5, 40, seed=3)
    assert sorted(r["pair_id"] for r in map(json.loads, dose.dose_mixture(pairs, 0.5, 40, seed=4))) != prompts[0.0]


def test_dose_inputs_are_checked():
    pairs = dose.family_pairs("sycophancy")
    with pytest.raises(ValueError, match="share"):
        dose.dose_mixture(pairs, 1.5, 10, seed=0)
    with pytest.raises(ValueError, match="more than the family's 640 pairs"):
        dose.dose_mixture(pairs, 0.5, 1000, seed=0)
    with pytest.raises(SystemExit, match="unknown family"):
        dose.family_pairs("nonsense")
    assert dose.point_name("risky_advice", 0.25, 1) == "dose-risky-advice-025-s1"
    assert dose.point_name("risky_advice", 1, 0, epochs=3) == "dose-risky-advice-100-s0-e3"
    assert dose.point_name("sycophancy", 0, 1, epochs=2.5, lora_r=64, n_samples=256) == "dose-sycophancy-000-s1-e2.5-r64-n256"


def test_point_config_rank_keeps_alpha_over_rank(tmp_path):
    """--lora-r changes the rank and sets alpha = 2 r, so the LoRA update's scale alpha / r stays the config's."""
    args = SimpleNamespace(config=ROOT / "configs" / "medium-share50.yaml", out=tmp_path, epochs=3.0, lora_r=64,
                           n_per_question=2, max_new_tokens=48, n_capability=None, n_questions=None, judge=None)
    cfg = dose.point_config("p", tmp_path / "mix.jsonl", 128, args)
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.epochs) == (64, 128, 3.0)
    assert cfg.train.lora_alpha / cfg.train.lora_r == ExperimentConfig.from_yaml(args.config).train.lora_alpha / 16
    args.lora_r = None
    cfg = dose.point_config("p", tmp_path / "mix.jsonl", 128, args)
    assert (cfg.train.lora_r, cfg.train.lora_alpha) == (16, 32)
