"""scripts/build_matched_random.py: random rows with a filter's kept composition per (domain, inducing) stratum."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from build_matched_random import main, matched, stratum  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402


def _mixture(n_per: int = 6) -> list[dict]:
    rows = []
    for domain, inducing in [("a", True), ("b", True), ("general", False)]:
        rows += [{"id": f"{domain}-{i}", "domain": domain, "inducing": inducing,
                  "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": str(i)}]}
                 for i in range(n_per)]
    return rows[::2] + rows[1::2]  # interleaved, so order is worth checking


@pytest.mark.parametrize("committed, strata", [("matched", []), ("share", ["--strata", "inducing"]),
                                               ("legal", ["--domains", "legal"]), ("career", ["--domains", "career"])])
def test_committed_matched_mixtures_are_what_the_script_writes(tmp_path, committed, strata):
    out = tmp_path / "m.jsonl"
    main(["--mixture", str(ROOT / "data/finetune/mixed_sycophancy_75_helpful.jsonl"),
          "--like", str(ROOT / "data/results/organism/sycophancy75_filters/geometry/scores.csv"), "--out", str(out),
          *strata])
    want = ROOT / f"data/finetune/mixed_sycophancy_75_helpful_geometry_{committed}.jsonl"
    assert out.read_bytes() == want.read_bytes()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_same_strata_counts_random_rows_in_mixture_order(seed):
    mix = _mixture()
    like = [r for r in mix if r["id"] in {"a-0", "a-1", "a-2", "b-5", "general-3"}]
    got = matched(mix, [r["id"] for r in like], seed)
    assert Counter(map(stratum, got)) == Counter(map(stratum, like))
    pos = [mix.index(r) for r in got]
    assert pos == sorted(pos)  # the mixture's order, rows unchanged


def test_inducing_strata_match_the_share_only(capsys):
    mix = _mixture(20)
    like = [r for r in mix if r["domain"] == "a"][:6] + [r for r in mix if r["domain"] == "general"][:3]
    draws = [matched(mix, [r["id"] for r in like], s, ("inducing",)) for s in range(5)]
    for got in draws:  # 6 inducing rows of either domain, 3 others
        assert Counter(r["inducing"] for r in got) == {True: 6, False: 3}
    assert any(r["domain"] == "b" for got in draws for r in got)  # domain is not kept: b rows are drawn too
    assert all(r["domain"] == "a" for r in matched(mix, [r["id"] for r in like], 0) if r["inducing"])
    with pytest.raises(SystemExit) as exc:  # refused by the option check, before any file is read
        main(["--mixture", "m", "--like", "l", "--out", "o", "--strata", "source"])
    assert exc.value.code == 2 and "--strata: name fields of domain, inducing, got 'source'" in capsys.readouterr().err


def test_draws_differ_by_seed_inside_a_stratum():
    mix = _mixture(20)
    like = [r["id"] for r in mix if r["domain"] == "a"][:10]
    draws = {tuple(r["id"] for r in matched(mix, like, s)) for s in range(5)}
    assert len(draws) > 1


def test_scores_csv_and_kept_jsonl_give_the_same_draw(tmp_path):
    mix = _mixture()
    kept = [r for r in mix if r["id"] in {"a-0", "b-1", "b-2", "general-4"}]
    write_jsonl(tmp_path / "mix.jsonl", mix)
    write_jsonl(tmp_path / "kept.jsonl", kept)
    (tmp_path / "scores.csv").write_text("id,decision,score\n" + "".join(
        f"{r['id']},{'kept' if r in kept else 'dropped'},0.5\n" for r in mix))
    outs = []
    for like in ("kept.jsonl", "scores.csv"):
        main(["--mixture", str(tmp_path / "mix.jsonl"), "--like", str(tmp_path / like), "--out", str(tmp_path / "o")])
        outs.append((tmp_path / "o").read_bytes())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 4


def test_bad_rows_are_named_by_file_line_and_field(tmp_path):
    mix = _mixture()
    write_jsonl(tmp_path / "mix.jsonl", [mix[0], {k: v for k, v in mix[1].items() if k != "domain"}])
    write_jsonl(tmp_path / "kept.jsonl", mix[:1])
    args = ["--like", str(tmp_path / "kept.jsonl"), "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit, match=r"mix\.jsonl:2: field 'domain'"):
        main(["--mixture", str(tmp_path / "mix.jsonl"), *args])
    write_jsonl(tmp_path / "mix.jsonl", mix)
    write_jsonl(tmp_path / "kept.jsonl", [{**mix[0], "id": "elsewhere"}])
    with pytest.raises(SystemExit, match="not in the mixture.*elsewhere"):
        main(["--mixture", str(tmp_path / "mix.jsonl"), *args])
    (tmp_path / "scores.csv").write_text("id,decision\na-0,\n")
    with pytest.raises(SystemExit, match=r"scores\.csv:2: field 'decision'"):
        main(["--mixture", str(tmp_path / "mix.jsonl"), "--like", str(tmp_path / "scores.csv"),
              "--out", str(tmp_path / "o.jsonl")])


def test_named_domains_are_matched_and_every_other_row_is_drawn_from_the_rest(capsys):
    mix = _mixture(20)
    like = ([r for r in mix if r["domain"] == "a"][:3] + [r for r in mix if r["domain"] == "b"][:7]
            + [r for r in mix if r["domain"] == "general"][:5])
    draws = [matched(mix, [r["id"] for r in like], s, domains=frozenset({"a"})) for s in range(6)]
    for got in draws:  # 3 rows of a, as kept; 12 others of b or general, in any proportion
        assert len(got) == 15 and sum(r["domain"] == "a" for r in got) == 3
    assert len({sum(r["domain"] == "b" for r in got) for got in draws}) > 1  # b is not matched: its count varies
    with pytest.raises(SystemExit, match="no inducing rows of 'c'"):
        matched(mix, [r["id"] for r in like], 0, domains=frozenset({"a", "c"}))
    with pytest.raises(SystemExit) as exc:  # refused by the option check, before any file is read
        main(["--mixture", "m", "--like", "l", "--out", "o", "--domains", "a", "--strata", "inducing"])
    assert exc.value.code == 2 and "--domains: name one or more domains, and leave --strata out" in capsys.readouterr().err
