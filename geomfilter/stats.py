"""Statistics: every AUROC, bootstrap CI, precision and detectable-difference number in the package.

One module, numpy/scipy only (no torch, no other ``geomfilter`` import), so any
module can use it without an import loop.

* :func:`auroc` / :func:`auroc_columns` - Mann-Whitney AUROC of two score sets (per column);
* :func:`bootstrap_auroc` - AUROC with a percentile bootstrap CI (each class resampled);
* :func:`bootstrap_ci` - mean (or any statistic) with a percentile bootstrap CI over units;
* :func:`paired_bootstrap` - ``a - b`` over the items two conditions share, with a bootstrap CI;
* :func:`cluster_bootstrap` - any statistic of rows with a CI that resamples whole groups of rows;
* :func:`t_interval` - the mean of a few independent estimates (one per draw of the data) with a Student-t CI;
* :func:`minimum_detectable_difference` - the smallest true mean difference a paired test
  at a given n detects with a given power; :func:`paired_summary` - the paired CI and it together;
  :func:`design_mdd` - the same for items that are each a mean of k draws, at another number of
  items *and* draws (:func:`design_components` splits the variance; :func:`rate_within_variance`
  gives the per-draw part of per-item rates of 0/1 draws);
* :func:`precision_at` - precision / recall of the top-scoring fraction against the base rate;
  :func:`wilson_interval` - a proportion's (e.g. that precision's) Wilson score interval;
* :func:`group_stats` - score distribution per group label;
* :func:`spearman` - Spearman's rank correlation, NaN where no order can be correlated.

Bootstraps are seeded (``numpy.random.default_rng(seed)``) and draw their
resamples in a fixed order, so every number is reproducible from its seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------- AUROC


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U).

    Equals ``sklearn.metrics.roc_auc_score`` on the pooled scores (up to float rounding).
    """
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both classes (got {len(pos)} positive, {len(neg)} negative)")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def auroc_columns(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per column AUROC of ``pos [n_pos, d]`` vs ``neg [n_neg, d]`` (Mann-Whitney, ties 1/2): an array ``[d]``."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]), axis=0)
    u = ranks[: len(pos)].sum(axis=0) - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def within_group_auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, groups: np.ndarray,
                       min_each: int = 3) -> Callable[[np.ndarray], float]:
    """The AUROC inside a group (e.g. the answers to one question), as a function of a row-index array for
    :func:`cluster_bootstrap`: the mean over groups with at least ``min_each`` ``positive`` and ``negative`` rows of
    the group's AUROC (positive vs negative; rows in neither are ignored). What the prompt alone explains cannot
    raise it, unlike a pooled AUROC. A group the bootstrap drew k times counts k times. NaN when no group
    qualifies."""
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups)
    positive, negative = np.asarray(positive, dtype=bool), np.asarray(negative, dtype=bool)
    per_group = dict(zip(*np.unique(groups, return_counts=True)))

    def stat(i: np.ndarray) -> float:
        out: list[float] = []
        for g in np.unique(groups[i]):
            j = i[groups[i] == g]
            times = len(j) // per_group[g]
            pos, neg = scores[j][positive[j]], scores[j][negative[j]]
            if len(pos) >= min_each * times and len(neg) >= min_each * times:
                out += [auroc(pos, neg)] * times
        return float(np.mean(out)) if out else float("nan")

    return stat


def bootstrap_auroc(pos: np.ndarray, neg: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """AUROC with a percentile bootstrap CI (each class resampled with replacement).

    ``{"auroc", "ci_low", "ci_high", "level", "n_boot", "n_pos", "n_neg"}``. Each
    replicate draws the positives, then the negatives, from one generator.
    """
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    point = auroc(pos, neg)
    rng = np.random.default_rng(seed)
    boots = np.array([auroc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_boot)])
    lo, hi, _ = _percentile_ci(boots, level)
    return {"auroc": point, "ci_low": lo, "ci_high": hi, "level": level, "n_boot": n_boot,
            "n_pos": int(len(pos)), "n_neg": int(len(neg))}


