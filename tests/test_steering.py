"""Harmful-feature ablation / steering at inference (geomfilter.gating.FeatureSteering), on the tiny model and SAE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomfilter.gating import FeatureSteering, GatingError, load_gates
from tests.tiny import tiny_sae

HOOK = "blocks.1.hook_resid_post"


def test_edit_removes_exactly_the_features_decoded_contribution():
    sae = tiny_sae(seed=3)
    ids = [1, 5, 9, 40]
    s = FeatureSteering(sae, "tiny", ids)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0)) * 3
    a = sae.encode(x)
    want = x - a[..., ids] @ sae.W_dec[ids]
    torch.testing.assert_close(s.edit(x), want, rtol=1e-5, atol=1e-5)
    s.alpha = 2.0  # steering against: twice the contribution removed
    torch.testing.assert_close(s.edit(x), x - 2 * (a[..., ids] @ sae.W_dec[ids]), rtol=1e-5, atol=1e-5)
    s.alpha = 0.0
    assert torch.equal(s.edit(x), x)
    # features that do not fire are not touched: a token where none of them fires is unchanged
    s.alpha = 1.0
    quiet = (a[..., ids] == 0).all(-1)
    if quiet.any():
        torch.testing.assert_close(s.edit(x)[quiet], x[quiet])
    with pytest.raises(GatingError, match="outside"):
        FeatureSteering(sae, "tiny", [64])


def test_attached_steering_changes_the_model_alpha_zero_is_identical_and_saves(tiny_model_dir, tmp_path):
    from geomfilter.finetune import load_tuned

    sae = tiny_sae(seed=3)
    sae_dir = tmp_path / "sae"
    sae.save_model(str(sae_dir))
    tm = load_tuned(str(tiny_model_dir))
    ids = torch.tensor([[5, 9, 12, 20, 31, 40, 7]])
    with torch.no_grad():
        plain = tm.hf_model(ids).logits
    s = FeatureSteering(sae, str(sae_dir), list(range(0, 64, 3)))
    with s.attach(tm.hf_model, alpha=1.0), torch.no_grad():
        ablated = tm.hf_model(ids).logits
    assert not torch.allclose(ablated, plain)
    with s.attach(tm.hf_model, alpha=0.0), torch.no_grad():
        assert torch.equal(tm.hf_model(ids).logits, plain)
    with torch.no_grad():
        assert torch.equal(tm.hf_model(ids).logits, plain)  # detached: the model is back
    s.save(tmp_path / "steer")
    cfg = json.loads((tmp_path / "steer" / "gates.json").read_text())
    assert cfg["family"] == "sae-steer" and cfg["features"] == list(range(0, 64, 3))
    back = load_gates(tmp_path / "steer")
    assert isinstance(back, FeatureSteering) and back.features.tolist() == list(range(0, 64, 3))
    tm2 = load_tuned(str(tiny_model_dir), gates=tmp_path / "steer", gate_scale=1.0)
    with torch.no_grad():
        np.testing.assert_allclose(tm2.hf_model(ids).logits.numpy(), ablated.numpy(), rtol=1e-5, atol=1e-5)
