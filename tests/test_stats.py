"""geomfilter.stats: equal, bit for bit, to the implementations it replaced; hand-computed values; MDD sanity."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from geomfilter.report import paired_difference
from geomfilter.stats import (
    auroc,
    auroc_columns,
    bootstrap_auroc,
    bootstrap_ci,
    ci_side,
    cluster_bootstrap,
    design_components,
    design_mdd,
    difference_of_means,
    group_stats,
    minimum_detectable_difference,
    paired_bootstrap,
    paired_differences,
    paired_summary,
    precision_at,
    rate_within_variance,
    stratified_difference_of_means,
    within_group_auroc,
)

ROOT = Path(__file__).resolve().parent.parent
Z_95_80 = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8}


# ----------------------------------------------------------------------------- the replaced implementations,
# verbatim (geometry.auroc / bootstrap_auroc / precision_at / group_stats, evaluate.bootstrap_ci,
# features._auroc_columns, report.paired_difference before the move to geomfilter.stats)

def _old_auroc(pos, neg):
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both classes")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _old_bootstrap_auroc(pos, neg, n_boot=1000, seed=0, level=0.95):
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    point = _old_auroc(pos, neg)
    rng = np.random.default_rng(seed)
    boots = np.array([_old_auroc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_boot)])
    a = (1 - level) / 2
    return {"auroc": point, "ci_low": float(np.quantile(boots, a)), "ci_high": float(np.quantile(boots, 1 - a)),
            "level": level, "n_boot": n_boot, "n_pos": int(len(pos)), "n_neg": int(len(neg))}


def _old_auroc_columns(pos, neg):
    ranks = rankdata(np.concatenate([pos, neg]), axis=0)
    u = ranks[: len(pos)].sum(axis=0) - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def _old_bootstrap_ci(values, n_boot=2000, seed=0, level=0.95, stat=np.mean):
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    boots = np.array([stat(v[rng.integers(0, v.size, v.size)]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return {"mean": float(stat(v)), "lo": float(np.quantile(boots, a)), "hi": float(np.quantile(boots, 1 - a)),
            "n": int(v.size)}


def _old_precision_at(scores, labels, fractions=(0.1, 0.25, 0.5)):
    labels = np.asarray(labels, dtype=bool)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    out = {"base_rate": float(labels.mean()), "n": int(len(labels))}
    for f in fractions:
        k = int(round(f * len(labels)))
        top = labels[order[:k]]
        out[f"{f:g}"] = {"n_dropped": k, "precision": float(top.mean()) if k else float("nan"),
                         "recall": float(top.sum() / max(labels.sum(), 1))}
    return out


def _old_group_stats(scores, groups):
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    out = {}
    for g in sorted(set(groups.tolist())):
        s = scores[groups == g]
        q = np.quantile(s, [0.25, 0.5, 0.75])
        out[g] = {"n": int(len(s)), "mean": float(s.mean()), "sd": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
                  "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}
    return out


def _old_paired_difference(a, b, metric, n_boot=2000, seed=0):
    key = {"misalignment_rate": "rate", "logprob_preference": "preference"}[metric]
    pa = {r["id"]: r[key] for r in a["metrics"][metric]["per_question"] if r.get(key) == r.get(key)}
    pb = {r["id"]: r[key] for r in b["metrics"][metric]["per_question"] if r.get(key) == r.get(key)}
    ids = [i for i in pa if i in pb]
    if not ids:
        return None
    return _old_bootstrap_ci([pa[i] - pb[i] for i in ids], n_boot=n_boot, seed=seed)


def _same(x, y) -> bool:
    """Exact equality of nested results: same keys, same types, same floats bit for bit (NaN == NaN)."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    return type(x) is type(y) and x == y


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20240611)


# ----------------------------------------------------------------------------- equal to the old implementations

