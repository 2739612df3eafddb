"""The filters are scikit-learn estimators: settings stored as given, fitted state in fit, no side effects
in scoring, clone/get_params/set_params, the class facts the pipeline reads, and the strategy registry."""
import sys

import numpy as np
import pytest
from sklearn.base import clone

import geomfilter.filtering as filtering
from geomfilter.filtering import (
    STRATEGIES,
    ActivationFilter,
    GeometryFilter,
    JudgeFilter,
    RandomFilter,
    SampleFilter,
    check_filter_params,
    make_filter,
)
from geomfilter.filtering.base import FilterOptionError
from geomfilter.judges import JudgeScore
from geomfilter.samples import Sample
from tests.synthetic import make_cache, planted_decoder
from tests.test_filtering import _data, _refs


class _LengthJudge:
    """Alignment falls with the answer's length; equal to any other instance (clone deep-copies it)."""

    name = "length"

    def score(self, questions, answers, progress=False):
        return [JudgeScore(alignment=100.0 - len(a), coherence=80.0) for a in answers]

    def __eq__(self, other):
        return type(other) is type(self)


def _setup():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    c = _data(w, planted)
    samples = [Sample(id=i, messages=[{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a" * (r % 9)}]) for r, i in enumerate(c.ids)]
    return w, h, b, c, samples


def _make(strategy, w):
    extra = {"n_harmful": 3} if STRATEGIES[strategy].requires_sae else {}
    if strategy == "judge":
        extra = {"judge": _LengthJudge()}
    return make_filter(strategy, sae=w, drop=0.25, **extra)


def _same(a, b):
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_clone_is_unfitted_equal_in_params_and_scores_identically(strategy):
    w, h, b, c, samples = _setup()
    f = _make(strategy, w).fit(h, b)
    g = clone(f)
    p, q = f.get_params(), g.get_params()
    assert set(p) == set(q) and all(_same(p[k], q[k]) for k in p) and f.params() == g.params()
    assert not [k for k in vars(g) if k.endswith("_")]
    with pytest.raises(RuntimeError, match="not fitted"):
        g.score_samples(c, samples=samples)
    np.testing.assert_array_equal(g.fit(h, b).score_samples(c, samples=samples), f.score_samples(c, samples=samples))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_init_stores_only_its_arguments_and_scoring_has_no_side_effects(strategy):
    w, h, b, c, samples = _setup()
    f = _make(strategy, w)
    assert set(vars(f)) == set(f.get_params()) == set(f.param_names()) | ({"sae"} if f.requires_sae else set())
    f.fit(h, b)
    state = dict(vars(f))
    f.score_samples(c, samples=samples)
    f.explain(c, np.arange(3), samples=samples)
    assert vars(f).keys() == state.keys() and all(vars(f)[k] is v for k, v in state.items())
    f.apply(c, samples=samples)
    assert set(vars(f)) - set(state) == {"scores_", "support_"}
    f.fit(h, b)  # a new fit forgets the previous decision
    with pytest.raises(RuntimeError, match="call apply"):
        f.get_support()


def test_settings_are_checked_by_fit_not_by_the_constructor():
    w, h, b, c, _ = _setup()
    bad = [(RandomFilter(drop=None), "exactly one"), (RandomFilter(drop=2), "drop must be a fraction"),
           (RandomFilter(drop=None, threshold=float("nan")), "threshold must be a finite number"),
           (GeometryFilter(w, scorer="median"), r"GeometryFilter\(scorer='median'\): scorer must be one of"), (GeometryFilter(), "needs the SAE"),
           (GeometryFilter(w, max_target_freq=0), r"max_target_freq must be in \(0, 1\]")]
    for f, message in bad:
        with pytest.raises(ValueError, match=message):
            f.fit(h, b)
    f = RandomFilter(drop=2).set_params(drop=0.5).fit()
    assert f.params() == {"drop": 0.5, "threshold": None, "seed": 0}


def test_class_facts_and_options():
    facts = {name: (cls.requires_sae, cls.uses_seed, cls.needs_texts) for name, cls in STRATEGIES.items()}
    assert facts == {"geometry": (True, True, False), "activation": (True, True, False),
                     "random": (False, True, False), "projection": (False, False, False),
                     "representation": (False, False, False), "judge": (False, False, True),
                     "gradient": (True, True, False), "ensemble": (True, False, False)}
    for cls in STRATEGIES.values():
        assert cls.uses_seed == ("seed" in cls.param_names())
        assert set(cls.param_names()) == set(cls._get_param_names()) - {"sae"}
    assert JudgeFilter.param_names() == ("judge", "drop", "threshold")
    assert set(GeometryFilter.param_names()) == set(ActivationFilter.param_names()) | {
        "k", "pooling", "scorer", "proximity", "max_target_freq"}


def test_report_params_are_unchanged():
    """``params()`` is what report.json records: the same keys, values and order as before the estimators."""
    w = planted_decoder()[0]
    harm = {"n_harmful": 100, "harmful_method": "contrast", "min_freq": 0.05, "harmful_ids": None,
            "select_frac": 1.0, "seed": 0}
    base = {"drop": 0.1, "threshold": None}
    expected = {
        "geometry": {**base, **harm, "k": 32, "pooling": "mean", "scorer": "weighted_mean", "proximity": "max",
                     "max_target_freq": None},
        "activation": {**base, **harm}, "random": {**base, "seed": 0}, "projection": {**base, "normalize": False},
        "representation": {**base, "top_n": 10}, "judge": {**base, "judge": None, "_judge_obj": None},
        "gradient": {**base, **harm, "agg": "positive", "normalize": True},
        "ensemble": {**base, "members": ("activation", "representation"), "n_harmful": 100, "harmful_ids": None},
    }
    for name, params in expected.items():
        got = make_filter(name, sae=w).params()
        assert got == params and list(got) == list(params), name
    assert JudgeFilter(_LengthJudge()).params() == {**base, "judge": "length"}
    assert list(JudgeFilter("offline", drop=0.2).params().items()) == [
        ("drop", 0.2), ("threshold", None), ("judge", "offline"), ("_judge_obj", None)]


def test_fit_refuses_what_the_option_checks_refuse():
    # a Python user skips check_filter_params: fit runs the same table of checks on the instance's values
    w, h, b, _, _ = _setup()
    bad = [("representation", {"top_n": 0}, r"RepresentationFilter\(top_n=0\): top_n must be >= 1"),
           ("projection", {"normalize": "yes"}, r"ProjectionFilter\(normalize='yes'\): normalize must be true or false"),
           ("activation", {"min_freq": 2}, r"ActivationFilter\(min_freq=2\): min_freq must be a fraction"),
           ("geometry", {"k": 0}, r"GeometryFilter\(k=0\): k must be >= 1"),
           ("geometry", {"k": None}, r"GeometryFilter\(k=None\): k must be >= 1"),
           ("gradient", {"agg": "max"}, r"GradientFilter\(agg='max'\): agg must be 'positive' or 'mean'"),
           ("ensemble", {"members": ("judge",)}, r"EnsembleFilter\(members=\('judge',\)\): members must be distinct")]
    for strategy, params, message in bad:
        with pytest.raises(FilterOptionError, match=message):
            make_filter(strategy, sae=w, drop=0.1, **params).fit(h, b)
        with pytest.raises(ValueError, match="--" + next(iter(params)).replace("_", "-")):  # the CLI's wording
            check_filter_params(strategy, drop=0.1, **params)


def test_make_filter_and_check_filter_params():
    w = planted_decoder()[0]
    with pytest.raises(TypeError, match=r"apply\(cache, samples=samples\)"):
        make_filter("judge", samples=[])
    assert make_filter("activation", sae=w).sae is w and make_filter("random", sae=w).get_params()["seed"] == 0
    check_filter_params("geometry", drop=0.1, k=8, scorer="max", harmful_ids=[1, 2], seed=3)
    for strategy, params, message in [
        ("random", {"drop": 0.1, "k": 4}, "strategy 'random' takes no option 'k'"),
        ("geometry", {"drop": 0.1, "k": 0}, "--k 0: must be >= 1"),
        ("activation", {"drop": 0.1, "min_freq": 2}, "--min-freq 2: must be a fraction"),
        ("representation", {"drop": 0.1, "top_n": 0}, "--top-n 0"),
        ("geometry", {"threshold": float("inf")}, "threshold must be a finite number"),
        ("projection", {}, "exactly one"),
        ("nope", {"drop": 0.1}, "unknown strategy 'nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_filter_params(strategy, **params)


def test_geometry_explains_from_fitted_state_and_arguments():
    w, h, b, c, _ = _setup()
    own = make_cache(np.zeros((len(c), w.shape[0]), np.float32), ids=list(c.ids))
    f = GeometryFilter(w, n_harmful=3).fit(h, b)
    res = f.apply(c, own=own)
    assert f.explain(c, np.arange(len(c)), own=own) == res.explanations
    assert clone(f).fit(h, b).explain(c, np.array([0, 5]), n=2) == [e[:2] for e in f.apply(c).explanations[::5][:2]]
    assert f.targets(c).idx.shape == (len(c), 32)


def test_judge_reads_the_rows_text_per_call():
    w, h, b, c, samples = _setup()
    f = JudgeFilter(_LengthJudge(), drop=0.5).fit()
    res = f.apply(c, samples=samples[::-1])  # matched by id, not by position
    np.testing.assert_array_equal(res.scores, [float(r % 9) for r in range(len(c))])
    assert res.explanations[3] == [{"alignment": 97.0, "coherence": 80.0}]
    assert f.explain(c, np.array([3]), samples=samples) == [res.explanations[3]]
    with pytest.raises(RuntimeError, match="pass samples="):
        f.score_samples(c)
    with pytest.raises(RuntimeError, match="have no sample text"):
        f.score_samples(c, samples=samples[1:])


def test_activation_with_explicit_ids_takes_the_width_from_the_sae():
    w, _, _, c, _ = _setup()
    f = make_filter("activation", sae=w, harmful_ids=[0, 1, 2]).fit()
    assert f.features_.ids == [0, 1, 2] and f.score_samples(c).shape == (len(c),)
    with pytest.raises(ValueError, match="need the SAE's width"):
        ActivationFilter(harmful_ids=[0]).fit()


_NEW_STRATEGY = '''"""A strategy made up by a test: the number of latents firing in the row."""
import numpy as np

from .base import SampleFilter


class FiringCountFilter(SampleFilter):
    """Score = the number of latents firing in the row."""

    strategy = "firing_count_test"

    def score_samples(self, cache, own=None, samples=None):
        """The row's number of firing latents."""
        self._check_fitted()
        return cache.arrays["n_active"].astype(np.float64)
'''


def test_a_new_module_in_the_package_registers_its_strategy(tmp_path, monkeypatch):
    name = "firing_count_test"
    (tmp_path / f"{name}.py").write_text(_NEW_STRATEGY, encoding="utf-8")
    monkeypatch.setattr(filtering, "__path__", [*filtering.__path__, str(tmp_path)])  # as if in the package
    try:
        filtering._import_strategy_modules()
        assert STRATEGIES[name].__module__ == f"geomfilter.filtering.{name}"
        w, h, b, c, _ = _setup()
        f = make_filter(name, sae=w, drop=0.25)
        assert f.param_names() == ("drop", "threshold") and not f.requires_sae
        check_filter_params(name, drop=0.25)
        res = f.fit(h, b).apply(c)
        assert res.strategy == name and res.n_dropped == 10 and res.params == {"drop": 0.25, "threshold": None}
        with pytest.raises(ValueError, match="already taken"):
            type("Impostor", (SampleFilter,), {"strategy": name, "__module__": __name__})
    finally:
        STRATEGIES.pop(name, None)
        sys.modules.pop(f"geomfilter.filtering.{name}", None)
    assert name not in STRATEGIES


def test_every_module_of_the_package_is_imported():
    from pathlib import Path

    names = {p.stem for p in Path(filtering.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert names and all(f"geomfilter.filtering.{n}" in sys.modules for n in names)
