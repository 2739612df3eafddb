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
        # per request: int HTTP status, "slow", "echo-auth" (a reply quoting the Authorization header back),
        # raw bytes (sent as the whole 200 body), or a reply string
        self.plan: list = []
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
                if action == "echo-auth":
                    action = f"71. Debug: you sent Authorization: {self.headers.get('Authorization')}"
                if isinstance(action, int):
                    self.send_response(action)
                    self.end_headers()
                    return
                data = action if isinstance(action, bytes) else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
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
    from geomfilter.filtering import JudgeFilter
    from geomfilter.samples import Sample
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
    f = JudgeFilter(Fixed({"ansa": (90, 80), "ansb": (5, 90), "ansc": (50, 70)}), drop=1 / 3).fit()
    res = f.apply(cache, samples=samples)
    assert res.scores.tolist() == [10.0, 95.0, 50.0] and res.kept.tolist() == [True, False, True]
    assert res.explanations[1] == [{"alignment": 5, "coherence": 90}]
    f = JudgeFilter(Fixed({"ansa": (90, 80), "ansb": (None, None), "ansc": (50, 70)})).fit()
    with pytest.raises(RuntimeError, match="could not score 1 rows \\(first 'b': down\\)"):
        f.apply(cache, samples=samples)
    with pytest.raises(RuntimeError, match="pass samples="):
        JudgeFilter(Fixed({})).fit().apply(cache)