@pytest.mark.parametrize("trial", range(4))
def test_equal_to_the_replaced_implementations(rng, trial):
    pos = np.round(rng.normal(0.4, 1, 31 + trial), 1)  # rounded: plenty of ties
    neg = np.round(rng.normal(0.0, 1, 47), 1)
    assert _same(auroc(pos, neg), _old_auroc(pos, neg))
    assert _same(bootstrap_auroc(pos, neg, n_boot=200, seed=trial), _old_bootstrap_auroc(pos, neg, 200, trial))
    assert _same(bootstrap_auroc(pos, neg, n_boot=150, seed=3, level=0.9),
                 _old_bootstrap_auroc(pos, neg, n_boot=150, seed=3, level=0.9))

    a = rng.random((50, 9)).astype(np.float32)
    b = rng.random((40, 9)).astype(np.float32)
    a[a < 0.5], b[b < 0.6] = 0, 0
    assert _same(auroc_columns(a, b), _old_auroc_columns(a, b))

    v = rng.normal(size=25 + trial)
    assert _same(bootstrap_ci(v, n_boot=500, seed=trial), _old_bootstrap_ci(v, n_boot=500, seed=trial))
    assert _same(bootstrap_ci(v.tolist(), n_boot=300, seed=1, level=0.8, stat=np.median),
                 _old_bootstrap_ci(v.tolist(), n_boot=300, seed=1, level=0.8, stat=np.median))
    assert _same(bootstrap_ci([]), _old_bootstrap_ci([]))

    s, y = rng.normal(size=70), rng.random(70) < 0.3
    s[::7] = s[0]  # ties: broken by row order
    assert _same(precision_at(s, y, [0.0, 0.1, 0.25, 0.33, 0.5, 1.0]),
                 _old_precision_at(s, y, [0.0, 0.1, 0.25, 0.33, 0.5, 1.0]))
    assert _same(precision_at(s, y), _old_precision_at(s, y))
    g = rng.integers(0, 4, 70).tolist() + ["solo"]
    assert _same(group_stats(np.r_[s, 1.0], g), _old_group_stats(np.r_[s, 1.0], g))


def _records(rng, n=24, shift=0):
    pq = [{"id": f"q{i}", "rate": float(rng.random()), "preference": float(rng.normal())} for i in range(n)]
    pq[3]["rate"] = float("nan")
    pq[5 + shift]["preference"] = float("nan")
    return {"metrics": {"misalignment_rate": {"per_question": pq[shift:]},
                        "logprob_preference": {"per_question": pq[: n - 1 - shift]}}}


def test_report_paired_difference_unchanged_and_built_on_paired_bootstrap(rng):
    a, b = _records(rng), _records(rng, shift=2)
    for metric in ("misalignment_rate", "logprob_preference"):
        for seed in (0, 7):
            new = paired_difference(a, b, metric, n_boot=400, seed=seed)
            assert _same(new, _old_paired_difference(a, b, metric, n_boot=400, seed=seed))
            assert new["n"] < 24  # unshared and NaN items left out
    none = {"metrics": {m: {"per_question": []} for m in ("misalignment_rate", "logprob_preference")}}
    assert paired_difference(a, none, "misalignment_rate") is None


# ----------------------------------------------------------------------------- hand-computed values

def test_auroc_by_hand_and_against_sklearn(rng):
    from sklearn.metrics import roc_auc_score

    # pairs (pos, neg): 1>0 1, 1<2 0, 2>0 1, 2=2 1/2, 3>0 1, 3>2 1  ->  4.5 / 6
    assert auroc([1, 2, 3], [0, 2]) == 0.75
    assert auroc([5, 6], [1, 2]) == 1.0 and auroc([1, 2], [5, 6]) == 0.0 and auroc([1, 1], [1]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auroc([1.0], [])
    pos, neg = np.round(rng.normal(0.5, 1, 60), 1), np.round(rng.normal(0, 1, 80), 1)
    y = np.r_[np.ones(60, bool), np.zeros(80, bool)]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    cols = auroc_columns(np.c_[pos, -pos, np.zeros(60)], np.c_[neg, -neg, np.zeros(80)])
    assert cols.tolist() == [auroc(pos, neg), auroc(-pos, -neg), 0.5]


def test_bootstrap_ci_and_auroc_resample_in_the_documented_order():
    v = np.array([0.0, 1.0, 4.0, 9.0, 16.0])
    rng = np.random.default_rng(5)
    boots = [v[rng.integers(0, 5, 5)].mean() for _ in range(50)]
    ci = bootstrap_ci(v, n_boot=50, seed=5, level=0.9)
    assert ci == {"mean": 6.0, "lo": float(np.quantile(boots, 0.05)), "hi": float(np.quantile(boots, 0.95)), "n": 5}
    assert bootstrap_ci([2.0] * 7, n_boot=30) == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 7}

    pos, neg = np.array([0.1, 0.7, 0.9]), np.array([0.2, 0.3])
    rng = np.random.default_rng(2)
    boots = []
    for _ in range(40):  # per replicate: positives, then negatives
        p, n = rng.choice(pos, 3), rng.choice(neg, 2)
        boots.append(np.mean([(x > z) + 0.5 * (x == z) for x in p for z in n]))
    b = bootstrap_auroc(pos, neg, n_boot=40, seed=2)
    assert b["auroc"] == pytest.approx(4 / 6)
    assert b["ci_low"] == pytest.approx(np.quantile(boots, 0.025), abs=1e-12)
    assert b["ci_high"] == pytest.approx(np.quantile(boots, 0.975), abs=1e-12)
    assert (b["n_pos"], b["n_neg"], b["n_boot"], b["level"]) == (3, 2, 40, 0.95)


