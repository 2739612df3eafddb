"""``ensemble``: the mean of several strategies' scores, each put on its own references' scale.

Scores of different strategies live on different scales (a summed SAE activation, a cosine difference), so they are
not averaged raw. Each member is cross-fitted on the references: split by ``pair_id`` into two halves, fitted on one,
scored on the other (both ways), so that no reference is scored by a member that saw it (``representation`` would
otherwise find each reference as its own nearest anchor). The member's score of a row ``s`` becomes
``(s - b) / (h - b)``, with ``b`` and ``h`` the mean out-of-fold score of the benign and of the harmful references:
0 where benign answers typically score, 1 where harmful ones do. The ensemble score is the mean over the members,
each member then fitted on all the references.

The default members pair a reading of SAE features (``activation``: how much the harmful features fire) with one of
the residual stream (``representation``: nearest harmful minus nearest benign references); out of distribution
they fail on different splits (README, "Geometry and filtering").
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..cache import ActivationCache
from ..features import split_by_pair
from ..samples import Sample
from .base import STRATEGIES, FilterOptionError, OptionChecks, SampleFilter, make_filter
from .sae_features import HARMFUL_SET_CHECKS

#: strategies an ensemble can hold: those that read the caches only (no text, gradients, seed or own answers needed)
MEMBERS = ("activation", "geometry", "projection", "representation")
#: the default pair: SAE features and the residual stream (they fail on different out-of-distribution splits)
DEFAULT_MEMBERS = ("activation", "representation")


class MemberScaleError(FilterOptionError):
    """An ensemble member that does not score held-out harmful references above benign ones: the references give it
    no scale, so the ensemble cannot be fitted on them with that member."""


def _members_ok(v: Any) -> bool:
    return (isinstance(v, (tuple, list)) and len(v) >= 1 and len(set(v)) == len(v)
            and all(m in MEMBERS for m in v))


class EnsembleFilter(SampleFilter):
    """Mean of the ``members``' scores, each scaled so that its out-of-fold benign references average 0 and its
    harmful references 1 (cross-fitted on two halves of the reference pairs)."""

    strategy = "ensemble"
    requires_sae = True  # it takes an SAE for its members; whether it reads one depends on them (reads_sae)
    option_checks: ClassVar[OptionChecks] = {
        "members": (_members_ok, f"must be distinct strategies among {', '.join(MEMBERS)}"),
        **{k: HARMFUL_SET_CHECKS[k] for k in ("n_harmful", "harmful_ids")}}

    def __init__(self, sae: Any = None, *, members: tuple[str, ...] = DEFAULT_MEMBERS,
                 n_harmful: int = 100, harmful_ids: list[int] | None = None, drop: float | None = 0.1,
                 threshold: float | None = None):
        self.sae = sae
        self.members = members
        self.n_harmful = n_harmful
        self.harmful_ids = harmful_ids
        self.drop = drop
        self.threshold = threshold

    @classmethod
    def reads_sae(cls, params: Mapping[str, Any] | None = None) -> bool:
        """Whether a member reads SAE latents (``projection`` and ``representation`` read the residual only)."""
        members = (params or {}).get("members", DEFAULT_MEMBERS)
        return any(STRATEGIES[m].requires_sae for m in members if m in STRATEGIES)

    def _member(self, name: str) -> SampleFilter:
        """A member with its defaults, ``n_harmful`` and ``harmful_ids`` passed to those with a harmful feature set."""
        shared = {"n_harmful": self.n_harmful, "harmful_ids": self.harmful_ids}
        params = {k: v for k, v in shared.items() if k in STRATEGIES[name].param_names()}
        return make_filter(name, sae=self.sae, drop=self.drop, threshold=self.threshold, **params)

    def _fit(self, harmful: ActivationCache | None, benign: ActivationCache | None) -> None:
        """Cross-fit each member on two halves of the reference pairs to find its scale, then fit it on all."""
        if harmful is None or benign is None:
            raise FilterOptionError("ensemble needs the harmful and the benign reference caches")
        halves = [(split_by_pair(harmful), split_by_pair(benign))]
        halves.append((~halves[0][0], ~halves[0][1]))
        if any(not h.any() or not b.any() for h, b in halves):
            raise FilterOptionError("ensemble needs at least two reference pairs on each side to cross-fit its "
                                    "members (pair_id shared by a harmful and a benign answer)")
        self.members_, self.offset_, self.scale_ = [], [], []
        for name in self.members:
            h, b = self._out_of_fold_means(name, harmful, benign, halves)
            if not h > b:
                raise MemberScaleError(f"ensemble member {name!r} does not score held-out harmful references above "
                                        f"benign ones (means {h:.4g} vs {b:.4g}), so it has no scale to put its "
                                        "scores on; leave it out of --members")
            self.members_.append(self._member(name).fit(harmful, benign))
            self.offset_.append(b)
            self.scale_.append(h - b)
        sets = [m.features_ for m in self.members_ if hasattr(m, "features_")]
        if sets:  # the harmful feature set of the first SAE member, for report.json and the plots
            self.features_ = sets[0]

    def _out_of_fold_means(self, name: str, harmful: ActivationCache, benign: ActivationCache,
                           halves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
        """The mean score of the harmful and of the benign references, each scored by member ``name`` fitted on the
        other half of the pairs."""
        out: dict[str, list[np.ndarray]] = {"harmful": [], "benign": []}
        for (h_fit, b_fit), (h_out, b_out) in ((halves[0], halves[1]), (halves[1], halves[0])):
            m = self._member(name).fit(harmful.select(h_fit), benign.select(b_fit))
            out["harmful"].append(m.score_samples(harmful.select(h_out)))
            out["benign"].append(m.score_samples(benign.select(b_out)))
        h, b = (float(np.mean(np.concatenate(out[k]))) for k in ("harmful", "benign"))
        return h, b

    def member_scores(self, cache: ActivationCache) -> np.ndarray:
        """``[n_rows, n_members]``: each member's scaled score (0: benign references' mean, 1: harmful's)."""
        self._check_fitted()
        return np.stack([(m.score_samples(cache) - o) / s
                         for m, o, s in zip(self.members_, self.offset_, self.scale_)], axis=1)

    def score_samples(self, cache: ActivationCache, own: ActivationCache | None = None,
                      samples: list[Sample] | None = None) -> np.ndarray:
        """The mean of the members' scaled scores. ``own`` is refused: the members' scales are those of plain scores,
        not of differences from the model's own answer."""
        _refuse_own(own)
        return self.member_scores(cache).mean(axis=1)

    def explain(self, cache: ActivationCache, rows: np.ndarray, n: int = 3, own: ActivationCache | None = None,
                samples: list[Sample] | None = None) -> list[list[dict]]:
        """Per row: each member's scaled score, highest first (up to ``n``)."""
        return self._explain_scores(self.member_scores(cache)[np.asarray(rows, dtype=int)], n)

    def _scored_and_explained(self, cache: ActivationCache, own: ActivationCache | None,
                              samples: list[Sample] | None, n: int) -> tuple[np.ndarray, list[list[dict]] | None]:
        _refuse_own(own)
        z = self.member_scores(cache)  # once for both
        return self._checked(z.mean(axis=1), cache), (self._explain_scores(z, n) if n else None)

    def _explain_scores(self, z: np.ndarray, n: int) -> list[list[dict]]:
        return [[{"member": self.members[k], "scaled_score": round(float(zr[k]), 4)}
                 for k in np.argsort(-zr, kind="stable")[:n]] for zr in z]


def _refuse_own(own: ActivationCache | None) -> None:
    """The members' scales are those of plain scores, not of differences from the model's own answer."""
    if own is not None:
        raise FilterOptionError("ensemble does not score relative to the model's own answers (--own): its members' "
                                "scales are fitted on plain scores; leave --own out, or use geometry, activation or "
                                "projection with --own")
