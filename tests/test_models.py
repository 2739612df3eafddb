"""models.py: spec resolution, hook validation, activations equal the plain HF model's."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from geomfilter.model_specs import ModelSpecError, embedded_gguf_path, resolve_model_spec
from geomfilter.models import HookNameError, stop_layer


def test_resolve_specs(tmp_path, tiny_model_dir):
    kind, where = resolve_model_spec("smollm2-135m-instruct")
    assert kind == "embedded" and where.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and where == str(embedded_gguf_path())
    assert resolve_model_spec(str(tiny_model_dir)) == ("hf_dir", str(tiny_model_dir))
    assert resolve_model_spec("gpt2-small") == ("tl_name", "gpt2-small")
    with pytest.raises(ModelSpecError, match="GGUF file not found"):
        resolve_model_spec(str(tmp_path / "m.gguf"))
    with pytest.raises(ModelSpecError, match="not a HF model directory"):
        resolve_model_spec(str(tmp_path))
    with pytest.raises(ModelSpecError, match=r"unknown model spec 'gpt2-smal'.*did you mean: .*gpt2-small"):
        resolve_model_spec("gpt2-smal")


def test_stop_layer():
    assert stop_layer("blocks.1.hook_resid_post", 3) == 2
    assert stop_layer("blocks.2.hook_resid_post", 3) is None  # the last block: full forward
    assert stop_layer("hook_embed", 3) is None


def test_tiny_model_shape_and_hooks(tiny_model):
    assert (tiny_model.n_layers, tiny_model.d_model) == (3, 32)
    assert tiny_model.info["kind"] == "hf_dir" and not tiny_model.info["process_weights"]
    names = tiny_model.hook_names()
    assert {"blocks.0.hook_resid_pre", "blocks.2.hook_resid_post", "blocks.1.hook_mlp_out"} <= set(names)
    assert tiny_model.validate_hook("blocks.0.hook_resid_mid") == "blocks.0.hook_resid_mid"
    assert tiny_model.hook_d("blocks.0.hook_resid_post") == 32
    with pytest.raises(HookNameError) as ei:
        tiny_model.validate_hook("blocks.7.hook_resid_post")
    msg = str(ei.value)
    assert "blocks.{0..2}.hook_resid_{pre,mid,post}" in msg and "geomfilter hooks" in msg


def test_bridge_matches_hf_with_padding(tiny_model):
    """Logits and every residual hook equal the plain HF model's (right-padded batch, attention mask)."""
    ids = torch.tensor([[5, 9, 17, 30, 44, 12], [7, 8, 22, 2, 2, 2]])
    att = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        hf = tiny_model.hf_model(ids, attention_mask=att, output_hidden_states=True)
        logits, cache = tiny_model.bridge.run_with_cache(ids, attention_mask=att)
    real = att.bool()
    assert torch.allclose(logits[real], hf.logits[real], atol=1e-4)
    for layer in range(2):  # HF's last hidden state is after the final norm, so compare the others
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_post"][real], hf.hidden_states[layer + 1][real], atol=1e-5)


def test_cli_hooks(tiny_model_dir):
    from geomfilter.cli import app

    r = CliRunner().invoke(app, ["hooks", "--model", str(tiny_model_dir), "--contains", "hook_resid_post"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    r = CliRunner().invoke(app, ["hooks", "--model", "no-such-model-xyz"])
    assert r.exit_code == 2 and "unknown model spec 'no-such-model-xyz'" in r.output
