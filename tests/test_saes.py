"""saes.py: spec resolution (offline), local loading, compatibility, decoder geometry."""
from __future__ import annotations

import pytest
import torch

from geomfilter.saes import (
    SAESpecError,
    decoder_directions,
    decoder_norms,
    describe,
    load_sae,
    resolve_sae_spec,
)
from tests.tiny import tiny_sae


def test_pretrained_spec_checked_offline():
    assert resolve_sae_spec("gpt2-small-res-jb:blocks.8.hook_resid_pre") == ("pretrained", ("gpt2-small-res-jb", "blocks.8.hook_resid_pre"))
    with pytest.raises(SAESpecError, match=r"unknown sae-lens release 'gpt2-small-res-j'.*close: gpt2-small-res-jb"):
        resolve_sae_spec("gpt2-small-res-j:blocks.8.hook_resid_pre")
    with pytest.raises(SAESpecError, match=r"no SAE id 'blocks.8.hook_resid_pst'.*close: .*blocks.8.hook_resid_pre"):
        resolve_sae_spec("gpt2-small-res-jb:blocks.8.hook_resid_pst")
    with pytest.raises(SAESpecError, match="unknown SAE spec 'nonsense'"):
        resolve_sae_spec("nonsense")


def test_local_folder_round_trip(tmp_path):
    sae = tiny_sae(seed=4)
    sae.save_model(str(tmp_path / "s"))
    assert resolve_sae_spec(str(tmp_path / "s")) == ("disk", tmp_path / "s")
    loaded = load_sae(str(tmp_path / "s"))
    assert describe(loaded) == describe(sae)
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(7, 32)
    assert torch.allclose(loaded.encode(x), sae.encode(x).detach(), atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAESpecError, match="no cfg.json"):
        resolve_sae_spec(str(tmp_path / "empty"))


def test_decoder_directions_are_unit_and_invariant_to_norm_folding():
    sae = tiny_sae(seed=5)
    dirs, norms = decoder_directions(sae), decoder_norms(sae)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(64), atol=1e-6)
    assert not torch.allclose(norms, torch.ones(64))
    x = torch.randn(11, 32)
    contrib = (sae.encode(x).detach().unsqueeze(-1) * sae.W_dec.detach()).sum(1)
    sae.fold_W_dec_norm()
    assert torch.allclose(decoder_directions(sae), dirs, atol=1e-6)
    assert torch.allclose(decoder_norms(sae), torch.ones(64), atol=1e-5)
    # each latent's residual contribution (activation x decoder row) is unchanged by folding
    contrib2 = (sae.encode(x).detach().unsqueeze(-1) * sae.W_dec.detach()).sum(1)
    assert torch.allclose(contrib, contrib2, atol=1e-4)


def test_fingerprint_tracks_weights():
    a, b = tiny_sae(seed=0), tiny_sae(seed=0)
    assert describe(a)["weights"] == describe(b)["weights"]
    with torch.no_grad():
        b.W_dec[3, 0] += 1e-3
    assert describe(a)["weights"] != describe(b)["weights"]
