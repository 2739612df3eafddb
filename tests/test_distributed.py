"""distributed.py: the Ray Data backend writes the local backend's files, survives a killed worker, CLI round trip.

Real Ray (a local 2-CPU instance), real actors; the killed worker really dies (``os._exit``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="the Ray backend needs ray: pip install 'geomfilter[distributed]'")

from geomfilter.cache import cache_activations, load_cache  # noqa: E402
from geomfilter.data import prepare_dataset  # noqa: E402
from geomfilter.distributed import ShardWorker, cache_activations_ray  # noqa: E402
from tests.tiny import tiny_sae  # noqa: E402

# the workers cannot import this test module (pytest put its folder on sys.path here only): ship the
# test's worker subclass by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

KW = {"shard_size": 5, "max_batch_tokens": 300, "max_batch_size": 4, "top_k": 16, "progress": False}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def setup(tiny_model, chat_file, tmp_path):
    """A saved SAE, the dataset, and the local backend's cache of it (torch on one thread, like each actor)."""
    sae_dir = tmp_path / "sae"
    tiny_sae(seed=4).save_model(str(sae_dir))
    from geomfilter.saes import load_sae

    sae = load_sae(str(sae_dir))
    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache_activations(tiny_model, sae, ds, tmp_path / "local", **KW)
    finally:
        torch.set_num_threads(threads)
    return sae, sae_dir, ds


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert "manifest.json" in names and sum(n.startswith("shard-") for n in names) == 5
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_ray_backend_writes_the_local_shards_and_manifest(ray_cluster, tiny_model, setup, tmp_path):
    sae, sae_dir, ds = setup
    res = cache_activations_ray(tiny_model, sae, ds, tmp_path / "ray", sae_spec=str(sae_dir), num_actors=2, **KW)
    assert (res.n_samples, res.n_shards, res.shards_written, res.shards_skipped) == (23, 5, 5, 0)
    assert res.n_tokens == sum(len(t.input_ids) for t in ds.tokenized)
    same_files(tmp_path / "local", tmp_path / "ray")
    c = load_cache(tmp_path / "ray")
    assert c.ids == [t.id for t in ds.tokenized]
    # nothing left to do: Ray is not even needed
    again = cache_activations_ray(tiny_model, sae, ds, tmp_path / "ray", sae_spec=str(sae_dir), **KW)
    assert (again.shards_written, again.shards_skipped) == (0, 5)
    with pytest.raises(ValueError, match="pass sae_spec"):
        cache_activations_ray(tiny_model, sae, ds, tmp_path / "x", **KW)


class CrashOnce(ShardWorker):
    """The first worker to get a shard kills its own process (claimed with an exclusive marker file)."""

    def __init__(self, *args, marker: str, **kw):
        super().__init__(*args, **kw)
        self.marker = marker
        Path(f"{marker}.init-{os.getpid()}").touch()

    def compute(self, si, part):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().compute(si, part)
        os.write(fd, f"{os.getpid()} {si}".encode())
        os.close(fd)
        os._exit(1)


