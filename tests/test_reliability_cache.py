"""Cache reliability: content-addressed rows (stale caches, resume after an edit), the rejects file, damaged
cache files, rejected rows kept byte for byte, file permissions."""
from __future__ import annotations

import json
import os
import shlex
import stat

import pytest
from typer.testing import CliRunner

from geomfilter.cache import (
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheStaleError,
    cache_activations,
    check_samples_match,
    load_cache,
)
from geomfilter.data import prepare_dataset
from geomfilter.files import write_rejects
from geomfilter.samples import read_samples
from tests.tiny import tiny_sae, tiny_tokenizer

KW = {"shard_size": 5, "max_batch_tokens": 300, "max_batch_size": 4, "progress": False}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def edited(rows, i, answer="a completely different answer"):
    """``rows`` with the last assistant turn of row ``i`` replaced (same id)."""
    rows = json.loads(json.dumps(rows))
    rows[i]["messages"][-1]["content"] = answer
    return rows


def cache(model, data, out, sae=None, **kw):
    return cache_activations(model, sae, prepare_dataset(data, model.tokenizer), out, **{**KW, **kw})


def cli(*args):
    from geomfilter.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ 1. stale caches


def test_check_samples_match_names_edited_gone_and_added_rows(tiny_model, chat_file, chat_rows, tmp_path):
    cache(tiny_model, chat_file, tmp_path / "c")
    c = load_cache(tmp_path / "c")
    assert c.row_hashes is not None and len(c.row_hashes) == 23
    check_samples_match(c, read_samples(chat_file))  # unchanged: fine
    write_rows(chat_file, list(reversed(chat_rows)))
    check_samples_match(c, read_samples(chat_file))  # reordered: still the same rows
    write_rows(chat_file, edited(chat_rows, 3))
    with pytest.raises(CacheStaleError) as ei:
        check_samples_match(c, read_samples(chat_file))
    msg = str(ei.value)
    assert isinstance(ei.value, CacheMismatchError)
    assert f"cache {tmp_path / 'c'} is stale: {chat_file} changed" in msg
    assert "1 cached row edited (first: 's03' (line 4))" in msg
    assert f"geomfilter cache {chat_file} --out {tmp_path / 'c'}" in msg and "--sae none" in msg
    # a label is content too (the cache stores it)
    rows = json.loads(json.dumps(chat_rows))
    rows[7]["label"] = 5
    write_rows(chat_file, rows)
    with pytest.raises(CacheStaleError, match=r"'s07' \(line 8\)"):
        check_samples_match(c, read_samples(chat_file))
    write_rows(chat_file, chat_rows[:-1] + [{**chat_rows[0], "id": "new"}])
    with pytest.raises(CacheStaleError, match=r"1 cached row no longer there \(first: 's22'\); "
                                              r"1 row not in the cache \(first: 'new' \(line 23\)\)"):
        check_samples_match(c, read_samples(chat_file))


def test_filter_of_a_stale_cache_directory_refuses_until_recached(tiny_model_dir, chat_file, chat_rows, tmp_path):
    refs = {}
    for name in ("harmful", "benign"):
        refs[name] = write_rows(tmp_path / f"{name}.jsonl", [
            {"id": f"{name}{i}", "messages": [{"role": "user", "content": f"q {i}"},
                                              {"role": "assistant", "content": f"{name} answer {i}"}]}
            for i in range(6)])
    out = tmp_path / "c"
    mk = ["cache", chat_file, "--model", tiny_model_dir, "--sae", "none", "--out", out, "--shard-size", "5",
          "--no-progress"]
    assert cli(*mk).exit_code == 0
    flt = ["filter", out, "--strategy", "random", "--drop", "0.25", "--model", tiny_model_dir, "--sae", "none",
           "--harmful", refs["harmful"], "--benign", refs["benign"], "--cache-dir", tmp_path / "caches",
           "--no-progress"]
    r = cli(*flt, "--out", tmp_path / "f1")
    assert r.exit_code == 0, r.output
    write_rows(chat_file, edited(chat_rows, 12))
    r = cli(*flt, "--out", tmp_path / "f2")
    assert r.exit_code == 2, r.output
    assert "is stale" in r.output and "'s12' (line 13)" in r.output and "geomfilter cache" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    # the advice works as printed: it updates the cache, recomputing only the shard that holds the edited row
    command = shlex.split(r.output.split("Update it with `", 1)[1].split("`", 1)[0])
    assert command[:2] == ["geomfilter", "cache"]
    r = cli(*command[1:], "--no-progress")
    assert r.exit_code == 0, r.output
    assert "1 shards written, 4 resumed" in r.output
    r = cli(*flt, "--out", tmp_path / "f2")
    assert r.exit_code == 0, r.output


