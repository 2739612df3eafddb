"""report.py on synthetic finished conditions: the paired table's minimum detectable differences, results.json."""
from __future__ import annotations

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest

from geomfilter.report import metric_per_item, metric_records, paired_comparison, paired_difference, write_report
from geomfilter.stats import minimum_detectable_difference, paired_differences


class _Cfg(NS):
    def as_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed}


def _cfg() -> _Cfg:
    return _Cfg(name="t", model="m", sae=None, seed=0, eval=NS(n_boot=200),
                data=NS(mixture="mix.jsonl", n_samples=None, harmful="h", benign="b", n_references=None,
                        pairs=NS(domains=[])),
                train=NS(lora_r=8, epochs=1.0, batch_size=4), gates=NS(enabled=False))


def _ci(rng, n=5) -> dict:
    m = float(rng.random())
    return {"mean": m, "lo": m - 0.1, "hi": m + 0.1, "n": n}


def _record(rng, n_questions=6) -> dict:
    pq = [{"id": f"q{j}", "rate": float(rng.random()) if j != 2 else float("nan")} for j in range(n_questions)]
    pp = [{"id": f"q{j}", "preference": float(rng.normal())} for j in range(n_questions)]
    gen = {"n_per_question": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0}
    metrics = {"misalignment_rate": {**_ci(rng, n_questions), "per_question": pq, "generation": gen,
                                     "judge": "offline-minilm",
                                     "criterion": {"alignment_below": 30.0, "coherence_above": 50.0}},
               "alignment": _ci(rng), "coherence": _ci(rng), "logprob_preference": {**_ci(rng, n_questions),
                                                                                     "per_question": pp},
               "flip_rate": _ci(rng), "mc_accuracy": {**_ci(rng), "chance": 0.25}, "perplexity": _ci(rng)}
    return {"description": "", "training_data": None, "training": None, "seconds": 1.0, "metrics": metrics}


@pytest.fixture()
def finished():
    rng = np.random.default_rng(0)
    return {"base": _record(rng), "misaligned": _record(rng)}


CONDS = [NS(name="base", kind="base", strategy=None, fraction=None, model_from=None),
         NS(name="misaligned", kind="finetune", strategy=None, fraction=None, model_from=None)]


def test_paired_comparison_is_paired_difference_plus_the_mdd_at_the_same_n(finished):
    a, b = finished["misaligned"], finished["base"]
    for metric, key in (("misalignment_rate", "rate"), ("logprob_preference", "preference")):
        c = paired_comparison(a, b, metric, n_boot=300, seed=3)
        assert {k: c[k] for k in ("mean", "lo", "hi", "n")} == paired_difference(a, b, metric, n_boot=300, seed=3)
        d = paired_differences(*({r["id"]: r[key] for r in rec["metrics"][metric]["per_question"]} for rec in (a, b)))
        assert c["n"] == len(d) and c["mdd"] == pytest.approx(minimum_detectable_difference(d, power=0.8))
    assert paired_comparison(a, _record(np.random.default_rng(1), n_questions=0), "misalignment_rate") is None


def test_report_paired_table_and_results_json_carry_the_mdd(tmp_path, finished):
    path = write_report(tmp_path, _cfg(), CONDS, finished)
    text = path.read_text()
    assert "| a − b | misalignment rate | MDD (80% power) | log-prob preference | MDD (80% power) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| misaligned − base |"))
    pair = json.loads((tmp_path / "results.json").read_text())["paired"]
    assert [(p["a"], p["b"]) for p in pair] == [("misaligned", "base")]
    rate, pref = pair[0]["misalignment_rate"], pair[0]["logprob_preference"]
    assert set(rate) == set(pref) == {"mean", "lo", "hi", "n", "mdd"} and (rate["n"], pref["n"]) == (5, 6)
    assert f"| {rate['mdd']:.3f} (n=5) |" in row and f"| {pref['mdd']:.3f} (n=6) |" in row
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "condition,metric,mean,lo,hi,n"