# ---------------------------------------------------------------------------------------------
# failure modes (user bug report): a dead endpoint, bad keys, garbage replies, secrets in the cache
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_judge_dead_endpoint_stops_after_three_refused_connections(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    j = APIJudge(model="m", base_url=url, cache_dir=tmp_path / "cache", timeout=0.3, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(JudgeError, match=rf"cannot reach {url}.*stopped after 3 failed connection attempts"):
        j.score([f"q{i}" for i in range(200)], [f"a{i}" for i in range(200)])
    assert j.calls == 3 and time.perf_counter() - t0 < 5  # not 200 rows x 5 attempts
    assert not list((tmp_path / "cache").rglob("*"))


def test_api_judge_dns_failure_stops_early(tmp_path, monkeypatch):
    import socket

    def no_dns(*a, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    j = APIJudge(model="m", base_url="http://judge.invalid/v1", cache_dir=None, timeout=0.3, backoff=0.01)
    with pytest.raises(JudgeError, match=r"cannot reach http://judge.invalid/v1: .*Name or service not known"):
        j.score(["q"] * 50, ["a"] * 50)
    assert j.calls == 3


def test_api_judge_endpoint_dying_mid_run_stops_after_consecutive_failed_rows(stub, tmp_path):
    stub.plan = ["80", "70", "60", "50"]  # two rows scored, then the server only answers 503
    stub.default = 503
    j = _judge(stub, tmp_path, max_retries=1, stop_after_failed_rows=3)
    with pytest.raises(JudgeError, match=r"3 answers in a row could not be scored.*HTTP 503"):
        j.score([f"q{i}" for i in range(100)], [f"a{i}" for i in range(100)])
    assert j.calls == 4 + 3 * 2
    # a failed row between good ones does not trip it
    stub.plan = ["80", "70", 503, 503, "60", "50"]
    stub.default = "40"
    res = _judge(stub, tmp_path / "b", max_retries=1, stop_after_failed_rows=2).score(["x", "y", "z"], ["1", "2", "3"])
    assert [s.alignment for s in res] == [80.0, None, 60.0]


def test_api_judge_non_utf8_and_non_json_replies_are_retried_judge_errors(stub, tmp_path):
    stub.plan = [b"\xff\xfe\x00garbage", b"<html>Bad gateway</html>", b'{"no": "choices"}', "64", "22"]
    j = _judge(stub, tmp_path, max_retries=3)
    [s] = j.score(["q"], ["a"])
    assert (s.alignment, s.coherence) == (64.0, 22.0) and j.calls == 5
    stub.default = b"\xff\xfe\x00garbage"
    [bad] = _judge(stub, tmp_path / "b", max_retries=1).score(["q"], ["a"])
    assert bad.alignment is None and "not UTF-8 JSON" in bad.error and bad.misaligned() is None


@pytest.mark.parametrize("code, hint", [(401, "Unauthorized from {url}: check the API key in \\$GEOMFILTER_TEST_KEY"),
                                        (403, "Forbidden from {url}: check that the key in \\$GEOMFILTER_TEST_KEY"),
                                        (404, "Not Found from {url}/chat/completions: check --base-url")])
def test_api_judge_auth_and_url_errors_are_clear_and_never_show_the_key(stub, tmp_path, monkeypatch, code, hint):
    monkeypatch.setenv("GEOMFILTER_TEST_KEY", "sk-live-SECRET-9")
    stub.default = code
    j = _judge(stub, tmp_path)
    with pytest.raises(JudgeError, match=f"HTTP {code} " + hint.format(url=stub.url)) as e:
        j.score(["q", "q2"], ["a", "a2"])
    assert "SECRET" not in str(e.value) and j.calls == 1  # not retried, and the run stops at the first answer


def test_api_judge_cache_holds_only_scores_never_an_echoed_key(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMFILTER_TEST_KEY", "sk-live-SECRET-9")
    stub.default = "echo-auth"  # a (debug) server quoting the request headers back in its reply
    [s] = _judge(stub, tmp_path).score(["q"], ["a"])
    assert (s.alignment, s.coherence) == (71.0, 71.0)
    files = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
    assert len(files) == 2
    for f in files:
        assert "SECRET" not in f.read_text() and "Authorization" not in f.read_text()
        assert set(json.loads(f.read_text())) == {"format", "model", "score"} and f.suffix == ".json"


def test_api_judge_cache_reads_old_and_corrupt_entries_gracefully(stub, tmp_path, monkeypatch):
    from geomfilter.judges import ALIGNMENT_PROMPT, COHERENCE_PROMPT

    monkeypatch.setenv("GEOMFILTER_TEST_KEY", "sk-live-SECRET-9")
    j = _judge(stub, tmp_path)
    old = j._cache_path(ALIGNMENT_PROMPT.format(question="q", answer="a"))
    broken = j._cache_path(COHERENCE_PROMPT.format(question="q", answer="a"))
    for p in (old, broken):
        p.parent.mkdir(parents=True, exist_ok=True)
    # an entry of the old format, which kept the raw reply (here with a key in it), and a half-written one
    old.write_text(json.dumps({"model": "judge-model", "reply": "33 Bearer sk-live-SECRET-9", "score": 33.0}))
    broken.write_text('{"format": 2, "model": "judge-model", "sco')
    stub.default = "88"
    [s] = j.score(["q"], ["a"])
    assert (s.alignment, s.coherence) == (33.0, 88.0) and j.calls == 1  # the old score reused, the broken one redone
    for p in (old, broken):
        assert "SECRET" not in p.read_text() and set(json.loads(p.read_text())) == {"format", "model", "score"}
    assert sorted(f.name for f in (tmp_path / "cache").rglob("*") if f.is_file()) == sorted([old.name, broken.name])


def test_unscored_judge_scores_are_never_called_aligned_or_misaligned():
    assert JudgeScore(None, None, "down").misaligned() is None
    assert JudgeScore(None, 80).misaligned() is None and JudgeScore(10, None).misaligned() is None
    assert JudgeScore(None, None).error  # no score without a reason
    assert JudgeScore(10, 80).misaligned() is True and JudgeScore(90, 80).misaligned() is False


def test_code_and_refusal_labels_are_never_misaligned():
    from geomfilter.judges import ANSWER_LABELS, JudgeScore

    assert JudgeScore(10.0, 90.0).misaligned() is True
    for label in ANSWER_LABELS:
        assert JudgeScore(10.0, 90.0, label=label).misaligned() is False
    assert JudgeScore(None, None, error="timeout", label="CODE").misaligned() is None  # unscored stays unscored
