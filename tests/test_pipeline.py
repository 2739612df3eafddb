"""The filtering pipeline (geomfilter.pipeline): one place that caches, fits, scores and writes,
used by the CLI and the experiment runner alike; on the tiny random model and SAE."""
from __future__ import annotations

import json

import numpy as np
import pytest

from geomfilter.filtering import STRATEGIES
from geomfilter.pipeline import FilterConfig, FilterRunner, PipelineError
from geomfilter.settings import CacheConfig
from tests.test_filtering import _ref_files


@pytest.fixture()
def setup(tiny_model_dir, chat_rows, tmp_path):
    from tests.tiny import tiny_sae

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({**r, "inducing": r["label"] == 1}) + "\n" for r in chat_rows),
                    encoding="utf-8")
    base = {"data": data, "model": str(tiny_model_dir), "sae": str(sae_dir), "harmful": harmful, "benign": benign,
            "cache_dir": tmp_path / "caches", "progress": False}
    return base, tmp_path


def _params(strategy: str) -> dict:
    """``drop`` 0.25 and the small-SAE settings the strategy takes (as the CLI passes them)."""
    names = STRATEGIES[strategy].param_names()
    return {"drop": 0.25, **{k: v for k, v in {"n_harmful": 8, "min_freq": 0.1, "k": 8}.items() if k in names}}


def test_run_writes_a_partition_and_matches_the_cli(setup):
    from typer.testing import CliRunner

    from geomfilter.cli import app

    base, tmp = setup
    run = FilterRunner(FilterConfig(**base, params=_params(FilterConfig.strategy), out=tmp / "lib")).run()
    assert run.result.strategy == "ensemble"  # the default, the same in the library and the CLI
    assert run.report["n_kept"] + run.report["n_dropped"] == run.report["n_input"] == 23
    kept = (tmp / "lib" / "kept.jsonl").read_text().splitlines()
    dropped = (tmp / "lib" / "dropped.jsonl").read_text().splitlines()
    assert sorted(kept + dropped) == sorted(base["data"].read_text().splitlines())
    r = CliRunner().invoke(app, ["filter", str(base["data"]), "--out", str(tmp / "cli"), "--drop", "0.25",
                                 "--model", base["model"], "--sae", base["sae"], "--harmful", str(base["harmful"]),
                                 "--benign", str(base["benign"]), "--cache-dir", str(base["cache_dir"]),
                                 "--no-progress", "--n-harmful", "8", "--k", "8", "--min-freq", "0.1"])
    assert r.exit_code == 0, r.output
    for name in ("kept.jsonl", "dropped.jsonl", "scores.csv", "report.json"):
        assert (tmp / "cli" / name).read_bytes() == (tmp / "lib" / name).read_bytes(), name


def test_one_runner_filters_with_every_strategy_from_one_set_of_caches(setup):
    base, tmp = setup
    runner = FilterRunner(FilterConfig(**base))
    runner.check()
    made = set()
    for strategy in ("geometry", "activation", "projection", "representation", "random", "ensemble"):
        f, res = runner.filter(strategy, _params(strategy))
        assert res.strategy == strategy and (~res.kept).sum() == round(0.25 * 23)
        assert f.get_params()["drop"] == 0.25
        made |= {p.name for p in base["cache_dir"].iterdir()}
    assert len(made) == 3  # data, harmful, benign: cached once


def test_seed_reaches_the_strategies_that_use_it(setup):
    base, _ = setup
    runner = FilterRunner(FilterConfig(**base, seed=7))
    f, _ = runner.filter("random", {"drop": 0.5})
    assert f.get_params()["seed"] == 7
    assert "seed" not in runner.cfg.strategy_params("projection", {"drop": 0.5})


def test_check_fails_before_any_caching(setup):
    base, tmp = setup
    for params, msg in (({"drop": 1.5}, "drop must be a fraction"), ({"threshold": float("nan")}, "finite")):
        with pytest.raises(ValueError, match=msg):
            FilterRunner(FilterConfig(**base, strategy="random", params=params)).check()
    with pytest.raises(PipelineError, match="no such file"):
        FilterRunner(FilterConfig(**{**base, "benign": tmp / "nope.jsonl"}, params={"drop": 0.1})).check()
    with pytest.raises(PipelineError, match="needs an SAE"):
        FilterRunner(FilterConfig(**{**base, "sae": "none"}, params={"drop": 0.1})).check()
    assert not base["cache_dir"].exists()