def _subset_record(rng, n_pairs=4) -> dict:
    """A condition of a config measuring only log-prob preference, sycophancy preference and perplexity."""
    def pref(ids):
        return {**_ci(rng, len(ids)), "per_question": [{"id": i, "preference": float(rng.normal())} for i in ids]}

    metrics = {"logprob_preference": pref([f"q{j}" for j in range(6)]),
               "sycophancy_preference": pref([f"d1-{j}" for j in range(n_pairs)]), "perplexity": _ci(rng)}
    return {"description": "", "training_data": None, "training": None, "seconds": 1.0, "metrics": metrics}


def test_report_of_a_metrics_subset_shows_only_what_was_measured(tmp_path):
    rng = np.random.default_rng(2)
    names = ["base", "misaligned", "misaligned+gates@-1"]
    finished = {n: _subset_record(rng) for n in names}
    conds = [*CONDS, NS(name="misaligned+gates@-1", kind="gated", strategy=None, fraction=None,
                        model_from="misaligned", compare_with=("base",))]
    cfg = _cfg()
    cfg.data.pairs = NS(domains=["d1", "d2"], folder="pairs", holdout=2)
    cfg.gates = NS(enabled=True, domain="d1", data="g.jsonl", n_samples=None, epochs=1.0,
                   attach=[NS(model="misaligned", method="gates", scales=[-1.0])])
    text = write_report(tmp_path, cfg, conds, finished).read_text()
    assert "| condition | trained on (inducing share) | log-prob preference | perplexity | sycophancy preference |" \
        in text
    assert "misalignment rate" not in text.lower() and "Mixture `mix.jsonl`" not in text
    assert "split by `pair_id`" in text and "attention gates on the `d1` training pairs (all samples" in text
    assert "| a − b | log-prob preference | MDD (80% power) | sycophancy preference | MDD (80% power) |" in text
    for a, b in (("misaligned", "base"), ("misaligned+gates@-1", "misaligned"), ("misaligned+gates@-1", "base")):
        assert f"| {a} − {b} |" in text
    pairs = json.loads((tmp_path / "results.json").read_text())["paired"]
    assert [(p["a"], p["b"]) for p in pairs] == [("misaligned", "base"), ("misaligned+gates@-1", "misaligned"),
                                                 ("misaligned+gates@-1", "base")]
    assert all(set(p) == {"a", "b", "logprob_preference", "sycophancy_preference"} for p in pairs)
    assert pairs[0]["sycophancy_preference"]["n"] == 4
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 3 * 3
    plotted = {p.stem for p in (tmp_path / "plots").iterdir()}
    assert plotted == {"logprob_preference", "sycophancy_preference", "perplexity"}
    assert paired_comparison(finished["base"], finished["misaligned"], "misalignment_rate") is None
    assert paired_difference(finished["base"], finished["misaligned"], "misalignment_rate") is None


def test_report_gives_the_share_of_the_excess_each_filter_removes(tmp_path, finished):
    from geomfilter.stats import excess_removed

    finished = {**finished, "geometry-0.50": _record(np.random.default_rng(5))}
    conds = [*CONDS, NS(name="geometry-0.50", kind="filtered", strategy="geometry", fraction=0.5,
                        model_from=None)]
    text = write_report(tmp_path, _cfg(), conds, finished).read_text()
    lines = text.splitlines()
    head = lines.index("| condition | misalignment rate: excess removed | log-prob preference: excess removed |")
    row = lines[head + 2]
    assert row.startswith("| geometry-0.50 | ")
    got = json.loads((tmp_path / "results.json").read_text())["excess_removed"]
    assert [r["condition"] for r in got] == ["geometry-0.50"]
    for metric, key in (("misalignment_rate", "rate"), ("logprob_preference", "preference")):
        per = [{r["id"]: r[key] for r in finished[n]["metrics"][metric]["per_question"]}
               for n in ("base", "misaligned", "geometry-0.50")]
        want = excess_removed(*per, n_boot=200, seed=0)
        assert got[0][metric]["share"] == pytest.approx(want["share"]) and got[0][metric]["n"] == want["n"]
        excess = paired_difference(finished["misaligned"], finished["base"], metric, n_boot=200, seed=0)
        assert got[0][metric]["excess_measured"] == (excess["lo"] > 0 or excess["hi"] < 0)
        assert f"{want['share']:+.2f} [{want['lo']:+.2f}, {want['hi']:+.2f}] (n={want['n']})" in row
    # without base there is nothing to measure the excess against
    text = write_report(tmp_path, _cfg(), conds[1:], {k: v for k, v in finished.items() if k != "base"}).read_text()
    assert "excess removed" not in text


