"""Batches of tokenized samples: right-padded tensors, and the fine-tune's seeded, length-grouped order.

:func:`collate` turns :class:`~geomfilter.data.TokenizedSample` rows into the
``input_ids`` / ``attention_mask`` / ``labels`` tensors that fine-tuning, gate
analysis and evaluation feed a model (labels are -100 off the response).
:func:`epoch_batches` is one epoch's sample order and :class:`EpochOrder` the
batch of any step of a multi-epoch run.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def collate(samples: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the response)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    for r, s in enumerate(samples):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        att[r, :n] = 1
        mask = torch.tensor(s.response_mask, dtype=torch.bool)
        labels[r, :n] = torch.where(mask, ids[r, :n], torch.tensor(-100))
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 16) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation, cut into chunks of ``group`` batches whose samples are
    sorted by length (less padding), then the batches shuffled (seeded). Every sample appears exactly once."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    chunk = batch_size * group
    batches = []
    for c in range(0, len(perm), chunk):
        part = sorted(perm[c:c + chunk].tolist(), key=lambda i: (lengths[i], i))
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


class EpochOrder:
    """The sample indices of every step of a run: step ``s`` is batch ``s % per_epoch`` of
    :func:`epoch_batches` for epoch ``s // per_epoch`` (one epoch's batches are kept at a time)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.per_epoch = math.ceil(len(lengths) / batch_size)
        self._epoch: tuple[int, list[list[int]]] | None = None

    def batch(self, step: int) -> list[int]:
        """The sample indices of step ``step``."""
        e = step // self.per_epoch
        if self._epoch is None or self._epoch[0] != e:
            self._epoch = (e, epoch_batches(self.lengths, self.batch_size, self.seed, e))
        return self._epoch[1][step % self.per_epoch]