def paired_bootstrap_auroc(pos_a: np.ndarray, neg_a: np.ndarray, pos_b: np.ndarray, neg_b: np.ndarray,
                           n_boot: int = 1000, seed: int = 0, level: float = 0.95, power: float = 0.8) -> dict:
    """AUROC(a) - AUROC(b) of two scorers of the same rows (``pos_a[i]`` and ``pos_b[i]`` score one positive row,
    likewise the negatives), with a percentile bootstrap CI: each class resampled with replacement, the same rows for
    both scorers, so what the two share cancels. ``mdd``: :func:`minimum_detectable_difference` with the replicates'
    sd as the SE. ``{"diff", "a", "b", "ci_low", "ci_high", "mdd", "level", "n_boot", "n_pos", "n_neg"}``."""
    pa, na, pb, nb = (np.asarray(x, dtype=np.float64) for x in (pos_a, neg_a, pos_b, neg_b))
    if pa.shape != pb.shape or na.shape != nb.shape:
        raise ValueError(f"the two scorers must score the same rows (positives {pa.shape} vs {pb.shape}, "
                         f"negatives {na.shape} vs {nb.shape})")
    a, b = auroc(pa, na), auroc(pb, nb)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for k in range(n_boot):
        ip, ineg = rng.integers(0, len(pa), len(pa)), rng.integers(0, len(na), len(na))
        boots[k] = auroc(pa[ip], na[ineg]) - auroc(pb[ip], nb[ineg])
    lo, hi, _ = _percentile_ci(boots, level)
    return {"diff": a - b, "a": a, "b": b, "ci_low": lo, "ci_high": hi,
            "mdd": minimum_detectable_difference(se=float(boots.std(ddof=1)), level=level, power=power),
            "level": level, "n_boot": n_boot, "n_pos": int(len(pa)), "n_neg": int(len(na))}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN with fewer than 3 pairs or a constant side (no order to correlate)."""
    from scipy.stats import spearmanr  # scipy is imported by the few callers only

    x, y = np.asarray(x), np.asarray(y)
    return float(spearmanr(x, y).statistic) if len(x) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


# --------------------------------------------------------------------------- bootstrap CIs


def _bootstrap_replicates(v: np.ndarray, n_boot: int, seed: int, stat: Callable[[np.ndarray], float]) -> np.ndarray:
    """``n_boot`` values of ``stat`` on resamples (with replacement) of ``v``, one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    return np.array([stat(v[rng.integers(0, v.size, v.size)]) for _ in range(n_boot)])


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 stat: Callable[[np.ndarray], float] = np.mean) -> dict:
    """``{"mean", "lo", "hi", "n"}``: the statistic with a percentile bootstrap CI over the units given.

    No values give NaNs and ``n`` 0.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    lo, hi, _ = _percentile_ci(_bootstrap_replicates(v, n_boot, seed, stat), level)
    return {"mean": float(stat(v)), "lo": lo, "hi": hi, "n": int(v.size)}


def difference_of_means(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """``mean(a) - mean(b)`` of two independent samples, with a percentile bootstrap CI that resamples each sample
    on its own (:func:`stratified_difference_of_means` with one stratum). ``{"mean", "lo", "hi", "n_a", "n_b"}``;
    NaNs where either sample is empty."""
    r = stratified_difference_of_means([(a, b)], n_boot=n_boot, seed=seed, level=level)
    return {"mean": r["mean"], "lo": r["lo"], "hi": r["hi"], "n_a": len(a), "n_b": len(b)}


def stratified_difference_of_means(strata: Sequence[tuple[Sequence[float], Sequence[float]]], n_boot: int = 2000,
                                   seed: int = 0, level: float = 0.95) -> dict:
    """Two independent samples in each of several strata (e.g. labelling rounds whose levels differ), pooled without
    mixing the strata: ``sum_s w_s (mean(a_s) - mean(b_s)) / sum_s w_s`` with ``w_s = len(a_s)``, and a percentile
    bootstrap CI that resamples each sample of each stratum on its own. Strata with an empty side are left out.
    ``{"mean", "lo", "hi", "n_a", "n_b", "n_strata"}``; NaNs where no stratum is left."""
    xs = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in strata]
    xs = [(a, b) for a, b in xs if a.size and b.size]
    n_a, n_b = sum(a.size for a, _ in xs), sum(b.size for _, b in xs)
    if not xs:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_a": 0, "n_b": 0, "n_strata": 0}
    w = np.array([a.size for a, _ in xs], dtype=np.float64) / n_a
    rng = np.random.default_rng(seed)
    boots = np.array([sum(wi * (a[rng.integers(0, a.size, a.size)].mean() - b[rng.integers(0, b.size, b.size)].mean())
                          for wi, (a, b) in zip(w, xs)) for _ in range(n_boot)])
    lo, hi, _ = _percentile_ci(boots, level)
    return {"mean": float(sum(wi * (a.mean() - b.mean()) for wi, (a, b) in zip(w, xs))), "lo": lo, "hi": hi,
            "n_a": int(n_a), "n_b": int(n_b), "n_strata": len(xs)}


def paired_differences(a_by_id: Mapping, b_by_id: Mapping) -> list[float]:
    """``a[i] - b[i]`` for the items in both mappings, in ``a``'s order; items NaN on either side are left out."""
    return [a_by_id[i] - b_by_id[i] for i in a_by_id
            if i in b_by_id and a_by_id[i] == a_by_id[i] and b_by_id[i] == b_by_id[i]]  # x != x: NaN