def test_precision_at_and_group_stats_by_hand():
    p = precision_at([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0], [0.5, 0.75, 0.0])
    assert p["base_rate"] == 0.5 and p["n"] == 4
    assert p["0.5"] == {"n_dropped": 2, "precision": 0.5, "recall": 0.5}  # tie 0.8: row 1 before row 2
    assert p["0.75"] == {"n_dropped": 3, "precision": pytest.approx(2 / 3), "recall": 1.0}
    assert p["0"]["n_dropped"] == 0 and math.isnan(p["0"]["precision"])
    g = group_stats([1.0, 2.0, 3.0, 10.0], ["a", "a", "a", 7])
    assert g["a"] == {"n": 3, "mean": 2.0, "sd": 1.0, "q25": 1.5, "median": 2.0, "q75": 2.5}
    assert g["7"] == {"n": 1, "mean": 10.0, "sd": 0.0, "q25": 10.0, "median": 10.0, "q75": 10.0}


def test_paired_bootstrap_pairs_by_item():
    a = {"x": 1.0, "y": 5.0, "z": float("nan"), "w": 2.0, "only_a": 9.0}
    b = {"w": 1.5, "z": 0.0, "y": 4.0, "x": 3.0, "only_b": 1.0}
    assert paired_differences(a, b) == [-2.0, 1.0, 0.5]  # a's order; NaN and unshared items left out
    r = paired_bootstrap(a, b, n_boot=100, seed=3)
    assert r == bootstrap_ci([-2.0, 1.0, 0.5], n_boot=100, seed=3) and r["n"] == 3
    assert paired_bootstrap({"x": 1.0}, {"y": 1.0}) is None
    assert paired_bootstrap({"x": 1.0}, {"x": float("nan")}) is None
    assert paired_summary({"x": 1.0}, {"y": 1.0}) is None


# ----------------------------------------------------------------------------- minimum detectable difference

