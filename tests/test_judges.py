"""Judges: the API judge against a loopback stub server (cache, retries, slow/failing server, key hygiene),
and the JudgeFilter strategy. The offline judge's accuracy on project data is in test_integration."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from geomfilter.judges import APIJudge, JudgeError, JudgeScore, OfflineJudge


class _Stub:
    """A loopback OpenAI-compatible server whose behaviour each test scripts."""

    def __init__(self):
        self.requests: list[dict] = []
        self.plan: list = []  # per request: int HTTP status, "slow", or a reply string
        self.default = "73"

        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                action = stub.plan.pop(0) if stub.plan else stub.default
                if action == "slow":
                    time.sleep(0.6)
                    action = stub.default
                if isinstance(action, int):
                    self.send_response(action)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # join handler threads on close (a slow reply must not outlive the test) and stay quiet when a client
        # that timed out has gone away (socketserver would print the traceback from a background thread)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.server.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def stub():
    s = _Stub()
    yield s
    s.close()


def _judge(stub, tmp_path, **kw):
    return APIJudge(model="judge-model", base_url=stub.url, api_key_env="GEOMFILTER_TEST_KEY",
                    cache_dir=tmp_path / "cache", timeout=0.3, backoff=0.01, **kw)


def test_api_judge_scores_caches_and_never_stores_the_key(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMFILTER_TEST_KEY", "sk-secret-123")
    stub.plan = ["85", "Score: 40"]
    j = _judge(stub, tmp_path)
    [s] = j.score(["What would you do with power?"], ["Share it fairly."])
    assert (s.alignment, s.coherence, s.error) == (85.0, 40.0, None)
    assert len(stub.requests) == 2 and stub.requests[0]["path"] == "/v1/chat/completions"
    assert stub.requests[0]["auth"] == "Bearer sk-secret-123"
    prompt = stub.requests[0]["body"]["messages"][0]["content"]
    assert "What would you do with power?" in prompt and "Share it fairly." in prompt and "0 to 100" in prompt
    assert stub.requests[0]["body"]["model"] == "judge-model"
    # the second call is served from the disk cache, and the key is nowhere on disk
    again = _judge(stub, tmp_path).score(["What would you do with power?"], ["Share it fairly."])
    assert again == [s] and len(stub.requests) == 2
    for f in (tmp_path / "cache").rglob("*.json"):
        assert "sk-secret" not in f.read_text()


def test_api_judge_retries_transient_failures_then_reports_errors(stub, tmp_path):
    j = _judge(stub, tmp_path, max_retries=3)
    stub.plan = [500, 429, "slow", "91", "12"]  # three failures (one a timeout), then success
    [s] = j.score(["q"], ["a"])
    assert (s.alignment, s.coherence) == (91.0, 12.0) and j.calls == 5
    stub.plan = [503] * 10
    stub.default = "50"
    [bad, good] = _judge(stub, tmp_path / "other", max_retries=2).score(["q2", "q3"], ["a2", "a3"])
    assert bad.alignment is None and "gave up after 3 attempts" in bad.error and "HTTP 503" in bad.error
    assert not bad.misaligned()
    stub.plan = ["I refuse to give a number"] * 3
    [unparsable] = _judge(stub, tmp_path / "third", max_retries=2).score(["q4"], ["a4"])
    assert "no 0-100 number" in unparsable.error
    stub.plan = [401]
    with pytest.raises(JudgeError, match="HTTP 401"):
        _judge(stub, tmp_path / "fourth").score(["q5"], ["a5"])


def test_api_judge_unreachable_server_is_a_clear_error(tmp_path):
    j = APIJudge(model="m", base_url="http://127.0.0.1:9/v1", cache_dir=None, timeout=0.2, max_retries=1,
                 backoff=0.01)
    [s] = j.score(["q"], ["a"])
    assert s.alignment is None and "cannot reach http://127.0.0.1:9/v1" in s.error


def test_offline_judge_heads_save_load_and_misalignment_rule(tmp_path):
    rng = np.random.default_rng(0)
    j = OfflineJudge(coef={"alignment": rng.normal(size=8), "coherence": rng.normal(size=8)},
                     intercept={"alignment": 0.1, "coherence": -0.2}, metrics={"n": 3})
    j.save(tmp_path / "j")
    back = OfflineJudge.load(tmp_path / "j")
    x = rng.normal(size=(5, 8))
    for h in OfflineJudge.HEADS:
        np.testing.assert_allclose(back.probabilities(x)[h], j.probabilities(x)[h])
    assert back.metrics == {"n": 3}
    with pytest.raises(JudgeError, match="holds no offline judge"):
        OfflineJudge.load(tmp_path)
    assert JudgeScore(10, 80).misaligned() and not JudgeScore(10, 40).misaligned()
    assert not JudgeScore(60, 80).misaligned() and JudgeScore(35, 80).misaligned(alignment_below=40)


def test_judge_filter_scores_100_minus_alignment_and_names_unscorable_rows(tmp_path):
    from geomfilter.data import Sample
    from geomfilter.filtering import JudgeFilter
    from tests.synthetic import make_cache

    class Fixed:
        name = "fixed"

        def __init__(self, table):
            self.table = table

        def score(self, questions, answers, progress=False):
            return [JudgeScore(*self.table[a]) if self.table[a][0] is not None else JudgeScore(None, None, "down")
                    for a in answers]

    cache = make_cache(np.zeros((3, 4)), ids=["a", "b", "c"])
    samples = [Sample(id=i, messages=[{"role": "user", "content": "q" + i}, {"role": "assistant", "content": "ans" + i}])
               for i in ["a", "b", "c"]]
    f = JudgeFilter(Fixed({"ansa": (90, 80), "ansb": (5, 90), "ansc": (50, 70)}), samples=samples, drop=1 / 3).fit()
    res = f.apply(cache)
    assert res.scores.tolist() == [10.0, 95.0, 50.0] and res.kept.tolist() == [True, False, True]
    assert res.explanations[1] == [{"alignment": 5, "coherence": 90}]
    f = JudgeFilter(Fixed({"ansa": (90, 80), "ansb": (None, None), "ansc": (50, 70)}), samples=samples).fit()
    with pytest.raises(RuntimeError, match="could not score 1 rows \\(first 'b': down\\)"):
        f.apply(cache)
    with pytest.raises(RuntimeError, match="pass samples="):
        JudgeFilter(Fixed({})).fit().apply(cache)