def paired_bootstrap(a_by_id: Mapping, b_by_id: Mapping, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     stat: Callable[[np.ndarray], float] = np.mean) -> dict | None:
    """``a - b`` over the items (keys) two conditions share: :func:`bootstrap_ci` of the per-item differences.

    Pairing by item removes the between-item spread both conditions share, so the
    CI is much tighter than comparing two marginal CIs. ``None`` when no item is
    shared (after leaving out NaNs).
    """
    d = paired_differences(a_by_id, b_by_id)
    if not d:
        return None
    return bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level, stat=stat)


def ci_side(ci: Mapping | None) -> int:
    """Which side of zero a CI (``lo``, ``hi``) lies on: +1 above, -1 below, 0 when it covers zero, has NaN bounds or
    is missing. A difference is "measured" where this is not 0."""
    if not ci:
        return 0
    return 1 if ci["lo"] > 0 else -1 if ci["hi"] < 0 else 0


def _percentile_ci(boots: np.ndarray, level: float) -> tuple[float, float, int]:
    """Percentile CI of bootstrap replicates that may be undefined (NaN, left out): ``(lo, hi, n_undefined)``;
    NaN bounds when no replicate is defined."""
    ok = boots[~np.isnan(boots)]
    a = (1 - level) / 2
    lo, hi = (float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a))) if ok.size else (float("nan"),) * 2
    return lo, hi, int(boots.size - ok.size)


