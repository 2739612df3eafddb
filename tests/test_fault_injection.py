"""Fault injection: SIGKILL the fine-tune and the experiment runner at seeded points, resume, compare.

Each run happens in a child process forked from a multiprocessing *forkserver*
that imported torch / transformers / peft / geomfilter once (a fresh
interpreter per run would spend ~6 s importing). The child watches its own
file-system mutations under the run folder -- ``open`` for writing, every
``write`` to an append-mode file (``train_log.jsonl``), ``os.replace`` /
``rename`` / ``unlink`` / ``rmdir`` / ``mkdir`` (so ``shutil.rmtree`` and
``Path.*`` too), safetensors ``save_file`` and ``torch.save``. Those are the
only moments the on-disk state changes, so killing at a seeded event index
samples the states a real ``kill -9`` can leave. At the chosen event the child
sends itself SIGKILL (no ``finally``, no ``atexit``, no buffer flush), either
before the operation or *torn*: after the file being written was cut to a
seeded fraction of its size (a write the kill interrupted; a half-written
checkpoint file, an empty ``finetune.json``, half a log row).

Each seed kills a run, kills its resume again, then resumes to completion; the
results must equal one uninterrupted baseline run exactly: the fine-tune's
weights bit for bit and its ``train_log.jsonl`` (wall-clock ``seconds``
aside), the experiment's ``results.csv`` byte for byte, ``report.md`` (its
seconds line aside), every answer/probe/MC file, filter output and weight
file. Seeds are fixed, the kill points derive from them, so a failure
reproduces; the message names the operation that was killed.
"""
from __future__ import annotations

import builtins
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_experiment import write_experiment_yaml
from tests.tiny import save_tiny_model

pytestmark = pytest.mark.skipif(sys.platform != "linux" or "forkserver" not in mp.get_all_start_methods(),
                                reason="uses the forkserver start method and /proc (Linux)")
SEEDS = (0, 1, 2, 3)
TIMING_KEYS = {"seconds", "eval_seconds", "tokens_per_s", "skipped"}
_PRELOAD = ["torch", "transformers", "peft", "safetensors.torch", "sae_lens", "sentence_transformers", "matplotlib",
            "matplotlib.pyplot", "sklearn", "geomfilter.cache", "geomfilter.data", "geomfilter.filtering",
            "geomfilter.gating", "geomfilter.generate", "geomfilter.geometry", "geomfilter.judges", "geomfilter.models",
            "geomfilter.plots", "geomfilter.saes", "geomfilter.evaluate", "geomfilter.report", "geomfilter.cli",
            "geomfilter.experiment", "geomfilter.finetune"]


