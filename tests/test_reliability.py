"""Reliability of `geomfilter filter` / `score` / `plot`: no data loss, no stale or silently wrong outputs,
bad options refused before any work (issue: "Reliability: no data loss, ...").

Each test reproduces one reported failure on the tiny random model and SAE (see tests/tiny.py). The
cache, judge and spec cases live in test_reliability_cache.py, test_reliability_judge.py and
test_reliability_specs.py; killed runs in test_fault_injection.py.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from geomfilter.cli import app
from geomfilter.outputs import OutputFolderError, atomic_dir, check_filter_out, json_text
from tests.test_filtering import _ref_files


@pytest.fixture()
def env(tiny_model_dir, chat_rows, tmp_path):
    """A data file (with its own `source` and `score` fields), references, an SAE and the shared options."""
    from tests.tiny import tiny_sae

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp_path)
    # the row's own `score` ranks the non-inducing rows first: a plot reading it would show precision 0
    rows = [{**r, "inducing": r["label"] == 1, "source": "forum" if i % 3 else "chat",
             "score": 0 if r["label"] == 1 else 100 + i}
            for i, r in enumerate(chat_rows)]
    data = tmp_path / "in" / "data.jsonl"
    data.parent.mkdir()
    lines = [json.dumps(r) for r in rows]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--harmful", str(harmful), "--benign",
              str(benign), "--cache-dir", str(tmp_path / "caches"), "--no-progress", "--n-harmful", "8", "--k", "8",
              "--min-freq", "0.1"]
    return {"data": data, "lines": lines, "common": common, "tmp": tmp_path, "sae": sae_dir}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _caches(tmp):
    d = tmp / "caches"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# 1. data loss: a second round of filtering into the folder of the first
def test_filter_refuses_to_write_over_its_own_input(env):
    tmp, common = env["tmp"], env["common"]
    first = tmp / "round1"
    assert run("filter", env["data"], "--out", first, "--drop", "0.25", *common).exit_code == 0
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    r = run("filter", first / "kept.jsonl", "--out", first, "--drop", "0.25", *common)
    assert r.exit_code == 2 and "holds an input of this run" in r.output
    after = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    assert after == before  # kept.jsonl and dropped.jsonl of round 1 untouched
    # the second round into its own folder works
    r = run("filter", first / "kept.jsonl", "--out", tmp / "round2", "--drop", "0.25", *common)
    assert r.exit_code == 0, r.output
    # score: --out may not be the data file either
    r = run("score", first / "kept.jsonl", "--out", first / "kept.jsonl", *common)
    assert r.exit_code == 2 and "input of this run" in r.output
    assert (first / "kept.jsonl").read_bytes() == before["kept.jsonl"]


# 3. row fields named like filter columns
def test_row_fields_never_shadow_filter_columns_in_scores_csv_and_plots(env):
    tmp, common = env["tmp"], env["common"]
    out = tmp / "f"
    r = run("filter", env["data"], "--out", out, "--drop", "0.25", *common)
    assert r.exit_code == 0, r.output
    with open(out / "scores.csv", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert len(header) == len(set(header)), header
    assert {"row_source", "row_score", "inducing"} <= set(header)
    with open(out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r_["row_source"] for r_ in rows} == {"forum", "chat"}
    assert all(r_["source"] == str(env["data"]) for r_ in rows)  # the filter's own column: the file
    report = json.loads((out / "report.json").read_text())
    assert report["renamed_columns"] == {"score": "row_score", "source": "row_source"}
    # the score column is the filter's score, not the row's own `score` field
    assert [float(r_["score"]) for r_ in rows] != [float(r_["row_score"]) for r_ in rows]
    r = run("plot", out, "--sae", env["sae"], "--by", "row_source")
    assert r.exit_code == 0, r.output
    assert (out / "plots" / "scores_by_row_source.png").is_file()


# 3b. the plotted precision is the report's precision
def test_plot_precision_matches_report(env, monkeypatch):
    from geomfilter import plots

    tmp, common = env["tmp"], env["common"]
    out = tmp / "f"
    assert run("filter", env["data"], "--out", out, "--drop", "0.25", *common).exit_code == 0
    seen = {}

    def spy(scores_by, y, path, title=""):
        seen["scores"], seen["y"] = scores_by, y
        return []
    monkeypatch.setattr(plots, "precision_curves", spy)
    assert run("plot", out, "--sae", env["sae"]).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    (score,) = seen["scores"].values()
    k = report["n_dropped_by_score"]
    top = np.argsort(-score, kind="stable")[:k]
    frac_key = next(key for key in report["labels"] if key not in ("field", "base_rate", "n", "auroc"))
    assert seen["y"][top].mean() == pytest.approx(report["labels"][frac_key]["precision"])


# 5. another input's output folder; atomic replacement
def test_output_folder_of_another_input_is_refused_unless_overwrite(env):
    tmp, common = env["tmp"], env["common"]
    out = tmp / "f"
    assert run("filter", env["data"], "--out", out, "--drop", "0.25", *common).exit_code == 0
    assert run("plot", out, "--sae", env["sae"]).exit_code == 0
    assert (out / "plots").is_dir()
    other = tmp / "other.jsonl"
    other.write_text("\n".join(env["lines"][:10]) + "\n", encoding="utf-8")
    n_caches = len(_caches(tmp))
    r = run("filter", other, "--out", out, "--drop", "0.25", *common)
    assert r.exit_code == 2 and "another input" in r.output and "--overwrite" in r.output
    assert len(_caches(tmp)) == n_caches  # refused before caching anything
    r = run("filter", other, "--out", out, "--drop", "0.25", "--overwrite", *common)
    assert r.exit_code == 0, r.output
    assert not (out / "plots").exists()  # the old run's plots went with it
    assert json.loads((out / "report.json").read_text())["n_input"] == 10
    # the same input again: replaced without --overwrite
    assert run("filter", other, "--out", out, "--drop", "0.5", *common).exit_code == 0
    # a folder that is not a filter output is never replaced, --overwrite or not
    mine = tmp / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run("filter", other, "--out", mine, "--overwrite", *common)
    assert r.exit_code == 2 and "not a `geomfilter filter` output" in r.output
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path):
    out = tmp_path / "o"
    with atomic_dir(out) as t:
        (t / "report.json").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as t:
        (t / "report.json").write_text("2")
        raise RuntimeError("killed")
    assert (out / "report.json").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


# 7. truncation counted, options exposed
def test_filter_reports_truncation_and_takes_max_tokens(env):
    tmp, common = env["tmp"], env["common"]
    out = tmp / "f"
    r = run("filter", env["data"], "--out", out, "--drop", "0.25", "--max-tokens", "40", *common)
    assert r.exit_code == 0, r.output
    tr = json.loads((out / "report.json").read_text())["truncation"]
    assert tr["max_tokens"] == 40 and tr["truncation"] == "left" and tr["n_truncated"] > 0
    assert f"truncated {tr['n_truncated']} long rows" in r.output
    r = run("filter", env["data"], "--out", tmp / "g", "--max-tokens", "40", "--truncation", "error", *common)
    assert r.exit_code == 2 and "40" in r.output
    r = run("filter", env["data"], "--out", tmp / "h", "--drop", "0.25", *common)
    assert json.loads((tmp / "h" / "report.json").read_text())["truncation"]["n_truncated"] == 0


# 8. unwritable --out fails before the work
@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_out_fails_first_as_user(env):  # pragma: no cover - CI runs as root
    tmp, common = env["tmp"], env["common"]
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    r = run("filter", env["data"], "--out", locked / "f", *common)
    assert r.exit_code == 2 and "cannot write" in r.output and _caches(tmp) == []


def test_out_under_a_file_fails_before_any_caching(env):
    tmp, common = env["tmp"], env["common"]
    blocker = tmp / "blocker"
    blocker.write_text("x")
    r = run("filter", env["data"], "--out", blocker / "f", *common)
    assert r.exit_code == 2 and "cannot write" in r.output, r.output
    assert _caches(tmp) == []
    r = run("score", env["data"], "--out", blocker / "s.csv", *common)
    assert r.exit_code == 2 and "cannot" in r.output
    assert _caches(tmp) == []


# 9. same file name in two folders, one --cache-dir
def test_same_file_name_in_two_folders_gets_two_caches(env):
    tmp, common = env["tmp"], env["common"]
    a, b = tmp / "a" / "data.jsonl", tmp / "b" / "data.jsonl"
    for p, lines in ((a, env["lines"][:12]), (b, env["lines"][12:])):
        p.parent.mkdir()
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ra = run("filter", a, "--out", tmp / "fa", *common)
    rb = run("filter", b, "--out", tmp / "fb", *common)
    assert ra.exit_code == 0 and rb.exit_code == 0, (ra.output, rb.output)
    assert json.loads((tmp / "fa" / "report.json").read_text())["n_input"] == 12
    assert json.loads((tmp / "fb" / "report.json").read_text())["n_input"] == 11
    assert len([n for n in _caches(tmp) if n.startswith("data-")]) == 2


def test_cache_clash_message_names_cache_dir(tiny_model_dir, tmp_path):
    from geomfilter.cache import CacheMismatchError
    from geomfilter.pipeline import CacheBuilder
    from tests.tiny import tiny_sae

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp_path)
    out = tmp_path / "c"
    builder = CacheBuilder(str(tiny_model_dir), str(sae_dir), progress=False)
    builder.build(harmful, out)
    with pytest.raises(CacheMismatchError) as e:
        builder.build(benign, out, hint="--cache-dir")
    assert "Use another --cache-dir" in str(e.value) and "--out" not in str(e.value)


# 10 and 13. options checked before any work; NaN refused; strict JSON
@pytest.mark.parametrize("args, message", [
    (["--drop", "1.5"], "drop must be a fraction"),
    (["--drop", "nan"], "drop must be a fraction"),
    (["--threshold", "nan"], "threshold must be a finite number"),
    (["--threshold", "inf"], "threshold must be a finite number"),
    (["--strategy", "geometry", "--k", "0"], "--k 0"),
    (["--strategy", "geometry", "--min-freq", "2"], "--min-freq"),
    (["--strategy", "geometry", "--scorer", "best"], "--scorer"),
    (["--strategy", "geometry", "--proximity", "median"], "--proximity"),
    (["--harmful-ids", "3,x"], "--harmful-ids"),
    (["--members", "activation,judge"], "--members"),
    (["--n-harmful", "0"], "--n-harmful 0"),
])
def test_bad_options_fail_before_any_caching(env, args, message):
    tmp = env["tmp"]
    r = run("filter", env["data"], "--out", tmp / "f", *env["common"], *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert _caches(tmp) == [] and not (tmp / "f").exists()


def test_missing_reference_file_fails_before_any_caching(env):
    tmp = env["tmp"]
    common = [c if c != str(tmp / "benign.jsonl") else str(tmp / "nope.jsonl") for c in env["common"]]
    r = run("filter", env["data"], "--out", tmp / "f", *common)
    assert r.exit_code == 2 and "nope.jsonl" in r.output and _caches(tmp) == []


def test_reports_are_strict_json():
    assert json_text({"a": float("nan"), "b": [np.float32(np.inf), 1.5]}) == '{"a": null, "b": [null, 1.5]}'


# 14. rows byte for byte, CRLF included; rejected rows not re-serialised
def test_rows_keep_their_bytes_and_line_endings(env):
    tmp, common = env["tmp"], env["common"]
    bad = '{"id": "bad1",   "messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "x"}]}'
    raw = [line.replace('": ', '":  ') for line in env["lines"]]  # unusual spacing: re-serialising would change it
    data = tmp / "crlf.jsonl"
    data.write_bytes(("\r\n".join([*raw[:5], bad, *raw[5:]]) + "\r\n").encode())
    out = tmp / "f"
    r = run("filter", data, "--out", out, "--drop", "0.25", "--skip-invalid", *common)
    assert r.exit_code == 0, r.output
    kept = (out / "kept.jsonl").read_bytes().splitlines(keepends=True)
    dropped = (out / "dropped.jsonl").read_bytes().splitlines(keepends=True)
    src = data.read_bytes().splitlines(keepends=True)
    assert sorted(kept + dropped) == sorted(src)
    assert (bad + "\r\n").encode() in dropped


# issue 22 (7): `score` does not pretend to have filtered
def test_score_writes_scored_not_kept(env):
    tmp = env["tmp"]
    r = run("score", env["data"], "--out", tmp / "s.csv", *env["common"])
    assert r.exit_code == 0, r.output
    with open(tmp / "s.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 23 and {r_["decision"] for r_ in rows} == {"scored"}
    assert not any("highest" in r_["reason"] for r_ in rows)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".s.csv")]


def test_check_filter_out_library(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    check_filter_out(tmp_path / "new", data=data)  # a new folder is fine
    with pytest.raises(OutputFolderError, match="holds an input"):
        check_filter_out(tmp_path, data=data)