def test_filter_table_counts_the_inducing_rows_each_filter_keeps_per_domain(tmp_path):
    """Which inducing rows a filter leaves, per domain, next to its precision (the mixture's counts in the caption);
    rows without domain/inducing labels leave the column out."""
    import json
    from types import SimpleNamespace

    from geomfilter.report import _filter_lines, inducing_by_domain

    def rows(spec):
        return "".join(json.dumps({"id": f"r{i}", "domain": d, "inducing": ind, "messages": []}) + "\n"
                       for i, (d, ind) in enumerate(spec))

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mixture.jsonl").write_text(rows([("a", True)] * 3 + [("b", True)] * 2 + [("a", False)]))
    for name, kept in (("geometry-0.50", [("a", True), ("a", False), ("b", True)]),
                       ("random-0.50", [("b", True), ("b", True), ("a", False)])):
        (tmp_path / name / "filter").mkdir(parents=True)
        (tmp_path / name / "filter" / "kept.jsonl").write_text(rows(kept))
        (tmp_path / name / "filter" / "report.json").write_text(json.dumps({"n_dropped": 3, "n_input": 6}))
    conds = [SimpleNamespace(name="base", strategy=None), SimpleNamespace(name="geometry-0.50", strategy="geometry"),
             SimpleNamespace(name="random-0.50", strategy="random")]
    assert inducing_by_domain(tmp_path / "data" / "mixture.jsonl") == {"a": 3, "b": 2}
    lines = _filter_lines(tmp_path, conds)
    assert "of the mixture's a 3, b 2" in lines[1]
    assert lines[-2].endswith("| a 1, b 1 |") and lines[-1].endswith("| a 0, b 2 |")

    (tmp_path / "random-0.50" / "filter" / "kept.jsonl").write_text('{"id": "x", "messages": []}\n')
    assert inducing_by_domain(tmp_path / "random-0.50" / "filter" / "kept.jsonl") is None
    lines = _filter_lines(tmp_path, conds)
    assert "per domain" not in lines[1] and lines[-1].endswith("| n/a |")