# --------------------------------------------------------------------------- the injector (runs in the child)
class _Killer:
    """Counts file-system mutations under ``root``; SIGKILLs the process at the planned one.

    ``plan``: ``{"nth": k, "match": substring or None, "torn": fraction or None}`` -- the k-th event whose
    description (``"<op> <path relative to root>"``) contains ``match``; with ``torn`` the file being written
    is cut to that fraction of its size first (open-for-write: at the next event; append writes, ``save_file``,
    ``torch.save``: right away). No plan: only count (the baseline).
    """

    TEARABLE = ("open", "write", "save_file", "torch.save")

    def __init__(self, root: str, plan: dict | None, record: str):
        self.root = os.path.realpath(root)
        self.plan, self.record = plan, record
        self.events: list[str] = []
        self.hits = 0
        self.pending: tuple[str, str] | None = None  # (path, description) of an open-for-write to tear
        self._open = builtins.open

    def rel(self, path, dir_fd=None) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            p = os.fsdecode(path)
        except TypeError:
            return None
        if dir_fd is not None and not os.path.isabs(p):
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.abspath(p)
        p = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if p == self.root or p.startswith(self.root + os.sep):
            return os.path.relpath(p, self.root)
        return None

    def event(self, op: str, path, dir_fd=None) -> str | None:
        """Record one mutation; returns "tear" when the caller must tear this write, else None (or never returns)."""
        rel = self.rel(path, dir_fd)
        if rel is None:
            return None
        if self.pending is not None:
            self.tear(*self.pending)
        desc = f"{op} {rel}"
        self.events.append(desc)
        plan = self.plan
        if plan and (plan.get("match") is None or plan["match"] in desc):
            self.hits += 1
            if self.hits == plan["nth"]:
                if plan.get("torn") is not None and op.split(":")[0] in self.TEARABLE:
                    return "tear"
                self.kill(desc)
        return None

    def tear(self, path, desc: str) -> None:
        """Cut the file to ``torn`` of its size, then die."""
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        keep = int(size * self.plan["torn"])
        if os.path.isfile(path):
            os.truncate(path, keep)
        self.kill(f"{desc} (torn: {keep} of {size} bytes)")

    def kill(self, desc: str) -> None:
        with self._open(self.record, "w") as fh:
            json.dump({"killed": desc, "event": len(self.events)}, fh)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def finish(self) -> None:
        if self.pending is not None:
            self.tear(*self.pending)
        with self._open(self.record, "w") as fh:
            json.dump({"killed": None, "events": self.events}, fh)

    # -- patching ---------------------------------------------------------------------------
    def install(self) -> None:
        import safetensors.torch
        import torch

        k, real_open = self, builtins.open

        class AppendFile:
            """An append-mode text file whose every ``write`` is an event (the train log's rows)."""

            def __init__(self, fh, path):
                self._fh, self._path = fh, path

            def write(self, s):
                if k.event("write", self._path) == "tear":
                    self._fh.write(s[: int(len(s) * k.plan["torn"])])
                    self._fh.flush()
                    k.kill(f"write {k.rel(self._path)} (torn row)")
                return self._fh.write(s)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._fh.__exit__(*exc)

            def __iter__(self):
                return iter(self._fh)

            def __getattr__(self, name):
                return getattr(self._fh, name)

        def open_(file, mode="r", *a, **kw):
            if isinstance(file, int) or not any(c in mode for c in "wax+"):
                return real_open(file, mode, *a, **kw)
            what = k.event(f"open:{mode}", file)
            fh = real_open(file, mode, *a, **kw)
            if what == "tear":
                k.pending = (os.path.abspath(os.fsdecode(file)), f"open:{mode} {k.rel(file)}")
            if "a" in mode and "b" not in mode and k.rel(file) is not None:
                return AppendFile(fh, file)
            return fh

        builtins.open = io.open = open_

        def two_paths(name):
            real = getattr(os, name)

            def f(src, dst, *a, **kw):
                k.event(name, src, kw.get("src_dir_fd"))
                return real(src, dst, *a, **kw)
            setattr(os, name, f)

        def one_path(name, attr=None):
            real = getattr(os, attr or name)

            def f(path, *a, **kw):
                k.event(name, path, kw.get("dir_fd"))
                return real(path, *a, **kw)
            setattr(os, attr or name, f)

        two_paths("replace")
        two_paths("rename")
        one_path("unlink")
        one_path("unlink", "remove")
        one_path("rmdir")
        real_mkdir = os.mkdir

        def mkdir(path, *a, **kw):
            if kw.get("dir_fd") is not None or not os.path.isdir(path):  # an existing folder: no change, no event
                k.event("mkdir", path, kw.get("dir_fd"))
            return real_mkdir(path, *a, **kw)
        os.mkdir = mkdir

        def writer(name, real, path_arg):
            def f(*a, **kw):
                path = a[path_arg] if len(a) > path_arg else kw.get("filename", kw.get("f"))
                what = k.event(name, path) if isinstance(path, (str, os.PathLike)) else None
                out = real(*a, **kw)
                if what == "tear":
                    k.tear(os.fsdecode(path), f"{name} {k.rel(path)}")
                return out
            return f

        # every module that bound these functions by name (``from safetensors.torch import save_file``)
        swaps = {id(safetensors.torch.save_file): writer("save_file", safetensors.torch.save_file, 1),
                 id(torch.save): writer("torch.save", torch.save, 1)}
        for mod in list(sys.modules.values()):
            d = getattr(mod, "__dict__", None)
            if not isinstance(d, dict):
                continue
            for name, v in list(d.items()):
                if id(v) in swaps and callable(v) and name in ("save_file", "safe_save_file", "save",
                                                                "safetensors_save_file"):
                    d[name] = swaps[id(v)]