def excess_removed(base: Mapping, before: Mapping, after: Mapping, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict | None:
    """The share of ``before``'s excess over ``base`` that ``after`` removes, over the items all three share.

    ``(mean(before) - mean(after)) / (mean(before) - mean(base))``: 1 is back at base, 0 no change, above 1 below
    base, below 0 further from base than ``before``. The items (keys; NaN on any side left out) are resampled
    jointly, so numerator and denominator see the same questions; a percentile CI of the ratio. Its CI is wide
    where the excess is small: read it only when ``before - base`` is itself measured (its CI excludes zero).
    Resamples with no excess are left out and counted in ``n_undefined``. ``{"share", "lo", "hi", "n",
    "excess", "removed", "n_undefined"}`` (``excess`` and ``removed``: the two mean differences); None when no
    item is shared.
    """
    ids = [i for i in before if i in base and i in after and all(x[i] == x[i] for x in (base, before, after))]
    if not ids:
        return None
    b, m, f = (np.array([x[i] for i in ids], dtype=np.float64) for x in (base, before, after))

    def ratio(ix: np.ndarray) -> float:
        excess = m[ix].mean() - b[ix].mean()
        return float((m[ix].mean() - f[ix].mean()) / excess) if excess != 0 else float("nan")

    lo, hi, undefined = _percentile_ci(_bootstrap_replicates(np.arange(len(ids)), n_boot, seed, ratio), level)
    return {"share": ratio(np.arange(len(ids))), "lo": lo, "hi": hi, "n": len(ids),
            "excess": float(m.mean() - b.mean()), "removed": float(m.mean() - f.mean()), "n_undefined": undefined}


def cluster_bootstrap(groups: Sequence, stat: Callable[[np.ndarray], float], n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """A statistic of rows with a percentile bootstrap CI that resamples whole groups (clusters) of rows.

    Rows sharing a group (e.g. answers to one prompt) are not independent; resampling groups with
    replacement keeps that dependence in the CI. ``stat(rows)`` gets an index array into the rows (a
    group drawn twice appears twice) and may return NaN when undefined on a resample (an AUROC with
    one class missing): those replicates are left out and counted in ``n_undefined``.
    ``{"value", "lo", "hi", "level", "n_boot", "n_undefined", "n_groups"}``.
    """
    labels, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
    rng = np.random.default_rng(seed)
    boots = np.array([stat(np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]))
                      for _ in range(n_boot)], dtype=np.float64)
    lo, hi, undefined = _percentile_ci(boots, level)
    return {"value": float(stat(np.arange(len(inverse)))), "lo": lo, "hi": hi, "level": level, "n_boot": n_boot,
            "n_undefined": undefined, "n_groups": int(len(labels))}


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """The mean of a few independent estimates with a Student-t CI over them (``k - 1`` degrees of freedom).

    For effects replicated on independent draws of the data, where each draw gives one estimate (itself
    measured with a CI over questions): the between-draw spread, not the question-level noise within a
    draw, is what a claim about a new draw has to beat. With three draws the factor is t(0.975, 2) = 4.30
    times the standard error, so only a large and steady effect excludes zero.
    ``{"mean", "lo", "hi", "sd", "k", "level"}``; lo/hi NaN for fewer than two estimates.
    """
    from scipy.stats import t

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        raise ValueError("t_interval needs at least one estimate")
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "k": 1, "level": level}
    sd = float(v.std(ddof=1))
    half = float(t.ppf(1 - (1 - level) / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "k": int(len(v)), "level": level}


# --------------------------------------------------------------------------- detectable differences


def _z(level: float, power: float) -> float:
    from scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    return float(norm.ppf(1 - (1 - level) / 2) + norm.ppf(power))


def minimum_detectable_difference(values: Sequence[float] | None = None, n: int | None = None, level: float = 0.95,
                                  power: float = 0.8, *, se: float | None = None) -> float:
    """The smallest true mean difference a two-sided paired test at ``n`` items detects with ``power``.

    ``MDD = (z_{1-α/2} + z_{power}) · SE`` with ``α = 1 - level`` (normal
    approximation: the test rejects when ``|mean| / SE > z_{1-α/2}``; a true
    difference of MDD puts the mean ``z_power`` SEs beyond that threshold). At
    the defaults the factor is 1.960 + 0.842 = 2.802.

    * ``values`` - the paired (per-item) differences, or any per-item values whose
      mean is tested: ``SE = sd(values, ddof=1) / sqrt(n)``, ``n`` defaulting to
      ``len(values)``. Another ``n`` answers "what would n items detect?" with the
      same per-item spread: the MDD scales as ``1 / sqrt(n)``.
    * ``se`` - a standard error already at the study's n (e.g. the sd of bootstrap
      replicates of the mean); then ``values`` and ``n`` must be left out.

    NaN when fewer than two values give no spread to estimate.
    """
    z = _z(level, power)
    if se is not None:
        if values is not None or n is not None:
            raise ValueError("give either se, or values (and optionally n), not both")
        return float(z * se)
    if values is None:
        raise ValueError("give the per-item values (or paired differences) or se")
    v = np.asarray(values, dtype=np.float64)
    n = len(v) if n is None else n
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(v) < 2:
        return float("nan")
    return float(z * v.std(ddof=1) / math.sqrt(n))


def paired_summary(a_by_id: Mapping, b_by_id: Mapping, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                   power: float = 0.8, se: str = "sample") -> dict | None:
    """:func:`paired_bootstrap` plus its standard error and :func:`minimum_detectable_difference`.

    ``{"mean", "lo", "hi", "n", "se", "mdd", "power"}``; mean, lo, hi and n are
    exactly :func:`paired_bootstrap`'s (same seed, same resamples). ``se="sample"``
    takes ``sd / sqrt(n)`` of the differences, ``se="bootstrap"`` the sd of the
    bootstrap replicates of the mean. ``None`` when no item is shared.
    """
    if se not in ("sample", "bootstrap"):
        raise ValueError(f"se must be 'sample' or 'bootstrap', got {se!r}")
    d = paired_differences(a_by_id, b_by_id)
    if not d:
        return None
    v = np.asarray(d, dtype=np.float64)
    boots = _bootstrap_replicates(v, n_boot, seed, np.mean)
    a = (1 - level) / 2
    if se == "bootstrap":
        s = float(boots.std(ddof=1)) if n_boot > 1 else float("nan")
    else:
        s = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(np.mean(v)), "lo": float(np.quantile(boots, a)), "hi": float(np.quantile(boots, 1 - a)),
            "n": int(v.size), "se": s, "mdd": minimum_detectable_difference(se=s, level=level, power=power),
            "power": power}