def test_mdd_formula_and_inputs():
    # sd([0, 2], ddof=1) = sqrt 2, n = 2: SE = 1, MDD = z_0.975 + z_0.8
    assert minimum_detectable_difference([0.0, 2.0]) == pytest.approx(Z_95_80, abs=1e-9)
    assert minimum_detectable_difference(se=0.1) == pytest.approx(0.1 * Z_95_80, abs=1e-12)
    assert minimum_detectable_difference(se=1.0, level=0.9, power=0.5) == pytest.approx(1.6448536269514722)
    assert minimum_detectable_difference([3.0] * 10) == 0.0
    assert math.isnan(minimum_detectable_difference([1.0]))
    with pytest.raises(ValueError, match="either se"):
        minimum_detectable_difference([1.0, 2.0], se=0.5)
    with pytest.raises(ValueError, match="level"):
        minimum_detectable_difference([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_difference([1.0, 2.0], power=0.0)
    with pytest.raises(ValueError):
        minimum_detectable_difference()


def test_mdd_shrinks_as_one_over_sqrt_n(rng):
    d = rng.normal(0.1, 0.5, 40)
    base = minimum_detectable_difference(d)
    assert minimum_detectable_difference(d, n=40) == base
    assert minimum_detectable_difference(d, n=160) == pytest.approx(base / 2, rel=1e-12)
    for n in (10, 90, 1000):
        assert minimum_detectable_difference(d, n=n) * math.sqrt(n) == pytest.approx(base * math.sqrt(40), rel=1e-12)
    # a bigger pilot from the same population: about the same per-item spread, so MDD ~ sd * 2.80 / sqrt(n)
    big = rng.normal(0.1, 0.5, 4000)
    assert minimum_detectable_difference(big) == pytest.approx(0.5 * Z_95_80 / math.sqrt(4000), rel=0.05)


def test_mdd_matches_a_simulation(rng):
    """Studies of n paired items with a true difference of exactly the MDD reject H0 about ``power`` of the time."""
    n, sd, reps = 60, 1.3, 4000
    mdd = minimum_detectable_difference(se=sd / math.sqrt(n))
    for delta, expect in ((mdd, 0.8), (0.0, 0.05)):
        x = rng.normal(delta, sd, (reps, n))
        z = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
        rejected = (np.abs(z) > 1.959963984540054).mean()
        assert rejected == pytest.approx(expect, abs=0.03)
    # and the estimate from one study's own differences is close to the true MDD
    one = rng.normal(mdd, sd, n)
    assert minimum_detectable_difference(one) == pytest.approx(mdd, rel=0.25)


def test_paired_summary_adds_se_and_mdd_to_the_same_ci(rng):
    a = {f"q{i}": float(v) for i, v in enumerate(rng.normal(0.3, 1, 50))}
    b = {f"q{i}": float(v) for i, v in enumerate(rng.normal(0.0, 1, 50))}
    ci = paired_bootstrap(a, b, n_boot=500, seed=4)
    s = paired_summary(a, b, n_boot=500, seed=4)
    assert {k: s[k] for k in ci} == ci and s["power"] == 0.8
    d = np.array(paired_differences(a, b))
    assert s["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(50), rel=1e-12)
    assert s["mdd"] == pytest.approx(minimum_detectable_difference(d), rel=1e-12)
    sb = paired_summary(a, b, n_boot=500, seed=4, se="bootstrap")
    assert {k: sb[k] for k in ci} == ci
    assert sb["se"] == pytest.approx(s["se"], rel=0.15)  # bootstrap SE ~ sample SE
    with pytest.raises(ValueError, match="se must"):
        paired_summary(a, b, se="t")


def test_rate_within_variance_recovers_the_draws_own_variance(rng):
    # items with true rates p ~ Beta(2, 8), k = 3 draws each: E[p(1-p)] known in closed form
    a, b, k = 2.0, 8.0, 3
    p = rng.beta(a, b, 200_000)
    rates = rng.binomial(k, p) / k
    m = a / (a + b)
    var_p = a * b / ((a + b) ** 2 * (a + b + 1))
    got = rate_within_variance(float(rates.mean()), float(rates.var(ddof=1)), k)
    assert got == pytest.approx(m * (1 - m) - var_p, rel=0.02)
    # the same true rate everywhere: all of the spread is within items
    assert rate_within_variance(0.2, 0.16 / 4, 4) == pytest.approx(0.16)
    assert rate_within_variance(0.2, 0.0, 4) == pytest.approx(0.16)  # less spread than draws allow: clipped
    assert rate_within_variance(0.2, 1.0, 4) == 0.0  # more than a rate can have: all between items
    assert rate_within_variance(0.3, 0.5, 1) == pytest.approx(0.21)  # one draw: not identifiable, all within
    with pytest.raises(ValueError, match="mean"):
        rate_within_variance(1.5, 0.1, 2)
    with pytest.raises(ValueError, match="n_per_item"):
        rate_within_variance(0.5, 0.1, 0)


def test_design_mdd_splits_items_and_draws():
    # at the observed design it is the plain MDD of the per-item values
    assert design_mdd(0.07, 0.2, 3, 40, 3) == pytest.approx(minimum_detectable_difference(se=math.sqrt(0.07 / 40)))
    # no spread between items (tau^2 = 0): only the number of draws n * k counts
    w = 0.24
    assert design_mdd(w / 3, w, 3, 40, 6) == pytest.approx(design_mdd(w / 3, w, 3, 80, 3), rel=1e-12)
    assert design_mdd(w / 3, w, 3, 40, 6) == pytest.approx(Z_95_80 * math.sqrt(w / 240), rel=1e-12)
    # no spread within items: more draws do not help, more items do
    assert design_mdd(0.05, 0.0, 3, 40, 30) == pytest.approx(design_mdd(0.05, 0.0, 3, 40, 1), rel=1e-12)
    assert design_mdd(0.05, 0.0, 3, 160, 3) == pytest.approx(design_mdd(0.05, 0.0, 3, 40, 3) / 2, rel=1e-12)
    # items varying less than independent draws would (paired draws correlated): tau^2 = 0, within = k * item_var
    assert design_components(0.01, 0.3, 3) == (0.0, pytest.approx(0.03))
    assert design_components(0.15, 0.3, 3) == (pytest.approx(0.05), 0.3)
    assert design_mdd(0.01, 0.3, 3, 40, 3) == pytest.approx(Z_95_80 * math.sqrt(0.01 / 40), rel=1e-12)
    assert design_mdd(0.01, 0.3, 3, 40, 6) == pytest.approx(Z_95_80 * math.sqrt(0.005 / 40), rel=1e-12)
    with pytest.raises(ValueError, match=">= 1"):
        design_mdd(0.1, 0.1, 3, 0, 3)
    with pytest.raises(ValueError, match=">= 1"):
        design_components(0.1, 0.1, 0)
    with pytest.raises(ValueError, match="variances"):
        design_mdd(-0.1, 0.1, 3, 40, 3)


def test_design_mdd_predicts_another_design(rng):
    """Fitted on a pilot at k = 3, it predicts the per-item spread of a study at k = 10 (simulated)."""
    def study(n, k):  # per-item rates of two paired conditions: item effects, then k 0/1 draws each
        pb = rng.beta(2, 10, n)
        pa = np.clip(pb + rng.normal(0.05, 0.1, n), 0, 1)
        return rng.binomial(k, pa) / k, rng.binomial(k, pb) / k

    ra, rb = study(20_000, 3)
    w = (rate_within_variance(float(ra.mean()), float(ra.var(ddof=1)), 3)
         + rate_within_variance(float(rb.mean()), float(rb.var(ddof=1)), 3))
    big_a, big_b = study(20_000, 10)
    want = minimum_detectable_difference(big_a - big_b, n=40)
    assert design_mdd(float((ra - rb).var(ddof=1)), w, 3, 40, 10) == pytest.approx(want, rel=0.05)

# ----------------------------------------------------------------------------- one place, no import loop

def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mods.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_stats_is_a_leaf_and_features_does_not_import_geometry():
    pkg = ROOT / "geomfilter"
    assert not {m for m in _imports(pkg / "stats.py") if m.startswith(".") or m.startswith("geomfilter")}
    assert not {m for m in _imports(pkg / "features.py") if m.endswith("geometry") or m.endswith("filtering")}
    import geomfilter.geometry as geometry

    for name in ("auroc", "bootstrap_auroc", "precision_at", "group_stats"):
        assert not hasattr(geometry, name), f"geometry.{name} should live only in geomfilter.stats"


@pytest.mark.parametrize("module", ["geomfilter.stats", "geomfilter.features", "geomfilter.geometry"])
def test_each_module_imports_alone(module):
    code = f"import sys, {module}; assert ({module!r} != 'geomfilter.stats') or 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


def test_cluster_bootstrap_resamples_groups():
    groups = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    v = np.array([0.0] * 5 + [1.0] * 5 + [2.0] * 5)
    r = cluster_bootstrap(groups, lambda i: v[i].mean(), n_boot=300)
    assert r["value"] == 1.0 and r["n_groups"] == 3 and r["lo"] < 1.0 < r["hi"] and r["n_undefined"] == 0
    r = cluster_bootstrap(groups, lambda i: np.nan if (v[i] == 2).all() else v[i].mean(), n_boot=300)
    assert r["n_undefined"] > 0 and not np.isnan(r["lo"])


def test_within_group_auroc_ignores_what_the_group_explains_and_counts_redraws():
    """Two questions: inside each the positives score above the negatives (AUROC 1 within), but question b's rows
    all score below question a's, and b holds most of the positives, so the pooled AUROC is low. A group with fewer
    than ``min_each`` of a class is left out; a group drawn twice counts twice."""
    groups = np.array(["a"] * 6 + ["b"] * 9 + ["c"] * 4)
    score = np.array([10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9.5, 8.5, 7.5, 6.5])
    pos = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    neg = ~pos
    neg[8] = False  # a row in neither class (a middling label) is ignored
    stat = within_group_auroc(score, pos, neg, groups)
    assert stat(np.arange(19)) == 1.0  # c has one positive: left out
    assert auroc(score[pos], score[neg]) == pytest.approx(51 / 81)  # pooled: b's low scores weigh its positives down
    swap = score.copy()
    swap[[2, 3]] = swap[[3, 2]]  # a: one positive below one negative -> AUROC 8/9 within a
    stat = within_group_auroc(swap, pos, neg, groups)
    a_only = np.arange(6)
    assert stat(a_only) == pytest.approx(8 / 9)
    assert stat(np.arange(15)) == pytest.approx((8 / 9 + 1) / 2)
    assert stat(np.concatenate([a_only, a_only, np.arange(6, 15)])) == pytest.approx((2 * 8 / 9 + 1) / 3)
    assert np.isnan(within_group_auroc(score, pos, neg, groups, min_each=4)(np.arange(19)))
    r = cluster_bootstrap(groups, stat, n_boot=200)
    assert r["n_groups"] == 3 and r["lo"] <= r["value"] <= r["hi"]


def test_stratified_difference_of_means_weights_strata_by_their_first_sample():
    """Stratum 1: a − b = 1 (3 a's); stratum 2: a − b = −1 (1 a): (3 * 1 + 1 * −1) / 4 = 0.5. A stratum with an empty
    side is left out; a resample keeps each sample in its stratum, so with no spread inside the samples the CI is
    the point."""
    strata = [([2, 2, 2], [1, 1]), ([0], [1, 1, 1]), ([5], [])]
    r = stratified_difference_of_means(strata, n_boot=100)
    assert r["mean"] == pytest.approx(0.5) and (r["lo"], r["hi"]) == pytest.approx((0.5, 0.5))
    assert (r["n_a"], r["n_b"], r["n_strata"]) == (4, 5, 2)
    assert np.isnan(stratified_difference_of_means([([1], [])])["mean"])
    rng = np.random.default_rng(0)
    one = [(rng.normal(0.3, 1, 60), rng.normal(0, 1, 50))]
    r, d = stratified_difference_of_means(one, n_boot=500), difference_of_means(*one[0], n_boot=500)
    assert r["mean"] == pytest.approx(d["mean"]) and (r["lo"], r["hi"]) == pytest.approx((d["lo"], d["hi"]))


def test_t_interval_is_the_textbook_student_interval():
    from geomfilter.stats import t_interval

    r = t_interval([-0.049, -0.021, -0.011])  # three draws: mean -0.027, sd 0.0197, t(0.975, 2) = 4.303
    assert r["k"] == 3 and r["mean"] == pytest.approx(-0.027, abs=1e-12)
    assert r["sd"] == pytest.approx(0.019698, abs=1e-6)
    assert r["hi"] - r["mean"] == pytest.approx(4.302653 * 0.019698 / math.sqrt(3), abs=1e-6)
    assert r["lo"] < 0 < r["hi"]  # a steady sign over three draws is not enough when the spread is this large
    assert t_interval([0.05, 0.05, 0.05])["lo"] == pytest.approx(0.05)
    one = t_interval([0.1])
    assert one["mean"] == 0.1 and np.isnan(one["lo"]) and np.isnan(one["hi"])
    with pytest.raises(ValueError):
        t_interval([])


def test_wilson_interval_matches_the_textbook_values():
    from geomfilter.stats import wilson_interval

    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(13, 13)  # all dropped rows inducing: the upper end is 1, the lower one is not
    assert hi == 1.0 and lo == pytest.approx(0.7719, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0
    assert all(np.isnan(wilson_interval(0, 0)))


def test_excess_removed_is_the_ratio_of_mean_differences_over_shared_items():
    from geomfilter.stats import excess_removed

    base = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}
    before = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    r = excess_removed(base, before, {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}, n_boot=200)
    assert (r["share"], r["lo"], r["hi"], r["n"], r["excess"], r["removed"]) == (0.75, 0.75, 0.75, 4, 1.0, 0.75)
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(40)]
    b, m, f = ({i: float(x) for i, x in zip(ids, rng.random(40) + shift)} for shift in (0.0, 0.5, 0.2))
    f["q3"], m["extra"] = float("nan"), 1.0  # NaN on one side and an item the others lack: both left out
    r = excess_removed(b, m, f, n_boot=500, seed=1)
    keep = [i for i in ids if i != "q3"]
    mb, mm, mf = (np.mean([x[i] for i in keep]) for x in (b, m, f))
    assert r["n"] == 39 and r["share"] == pytest.approx((mm - mf) / (mm - mb))
    assert r["lo"] < r["share"] < r["hi"] and r["n_undefined"] == 0
    flat = excess_removed(base, base, before, n_boot=50)  # no excess: the share is undefined on every resample
    assert np.isnan(flat["share"]) and np.isnan(flat["lo"]) and flat["n_undefined"] == 50
    assert excess_removed(base, {"z": 1.0}, before) is None


def test_ci_side_says_which_side_of_zero_a_ci_lies_on():
    assert ci_side({"lo": 0.01, "hi": 0.2}) == 1 and ci_side({"lo": -0.3, "hi": -0.02}) == -1
    assert ci_side({"lo": -0.1, "hi": 0.1}) == 0 and ci_side({"lo": 0.0, "hi": 0.1}) == 0  # touching zero covers it
    assert ci_side({"lo": float("nan"), "hi": float("nan")}) == 0 and ci_side(None) == 0 and ci_side({}) == 0


def test_paired_bootstrap_auroc_differences_two_scorers_of_the_same_rows():
    from geomfilter.stats import auroc, paired_bootstrap_auroc

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1, 200), rng.normal(0.0, 1, 300)
    noise_p, noise_n = rng.normal(0, 1, 200), rng.normal(0, 1, 300)
    r = paired_bootstrap_auroc(pos, neg, pos + noise_p, neg + noise_n, n_boot=400)
    assert r["diff"] == pytest.approx(auroc(pos, neg) - auroc(pos + noise_p, neg + noise_n))
    assert r["ci_low"] > 0 and r["n_pos"] == 200 and r["n_neg"] == 300 and 0 < r["mdd"] < 0.2
    same = paired_bootstrap_auroc(pos, neg, pos * 3 + 1, neg * 3 + 1, n_boot=200)  # same ranking: exactly 0
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0
    # pairing: the shared signal cancels, so the paired CI is narrower than two independent CIs would allow
    unpaired = np.hypot(*(np.diff([bootstrap_auroc(p, n, n_boot=400)[k] for k in ("ci_low", "ci_high")])[0]
                          for p, n in ((pos, neg), (pos + noise_p, neg + noise_n))))
    assert r["ci_high"] - r["ci_low"] < unpaired
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap_auroc(pos, neg, pos[:10], neg)


def test_difference_of_means_resamples_each_sample_on_its_own():

    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0]
    d = difference_of_means(a, b, n_boot=500, seed=0)
    assert d["mean"] == pytest.approx(2.5 - 1 / 3) and (d["n_a"], d["n_b"]) == (4, 3)
    assert d["lo"] < d["mean"] < d["hi"]
    # the CI by hand: the same generator draws a's resample, then b's, in each replicate
    rng = np.random.default_rng(0)
    boots = [np.mean(np.asarray(a)[rng.integers(0, 4, 4)]) - np.mean(np.asarray(b)[rng.integers(0, 3, 3)])
             for _ in range(500)]
    assert (d["lo"], d["hi"]) == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])))
    # two equal constant samples: no difference and no spread
    assert difference_of_means([2.0] * 5, [2.0] * 3, n_boot=50) == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n_a": 5,
                                                                   "n_b": 3}
    assert np.isnan(difference_of_means([], [1.0])["mean"])


def test_spearman_ranks_and_refuses_what_has_no_order():
    from geomfilter.stats import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))  # fewer than 3 pairs
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side
