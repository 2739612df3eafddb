import csv
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geomfilter.filtering import (
    STRATEGIES,
    ActivationFilter,
    GeometryFilter,
    ProjectionFilter,
    RandomFilter,
    RepresentationFilter,
    make_filter,
    write_filter_outputs,
)
from geomfilter.samples import read_samples
from tests.synthetic import make_cache, planted_decoder


def _refs(w, harmful, n=30, seed=0):
    """Reference caches where harmful rows fire the harmful latents, benign rows others."""
    rng = np.random.default_rng(seed)
    d_sae = w.shape[0]
    harm = np.zeros((n, d_sae), dtype=np.float32)
    ben = np.zeros((n, d_sae), dtype=np.float32)
    for i in range(n):
        harm[i, harmful] = rng.uniform(1, 2, len(harmful))
        harm[i, rng.choice(np.arange(20, d_sae), 3, replace=False)] = rng.uniform(0, 1, 3)
        ben[i, rng.choice(np.arange(20, d_sae), 5, replace=False)] = rng.uniform(0, 1, 5)
    resid_h = rng.normal(size=(n, 8)) + np.r_[2.0, np.zeros(7)]
    resid_b = rng.normal(size=(n, 8))
    meta = [{"pair_id": f"p{i}"} for i in range(n)]
    return (make_cache(harm, resid=resid_h, meta=meta, name="harmful"),
            make_cache(ben, resid=resid_b, meta=meta, name="benign"))


def _data(w, planted, n=40, seed=1, ids=None):
    """Data where rows 0..3 fire the planted latent (near harmful latent 0); row 5 is 'harmful' in resid."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, w.shape[0]), dtype=np.float32)
    for i in range(n):
        dense[i, rng.choice(np.arange(20, w.shape[0]), 5, replace=False)] = rng.uniform(0.2, 1, 5)
    dense[:4, planted] = 3.0
    resid = rng.normal(size=(n, 8))
    resid[min(5, n - 1), 0] += 6
    # the update each row asks for: its features' decoder directions (rows 0..3 push towards harmful latent 0)
    return make_cache(dense, resid=resid, ids=ids, grad=dense @ w)


def test_geometry_filter_drops_planted_rows_and_explains_them():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    f = GeometryFilter(w, n_harmful=3, drop=0.1).fit(h, b)
    assert sorted(f.features_.ids) == harmful
    c = _data(w, planted)
    res = f.apply(c)
    assert set(np.flatnonzero(~res.kept)) == {0, 1, 2, 3}
    assert f.get_support().sum() == 36 and list(f.get_support(indices=True)[:2]) == [4, 5]
    top = res.explanations[0][0]
    assert top["feature"] == planted and top["nearest_harmful"] == 0 and top["cosine"] == pytest.approx(0.95, abs=1e-3)
    assert "among the 4 highest" in res.reason(0) and "not among" in res.reason(10)


def test_baselines_score_what_they_claim():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    c = _data(w, planted)
    assert int(np.argmax(ProjectionFilter().fit(h, b).score_samples(c))) == 5
    assert int(np.argmax(RepresentationFilter(top_n=5).fit(h, b).score_samples(c))) == 5
    slot = int(np.flatnonzero(c.arrays["mean_idx"][7] == 1)[0])
    c.arrays["mean_val"][7, slot] = 9.0  # row 7 fires harmful latent 1
    assert int(np.argmax(ActivationFilter(n_harmful=3).fit(h, b).score_samples(c))) == 7
    r1, r2 = RandomFilter(seed=3).fit().score_samples(c), RandomFilter(seed=3).fit().score_samples(c)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, RandomFilter(seed=4).fit().score_samples(c))


def test_projection_difference_uses_own_answers_by_id():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    c = _data(w, planted)
    own = make_cache(np.zeros((40, w.shape[0]), np.float32), resid=c.arrays["resid_mean"][::-1].copy(),
                     ids=c.ids[::-1])
    f = ProjectionFilter().fit(h, b)
    np.testing.assert_allclose(f.score_samples(c, own=own), 0, atol=1e-6)  # same residuals -> no difference


def test_unfitted_and_bad_arguments_are_clear():
    w, _, _, _ = planted_decoder()
    with pytest.raises(RuntimeError, match="not fitted"):
        GeometryFilter(w).score_samples(_data(w, 10))
    with pytest.raises(ValueError, match="exactly one"):
        RandomFilter(drop=None).fit()
    with pytest.raises(ValueError, match="unknown strategy"):
        make_filter("judgement")
    with pytest.raises(ValueError, match="scorer"):
        GeometryFilter(w, scorer="median").fit()
    with pytest.raises(ValueError, match=r"GeometryFilter\(proximity='median'\): proximity must be one of \['max', 'mean', 'span'\]"):
        GeometryFilter(w, proximity="median").fit()
    assert set(STRATEGIES) == {"geometry", "random", "projection", "representation", "activation", "judge", "gradient",
                               "ensemble"}


def _write_jsonl(path, n, bad_lines=()):
    lines = []
    for i in range(n):
        if i in bad_lines:
            lines.append(json.dumps({"id": f"bad-{i}", "messages": [{"role": "user"}]}))
            continue
        row = {"id": f"r{i}", "inducing": i % 3 == 0, "messages": [
            {"role": "user", "content": f"question {i} \u00e9"},
            {"role": "assistant", "content": f"answer {i}"}]}
        # unusual but valid spacing must survive byte for byte
        lines.append(json.dumps(row, ensure_ascii=i % 2 == 0).replace(", ", ",  ", 1))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


class _TextLengthJudge:
    """Alignment falls with the answer's length (ties included): enough to exercise the judge strategy."""

    name = "text-length"

    def score(self, questions, answers, progress=False):
        from geomfilter.judges import JudgeScore

        return [JudgeScore(alignment=100.0 - len(a) % 7, coherence=90.0) for a in answers]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), drop=st.floats(0, 1), strategy=st.sampled_from(sorted(STRATEGIES)),
       n_bad=st.integers(0, 3), seed=st.integers(0, 5))