def _child(job: dict) -> None:
    with open(job["log"], "a") as log:  # the child's stdout/stderr (shown when a run fails)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    killer = _Killer(job["root"], job.get("plan"), job["record"])
    killer.install()
    if job["what"] == "finetune":
        from geomfilter.finetune import FinetuneConfig, FinetuneRunner

        FinetuneRunner(FinetuneConfig(**job["config"])).run()
    else:
        from geomfilter.cli import app

        app(["experiment", job["config"], "--out", job["root"], "--no-progress"], prog_name="geomfilter",
            standalone_mode=False)
    killer.finish()


# --------------------------------------------------------------------------- the parent side
_CTX = None


def _ctx():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload([__name__] + _PRELOAD)
    return _CTX


def _run(job: dict, timeout: float = 300) -> dict:
    """Run one job in a forked child; returns the child's record (``killed``: the op it died at, or None)."""
    rec = Path(job["record"])
    rec.unlink(missing_ok=True)
    p = _ctx().Process(target=_child, args=(job,), daemon=True)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{job['what']} child hung ({timeout} s); log {job['log']}")
    tail = Path(job["log"]).read_text(errors="replace")[-3000:] if Path(job["log"]).is_file() else ""
    record = json.loads(rec.read_text()) if rec.is_file() else {}
    if p.exitcode == -signal.SIGKILL and record.get("killed"):
        return record
    assert p.exitcode == 0 and record.get("killed") is None, (
        f"{job['what']} run failed (exit {p.exitcode}) after earlier kills {job.get('history')}:\n{tail}")
    return record


def _plans(rng: np.random.Generator, n_events: int) -> list[dict]:
    """Two seeded kills: at one of the baseline's ``n_events`` events, then in the resumed run (which redoes
    at least the events after the first kill point); each cuts its write short half the time."""
    first = int(rng.integers(1, n_events + 1))
    second = int(rng.integers(1, n_events - first + 2))
    return [{"nth": nth, "match": None, "torn": float(rng.uniform(0, 1)) if rng.random() < 0.5 else None}
            for nth in (first, second)]


def _chain(job: dict, plans: list[dict]) -> list[str]:
    """Run with each plan in turn (each run resumes the last), then once to completion; what was killed."""
    history: list[str] = []
    for plan in plans + [None]:
        rec = _run({**job, "plan": plan, "history": history})
        if rec.get("killed"):
            history.append(rec["killed"])
    print(f"[fault-injection] {job['root']}: killed at {history}, then resumed to the end")
    return history


def _norm(obj, root: str):
    """Drop wall-clock fields and the run root from a JSON value."""
    if isinstance(obj, dict):
        return {k: _norm(v, root) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_norm(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<root>")
    return obj


def _log_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in path.read_text().splitlines()]


# --------------------------------------------------------------------------- fine-tune
def _train_file(d: Path, n: int = 16) -> Path:
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"say {i} " + "ab" * (i % 5)},
                                          {"role": "assistant", "content": f"the answer is {i % 3} ok"}]}
            for i in range(n)]
    p = d / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


FT_METHODS = {
    # dropout > 0: the resumed run must restore the torch RNG state to draw the same dropout masks
    "lora": dict(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_targets=["q_proj", "v_proj", "up_proj"]),
    "gates": dict(method="gates"),
}


