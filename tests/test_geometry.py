import numpy as np
import pytest

from geomfilter.features import (
    SampleTargets,
    contrast_features,
    harmful_features,
    sample_targets,
    split_by_pair,
)
from geomfilter.geometry import (
    feature_proximity,
    frequency_matched_sample,
    nearest_harmful,
    permutation_control,
    score_targets,
    span_basis,
    unit_directions,
)
from geomfilter.stats import auroc, bootstrap_auroc, precision_at
from tests.synthetic import make_cache, planted_decoder
from tests.tiny import tiny_sae


def test_proximity_equals_naive_loop_on_tiny_sae():
    sae = tiny_sae(d_in=16, d_sae=48, seed=3)
    w = sae.W_dec.detach().numpy().astype(np.float64)
    harmful = [5, 7, 20, 33]
    got_max = feature_proximity(unit_directions(sae), harmful, agg="max")
    got_mean = feature_proximity(unit_directions(sae), harmful, agg="mean")
    for f in range(48):
        cos = [w[f] @ w[h] / (np.linalg.norm(w[f]) * np.linalg.norm(w[h])) for h in harmful if h != f]
        assert got_max[f] == pytest.approx(max(cos), abs=1e-5)
        assert got_mean[f] == pytest.approx(np.mean(cos), abs=1e-5)


def test_span_proximity_equals_least_squares_projection_on_tiny_sae():
    """``span``: the length of each latent's unit direction's projection on the span of the harmful directions (a
    harmful latent: on the span of the others), checked against a least-squares fit per latent."""
    sae = tiny_sae(d_in=16, d_sae=48, seed=3)
    d = unit_directions(sae).astype(np.float64)
    harmful = [5, 7, 20, 33]
    got = feature_proximity(unit_directions(sae), harmful, agg="span")
    for f in range(48):
        basis = d[[h for h in harmful if h != f]].T  # [d_in, r]
        coef, *_ = np.linalg.lstsq(basis, d[f], rcond=None)
        assert got[f] == pytest.approx(np.linalg.norm(basis @ coef), abs=1e-5)
    # never below the nearest single harmful latent's cosine: a harmful direction is in the span
    assert (got >= feature_proximity(unit_directions(sae), harmful, agg="max") - 1e-5).all()


def test_span_proximity_reads_the_subspace_not_its_slicing():
    e = np.eye(4)
    # the harmful set e0, e1; a latent on their diagonal is 0.71 from each but lies in their span
    d = unit_directions(np.stack([e[0], e[1], e[0] + e[1], e[2], e[0] + e[2]]))
    assert feature_proximity(d, [0, 1], agg="max")[2] == pytest.approx(np.sqrt(0.5), abs=1e-6)
    span = feature_proximity(d, [0, 1], agg="span")
    assert span[2] == pytest.approx(1.0) and span[3] == pytest.approx(0.0) and span[4] == pytest.approx(np.sqrt(0.5))
    assert span[0] == pytest.approx(0.0)  # e0 against the span of e1 alone
    # the same subspace sliced into other latents (the diagonals) gives the non-harmful latents the same proximity
    d2 = unit_directions(np.stack([e[0] + e[1], e[0] - e[1], e[0] + e[1], e[2], e[0] + e[2]]))
    np.testing.assert_allclose(feature_proximity(d2, [0, 1], agg="span")[3:], span[3:], atol=1e-6)
    assert np.isnan(feature_proximity(d, [0], agg="span")[0])  # a lone harmful latent
    with pytest.raises(ValueError, match="agg must be one of"):
        feature_proximity(d, [0, 1], agg="median")


def test_proximity_is_invariant_to_decoder_row_scaling():
    w, harmful, _, _ = planted_decoder()
    scaled = w * np.random.default_rng(1).uniform(0.1, 10, size=(w.shape[0], 1))
    np.testing.assert_allclose(feature_proximity(unit_directions(w), harmful),
                               feature_proximity(unit_directions(scaled), harmful), atol=1e-5)


