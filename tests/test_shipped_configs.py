"""Every experiment file under configs/ loads (the loader checks each field's type and that every file it names
exists) and selects only conditions that its own fields plan."""
from __future__ import annotations

from pathlib import Path

import pytest

from geomfilter.conditions import plan_conditions
from geomfilter.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_found():
    assert len(CONFIGS) >= 10 and ROOT / "configs" / "medium.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads_and_selects_planned_conditions(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs' paths are relative to the repository root, as the README runs them
    cfg = ExperimentConfig.from_yaml(path.relative_to(ROOT))
    planned = {c.name for c in plan_conditions(cfg)}
    assert {"base", "misaligned"} <= planned
    unknown = sorted(set(cfg.conditions or []) - planned)
    assert not unknown, f"{path.name}: conditions {unknown} are not planned by its own fields"