@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fi-ft")
    model = save_tiny_model(d / "model")
    data = _train_file(d)
    common = dict(data=[str(data)], model=str(model), max_samples=12, epochs=2, batch_size=2, lr=1e-2,
                  warmup_steps=3, max_tokens=64, checkpoint_every=2, seed=0, device="cpu", progress=False)
    base = {}
    for name, kw in FT_METHODS.items():
        out = d / f"{name}-baseline"
        rec = _run({"what": "finetune", "root": str(out), "config": {**common, **kw, "out": str(out)},
                    "record": str(d / f"{name}-baseline.rec"), "log": str(d / f"{name}-baseline.log")})
        base[name] = (out, rec["events"])
    return d, common, base


def _weights(out: Path) -> Path:
    return out / "adapter" / "adapter_model.safetensors" if (out / "adapter").is_dir() else out / "gates" / "gates.safetensors"


def _assert_same_finetune(out: Path, ref: Path, history: list[str]) -> None:
    from safetensors.torch import load_file

    why = f"after kills at {history}"
    a, b = load_file(str(_weights(out))), load_file(str(_weights(ref)))
    assert a.keys() == b.keys(), why
    bad = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and bool((a[k] == b[k]).all()))]
    assert not bad, f"weights differ ({bad[:3]}) {why}"
    assert _weights(out).read_bytes() == _weights(ref).read_bytes(), why
    assert _log_rows(out / "train_log.jsonl") == _log_rows(ref / "train_log.jsonl"), why
    ra, rb = (json.loads((p / "finetune.json").read_text()) for p in (out, ref))
    assert ra["finished"] and _norm(ra, str(out)) == _norm(rb, str(ref)), why
    assert not (out / "checkpoints").exists(), why


@pytest.mark.parametrize("method", list(FT_METHODS))
def test_finetune_killed_at_random_points_resumes_to_identical_weights(ft_setup, method):
    d, common, base = ft_setup
    ref, events = base[method]
    assert any("checkpoints/step-" in e for e in events) and any(e.startswith("write train_log") for e in events)
    for seed in SEEDS:
        rng = np.random.default_rng([seed, len(method)])
        out = d / f"{method}-seed{seed}"
        job = {"what": "finetune", "root": str(out), "config": {**common, **FT_METHODS[method], "out": str(out)},
               "record": str(d / f"{method}-{seed}.rec"), "log": str(d / f"{method}-{seed}.log")}
        history = _chain(job, _plans(rng, len(events)))
        assert history, "the first planned kill must hit (the run follows the baseline's path)"
        _assert_same_finetune(out, ref, history)


@pytest.mark.parametrize("case, plans", [
    # a kill inside a checkpoint write: the half-written step-000004.tmp must never be loaded
    ("torn-checkpoint", [{"match": "checkpoints/step-000004.tmp/optimizer.pt", "nth": 1, "torn": 0.5},
                         {"match": "checkpoints/step-000006.tmp/trainable", "nth": 1, "torn": None}]),
    # finetune.json cut short (it is rewritten at every start)
    ("torn-run-file", [{"match": "open:wb .finetune.json.tmp", "nth": 2, "torn": 0.5}]),
    # half a log row at step 5, then a kill while the resume rewrites the log (rows 1-4 must survive)
    ("torn-log", [{"match": "write train_log.jsonl", "nth": 5, "torn": 0.5},
                  {"match": "open:wb .train_log.jsonl.tmp", "nth": 1, "torn": 0.0}]),
])
def test_finetune_torn_writes_regressions(ft_setup, case, plans):
    d, common, base = ft_setup
    ref, _ = base["lora"]
    out = d / f"case-{case}"
    job = {"what": "finetune", "root": str(out), "config": {**common, **FT_METHODS["lora"], "out": str(out)},
           "record": str(d / f"case-{case}.rec"), "log": str(d / f"case-{case}.log")}
    history = _chain(job, plans)
    assert len(history) == len(plans), history  # every planned kill hit
    _assert_same_finetune(out, ref, history)