def test_resume_after_an_edit_recomputes_only_the_changed_shard(tiny_model, chat_file, chat_rows, tmp_path):
    sae = tiny_sae(seed=1)
    cache(tiny_model, chat_file, tmp_path / "c", sae)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").glob("shard-*")}
    write_rows(chat_file, edited(chat_rows, 7))  # shard 1 (rows 5-9)
    with pytest.warns(UserWarning, match="changed since"):
        res = cache(tiny_model, chat_file, tmp_path / "c", sae)
    assert (res.shards_written, res.shards_skipped) == (1, 4)
    fresh = tmp_path / "fresh"
    cache(tiny_model, chat_file, fresh, sae)
    for f in sorted(fresh.glob("shard-*")):
        assert f.read_bytes() == (tmp_path / "c" / f.name).read_bytes(), f.name
    assert before["shard-00001.safetensors"] != (fresh / "shard-00001.safetensors").read_bytes()
    assert json.loads((tmp_path / "c" / "manifest.json").read_text()) == json.loads((fresh / "manifest.json").read_text())
    check_samples_match(load_cache(tmp_path / "c"), read_samples(chat_file))
    # fewer rows: the shards past the new end go
    write_rows(chat_file, chat_rows[:12])
    with pytest.warns(UserWarning, match="changed since"):
        cache(tiny_model, chat_file, tmp_path / "c", sae)
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*")) == [f"shard-{i:05d}.safetensors" for i in range(3)]
    assert load_cache(tmp_path / "c").ids == [r["id"] for r in chat_rows[:12]]
    # other rows from another source file are another dataset: refused
    other = write_rows(tmp_path / "other.jsonl", chat_rows[:11])
    with pytest.raises(CacheMismatchError, match="refusing to mix"):
        cache(tiny_model, other, tmp_path / "c", sae)


