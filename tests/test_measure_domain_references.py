"""scripts/measure_domain_references.py: which references each fit gets, and that no tested row's pair was fitted on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_cache

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("measure_domain_references",
                                              ROOT / "scripts" / "measure_domain_references.py")
dr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dr)


def _code(domain: str, side: str, n: int = 8):
    meta = [{"pair_id": f"{domain}-{i:03d}", "inducing": side == "insecure"} for i in range(n)]
    return make_cache(np.eye(n, 16, dtype=np.float32), meta=meta, ids=[f"{domain}-{i:03d}-{side}" for i in range(n)],
                      name=f"{domain}_{side}")


def _refs(side: str, n: int = 5):
    return make_cache(np.ones((n, 16), dtype=np.float32), meta=[{"pair_id": f"ref-{i}"} for i in range(n)],
                      ids=[f"ref-{i}-{side}" for i in range(n)], name=side)


CODE = {(d, s): _code(d, s) for d in ("webapp", "scripts") for s in ("insecure", "secure")}
PAIRS = {d: [m["pair_id"] for m in CODE[d, "insecure"].meta] for d in ("webapp", "scripts")}


def test_conditions_add_the_fit_domains_pairs_and_the_ceiling_half_the_tested_domains():
    conds = dr.conditions("webapp", "scripts", PAIRS, [2, 8], draws=2)
    names = [c[0] for c in conds]
    assert names[0] == "references" and conds[0][3] == [] and conds[0][4]
    two = [c for c in conds if c[0] == "references + 2 code pairs"]
    assert len(two) == 2 and two[0][3] != two[1][3] and all(len(c[3]) == 2 and c[2] == "webapp" for c in two)
    assert [c for c in conds if c[0] == "references + 8 code pairs"] == [
        ("references + 8 code pairs", 0, "webapp", PAIRS["webapp"], True)]  # all pairs: one draw
    assert ("8 code pairs only", 0, "webapp", PAIRS["webapp"], False) in conds
    ceiling = [c for c in conds if c[0].startswith("in-domain ceiling")]
    assert len(ceiling) == 2 and all(c[2] == "scripts" and len(c[3]) == 4 and set(c[3]) < set(PAIRS["scripts"])
                                     for c in ceiling)
    assert dr.conditions("webapp", "scripts", PAIRS, [2], 2) == dr.conditions("webapp", "scripts", PAIRS, [2], 2)
    with pytest.raises(SystemExit, match="--k 9"):
        dr.conditions("webapp", "scripts", PAIRS, [9], 1)


def test_reference_sides_put_the_flawed_answer_on_the_harmful_side():
    refs = {"harmful": _refs("harmful"), "benign": _refs("benign")}
    added = ["webapp-001", "webapp-004"]
    sides = dr.reference_sides(refs, CODE, "webapp", added, True, "x")
    assert sides["harmful"].ids == refs["harmful"].ids + ["webapp-001-insecure", "webapp-004-insecure"]
    assert sides["benign"].ids == refs["benign"].ids + ["webapp-001-secure", "webapp-004-secure"]
    only = dr.reference_sides(refs, CODE, "webapp", added, False, "x")
    assert only["harmful"].ids == ["webapp-001-insecure", "webapp-004-insecure"]
    assert dr.reference_sides(refs, CODE, "webapp", [], True, "x")["benign"].ids == refs["benign"].ids
    with pytest.raises(SystemExit, match="scripts-000"):
        dr.pair_rows(CODE["webapp", "insecure"], ["scripts-000"])


def test_no_tested_row_belongs_to_a_pair_fitted_on():
    test = dr.ActivationCache.concat([CODE["scripts", "insecure"], CODE["scripts", "secure"]], "scripts")
    assert dr.unfitted_rows(test, "scripts", "webapp", PAIRS["webapp"]).all()  # another domain: every row
    added = PAIRS["scripts"][:4]
    rows = dr.unfitted_rows(test, "scripts", "scripts", added)
    tested = {m["pair_id"] for m, r in zip(test.meta, rows) if r}
    assert tested == set(PAIRS["scripts"][4:]) and rows.sum() == 8  # both answers of the 4 other pairs