# --------------------------------------------------------------------------- experiment
CONDITIONS = ["base", "geometry-0.50", "base+amplify-gates"]  # filter + LoRA + gates + evaluation, 3 conditions


@pytest.fixture(scope="module")
def exp_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fi-exp")
    cfg_path = write_experiment_yaml(d, save_tiny_model(d / "model"))
    raw = yaml.safe_load(cfg_path.read_text())
    raw["filtering"] = {"strategies": ["geometry"], "fractions": [0.5]}
    raw["conditions"] = CONDITIONS
    cfg_path.write_text(yaml.safe_dump(raw))
    out = d / "baseline"
    rec = _run({"what": "experiment", "root": str(out), "config": str(cfg_path), "record": str(d / "baseline.rec"),
                "log": str(d / "baseline.log")})
    return d, cfg_path, out, rec["events"]


def _assert_same_experiment(out: Path, ref: Path, history: list[str]) -> None:
    why = f"after kills at {history}"
    a, b = out / "tiny", ref / "tiny"
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes(), why

    def report(p: Path) -> str:
        return re.sub(r"(?m)^Seconds per condition.*$", "", (p / "report.md").read_text().replace(str(p), "<root>"))

    assert report(a) == report(b), why
    ja, jb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    assert _norm(ja, str(out)) == _norm(jb, str(ref)), why
    files = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.suffix in
                   (".jsonl", ".csv", ".safetensors") and p.name != "train_log.jsonl")
    assert any(f.endswith("adapter_model.safetensors") for f in files) and any(f.endswith("gates.safetensors")
                                                                               for f in files)
    for f in files:  # byte for byte, bar the run folder's own path (scores.csv names its source file)
        fa, fb = (a / f).read_bytes(), (b / f).read_bytes()
        if not f.endswith(".safetensors"):
            fa, fb = fa.replace(str(out).encode(), b"<root>"), fb.replace(str(ref).encode(), b"<root>")
        assert fa == fb, f"{f} differs {why}"
    for c in CONDITIONS:
        ma, mb = (json.loads((p / c / "metrics.json").read_text()) for p in (a, b))
        assert _norm(ma, str(out)) == _norm(mb, str(ref)), f"{c}/metrics.json differs {why}"
    for log in b.rglob("train_log.jsonl"):
        assert _log_rows(a / log.relative_to(b)) == _log_rows(log), why


def test_experiment_killed_at_random_points_resumes_to_identical_results(exp_setup):
    d, cfg_path, ref, events = exp_setup
    assert any("filter" in e for e in events) and any("metrics.json" in e for e in events)
    for seed in SEEDS:
        rng = np.random.default_rng([seed, 7])
        out = d / f"seed{seed}"
        job = {"what": "experiment", "root": str(out), "config": str(cfg_path), "record": str(d / f"{seed}.rec"),
               "log": str(d / f"{seed}.log")}
        history = _chain(job, _plans(rng, len(events)))
        assert history
        _assert_same_experiment(out, ref, history)


def test_experiment_torn_state_files_regression(exp_setup):
    """The filter's ``inputs.json``, a fine-tune's ``experiment_identity.json`` and a condition's ``metrics.json``
    cut short by a kill: the next run must redo that piece, not crash on the half-written JSON."""
    d, cfg_path, ref, _ = exp_setup
    out = d / "torn"
    job = {"what": "experiment", "root": str(out), "config": str(cfg_path), "record": str(d / "torn.rec"),
           "log": str(d / "torn.log")}
    plans = [{"match": "inputs.json", "nth": 1, "torn": 0.5},
             {"match": "experiment_identity.json", "nth": 1, "torn": 0.3},
             {"match": "metrics.json", "nth": 1, "torn": 0.5}]
    history = _chain(job, plans)
    assert len(history) == len(plans), history
    _assert_same_experiment(out, ref, history)
    shutil.rmtree(out)
