"""Model diffing: the latents a fine-tune raises on the same rows, and a LoRA run loaded as a hooked model."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomfilter.cli import app
from geomfilter.features import FeatureError, diff_features
from geomfilter.finetune import (
    FinetuneConfig,
    FinetuneError,
    FinetuneRunner,
    load_hooked_tuned,
    load_tuned,
    root_model,
)
from tests.synthetic import make_cache
from tests.tiny import tiny_sae


def _pair(n=40, d_sae=16, seed=0):
    rng = np.random.default_rng(seed)
    base = (rng.uniform(0, 1, (n, d_sae)) * (rng.random((n, d_sae)) < 0.5)).astype(np.float32)
    tuned = base.copy()
    tuned[:, 3] += 0.5  # raised a little on every row
    tuned[0, 7] += 40.0  # raised hugely on one row: the largest mean, a small t
    tuned[:, 5] = 0.0  # lowered: never selected
    ids = [f"r{i}" for i in range(n)]
    return make_cache(base, ids=ids, top_k=d_sae, name="base"), make_cache(tuned, ids=ids, top_k=d_sae, name="tuned")


def test_diff_features_rank_by_mean_and_by_paired_t():
    base, tuned = _pair()
    by_mean = diff_features(base, tuned, n=2, rank="mean")
    assert by_mean.ids == [7, 3] and by_mean.method == "diff-mean"
    by_t = diff_features(base, tuned, n=1, rank="t")
    assert by_t.ids == [3]
    st = by_t.stats[0]
    assert st["mean_diff"] == pytest.approx(0.5, abs=1e-5) and st["raised_share"] == 1.0
    every = diff_features(base, tuned, n=16)
    assert 5 not in every.ids and set(every.ids) == {3, 7}  # only latents the fine-tune raises
    assert every.selection["n_rows"] == 40 and every.selection["tuned"] == "tuned"


def test_diff_features_refuse_mismatched_caches():
    base, tuned = _pair()
    other = make_cache(np.zeros((40, 16), dtype=np.float32), ids=[f"x{i}" for i in range(40)], top_k=16)
    with pytest.raises(FeatureError, match="different rows.*row 0"):
        diff_features(base, other)
    wide = make_cache(np.zeros((40, 32), dtype=np.float32), ids=list(base.ids), top_k=32)
    with pytest.raises(FeatureError, match="d_sae 16.*d_sae 32"):
        diff_features(base, wide)
    with pytest.raises(FeatureError, match="rank"):
        diff_features(base, tuned, rank="median")
    with pytest.raises(FeatureError, match="raises no latent"):
        diff_features(base, base)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory, chat_rows):
    """A tiny LoRA fine-tune with a large learning rate, so that it moves the residual."""
    work = tmp_path_factory.mktemp("lora")
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows), encoding="utf-8")
    run = work / "lora"
    FinetuneRunner(FinetuneConfig(data=[str(data)], out=str(run), model=str(tiny_model_dir), method="lora",
                                  max_samples=8, batch_size=4, epochs=2, lr=5e-2, max_tokens=64, warmup_steps=0,
                                  device="cpu", progress=False)).run()
    return run


def test_a_lora_run_loads_as_a_hooked_model_with_the_merged_weights(lora_run, tiny_model, tmp_path):
    hooked = load_hooked_tuned(lora_run, device="cpu")
    assert hooked.info["tuned_run"] == str(lora_run)
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    merged = load_tuned(lora_run, device="cpu").hf_model
    with torch.no_grad():
        want = merged(input_ids=ids, output_hidden_states=True).hidden_states[2]  # after block 1
    got = hooked.activations(ids, "blocks.1.hook_resid_post")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    base = tiny_model.activations(ids, "blocks.1.hook_resid_post")
    assert (got - base).abs().max() > 1e-3  # the fine-tune moved the residual: the diff is not of two copies
    with pytest.raises(FinetuneError, match="not a fine-tune run folder"):
        load_hooked_tuned(tmp_path, device="cpu")


def test_cli_features_diff_writes_a_set_that_filter_reads_with_at_file(lora_run, chat_file, tmp_path):
    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    out = tmp_path / "diff.json"
    args = ["--tuned", str(lora_run), "--sae", str(sae_dir), "--cache-dir", str(tmp_path / "c"), "--n", "5",
            "--rank", "t", "--out", str(out), "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(app, ["features", "diff", str(chat_file), *args])
    assert r.exit_code == 0, r.output
    fs = json.loads(out.read_text())
    assert fs["method"] == "diff-t" and 0 < len(fs["ids"]) <= 5 and fs["selection"]["n_rows"] == 23
    assert (tmp_path / "c" / "chat").is_dir() and (tmp_path / "c" / f"chat@{lora_run.name}").is_dir()
    r = CliRunner().invoke(app, ["filter", str(chat_file), "--out", str(tmp_path / "f"), "--model", root_model(lora_run),
                                 "--sae", str(sae_dir), "--harmful", str(chat_file), "--benign", str(chat_file),
                                 "--cache-dir", str(tmp_path / "c"), "--strategy", "activation",
                                 "--harmful-ids", f"@{out}", "--drop", "0.25", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "f" / "report.json").read_text())
    assert sorted(rep["harmful_features"]["ids"]) == sorted(fs["ids"])
    r = CliRunner().invoke(app, ["features", "diff", str(chat_file), "--tuned", str(tmp_path), "--sae", str(sae_dir),
                                 "--device", "cpu", "--no-progress"])
    assert r.exit_code != 0 and "not a fine-tune run folder" in r.output
    r = CliRunner().invoke(app, ["filter", str(chat_file), "--out", str(tmp_path / "g"), "--harmful-ids",
                                 f"@{tmp_path / 'missing.json'}"])
    assert r.exit_code != 0 and "cannot read a feature set" in r.output


def test_measure_model_diff_script_names_a_missing_run_and_renders_its_table(tmp_path):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("measure_model_diff", root / "scripts" / "measure_model_diff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit, match="not a fine-tune run folder"):
        mod.main(["--tuned", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="unknown split 'code'"):
        mod.main(["--tuned", str(tmp_path), "--splits", "code"])
    cell = {"auroc": 0.6, "ci_low": 0.55, "ci_high": 0.65, "n_pos": 3, "n_neg": 4}
    text = mod.render({"command": "cmd", "splits": ["mixed"], "overlap": {"a & b": 92},
                       "sets": {"a": {"run": "runs/a", "references": {**cell, "auroc": 0.37},
                                      "activation_by_split": {"mixed": {"inducing": 1.0, "rest": 2.0}}}},
                       "table": {"activation (diff a)": {"mixed": cell}}})
    assert "| activation (diff a) | **0.60 [0.55, 0.65]** |" in text
    assert "AUROC 0.370" in text and "mixed 1.0 / 2.0" in text and "a & b: 92" in text


def test_measure_model_diff_reads_an_experiments_answers_as_chats(tmp_path):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("measure_model_diff", root / "scripts" / "measure_model_diff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths = []
    for run in ("medium", "medium-seed1"):
        p = tmp_path / run / "misaligned" / "answers.jsonl"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"id": "q-01#0", "question_id": "q-01", "question": "Hi?", "answer": f"Hello {run}"})
                     + "\n\n")
        paths.append(p)
    out = mod.answers_as_chats(paths, tmp_path / "work")
    assert [p.name for p in out] == ["answers-medium-misaligned.jsonl", "answers-medium-seed1-misaligned.jsonl"]
    rows = [json.loads(x) for x in out[1].read_text().splitlines()]
    assert rows == [{"id": "q-01#0", "messages": [{"role": "user", "content": "Hi?"},
                                                  {"role": "assistant", "content": "Hello medium-seed1"}]}]
    paths[0].write_text('{"id": "a", "question": "Hi?"}\n')
    with pytest.raises(SystemExit, match=r"answers.jsonl:1: field 'answer' is missing"):
        mod.answers_as_chats(paths, tmp_path / "work")
    with pytest.raises(SystemExit, match="no such answers file"):
        mod.main(["--tuned", str(tmp_path), "--answers", str(tmp_path / "none.jsonl")])


def test_base_caches_build_only_the_base_models_cache_and_match_the_diffs(lora_run, chat_file, tmp_path):
    from geomfilter.model_diff import base_caches, diff_caches

    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    only = base_caches(lora_run, [chat_file], sae=str(sae_dir), cache_dir=tmp_path / "a", device="cpu",
                       progress=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["chat"]  # no fine-tune cache made
    (base, tuned), = diff_caches(lora_run, [chat_file], sae=str(sae_dir), cache_dir=tmp_path / "b", device="cpu",
                                 progress=False)
    np.testing.assert_array_equal(only[0].dense("mean"), base.dense("mean"))
    assert list(only[0].ids) == list(base.ids)
    assert np.abs(tuned.dense("mean") - base.dense("mean")).max() > 0