def rate_within_variance(mean: float, item_var: float, n_per_item: int) -> float:
    """``E[p(1 - p)]`` over items: the variance of one 0/1 draw within an item, from the spread of per-item rates.

    Each item's rate is the mean of ``n_per_item`` (``k``) 0/1 draws of its own true rate ``p``,
    so the rates vary across items by ``item_var = var(p) + E[p(1 - p)] / k``, and
    ``E[p(1 - p)] = m(1 - m) - var(p)`` (``m`` the mean rate). Solving (method of moments):
    ``var(p) = (item_var - m(1 - m) / k) / (1 - 1 / k)``, clipped to ``[0, m(1 - m)]``. With one
    draw per item ``var(p)`` cannot be told apart from the draws' own noise: 0 is assumed (all
    within), the largest within-item variance.
    """
    if not 0 <= mean <= 1:
        raise ValueError(f"mean must be a rate in [0, 1], got {mean}")
    if n_per_item < 1:
        raise ValueError(f"n_per_item must be >= 1, got {n_per_item}")
    bern = mean * (1 - mean)
    between = 0.0 if n_per_item == 1 else (item_var - bern / n_per_item) / (1 - 1 / n_per_item)
    return float(bern - min(max(between, 0.0), bern))


def design_components(item_var: float, within_var: float, n_per_item_observed: int) -> tuple[float, float]:
    """``(tau^2, within)``: a per-item variance observed at ``k`` draws split into between items and per draw.

    An item's value at ``k`` draws varies by ``tau^2 + within / k``: ``tau^2`` is the spread of the
    items' true values (more draws cannot shrink it), ``within`` the variance of one draw within an
    item (a paired difference of rates: the sum of both conditions'
    :func:`rate_within_variance`). ``tau^2 = item_var - within_var / k``. Where that is negative,
    the observed items vary *less* than independent draws would make them -- the paired draws are
    positively correlated (e.g. both conditions sampled with the same seeds) -- so ``tau^2 = 0``
    and ``within = k * item_var``, the per-draw variance the data show.
    """
    if n_per_item_observed < 1:
        raise ValueError(f"n_per_item_observed must be >= 1, got {n_per_item_observed}")
    if item_var < 0 or within_var < 0:
        raise ValueError(f"variances must be >= 0, got item_var={item_var}, within_var={within_var}")
    tau2 = item_var - within_var / n_per_item_observed
    return (float(tau2), float(within_var)) if tau2 >= 0 else (0.0, float(item_var * n_per_item_observed))


def design_mdd(item_var: float, within_var: float, n_per_item_observed: int, n_items: int, n_per_item: int,
               level: float = 0.95, power: float = 0.8) -> float:
    """:func:`minimum_detectable_difference` of a mean over ``n_items`` items that are each a mean of ``n_per_item`` draws.

    ``item_var`` is the per-item variance observed at ``n_per_item_observed`` draws and
    ``within_var`` the variance of one draw within an item; :func:`design_components` splits
    ``item_var`` into ``tau^2 + within / k_observed``, and then
    ``SE = sqrt((tau^2 + within / n_per_item) / n_items)``. At the observed design this is
    ``minimum_detectable_difference(se=sqrt(item_var / n_items))``.
    """
    if min(n_items, n_per_item) < 1:
        raise ValueError("n_items and n_per_item must be >= 1")
    tau2, within = design_components(item_var, within_var, n_per_item_observed)
    return minimum_detectable_difference(se=math.sqrt((tau2 + within / n_per_item) / n_items), level=level,
                                         power=power)

# --------------------------------------------------------------------------- ranking and groups


def precision_at(scores: np.ndarray, labels: np.ndarray, fractions: Sequence[float] = (0.1, 0.25, 0.5)) -> dict:
    """Precision of the top-``fraction`` (highest scores, ties by row order) against the base rate."""
    labels = np.asarray(labels, dtype=bool)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    out = {"base_rate": float(labels.mean()), "n": int(len(labels))}
    for f in fractions:
        k = int(round(f * len(labels)))
        top = labels[order[:k]]
        out[f"{f:g}"] = {"n_dropped": k, "precision": float(top.mean()) if k else float("nan"),
                         "recall": float(top.sum() / max(labels.sum(), 1))}
    return out


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (e.g. a filter's precision over its ``n`` dropped rows);
    ``(nan, nan)`` when ``n`` is 0."""
    from scipy.stats import norm

    if n <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, mid - half), min(1.0, mid + half)
    return (0.0 if k == 0 else float(lo)), (1.0 if k == n else float(hi))  # exact at the ends


def group_stats(scores: np.ndarray, groups: Sequence) -> dict[str, dict]:
    """Score distribution per group label: n, mean, sd, quartiles."""
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    out = {}
    for g in sorted(set(groups.tolist())):
        s = scores[groups == g]
        q = np.quantile(s, [0.25, 0.5, 0.75])
        out[g] = {"n": int(len(s)), "mean": float(s.mean()), "sd": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
                  "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}
    return out
