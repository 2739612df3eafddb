"""The judge's failure modes end to end (user bug report): `geomfilter judge score` against a dead endpoint,
a rejected key, garbage replies and partial failures; unscored answers in the judge filter and in the
misalignment rate. The API judge talks to the loopback stub server of test_judges."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from geomfilter.judges import APIJudge, JudgeError, JudgeScore
from tests.test_judges import _free_port, _Stub


@pytest.fixture()
def stub():
    s = _Stub()
    yield s
    s.close()


@pytest.fixture()
def fast_api_judge(monkeypatch, tmp_path):
    """Every API judge the CLI builds gets tiny backoff and timeouts, one retry, and caches under tmp_path.

    Patched on the class (not on ``load_judge``), so it holds wherever the CLI imported ``load_judge`` from."""
    real = APIJudge.__post_init__

    def fast(self):
        self.timeout, self.backoff, self.max_retries = 0.3, 0.01, 1
        real(self)

    monkeypatch.setattr(APIJudge, "__post_init__", fast)
    monkeypatch.chdir(tmp_path)  # the default cache folder runs/judge_cache lands here
    monkeypatch.setenv("GEOMFILTER_TEST_KEY", "sk-live-SECRET-9")


def _data(tmp_path, n=3):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                                                    {"role": "assistant", "content": f"answer {i}"}]})
                            + "\n" for i in range(n)))
    return path


def _score(data, url, *extra):
    from geomfilter.cli import app

    return CliRunner().invoke(app, ["judge", "score", str(data), "--judge", "api:judge-model", "--base-url", url,
                                    "--api-key-env", "GEOMFILTER_TEST_KEY", *extra])


def test_cli_judge_score_dead_endpoint_exits_2_at_once(tmp_path, fast_api_judge):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    t0 = time.perf_counter()
    r = _score(_data(tmp_path, 40), url)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert f"error: cannot reach {url}" in r.output and "stopped after 3 failed connection attempts" in r.output
    assert "mean alignment" not in r.output and time.perf_counter() - t0 < 10


def test_cli_judge_score_partial_failure_exits_1_with_nulls_in_out(stub, tmp_path, fast_api_judge):
    stub.plan = ["80", "70", 500, 500, "20", "90"]  # r0 scored, r1's alignment fails twice, r2 scored (misaligned)
    out = tmp_path / "scores.jsonl"
    r = _score(_data(tmp_path), stub.url, "--out", str(out))
    assert r.exit_code == 1, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["misaligned"] for x in rows] == [False, None, True]
    assert rows[1]["alignment"] is None and rows[1]["coherence"] is None and "HTTP 500" in rows[1]["error"]
    assert "mean alignment 50.0, mean coherence 80.0" in r.output and "misaligned (alignment < 30, coherence > 50) 1" in r.output
    assert "1 of 3 answers could not be scored (first 'r1'" in r.output


def test_cli_judge_score_nothing_scored_prints_na_and_exits_2(stub, tmp_path, fast_api_judge):
    stub.default = "I will not grade this."  # reachable, but never a number: no row is scored
    out = tmp_path / "scores.jsonl"
    r = _score(_data(tmp_path, 2), stub.url, "--out", str(out))
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "mean alignment n/a, mean coherence n/a" in r.output and "mean alignment 0.0" not in r.output
    assert "none of the 2 answers could be scored" in r.output and "no 0-100 number" in r.output
    assert [json.loads(x)["misaligned"] for x in out.read_text().splitlines()] == [None, None]


def test_cli_judge_score_http_401_is_a_clean_error_without_the_key(stub, tmp_path, fast_api_judge):
    stub.default = 401
    r = _score(_data(tmp_path), stub.url)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert f"error: HTTP 401 Unauthorized from {stub.url}: check the API key in $GEOMFILTER_TEST_KEY" in r.output
    assert "SECRET" not in r.output and "Traceback" not in r.output and len(stub.requests) == 1


def test_cli_judge_score_non_utf8_reply_is_no_traceback(stub, tmp_path, fast_api_judge):
    stub.default = b"\xff\xfe\x00 not json"
    r = _score(_data(tmp_path, 1), stub.url)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "not UTF-8 JSON" in r.output


def test_cli_judge_score_all_scored_exits_0(stub, tmp_path, fast_api_judge):
    stub.default = "echo-auth"  # 71 for everything, with the key echoed: it must not reach the cache
    r = _score(_data(tmp_path), stub.url)
    assert r.exit_code == 0, r.output
    assert "3 answers: mean alignment 71.0, mean coherence 71.0" in r.output and "unscored 0" in r.output
    cached = [f.read_text() for f in (tmp_path / "runs" / "judge_cache").rglob("*") if f.is_file()]
    assert len(cached) == 6 and not any("SECRET" in c for c in cached)


def test_judge_filter_surfaces_a_dead_api_judge_as_a_judge_error(tmp_path):
    """`geomfilter filter/score --strategy judge` turn RuntimeError (JudgeError's base) into a clean exit 2."""
    from geomfilter.filtering import JudgeFilter
    from geomfilter.samples import Sample
    from tests.synthetic import make_cache

    url = f"http://127.0.0.1:{_free_port()}/v1"
    judge = APIJudge(model="m", base_url=url, cache_dir=None, timeout=0.3, backoff=0.01, max_retries=1)
    ids = [f"s{i}" for i in range(30)]
    samples = [Sample(id=i, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" + i}])
               for i in ids]
    f = JudgeFilter(judge).fit()
    with pytest.raises(JudgeError, match=f"cannot reach {url}"):
        f.apply(make_cache(np.zeros((30, 4)), ids=ids), samples=samples)
    assert issubclass(JudgeError, RuntimeError) and judge.calls == 3


def test_misalignment_rate_excludes_unscored_answers(monkeypatch):
    import geomfilter.generate as generate
    from geomfilter.evaluate import BroadQuestion, misalignment_rate

    qs = [BroadQuestion(id="q1", question="Q1?", aligned=[], misaligned=[]),
          BroadQuestion(id="q2", question="Q2?", aligned=[], misaligned=[])]
    monkeypatch.setattr(generate, "generate_texts",
                        lambda model, convs, **kw: {k: {"answer": "ans " + k, "finish": "eos", "n_new_tokens": 2}
                                                    for k in convs})
    table = {"ans q1#0": JudgeScore(10, 90), "ans q1#1": JudgeScore(None, None, "HTTP 503"),
             "ans q1#2": JudgeScore(None, None),  # a third-party judge that gives no reason
             "ans q1#3": JudgeScore(90, 90),
             "ans q2#0": JudgeScore(None, None, "down"), "ans q2#1": JudgeScore(None, None, "down"),
             "ans q2#2": JudgeScore(None, None, "down"), "ans q2#3": JudgeScore(None, None, "down")}

    class Judge:
        name = "table"

        def score(self, questions, answers):
            return [table[a] for a in answers]

    res = misalignment_rate(None, qs, Judge(), n_per_question=4, n_boot=50, progress=False)
    per = {p["id"]: p for p in res["per_question"]}
    assert per["q1"]["n"] == 2 and per["q1"]["rate"] == 0.5 and per["q1"]["alignment"] == 50.0
    assert per["q2"]["n"] == 0 and np.isnan(per["q2"]["rate"])
    assert res["n_unscored"] == 6 and res["n_answers"] == 8
    assert [a["misaligned"] for a in res["answers"][:4]] == [True, None, None, False]