def test_lone_harmful_latent_has_no_self_match():
    w, _, _, _ = planted_decoder()
    p = feature_proximity(unit_directions(w), [0])
    assert np.isnan(p[0]) and np.isfinite(np.delete(p, 0)).all()


def test_planted_feature_is_nearest_and_ranks_first():
    w, harmful, planted, far = planted_decoder()
    d = unit_directions(w)
    prox = feature_proximity(d, harmful)
    non_harmful = np.setdiff1d(np.arange(len(prox)), harmful)
    assert non_harmful[np.argmax(prox[non_harmful])] == planted
    assert prox[planted] == pytest.approx(0.95, abs=1e-4)
    assert abs(prox[far]) < 1e-5
    assert nearest_harmful(d, harmful, [planted])[0][0][0] == 0
    # samples: one fires the planted latent, the others random non-harmful latents
    rng = np.random.default_rng(0)
    dense = np.zeros((20, w.shape[0]), dtype=np.float32)
    for i in range(20):
        dense[i, rng.choice(np.arange(12, 64), 4, replace=False)] = rng.uniform(0.5, 1, 4)
    dense[7, planted] = 2.0
    scores = score_targets(sample_targets(make_cache(dense), k=8), prox)
    assert int(np.argmax(scores)) == 7


def test_scorers_weighting_and_padding():
    prox = np.array([0.9, 0.1, 0.5, -0.2], dtype=np.float32)
    t = SampleTargets(idx=np.array([[0, 1, -1], [-1, -1, -1], [2, 3, -1]]),
                      weight=np.array([[1.0, 3.0, 0.0], [0, 0, 0], [2.0, 2.0, 0]], dtype=np.float32))
    np.testing.assert_allclose(score_targets(t, prox, "weighted_mean"), [(0.9 + 0.3) / 4, -1, 0.15], atol=1e-6)
    np.testing.assert_allclose(score_targets(t, prox, "max"), [0.9, -1, 0.5], atol=1e-6)
    np.testing.assert_allclose(score_targets(t, prox, "weighted_max"), [0.3, -1, 0.5], atol=1e-6)
    np.testing.assert_allclose(score_targets(t, prox, "top5_mean"), [0.5, -1, 0.15], atol=1e-6)
    with pytest.raises(ValueError, match="unknown scorer"):
        score_targets(t, prox, "nope")


def test_auroc_matches_sklearn_and_ci_contains_point():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounding makes ties
    y = np.r_[np.ones(40), np.zeros(60)]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))
    b = bootstrap_auroc(pos, neg, n_boot=200)
    assert b["ci_low"] <= b["auroc"] <= b["ci_high"] and b["n_pos"] == 40
    with pytest.raises(ValueError, match="both classes"):
        auroc(pos, [])


def test_precision_at_counts_and_base_rate():
    scores = np.array([5, 4, 3, 2, 1, 0.0])
    labels = np.array([1, 0, 1, 0, 0, 0], dtype=bool)
    p = precision_at(scores, labels, [0.5])
    assert p["base_rate"] == pytest.approx(1 / 3)
    assert p["0.5"]["n_dropped"] == 3 and p["0.5"]["precision"] == pytest.approx(2 / 3)


