"""scripts/sae_feature_agreement.py: which parts of geometry (dictionary, harmful set, proximity field) two SAEs share,
on hand-made decoder directions."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from geomfilter.geometry import feature_proximity, unit_directions
from tests.synthetic import make_cache, planted_decoder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("sae_feature_agreement", ROOT / "scripts" / "sae_feature_agreement.py")
sfa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sfa)

E = np.eye(4, dtype=np.float32)
#: six latents in R^4: the axes and two diagonals
DIRS = unit_directions(np.stack([E[0], E[1], E[2], E[3], E[0] + E[1], E[2] + E[3]]))


def _geometry(directions: np.ndarray, harmful: list[int], on_refs: list[int] | None = None) -> dict:
    on = np.zeros(len(directions), dtype=bool)
    on[on_refs if on_refs is not None else slice(None)] = True
    return {"directions": directions, "harmful": np.array(harmful), "on_references": on,
            "proximity": feature_proximity(directions, harmful)}


def test_a_permuted_copy_shares_everything():
    a = _geometry(DIRS, [0, 4])
    perm = np.array([5, 3, 1, 0, 2, 4])  # b's latent i is a's latent perm[i]
    b = _geometry(DIRS[perm], [int(np.flatnonzero(perm == 0)[0]), int(np.flatnonzero(perm == 4)[0])])
    r = sfa.agreement(a, b)
    assert r["on_references"] == 6
    assert r["dictionary_learned"] == 1.0 and r["dictionary_median_cos"] == pytest.approx(1.0)
    assert r["harmful_learned"] == 1.0 and r["harmful_selected"] == 1.0
    assert r["proximity_spearman"] == pytest.approx(1.0)
    # the harmful directions e0 and d01 span the e0-e1 plane: 2 of 4 dimensions
    assert r["harmful_span_overlap"] == pytest.approx(1.0) and r["harmful_span_chance"] == 0.5


def test_same_dictionary_other_harmful_set():
    a, b = _geometry(DIRS, [0]), _geometry(DIRS, [2])  # b learned latent 0 but selected latent 2
    r = sfa.agreement(a, b)
    assert r["harmful_learned"] == 1.0 and r["harmful_selected"] == 0.0
    assert r["harmful_median_cos_selected"] == pytest.approx(0.0)
    assert r["harmful_span_overlap"] == pytest.approx(0.0) and r["harmful_span_chance"] == 0.25
    # latent 0's proximity is NaN in a (a lone harmful latent), latent 2's in b: the other four are compared.
    # proximity to e0 in a: e1 0, e2 0, e3 0, d01 0.71, d23 0; to e2 in b: e1 0, e3 0, d01 0, d23 0.71, e0 0
    assert r["proximity_n"] == 4
    assert r["proximity_spearman"] == pytest.approx(-1 / 3)


def test_a_latent_b_did_not_learn():
    # b has e0 turned 60 degrees towards e1 instead of e0: cosine 0.5 < 0.7
    turned = np.cos(np.pi / 3) * E[0] + np.sin(np.pi / 3) * E[1]
    b_dirs = DIRS.copy()
    b_dirs[0] = turned
    a, b = _geometry(DIRS, [0], on_refs=[0, 2, 3]), _geometry(b_dirs, [0])
    r = sfa.agreement(a, b, match=0.9)
    assert r["on_references"] == 3  # only the latents on the references count
    assert r["harmful_learned"] == 0.0 and r["harmful_selected"] == 0.0
    assert r["dictionary_learned"] == pytest.approx(2 / 3)  # e2 and e3, not e0
    assert r["harmful_median_cos_selected"] == pytest.approx(0.5)
    # at 0.7, e0's closest latent in b, the diagonal d01 (cos 0.71), counts as learned; b's harmful latent does not
    r = sfa.agreement(a, b)
    assert r["dictionary_learned"] == 1.0 and r["harmful_learned"] == 1.0 and r["harmful_selected"] == 0.0


def test_reference_fits_on_the_whole_references_and_on_two_disjoint_halves():
    w, harmful_ids, planted, _ = planted_decoder(d_sae=64)
    rng = np.random.default_rng(0)
    n = 40  # pairs

    def refs(side_harmful: bool):
        dense = rng.uniform(0, 0.2, size=(n, 64)).astype(np.float32) * (rng.uniform(size=(n, 64)) < 0.3)
        if side_harmful:
            dense[:, harmful_ids] += 1.0
        meta = [{"pair_id": f"p{i}"} for i in range(n)]
        return make_cache(dense, meta=meta, name="harmful" if side_harmful else "benign")

    harmful, benign = refs(True), refs(False)
    fits = sfa.reference_fits(w, harmful, benign, halves=True, n_harmful=3)
    assert set(fits) == {"all", "half 0", "half 1"}
    assert fits["all"]["n_rows"] == (40, 40)
    # the halves split the pairs: together every row once
    assert fits["half 0"]["n_rows"][0] + fits["half 1"]["n_rows"][0] == 40
    assert fits["half 0"]["n_rows"] == (20, 20) and fits["half 1"]["n_rows"] == (20, 20)
    for fit in fits.values():  # a planted signal this strong is found by every fit
        assert sorted(fit["harmful"].tolist()) == harmful_ids
        assert fit["proximity"][planted] == pytest.approx(0.95, abs=1e-3)
    r = sfa.agreement(fits["half 0"], fits["half 1"])
    assert r["harmful_selected"] == 1.0 and r["proximity_spearman"] == pytest.approx(1.0)
    assert sfa.reference_fits(w, harmful, benign, n_harmful=3).keys() == {"all"}


def test_span_overlap_reads_a_subspace_sliced_differently():
    # a's two harmful directions are the axes e0, e1; b's are the diagonals of the same plane: no latent matches
    # (cos 0.71 < 0.9), yet all of a's harmful directions lie in b's span
    a = _geometry(DIRS, [0, 1])
    b_dirs = unit_directions(np.stack([E[0] + E[1], E[0] - E[1], E[2], E[3], E[2] + E[3], E[2] - E[3]]))
    b = _geometry(b_dirs, [0, 1])
    r = sfa.agreement(a, b, match=0.9)
    assert r["harmful_selected"] == 0.0
    assert r["harmful_span_overlap"] == pytest.approx(1.0)
    # a half-overlapping span: e0 inside, e2 orthogonal to the diagonal plane
    assert sfa.span_overlap(DIRS[[0, 2]], b_dirs[[0, 1]]) == pytest.approx((0.5, 0.5))


def test_proximity_field_follows_the_latents_that_fire_on_harm():
    # harmful set e0, e1; the diagonal d01 lies in their plane; latents e2, e3, d23 are orthogonal to it. The latents
    # that fire more on harmful references are those near the plane: the harm signal's order
    a = _geometry(DIRS, [0, 1])
    a["harm_minus_benign"] = np.array([0.9, 0.8, -0.3, -0.2, 0.5, -0.4])
    field = sfa.proximity_field(a)
    assert set(field) == {"max", "mean", "span"}
    # span proximity: e0 / e1 against the other's span 0, e2 and e3 0, d01 1, d23 0
    assert field["span"]["median"] == pytest.approx(0.0)
    assert field["span"]["q90"] == pytest.approx(0.5)  # numpy's linear quantile of [0, 0, 0, 0, 0, 1]
    # max proximity: e0 0, e1 0, e2 0, e3 0, d01 0.71, d23 0 - the same order, so the same correlation
    assert field["max"]["spearman_harm_minus_benign"] == pytest.approx(field["span"]["spearman_harm_minus_benign"])
    assert field["max"]["spearman_harm_minus_benign"] > 0
