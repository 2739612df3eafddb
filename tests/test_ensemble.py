"""The ensemble strategy: members cross-fitted on the reference pairs, put on the references' scale, averaged."""
import numpy as np
import pytest

from geomfilter.features import split_by_pair
from geomfilter.filtering import EnsembleFilter, check_filter_params, make_filter
from tests.synthetic import make_cache, planted_decoder
from tests.test_filtering import _data, _refs


def _setup():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    return w, h, b, _data(w, planted)


def test_each_member_is_scaled_by_its_out_of_fold_reference_means():
    w, h, b, c = _setup()
    f = EnsembleFilter(w, members=("activation", "representation"), n_harmful=3, drop=0.25).fit(h, b)
    halves = [(split_by_pair(h), split_by_pair(b))]
    halves.append((~halves[0][0], ~halves[0][1]))
    for k, name in enumerate(("activation", "representation")):
        params = {"n_harmful": 3} if name == "activation" else {}
        sh, sb = [], []
        for fit, out in ((halves[0], halves[1]), (halves[1], halves[0])):  # naive cross-fitting
            m = make_filter(name, sae=w, drop=0.25, **params).fit(h.select(fit[0]), b.select(fit[1]))
            sh.append(m.score_samples(h.select(out[0])))
            sb.append(m.score_samples(b.select(out[1])))
        offset, scale = np.concatenate(sb).mean(), np.concatenate(sh).mean() - np.concatenate(sb).mean()
        assert f.offset_[k] == pytest.approx(offset) and f.scale_[k] == pytest.approx(scale) and scale > 0
        full = make_filter(name, sae=w, drop=0.25, **params).fit(h, b).score_samples(c)
        np.testing.assert_allclose(f.member_scores(c)[:, k], (full - offset) / scale)
    np.testing.assert_allclose(f.score_samples(c), f.member_scores(c).mean(axis=1))


def test_the_members_catch_what_each_alone_misses():
    w, h, b, _ = _setup()
    n = len(b)
    dense = np.zeros((n, w.shape[0]), dtype=np.float32)
    dense[:, 30:35] = 0.5
    dense[:4, :3] = 6.0  # rows 0..3 fire the harmful latents, with benign residuals
    resid = b.arrays["resid_mean"].copy()
    resid[5] = h.arrays["resid_mean"][5]  # row 5: a harmful residual, no harmful latent
    c = make_cache(dense, resid=resid)
    act = make_filter("activation", sae=w, n_harmful=3, drop=0.25).fit(h, b).score_samples(c)
    rep = make_filter("representation", drop=0.25).fit(h, b).score_samples(c)
    ens = EnsembleFilter(w, n_harmful=3, drop=0.25).fit(h, b).score_samples(c)
    assert set(np.argsort(-ens, kind="stable")[:5].tolist()) == {0, 1, 2, 3, 5}
    assert act[5] == act[6] and rep[:4].max() < rep[5]  # activation misses row 5; representation ranks it alone
    assert np.argsort(-rep, kind="stable")[0] == 5 and not {0, 1, 2, 3} <= set(np.argsort(-rep)[:5].tolist())
    one = EnsembleFilter(w, members=("representation",), drop=0.25).fit(h, b)  # one member: its ranking unchanged
    np.testing.assert_array_equal(np.argsort(-one.score_samples(c), kind="stable"), np.argsort(-rep, kind="stable"))


def test_explain_lists_the_members_scaled_scores_highest_first():
    w, h, b, c = _setup()
    f = EnsembleFilter(w, n_harmful=3, drop=0.25).fit(h, b)
    z = f.member_scores(c)
    ex = f.explain(c, np.array([5, 0]), n=2)
    assert [e["member"] for e in ex[1]] == [("activation", "representation")[k] for k in np.argsort(-z[0])]
    assert ex[0][0]["scaled_score"] == pytest.approx(z[5].max(), abs=1e-4)
    res = f.apply(c, explain=1)
    assert len(res.explanations[0]) == 1 and res.n_dropped == 10
    for call in (lambda: f.score_samples(c, own=c), lambda: f.apply(c, own=c)):
        with pytest.raises(ValueError, match="does not score relative to the model's own answers"):
            call()
    np.testing.assert_array_equal(res.scores, f.score_samples(c))  # apply scores once, the same


def test_an_explicit_harmful_feature_set_reaches_the_sae_members():
    w, h, b, _ = _setup()
    f = EnsembleFilter(w, harmful_ids=[0, 1, 2], drop=0.25).fit(h, b)
    assert f.members_[0].features_.ids == [0, 1, 2] and f.features_.ids == [0, 1, 2]
    assert not hasattr(f.members_[1], "features_")  # representation has none


def test_a_member_that_does_not_separate_its_references_is_refused_by_name():
    w, h, b, _ = _setup()
    # here the harmful references fire the harmful latents themselves, and geometry leaves out a latent's match
    # with itself: it scores held-out harmful references below benign ones, so it has no scale
    with pytest.raises(ValueError, match="member 'geometry' does not score held-out harmful"):
        EnsembleFilter(w, members=("activation", "geometry"), n_harmful=3, drop=0.25).fit(h, b)
    with pytest.raises(ValueError, match="two reference pairs"):
        EnsembleFilter(w, members=("representation",), drop=0.25).fit(h.select(np.arange(len(h)) < 1), b)


def test_members_option_is_checked_before_anything_runs():
    check_filter_params("ensemble", drop=0.1, members=("geometry", "projection"))
    for members in (("judge",), ("activation", "activation"), (), ("nope",)):
        with pytest.raises(ValueError, match="--members .*must be distinct strategies among activation, geometry"):
            check_filter_params("ensemble", drop=0.1, members=members)