def test_random_draws_are_averaged_per_question_and_every_filter_is_compared_with_the_mean(tmp_path, finished,
                                                                                            monkeypatch):
    """filtering.random_draws: random-0.50-mean holds each question's mean over the finished draws; every other
    filter is compared with it as well as with the first draw; it is compared with base and misaligned and has its
    share of the excess; the removal-fraction plot draws the first draw; a single finished draw gives no mean."""
    from geomfilter import plots
    from geomfilter.report import with_random_means

    rng = np.random.default_rng(7)
    draws = ["random-0.50", "random-0.50-draw1", "random-0.50-draw2"]
    finished = {**finished, **{n: _record(rng) for n in [*draws, "geometry-0.50"]}}
    conds = [*CONDS, *(NS(name=n, kind="finetune", strategy="random", fraction=0.5, model_from=None, draw=d)
                       for d, n in enumerate(draws)),
             NS(name="geometry-0.50", kind="finetune", strategy="geometry", fraction=0.5, model_from=None)]
    drawn = {}
    monkeypatch.setattr(plots, "fraction_curves", lambda curves, *a, **k: drawn.update(curves))
    text = write_report(tmp_path, _cfg(), conds, finished).read_text()
    assert drawn["random"][0.5] is finished["random-0.50"]["metrics"]["misalignment_rate"]
    res = json.loads((tmp_path / "results.json").read_text())
    pairs = [(p["a"], p["b"]) for p in res["paired"]]
    assert ("random-0.50-mean", "base") in pairs and ("random-0.50-mean", "misaligned") in pairs
    assert pairs.index(("geometry-0.50", "random-0.50")) + 1 == pairs.index(("geometry-0.50", "random-0.50-mean"))
    assert "random-0.50-mean" in [r["condition"] for r in res["excess_removed"]]
    assert "random-0.50-mean" not in res["conditions"]  # a derived row of the paired tables, not a condition
    assert "mean over the 3 draws of random removal random-0.50, random-0.50-draw1, random-0.50-draw2" in text
    _, with_mean = with_random_means(conds, finished)
    for metric, key in (("misalignment_rate", "rate"), ("logprob_preference", "preference")):
        got = {r["id"]: r[key] for r in with_mean["random-0.50-mean"]["metrics"][metric]["per_question"]}
        each = [{r["id"]: r[key] for r in finished[n]["metrics"][metric]["per_question"] if r[key] == r[key]}
                for n in draws]
        assert set(got) == set(each[0]) and len(got) == (5 if key == "rate" else 6)  # q2's NaN rate left out
        for q in got:
            assert got[q] == pytest.approx(np.mean([e[q] for e in each]))
        geo = next(p for p in res["paired"] if (p["a"], p["b"]) == ("geometry-0.50", "random-0.50-mean"))
        assert geo[metric] == paired_comparison(finished["geometry-0.50"], with_mean["random-0.50-mean"], metric,
                                                n_boot=200, seed=0)
        assert f"| geometry-0.50 − random-0.50-mean | {_ci_text(geo['misalignment_rate'])}" in text
    one = {k: v for k, v in finished.items() if k not in draws[1:]}
    text = write_report(tmp_path, _cfg(), conds, one).read_text()
    assert "random-0.50-mean" not in text


def _ci_text(v: dict) -> str:
    return f"{v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"


def test_per_item_values_become_records_and_back():
    per_item = {"a": {"q0": 0.5, "q1": 0.0}, "b": {"q0": 1.0, "q1": float("nan")}}
    recs = metric_records(per_item, "misalignment_rate")
    assert recs["a"]["metrics"]["misalignment_rate"]["per_question"] == [{"id": "q0", "rate": 0.5},
                                                                        {"id": "q1", "rate": 0.0}]
    assert metric_records({"a": {"q0": 0.2}}, "logprob_preference")["a"]["metrics"]["logprob_preference"][
        "per_question"] == [{"id": "q0", "preference": 0.2}]
    back = metric_per_item({**recs, "c": {"metrics": {}}}, "misalignment_rate")
    assert back == {"a": {"q0": 0.5, "q1": 0.0}, "b": {"q0": 1.0}}      # NaN left out, c did not measure it
    assert paired_comparison(recs["b"], recs["a"], "misalignment_rate", n_boot=50)["mean"] == 0.5


def test_every_other_filter_is_compared_with_geometry_at_the_same_fraction(finished):
    """representation-0.50 − geometry-0.50 (and judge, ...): the comparison the project's method needs; geometry is
    not compared with itself, random not with geometry, and a fraction without geometry adds no pair."""
    from geomfilter.report import comparisons

    conds = [*CONDS] + [NS(name=f"{s}-{f:.2f}", kind="finetune", strategy=s, fraction=f, model_from=None)
                        for f in (0.5, 0.25) for s in ("random", "geometry", "representation", "judge")
                        if (s, f) != ("geometry", 0.25)]
    done = {**finished, **{c.name: finished["misaligned"] for c in conds[2:]}}
    pairs = comparisons(conds, done)
    assert ("representation-0.50", "geometry-0.50") in pairs and ("judge-0.50", "geometry-0.50") in pairs
    assert not [p for p in pairs if p[0] in ("geometry-0.50", "random-0.50") and p[1] == "geometry-0.50"]
    assert not [p for p in pairs if p[0].endswith("0.25") and p[1].startswith("geometry")]
    assert ("representation-0.50", "random-0.50") in pairs and ("representation-0.25", "random-0.25") in pairs
    del done["geometry-0.50"]                                 # not finished: not compared with
    assert not [p for p in comparisons(conds, done) if p[1] == "geometry-0.50"]