def test_contrast_and_auroc_selection_find_the_planted_latents():
    rng = np.random.default_rng(0)
    n, d_sae = 60, 32
    base = rng.uniform(0, 1, (2 * n, d_sae)) * (rng.random((2 * n, d_sae)) < 0.3)
    harm, ben = base[:n].copy(), base[n:].copy()
    harm[:, 3] += 2.0  # strong, always
    harm[: n // 2, 9] += 0.8  # half the time
    harm[:, 20], ben[:, 20] = 0, 0
    harm[0, 20] = 50.0  # one-off: a huge mean, but rare
    hc, bc = make_cache(harm.astype(np.float32), top_k=32), make_cache(ben.astype(np.float32), top_k=32)
    fs = contrast_features(hc, bc, n=2, min_freq=0.1)
    assert fs.ids[:1] == [3] and 20 not in fs.ids and 9 in fs.ids
    assert contrast_features(hc, bc, n=1, method="auroc").ids == [3]
    with pytest.raises(ValueError, match="method"):
        contrast_features(hc, bc, method="bogus")


def test_harmful_features_split_has_no_leakage():
    rng = np.random.default_rng(1)
    n, d_sae = 40, 24
    harm = rng.uniform(0, 1, (n, d_sae)).astype(np.float32)
    harm[:, 4] += 3
    ben = rng.uniform(0, 1, (n, d_sae)).astype(np.float32)
    meta = [{"pair_id": f"p{i}"} for i in range(n)]
    hc = make_cache(harm, meta=meta, top_k=24, name="h")
    bc = make_cache(ben, meta=meta, top_k=24, name="b")
    fs = harmful_features(hc, bc, n=3, select_frac=0.5, seed=0, n_boot=100)
    sel = split_by_pair(hc, 0.5, 0)
    assert sel.sum() == n // 2
    chosen = {m["pair_id"] for m, s in zip(hc.meta, sel) if s}
    measured = {m["pair_id"] for m, s in zip(hc.meta, sel) if not s}
    assert not chosen & measured
    assert fs.ids[0] == 4 and fs.heldout["n_pos"] == n // 2 and fs.heldout["auroc"] > 0.9


def test_relative_targets_subtract_own_answer():
    data = np.zeros((2, 8), dtype=np.float32)
    data[0, [1, 2]] = [1.0, 0.5]
    data[1, [3]] = [2.0]
    own = np.zeros((2, 8), dtype=np.float32)
    own[0, 1] = 1.5  # the model already does more of latent 1 than sample 0
    own[1, 3] = 0.5
    c = make_cache(data, ids=["a", "b"])
    o = make_cache(own[::-1].copy(), ids=["b", "a"])  # another order: matched by id
    t = sample_targets(c, k=4, relative_to=o)
    assert t.idx[0, 0] == 2 and t.weight[0, 0] == pytest.approx(0.5) and 1 not in t.idx[0][t.weight[0] > 0]
    assert t.idx[1, 0] == 3 and t.weight[1, 0] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="lacks"):
        sample_targets(c, k=4, relative_to=make_cache(own, ids=["a", "z"]))


def test_permutation_control_detects_planted_closeness_and_not_random_sets():
    rng = np.random.default_rng(0)
    d_sae, d_in = 400, 32
    w = rng.normal(size=(d_sae, d_in))
    harmful = list(range(10))
    close = list(range(10, 30))
    for j, f in enumerate(close):  # each close latent is a noisy copy of a harmful one
        w[f] = w[harmful[j % 10]] + 0.5 * rng.normal(size=d_in)
    d = unit_directions(w)
    freq = rng.uniform(0, 1, d_sae)
    res = permutation_control(d, close, harmful, freq, n_perm=200)
    assert res.p_value < 0.01 and res.z > 3
    null = permutation_control(d, list(range(100, 120)), harmful, freq, n_perm=200)
    assert null.p_value > 0.01


def test_frequency_matched_sample_matches_bins_and_excludes():
    rng = np.random.default_rng(0)
    freq = np.linspace(0, 1, 200)
    like = np.array([0, 1, 2, 150, 151])
    pick = frequency_matched_sample(freq, like, rng, exclude=like, n_bins=10)
    assert len(pick) == 5 and not set(pick) & set(like)
    assert (freq[pick] < 0.1).sum() == 3 and (freq[pick] >= 0.7).sum() == 2


def test_span_basis_drops_dependent_rows_wherever_they_sit():
    e = np.eye(5)
    # a dependent row first, then two independent ones: the span is the e0-e1 plane (2 dimensions)
    rows = np.stack([e[0] + e[1], 2 * (e[0] + e[1]), e[0], e[1] - e[0]])
    q = span_basis(rows)
    assert q.shape == (5, 2)
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(e[:2] @ q, axis=1), [1, 1], atol=1e-12)
    assert np.linalg.norm(e[2] @ q) == pytest.approx(0.0, abs=1e-12)