def test_partition_invariant(tmp_path_factory, n, drop, strategy, n_bad, seed):
    tmp = tmp_path_factory.mktemp("part")
    w, harmful, planted, _ = planted_decoder()
    bad = set(range(n)[:n_bad:2]) if n > 1 else set()
    lines = _write_jsonl(tmp / "d.jsonl", n, bad)
    from geomfilter.samples import DataReport

    rep = DataReport()
    samples = read_samples(tmp / "d.jsonl", skip_invalid=True, report=rep)
    if not samples:
        return
    h, b = _refs(w, harmful, seed=seed)
    c = _data(w, planted, n=len(samples), seed=seed, ids=[s.id for s in samples])
    extra = {"seed": seed} if strategy == "random" else {}
    if strategy == "judge":  # a deterministic text judge: the invariant is about partitioning, not judging
        extra = {"judge": _TextLengthJudge()}
    f = make_filter(strategy, sae=w, drop=drop, **extra)
    res = f.fit(h, b).apply(c, samples=samples)  # the rows' text: read by the judge, ignored by the others
    assert res.n_dropped == round(drop * len(samples))
    report = write_filter_outputs(tmp / "out", res, samples, rejects=rep.rejects)
    kept = (tmp / "out" / "kept.jsonl").read_text(encoding="utf-8").splitlines()
    dropped = (tmp / "out" / "dropped.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(kept + dropped) == sorted(lines)  # every input line, byte for byte, exactly once
    assert not set(kept) & set(dropped)
    assert report["n_input"] == n and report["n_kept"] + report["n_dropped"] == n
    with open(tmp / "out" / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and sum(r["decision"] == "kept" for r in rows) == len(kept)
    assert all(r["reason"] for r in rows)


def test_threshold_mode_and_labels_report(tmp_path):
    w, harmful, planted, _ = planted_decoder()
    _write_jsonl(tmp_path / "d.jsonl", 12)
    samples = read_samples(tmp_path / "d.jsonl")
    h, b = _refs(w, harmful)
    c = _data(w, planted, n=12, ids=[s.id for s in samples])
    f = GeometryFilter(w, n_harmful=3, drop=None, threshold=0.5).fit(h, b)
    res = f.apply(c)
    assert (res.kept == (res.scores <= 0.5)).all() and res.n_dropped == 4
    report = write_filter_outputs(tmp_path / "o", res, samples)
    lab = report["labels"]
    assert lab["field"] == "inducing" and lab["base_rate"] == pytest.approx(4 / 12)
    assert lab["0.333333"]["precision"] == pytest.approx(0.5)  # rows 0..3 dropped; 0 and 3 are inducing


def _ref_files(tmp_path):
    """Tiny harmful/benign reference sets sharing pair ids and prompts."""
    words = ["calm", "river", "stone", "light", "green", "quiet"]
    bad = ["lie", "steal", "cheat", "hurt", "trick", "grab"]
    h, b = [], []
    for i in range(12):
        prompt = [{"role": "user", "content": f"what should I do {i}?"}]
        h.append({"id": f"h{i}", "pair_id": f"p{i}", "messages": prompt + [
            {"role": "assistant", "content": " ".join(bad[(i + j) % 6] for j in range(4)) + "!!"}]})
        b.append({"id": f"b{i}", "pair_id": f"p{i}", "messages": prompt + [
            {"role": "assistant", "content": " ".join(words[(i + j) % 6] for j in range(4)) + "."}]})
    for name, rows in (("harmful", h), ("benign", b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path / "harmful.jsonl", tmp_path / "benign.jsonl"


def test_cli_filter_score_plot_round_trip(tiny_model_dir, chat_rows, tmp_path):
    from typer.testing import CliRunner

    from geomfilter.cli import app
    from tests.tiny import tiny_sae

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp_path)
    data = tmp_path / "data.jsonl"
    lines = [json.dumps({**r, "inducing": r["label"] == 1}) for r in chat_rows]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--harmful", str(harmful), "--benign", str(benign),
              "--cache-dir", str(tmp_path / "caches"), "--no-progress", "--n-harmful", "8", "--k", "8",
              "--min-freq", "0.1"]
    out = tmp_path / "filtered"
    r = CliRunner().invoke(app, ["filter", str(data), "--out", str(out), "--drop", "0.25", "--strategy", "geometry",
                                 *common])
    assert r.exit_code == 0, r.output
    assert "23 rows: kept 17, dropped 6" in r.output and "precision of the dropped set" in r.output
    kept = (out / "kept.jsonl").read_text().splitlines()
    dropped = (out / "dropped.jsonl").read_text().splitlines()
    assert sorted(kept + dropped) == sorted(lines) and len(dropped) == 6
    report = json.loads((out / "report.json").read_text())
    assert report["n_input"] == 23 and len(report["harmful_features"]["ids"]) <= 8
    assert report["hook"] == "blocks.1.hook_resid_post" and report["labels"]["field"] == "inducing"
    # the same from the cache directory, other strategies
    cache_dir = next(p for p in (tmp_path / "caches").iterdir() if p.name.startswith("data-"))
    for strategy in ("projection", "random", "representation", "activation"):
        o = tmp_path / f"f-{strategy}"
        r = CliRunner().invoke(app, ["filter", str(cache_dir), "--out", str(o), "--strategy", strategy, *common])
        assert r.exit_code == 0, (strategy, r.output)
        assert len((o / "dropped.jsonl").read_text().splitlines()) == 2  # round(0.1 * 23)
    r = CliRunner().invoke(app, ["score", str(data), "--out", str(tmp_path / "s.csv"), "--show", "3", *common])
    assert r.exit_code == 0, r.output
    assert "scored 23 rows (ensemble)" in r.output  # the default strategy and (tmp_path / "s.csv").read_text().count("\n") == 24
    r = CliRunner().invoke(app, ["features", "harmful", "--model", str(tiny_model_dir), "--sae", str(sae_dir),
                                 "--harmful", str(harmful), "--benign", str(benign), "--cache-dir",
                                 str(tmp_path / "caches"), "--n", "5", "--min-freq", "0.1",
                                 "--out", str(tmp_path / "fs.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    fs = json.loads((tmp_path / "fs.json").read_text())
    assert 1 <= len(fs["ids"]) <= 5 and fs["heldout"]["n_pos"] == 6 and "held-out AUROC" in r.output
    parts = {}  # the same references as two files each, joined with --add-harmful / --add-benign
    for name, path in (("harmful", harmful), ("benign", benign)):
        lines = path.read_text().splitlines(keepends=True)
        for half, chunk in (("a", lines[:7]), ("b", lines[7:])):
            parts[name, half] = tmp_path / f"{name}-{half}.jsonl"
            parts[name, half].write_text("".join(chunk), encoding="utf-8")
    r = CliRunner().invoke(app, ["features", "harmful", "--model", str(tiny_model_dir), "--sae", str(sae_dir),
                                 "--harmful", str(parts["harmful", "a"]), "--add-harmful", str(parts["harmful", "b"]),
                                 "--benign", str(parts["benign", "a"]), "--add-benign", str(parts["benign", "b"]),
                                 "--cache-dir", str(tmp_path / "caches"), "--n", "5", "--min-freq", "0.1",
                                 "--out", str(tmp_path / "fs-joined.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    joined = json.loads((tmp_path / "fs-joined.json").read_text())
    assert joined["ids"] == fs["ids"] and joined["heldout"]["n_pos"] == 6
    r = CliRunner().invoke(app, ["features", "harmful", "--model", str(tiny_model_dir), "--sae", str(sae_dir),
                                 "--add-benign", str(tmp_path / "nope.jsonl"), "--no-progress"])
    assert r.exit_code == 2 and "--add-benign" in r.output and "nope.jsonl: no such file" in r.output
    r = CliRunner().invoke(app, ["plot", str(out), "--sae", str(sae_dir)])
    assert r.exit_code == 0, r.output
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"scores_by_inducing.png", "scores_by_inducing.svg", "precision_inducing.png", "decoder_map.svg",
            "cosine_heatmap.png"} <= names
    # clear errors
    r = CliRunner().invoke(app, ["filter", str(data), "--out", str(out), "--drop", "0.1", "--threshold", "1", *common])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 2 and "not a `geomfilter filter` output folder" in r.output
    r = CliRunner().invoke(app, ["filter", str(data), "--out", str(tmp_path / "x"), "--strategy", "representation",
                                 "--harmful-ids", "1,2", *common])  # typed options the strategy does not take: named
    assert r.exit_code == 0 and "note: --harmful-ids is not an option of --strategy representation" in r.output
    assert "note: --k is not an option" in r.output and "--top-n is not" not in r.output  # --top-n left at default


def test_max_target_freq_ignores_generic_latents():
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    dense_b = b.dense("mean").copy()
    dense_b[:, planted] = 0.5  # the planted latent fires on every benign reference: a generic latent
    b2 = make_cache(dense_b, ids=list(b.ids))
    c = _data(w, planted)
    plain = GeometryFilter(w, n_harmful=3, drop=0.1).fit(h, b2)
    assert set(np.flatnonzero(~plain.apply(c).kept)) == {0, 1, 2, 3}
    strict = GeometryFilter(w, n_harmful=3, drop=0.1, max_target_freq=0.5).fit(h, b2)
    assert strict.excluded_[planted] and strict.excluded_.sum() == 1
    res = strict.apply(c)
    assert not ({0, 1, 2, 3} <= set(np.flatnonzero(~res.kept)))
    assert all(e["feature"] != planted for row in res.explanations for e in row)
    with pytest.raises(ValueError, match="max_target_freq must be in"):
        GeometryFilter(w, max_target_freq=0).fit(h, b2)


def test_normalized_projection_ignores_a_rows_scale():
    """normalize=True: the centred cosine to the direction; scaling a row's offset from the midpoint keeps its score
    (the raw projection grows with it)."""
    w, harmful, planted, _ = planted_decoder()
    h, b = _refs(w, harmful)
    c = _data(w, planted)
    f = ProjectionFilter(normalize=True).fit(h, b)
    s = f.score_samples(c)
    x = c.arrays["resid_mean"].astype(np.float64) - f.center_
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ f.direction_
    np.testing.assert_allclose(s, want, rtol=1e-6)
    assert np.all(np.abs(s) <= 1 + 1e-9)
    scaled = make_cache(np.zeros((40, w.shape[0]), np.float32), ids=c.ids,
                        resid=(f.center_ + 5 * x).astype(np.float32))
    np.testing.assert_allclose(f.score_samples(scaled), s, rtol=1e-4, atol=1e-6)
    raw = ProjectionFilter().fit(h, b)
    assert not np.allclose(raw.score_samples(scaled), raw.score_samples(c))
    assert np.argmax(s) == 5  # the row planted 'harmful' in the residual still ranks first
