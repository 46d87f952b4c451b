"""Which images go to which split: held-out splits carved from a labelled set, and the training
subset of ``data.train_fraction``, all stratified by class and seeded."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Carved test splits are drawn with this seed, never the run's: runs of every seed are scored on the
# same images.
TEST_SPLIT_SEED = 0


def carve_splits(
    labels: torch.Tensor, val: float | None, test: float | None, seed: int
) -> dict[str, torch.Tensor]:
    """Indices of 'train' and of the held-out splits asked for, stratified by class.

    ``val`` and ``test`` are fractions of all the images (None: the format has that split). The
    test split is drawn first, with TEST_SPLIT_SEED, so it depends on the data and ``test`` alone;
    validation is drawn from the rest with the run's ``seed``.
    """
    keep, parts = torch.arange(len(labels)), {}
    if test:
        keep, parts["test"] = stratified_split(labels, [1 - test, test], seed=TEST_SPLIT_SEED)
    if val:
        share = min(val * len(labels) / max(len(keep), 1), 1.0)  # of the images left
        rest, held = stratified_split(labels[keep], [1 - share, share], seed=seed)
        keep, parts["val"] = keep[rest], keep[held]
    return {"train": keep, **parts}


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Index sets with the given fractions of every class, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        bounds = torch.tensor([0.0, *fractions]).cumsum(0) * len(members)
        bounds = bounds.round().long().tolist()
        for i in range(len(fractions)):
            parts[i].append(members[bounds[i] : bounds[i + 1]])
    return [torch.cat(p).sort().values for p in parts]


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of about ``fraction`` of every class (data.train_fraction, for data-efficiency
    curves). Each class's images are shuffled by ``seed`` and the first share is kept, so with one
    seed a smaller fraction's subset lies inside a larger one's."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    return stratified_split(labels, [fraction, 1.0 - fraction], seed=seed)[0]