def test_shards_are_content_addressed_even_without_the_manifest(tiny_model, chat_file, chat_rows, tmp_path):
    cache(tiny_model, chat_file, tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()
    write_rows(chat_file, edited(chat_rows, 21))  # shard 4
    res = cache(tiny_model, chat_file, tmp_path / "c")
    assert (res.shards_written, res.shards_skipped) == (1, 4)
    check_samples_match(load_cache(tmp_path / "c"), read_samples(chat_file))


def test_an_interrupted_update_is_not_loaded_as_complete(tiny_model, chat_file, chat_rows, tmp_path):
    cache(tiny_model, chat_file, tmp_path / "c")
    write_rows(chat_file, edited(edited(chat_rows, 1), 20))  # shards 0 and 4

    class Killed(Exception):
        pass

    def die(i, path):
        raise Killed

    with pytest.raises(Killed), pytest.warns(UserWarning):
        cache(tiny_model, chat_file, tmp_path / "c", on_shard=die)
    with pytest.raises(CacheIncompleteError, match="shard-00004.safetensors holds other rows than its manifest plans"):
        load_cache(tmp_path / "c")
    res = cache(tiny_model, chat_file, tmp_path / "c")
    assert (res.shards_written, res.shards_skipped) == (1, 4)
    check_samples_match(load_cache(tmp_path / "c"), read_samples(chat_file))


# ------------------------------------------------------------------ 2. the rejects file


BAD_ROW = {"id": "bad", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}


def test_a_refused_cache_writes_no_rejects_into_the_other_folder(tiny_model_dir, chat_file, chat_rows, tmp_path):
    out = tmp_path / "o"
    base = ["--model", tiny_model_dir, "--sae", "none", "--out", out, "--no-progress"]
    assert cli("cache", chat_file, *base).exit_code == 0
    other = write_rows(tmp_path / "other.jsonl", chat_rows[:-1] + [BAD_ROW])
    r = cli("cache", other, *base, "--skip-invalid")
    assert r.exit_code == 2 and "refusing to mix" in r.output
    assert not (out / "rejects.jsonl").exists()
    assert json.loads((out / "data_report.json").read_text())["n_rejected"] == 0
    r = cli("cache", other, *base, "--skip-invalid", "--rejects", tmp_path / "rej.jsonl")
    assert r.exit_code == 2 and not (tmp_path / "rej.jsonl").exists()


def test_a_rerun_with_clean_data_removes_the_old_rejects(tiny_model_dir, chat_rows, tmp_path):
    data, out = tmp_path / "d.jsonl", tmp_path / "o"
    args = ["cache", data, "--model", tiny_model_dir, "--sae", "none", "--out", out, "--no-progress", "--skip-invalid"]
    write_rows(data, chat_rows + [BAD_ROW])
    r = cli(*args)
    assert r.exit_code == 0 and "rejected 1" in r.output
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 1
    write_rows(data, chat_rows)
    r = cli(*args)
    assert r.exit_code == 0 and "rejected 0" in r.output
    assert json.loads((out / "data_report.json").read_text())["n_rejected"] == 0
    assert not (out / "rejects.jsonl").exists()
    # the library writer agrees: the rejects file is this run's
    write_rows(data, chat_rows + [BAD_ROW])
    prepare_dataset(data, tiny_tokenizer(), skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    assert (tmp_path / "rej.jsonl").is_file()
    write_rows(data, chat_rows)
    prepare_dataset(data, tiny_tokenizer(), skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    assert not (tmp_path / "rej.jsonl").exists()


# ------------------------------------------------------------------ 3. damaged cache files


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_shard_is_named_and_recomputed(tiny_model, tiny_model_dir, chat_file, tmp_path, damage):
    out = tmp_path / "c"
    cache(tiny_model, chat_file, out)
    shard = out / "shard-00002.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2] if damage == "truncate" else os.urandom(len(good)))
    with pytest.raises(CacheCorruptError, match=r"shard .*shard-00002\.safetensors cannot be read .*Delete it and "
                                                 r"re-run the same `geomfilter cache` command"):
        load_cache(out)
    r = cli("info", out)
    assert r.exit_code == 2, r.output
    assert "shard-00002.safetensors cannot be read" in r.output and "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)
    res = cache(tiny_model, chat_file, out)  # resume: the damaged shard is not done
    assert (res.shards_written, res.shards_skipped) == (1, 4)
    assert shard.read_bytes() == good
    assert cli("info", out).exit_code == 0


def test_an_unreadable_manifest_is_named(tiny_model, chat_file, tmp_path):
    out = tmp_path / "c"
    cache(tiny_model, chat_file, out)
    (out / "manifest.json").write_text('{"identity": {"format": "geomfilter-cac', encoding="utf-8")
    with pytest.raises(CacheCorruptError, match=r"manifest\.json cannot be read .*Delete the folder"):
        load_cache(out)
    r = cli("info", out)
    assert r.exit_code == 2 and "manifest.json cannot be read" in r.output
    with pytest.raises(CacheCorruptError, match="manifest.json cannot be read"):  # no resume over it either
        cache(tiny_model, chat_file, out)


# ------------------------------------------------------------------ 4. rejected rows byte for byte


def test_reject_records_carry_the_raw_line(tmp_path):
    good = json.dumps({"id": "ok", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    long = json.dumps({"id": "long", "prompt": "x" * 40, "response": "y"})
    lines = [
        good.encode() + b"\r\n",
        b'{"broken": \r\n',
        b'{"prompt": "caf\xe9", "response": "x"}\r\n',
        json.dumps(BAD_ROW).encode() + b"\r\n",
        long.encode() + b"\r\n",
        b'{"id": "ok", "prompt": "p", "response": "r"}',  # duplicate id, last line without a line ending
    ]
    p = tmp_path / "crlf.jsonl"
    p.write_bytes(b"".join(lines))
    ds = prepare_dataset(p, tiny_tokenizer(), max_tokens=30, truncation="right", skip_invalid=True,
                         rejects_path=tmp_path / "rej.jsonl")
    rej = ds.report.rejects
    assert [r["line"] for r in rej] == [2, 3, 4, 6, 5]
    by_line = {r["line"]: r for r in rej}
    for n, r in by_line.items():
        assert r["raw"].encode("utf-8", "surrogateescape") == lines[n - 1], n
    assert by_line[5]["id"] == "long" and "no response tokens" in by_line[5]["reason"]
    assert ds.samples[0].raw == good + "\r\n"
    written = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["raw"].encode("utf-8", "surrogateescape") for r in written] == [lines[n - 1] for n in (2, 3, 4, 6, 5)]
    write_rejects(tmp_path / "again.jsonl", written)  # round trip
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "rej.jsonl").read_bytes()


# ------------------------------------------------------------------ 5. permissions


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_cache_files_get_the_umask_permissions(tiny_model, chat_rows, tmp_path, umask):
    data = write_rows(tmp_path / "d.jsonl", chat_rows + [BAD_ROW])
    old = os.umask(umask)
    try:
        ds = prepare_dataset(data, tiny_model.tokenizer, skip_invalid=True)
        cache_activations(tiny_model, tiny_sae(), ds, tmp_path / "c", rejects_path=tmp_path / "c" / "rejects.jsonl",
                          **KW)
    finally:
        os.umask(old)
    files = sorted((tmp_path / "c").iterdir())
    assert {f.name for f in files} >= {"manifest.json", "data_report.json", "rejects.jsonl", "shard-00000.safetensors"}
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert not [f for f in files if f.name.startswith(".")]


def test_load_cache_still_reads_a_cache_without_row_hashes(tiny_model, chat_file, chat_rows, tmp_path):
    """A cache written before per-row hashes (no ``rows`` in its shards, no shard plans): loads, and a stale
    one is still told by its dataset fingerprint."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "c"
    cache(tiny_model, chat_file, out)
    m = json.loads((out / "manifest.json").read_text())
    del m["shards"]
    (out / "manifest.json").write_text(json.dumps(m))
    for f in out.glob("shard-*"):
        with safe_open(str(f), framework="pt") as fh:
            md = json.loads(fh.metadata()["geomfilter"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        del md["rows"]
        save_file(tensors, str(f), metadata={"geomfilter": json.dumps(md)})
    c = load_cache(out)
    assert c.row_hashes is None and len(c) == 23
    check_samples_match(c, read_samples(chat_file))
    write_rows(chat_file, edited(chat_rows, 0))
    with pytest.raises(CacheStaleError, match="predates per-row fingerprints"):
        check_samples_match(c, read_samples(chat_file))