def test_killed_worker_is_retried_and_every_sample_comes_back_once(ray_cluster, tiny_model, setup, tmp_path):
    sae, sae_dir, ds = setup
    out = tmp_path / "ray"
    out.mkdir()
    for f in (tmp_path / "local").iterdir():  # a resumed run: two shards are already there
        if f.name in ("manifest.json", "shard-00001.safetensors", "shard-00003.safetensors"):
            (out / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "killed"
    written = []
    res = cache_activations_ray(tiny_model, sae, ds, out, sae_spec=str(sae_dir), num_actors=2, worker_cls=CrashOnce,
                                worker_kwargs={"marker": str(marker)}, on_shard=lambda i, p: written.append(i), **KW)
    killed_pid, killed_shard = map(int, marker.read_text().split())
    inits = {int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("killed.init-*")}
    assert killed_pid in inits and len(inits) >= 3  # two actors, and the one restarted after the kill
    assert killed_shard in written and sorted(written) == [0, 2, 4]
    assert (res.shards_written, res.shards_skipped) == (3, 2)
    c = load_cache(out)
    assert c.ids == [t.id for t in ds.tokenized] and len(set(c.ids)) == 23
    same_files(tmp_path / "local", out)


def test_cli_cache_and_score_with_the_ray_backend(ray_cluster, tiny_model_dir, chat_rows, tmp_path, monkeypatch):
    from geomfilter import distributed
    from geomfilter.cli import app

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows), encoding="utf-8")
    args = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--shard-size", "10", "--top-k", "8", "--no-progress"]
    runner = CliRunner()
    r = runner.invoke(app, ["cache", str(data), "--out", str(tmp_path / "local"), *args])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cache", str(data), "--out", str(tmp_path / "ray"), "--backend", "ray", "--num-actors", "2",
                            *args])
    assert r.exit_code == 0, r.output
    assert "cached 23 samples" in r.output and "3 shards written, 0 resumed" in r.output
    for f in sorted((tmp_path / "local").glob("shard-*")):
        assert f.read_bytes() == (tmp_path / "ray" / f.name).read_bytes(), f.name
    r = runner.invoke(app, ["cache", str(data), "--out", str(tmp_path / "ray"), "--backend", "ray", *args])
    assert "0 shards written, 3 resumed" in r.output
    help_text = runner.invoke(app, ["cache", "--help"]).output
    assert "--backend" in help_text and "--num-actors" in help_text and "--ray-address" in help_text

    # score: its caching passes run on the Ray backend (the reference sets are cached beforehand, locally, to keep
    # this test to one more Ray pipeline)
    half = len(chat_rows) // 2
    for name, rows in (("harmful", chat_rows[:half]), ("benign", chat_rows[half:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    score = ["--strategy", "projection", "--model", str(tiny_model_dir), "--sae", "none", "--harmful",
             str(tmp_path / "harmful.jsonl"), "--benign", str(tmp_path / "benign.jsonl"), "--cache-dir",
             str(tmp_path / "caches"), "--no-progress"]
    r = runner.invoke(app, ["score", str(tmp_path / "harmful.jsonl"), "--out", str(tmp_path / "h.csv"), *score])
    assert r.exit_code == 0, r.output
    calls = []

    def spy(*a, **kw):  # the real Ray backend, its calls recorded
        res = run_ray(*a, **kw)
        calls.append((res.out_dir.name.split("-")[0], res.shards_written, kw["num_actors"]))
        return res

    run_ray = distributed.cache_activations_ray
    monkeypatch.setattr(distributed, "cache_activations_ray", spy)
    r = runner.invoke(app, ["score", str(data), "--out", str(tmp_path / "s.csv"), "--backend", "ray", "--num-actors",
                            "1", *score])
    assert r.exit_code == 0, r.output
    assert "scored 23 rows (projection)" in r.output
    assert sorted(calls) == [("data", 1, 1), ("ref", 0, 1), ("ref", 0, 1)]


def test_driver_refuses_lost_duplicated_or_foreign_samples(tiny_model, setup, tmp_path):
    """The worker's routine and the driver's accounting, in this process (no cluster needed for the checks)."""
    import pickle

    import numpy as np

    from geomfilter.distributed import ShardAccountingError, ShardCollector
    from geomfilter.shards import shard_samples

    sae, sae_dir, ds = setup
    expect = json.loads((tmp_path / "local" / "manifest.json").read_text())["identity"]
    worker = ShardWorker(tiny_model.spec, str(sae_dir), "blocks.1.hook_resid_post", expect=expect, device="cpu",
                         threads=1, **{k: KW[k] for k in ("top_k", "max_batch_tokens", "max_batch_size")})
    plans = {si: shard_samples(ds, 5, si) for si in range(5)}
    rows = {si: worker({"shard": np.array([si]), "samples": np.array([pickle.dumps(plans[si])], dtype=object)})
            for si in (0, 1)}
    metas = {s.id: s.meta for s in ds.samples}

    def part(batch, sel):
        return {k: v[sel] for k, v in batch.items()}

    out = tmp_path / "driver"
    out.mkdir()
    c = ShardCollector(plans, [0, 1], out, metas)
    assert c.add(part(rows[0], slice(0, 3))) == []  # incomplete: nothing written yet
    assert [si for si, _ in c.add(part(rows[0], slice(3, 5)))] == [0]
    assert (out / "shard-00000.safetensors").read_bytes() == (tmp_path / "local" / "shard-00000.safetensors").read_bytes()
    with pytest.raises(ShardAccountingError, match=r"sample 's00' \(shard 0\) came back twice"):
        c.add(part(rows[0], slice(0, 1)))
    c = ShardCollector(plans, [0, 1], out, metas)
    c.add(part(rows[1], slice(0, 4)))  # shard 1 loses its last sample
    with pytest.raises(ShardAccountingError, match=r"2 of 2 shards did not come back complete .*shard 0: 5 of 5"):
        c.finish()
    assert not (out / "shard-00001.safetensors").exists()
    bad = part(rows[1], slice(0, 1))
    bad["id"] = np.array(["s99"], dtype=object)
    with pytest.raises(ShardAccountingError, match="'s99' as shard 1 position 0, which is not in the plan"):
        ShardCollector(plans, [1], out, metas).add(bad)
    with pytest.raises(Exception, match="worker loaded SAE"):
        ShardWorker(tiny_model.spec, None, "blocks.1.hook_resid_post", expect=expect, device="cpu", top_k=16,
                    max_batch_tokens=300, max_batch_size=4)


def test_without_ray_a_clear_error_names_the_extra(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    from geomfilter.cli import app
    from geomfilter.distributed import RayNotInstalledError, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(RayNotInstalledError, match=r"pip install 'geomfilter\[distributed\]'"):
        require_ray()
    r = CliRunner().invoke(app, ["cache", str(chat_file), "--model", str(tiny_model_dir), "--sae", "none", "--out",
                                 str(tmp_path / "o"), "--backend", "ray", "--no-progress"])
    assert r.exit_code == 2 and "pip install 'geomfilter[distributed]'" in r.output
    assert not (tmp_path / "o").exists()


def test_an_unreachable_cluster_fails_fast():
    import socket

    from geomfilter.distributed import _check_reachable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}", timeout=2)
    _check_reachable("auto")  # left to Ray
