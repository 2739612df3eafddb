import json

import pytest
from typer.testing import CliRunner

from geomfilter.cache import cache_activations, load_cache
from geomfilter.data import prepare_dataset
from geomfilter.generate import generate_answers, prompts_of_samples
from geomfilter.pooling import resid_means_by_layer
from geomfilter.samples import read_samples


def test_generation_refuses_the_hooked_model(tiny_model, chat_file, tmp_path):
    prompts = prompts_of_samples(read_samples(chat_file))
    with pytest.raises(ValueError, match="generation needs the plain HF model"):
        generate_answers(tiny_model, prompts, tmp_path / "x.jsonl", max_new_tokens=2, progress=False)


def test_generate_answers_is_seeded_resumable_and_accounts_for_every_prompt(tiny_model_dir, chat_file, tmp_path):
    from geomfilter.finetune import load_tuned

    tiny_model = load_tuned(str(tiny_model_dir))
    prompts = prompts_of_samples(read_samples(chat_file))
    assert all(p.messages[-1]["role"] == "user" for p in prompts)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    r1 = generate_answers(tiny_model, prompts, a, max_new_tokens=6, batch_size=5, seed=1, progress=False)
    assert r1.n_written + r1.n_rejected == r1.n_prompts == 23
    # killed after the first 2 batches, then resumed: same rows as one uninterrupted run
    generate_answers(tiny_model, prompts, b, max_new_tokens=6, batch_size=5, seed=1, progress=False, limit=10)
    r2 = generate_answers(tiny_model, prompts, b, max_new_tokens=6, batch_size=5, seed=1, progress=False)
    assert r2.n_skipped == 10
    rows_a = sorted(a.read_text().splitlines())
    assert rows_a == sorted(b.read_text().splitlines())
    by_id = {p.id: p for p in prompts}
    for line in rows_a:
        row = json.loads(line)
        assert row["messages"][:-1] == by_id[row["id"]].messages and row["messages"][-1]["role"] == "assistant"
        assert row["finish"] in ("stop", "length") and 0 < row["n_new_tokens"] <= 6
    greedy = [generate_answers(tiny_model, prompts[:4], tmp_path / f"g{i}.jsonl", max_new_tokens=5, temperature=0,
                               seed=i, progress=False) for i in range(2)]
    assert (tmp_path / "g0.jsonl").read_text() == (tmp_path / "g1.jsonl").read_text()  # greedy ignores the seed
    assert greedy[0].n_prompts == 4


def test_cli_respond(tiny_model_dir, chat_file, tmp_path):
    from geomfilter.cli import app

    out = tmp_path / "own.jsonl"
    r = CliRunner().invoke(app, ["respond", str(chat_file), "--out", str(out), "--model", str(tiny_model_dir),
                                 "--max-new-tokens", "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "23 prompts: 0 already answered" in r.output
    r = CliRunner().invoke(app, ["respond", str(chat_file), "--out", str(out), "--model", str(tiny_model_dir),
                                 "--max-new-tokens", "4", "--no-progress"])
    assert "23 already answered, 0 written" in r.output


def test_resid_means_by_layer_equals_the_cache(tiny_model, chat_file, tmp_path):
    import numpy as np

    ds = prepare_dataset(chat_file, tiny_model.tokenizer)
    means = resid_means_by_layer(tiny_model, ds, [0, 2], max_batch_tokens=300, progress=False)
    for layer in (0, 2):
        cache_activations(tiny_model, None, ds, tmp_path / f"c{layer}", hook=f"blocks.{layer}.hook_resid_post",
                          progress=False)
        np.testing.assert_allclose(means[layer], load_cache(tmp_path / f"c{layer}").arrays["resid_mean"], atol=1e-5)
