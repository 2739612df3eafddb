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
    meta = [{"pair_id": f"{domain}-{i:03d}", "inducing": side == "harmful"} for i in range(n)]
    return make_cache(np.eye(n, 16, dtype=np.float32), meta=meta, ids=[f"{domain}-{i:03d}-{side}" for i in range(n)],
                      name=f"{domain}_{side}")


def _refs(side: str, n: int = 5):
    return make_cache(np.ones((n, 16), dtype=np.float32), meta=[{"pair_id": f"ref-{i}"} for i in range(n)],
                      ids=[f"ref-{i}-{side}" for i in range(n)], name=side)


GROUPS = {d: {s: _code(d, s) for s in ("harmful", "benign")} for d in ("webapp", "scripts")}
PAIRS = {d: dr.pair_ids(GROUPS[d]) for d in GROUPS}


def test_conditions_add_the_fit_domains_pairs_and_the_ceiling_half_the_tested_domains():
    conds = dr.conditions("webapp", "scripts", PAIRS, [2, 8], draws=2)
    names = [c[0] for c in conds]
    assert names[0] == "references" and conds[0][3] == [] and conds[0][4]
    two = [c for c in conds if c[0] == "references + 2 pairs"]
    assert len(two) == 2 and two[0][3] != two[1][3] and all(len(c[3]) == 2 and c[2] == "webapp" for c in two)
    assert [c for c in conds if c[0] == "references + 8 pairs"] == [
        ("references + 8 pairs", 0, "webapp", PAIRS["webapp"], True)]  # all pairs: one draw
    assert ("8 pairs only", 0, "webapp", PAIRS["webapp"], False) in conds
    assert [c[3] for c in dr.conditions("webapp", "scripts", PAIRS, [2, 4], 1) if c[0] == "4 pairs only"] == [
        dr.draw_pairs(PAIRS["webapp"], 4, 0)]  # alone: the largest K
    ceiling = [c for c in conds if c[0].startswith("in-group ceiling")]
    assert len(ceiling) == 2 and all(c[2] == "scripts" and len(c[3]) == 4 and set(c[3]) < set(PAIRS["scripts"])
                                     for c in ceiling)
    assert dr.conditions("webapp", "scripts", PAIRS, [2], 2) == dr.conditions("webapp", "scripts", PAIRS, [2], 2)
    with pytest.raises(SystemExit, match="--k 9"):
        dr.conditions("webapp", "scripts", PAIRS, [9], 1)


def test_reference_sides_put_the_flawed_answer_on_the_harmful_side():
    refs = {"harmful": _refs("harmful"), "benign": _refs("benign")}
    added = ["webapp-001", "webapp-004"]
    sides = dr.reference_sides(refs, GROUPS["webapp"], added, True, "x")
    assert sides["harmful"].ids == refs["harmful"].ids + ["webapp-001-harmful", "webapp-004-harmful"]
    assert sides["benign"].ids == refs["benign"].ids + ["webapp-001-benign", "webapp-004-benign"]
    only = dr.reference_sides(refs, GROUPS["webapp"], added, False, "x")
    assert only["harmful"].ids == ["webapp-001-harmful", "webapp-004-harmful"]
    assert dr.reference_sides(refs, GROUPS["webapp"], [], True, "x")["benign"].ids == refs["benign"].ids
    with pytest.raises(SystemExit, match="scripts-000"):
        dr.pair_rows(GROUPS["webapp"]["harmful"], ["scripts-000"])


def test_no_tested_row_belongs_to_a_pair_fitted_on():
    test = dr.ActivationCache.concat([GROUPS["scripts"]["harmful"], GROUPS["scripts"]["benign"]], "scripts")
    assert dr.unfitted_rows(test, PAIRS["webapp"]).all()  # another domain's pairs: every row
    added = PAIRS["scripts"][:4]
    rows = dr.unfitted_rows(test, added)
    tested = {m["pair_id"] for m, r in zip(test.meta, rows) if r}
    assert tested == set(PAIRS["scripts"][4:]) and rows.sum() == 8  # both answers of the 4 other pairs


def test_persona_groups_share_the_ordinary_answers_and_pair_by_prompt(tmp_path):
    """Persona family: each group's harmful side holds its two personas' answers, the benign side the ordinary ones;
    pair ids are prompt ids, so a prompt fitted on (through the other group) is never tested."""
    import json

    rows = [json.loads(x) for x in dr.PERSONA.read_text().splitlines()]
    seen = []

    def cached(path):
        written = [json.loads(x) for x in path.read_text().splitlines()]
        seen.append(path)
        meta = [{k: v for k, v in r.items() if k != "messages"} for r in written]
        return make_cache(np.ones((len(written), 16), dtype=np.float32), meta=meta, ids=[r["id"] for r in written])

    groups = dr.family_groups("persona", cached, tmp_path)
    assert seen == [tmp_path / "persona_answers.jsonl"] and set(groups) == set(dr.FAMILIES["persona"][0])
    for name, g in groups.items():
        assert {m["persona"] for m in g["harmful"].meta} == set(name.split("+"))
        assert {m["persona"] for m in g["benign"].meta} == {"ordinary"} and len(g["benign"]) == 80
        assert all(m["pair_id"] == r["prompt_id"] for m, r in zip(g["harmful"].meta, [
            r for r in rows if r["persona"] in name.split("+")]))
    a, b = groups.values()
    test = dr.ActivationCache.concat([b["harmful"], b["benign"]], "b")
    fitted = dr.pair_ids(a)[:20]
    kept = dr.unfitted_rows(test, fitted)
    assert not {m["pair_id"] for m, k in zip(test.meta, kept) if k} & set(fitted) and kept.sum() == 3 * 60