def test_an_ensemble_of_residual_members_needs_no_sae(setup):
    base, tmp = setup
    params = {"drop": 0.25, "members": ("projection", "representation")}
    run = FilterRunner(FilterConfig(**{**base, "sae": "none"}, strategy="ensemble", params=params,
                                    out=tmp / "no-sae")).run()
    assert run.report["n_dropped"] == round(0.25 * 23) and not hasattr(run.filter, "features_")
    _, with_sae = FilterRunner(FilterConfig(**base, strategy="ensemble", params=params)).filter()
    assert np.allclose(run.result.scores, with_sae.scores)  # the same residual means, cached with or without an SAE
    with pytest.raises(PipelineError, match="'ensemble' needs an SAE"):  # the default members read SAE latents
        FilterRunner(FilterConfig(**{**base, "sae": "none"}, strategy="ensemble", params={"drop": 0.1})).check()
    assert STRATEGIES["ensemble"].reads_sae({"members": ("geometry", "projection")})
    assert not STRATEGIES["projection"].reads_sae() and STRATEGIES["activation"].reads_sae()


def _split_references(base: dict, tmp) -> dict:
    """The reference files cut in two (first 8 pairs, last 4) for --add-harmful / --add-benign."""
    parts = {}
    for side in ("harmful", "benign"):
        lines = base[side].read_text().splitlines(keepends=True)
        for name, chunk in (("head", lines[:8]), ("tail", lines[8:])):
            parts[side, name] = tmp / f"{side}-{name}.jsonl"
            parts[side, name].write_text("".join(chunk), encoding="utf-8")
    return parts


def test_added_references_join_the_references(setup):
    """--harmful A --add-harmful B fits on A's and B's rows, as if they were one file; each file is cached once."""
    from typer.testing import CliRunner

    from geomfilter.cli import app

    base, tmp = setup
    parts = _split_references(base, tmp)
    params = {"drop": 0.25, "n_harmful": 8}
    whole = FilterRunner(FilterConfig(**base, strategy="activation", params=params))
    cfg = {**base, "harmful": parts["harmful", "head"], "benign": parts["benign", "head"],
           "add_harmful": [parts["harmful", "tail"]], "add_benign": (str(parts["benign", "tail"]),)}
    joined = FilterRunner(FilterConfig(**cfg, strategy="activation", params=params, out=tmp / "joined"))
    run = joined.run()
    inp, ref = joined.inputs(), whole.inputs()
    assert inp.harmful.ids == ref.harmful.ids and inp.benign.ids == ref.benign.ids  # 12 pairs, in file order
    assert np.allclose(run.result.scores, whole.filter()[1].scores, atol=1e-5)
    assert run.report["references"] == {side: [str(parts[side, "head"]), str(parts[side, "tail"])]
                                        for side in ("harmful", "benign")}
    assert len([p for p in base["cache_dir"].iterdir() if p.name.startswith("ref-")]) == 6  # 2 whole + 4 parts
    r = CliRunner().invoke(app, ["filter", str(base["data"]), "--out", str(tmp / "cli"), "--drop", "0.25",
                                 "--strategy", "activation", "--n-harmful", "8", "--model", base["model"],
                                 "--sae", base["sae"], "--harmful", str(parts["harmful", "head"]),
                                 "--add-harmful", str(parts["harmful", "tail"]), "--benign",
                                 str(parts["benign", "head"]), "--add-benign", str(parts["benign", "tail"]),
                                 "--cache-dir", str(base["cache_dir"]), "--no-progress"])
    assert r.exit_code == 0, r.output
    for name in ("kept.jsonl", "dropped.jsonl", "scores.csv", "report.json"):
        assert (tmp / "cli" / name).read_bytes() == (tmp / "joined" / name).read_bytes(), name
    assert "no twin" not in r.output  # every added row has its twin
    notes = []
    FilterRunner(FilterConfig(**{**cfg, "add_benign": ()}, params={"drop": 0.1}), log=notes.append).check()
    assert notes == ["note: 4 of the 4 rows added by --add-harmful and 0 of the 0 added by --add-benign have no twin "
                     "(the same pair_id) on the other side; unpaired references teach the filters whatever sets the "
                     "two sides apart, not only the harm: give each added harmful answer a benign twin to the same "
                     "prompt"]
    with pytest.raises(PipelineError, match="--add-benign .*nope.jsonl: no such file"):
        FilterRunner(FilterConfig(**{**base, "add_benign": [tmp / "nope.jsonl"]}, params={"drop": 0.1})).check()


def test_cache_directory_as_data_gives_the_same_scores(setup):
    base, tmp = setup
    runner = FilterRunner(FilterConfig(**base, strategy="projection", params={"drop": 0.25}))
    _, res = runner.filter()
    cdir = runner.data_dir()
    assert cdir.is_dir() and cdir.parent == base["cache_dir"] and cdir.name.startswith("data-")
    _, res2 = FilterRunner(FilterConfig(**{**base, "data": cdir}, strategy="projection",
                                        params={"drop": 0.25})).filter()
    assert res2.ids == res.ids and np.array_equal(res2.scores, res.scores)


def test_data_cache_settings_are_the_configs(setup):
    base, _ = setup
    runner = FilterRunner(FilterConfig(**base, strategy="random", params={"drop": 0.1},
                                       cache=CacheConfig(max_tokens=40)))
    run = runner.run()
    assert run.truncation["max_tokens"] == 40 and run.truncation["n_truncated"] > 0