def test_twin_overlap_counts_shared_top_latents():
    a, b = GROUPS["webapp"]["harmful"], GROUPS["webapp"]["benign"]  # identical one-hot rows: twins share everything
    got = dr.twin_overlap(a, b, k=4)
    assert got["twin"] == 1.0 and got["other_pair"] < 1.0 and got["k"] == 4
    with pytest.raises(SystemExit, match="same pair order"):
        dr.twin_overlap(a, _code("scripts", "benign"), k=4)


def test_pooled_groups_join_rows_and_take_a_shared_benign_cache_once(tmp_path):
    pool = dr.pooled([GROUPS["webapp"], GROUPS["scripts"]], "both")
    assert len(pool["harmful"]) == len(pool["benign"]) == 16 and dr.pair_ids(pool) == PAIRS["webapp"] + PAIRS["scripts"]
    assert dr.pooled([GROUPS["webapp"]], "one")["harmful"] is GROUPS["webapp"]["harmful"]
    shared = GROUPS["webapp"]["benign"]
    assert dr.pooled([{"harmful": GROUPS["webapp"]["harmful"], "benign": shared},
                      {"harmful": GROUPS["scripts"]["harmful"], "benign": shared}], "p")["benign"] is shared


def test_sycophancy_groups_are_the_twin_files_of_each_domain(tmp_path):
    read = []

    def cached(path):
        read.append(path.name)
        return path

    groups = dr.family_groups("sycophancy", cached, tmp_path)
    assert list(groups) == ["career", "code", "health", "legal"]
    assert groups["health"] == {"harmful": dr.FT / "health_sycophantic.jsonl", "benign": dr.FT / "health_corrective.jsonl"}
    assert all((dr.FT / name).is_file() for name in read) and len(read) == 8


def test_score_fit_leaves_out_fitted_pairs_and_pairs_with_the_first_fit():
    from geomfilter.filtering import make_filter

    rng = np.random.default_rng(0)
    n = 12
    y = np.arange(n) % 2 == 0
    meta = [{"pair_id": f"p{i // 2}", "inducing": bool(y[i]), "domain": "a" if i < 6 else "b"} for i in range(n)]
    dense = rng.random((n, 16)).astype(np.float32) + y[:, None] * np.eye(16, dtype=np.float32)[0]
    cache = make_cache(dense, meta=meta)
    f = make_filter("activation", harmful_ids=[0], drop=0.25).fit(cache, cache)
    splits = {"held_out": (cache, y), "mixed": (cache, y)}
    base: dict = {}
    first = dr.score_fit(f, splits, [], base, n_boot=50)
    assert set(base) == {"held_out", "mixed"} and "vs_references" not in first["held_out"]
    assert first["held_out"]["n_pos"] == 6 and set(first["mixed"]["by_domain"]) == {"a", "b"}
    assert "by_domain" not in first["held_out"]
    later = dr.score_fit(f, splits, ["p0", "p1"], base, n_boot=50)  # rows 0-3 fitted on: not scored
    assert later["held_out"]["n_pos"] == 4 and later["mixed"]["n_neg"] == 4
    assert later["held_out"]["vs_references"]["diff"] == 0.0  # the same filter: no difference from the first fit


def test_code_cut_groups_keep_the_shared_opening_and_the_code_and_drop_what_follows(tmp_path):
    groups = dr.family_groups("code_cut", lambda path: path, tmp_path)
    assert list(groups) == ["webapp", "scripts"]
    assert groups["scripts"]["harmful"] == tmp_path / "scripts_insecure_cut.jsonl"
    for side, twin in (("harmful", "insecure"), ("benign", "secure")):
        cut = dr.read_rows(groups["scripts"][side])
        whole = dr.read_rows(dr.FT / f"scripts_{twin}.jsonl")
        assert [r["id"] for r in cut] == [r["id"] for r in whole]
        for c, w in zip(cut, whole):
            a, b = c["messages"][-1]["content"], w["messages"][-1]["content"]
            assert b.startswith(a) and a.endswith(dr.FENCE) and a.count(dr.FENCE) == b.count(dr.FENCE)
            assert c["messages"][:-1] == w["messages"][:-1] and c["pair_id"] == w["pair_id"]
    # the tell the cut removes: the secure twins close with more prose than the flawed answers
    closing = {s: np.mean([len(dr.read_rows(dr.FT / f"scripts_{s}.jsonl")[i]["messages"][-1]["content"]
                               .rsplit(dr.FENCE, 1)[1].split()) for i in range(150)]) for s in ("insecure", "secure")}
    assert closing["secure"] > 2 * closing["insecure"]


def test_cut_after_code_names_a_row_without_a_closed_code_block(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x-1", "messages": [{"role": "user", "content": "q"}, '
                   '{"role": "assistant", "content": "```py\\nprint(1)"}]}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: field 'messages\[1\].content': no closed code block"):
        dr.cut_after_code(bad, tmp_path / "work")
