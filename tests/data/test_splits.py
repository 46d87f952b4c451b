"""``data.train_fraction``: a stratified, seeded share of the training split; validation and test
stay as they are."""

from __future__ import annotations

import pytest
import torch

from vit_rpe.data import DigitsDataModule
from vit_rpe.data.splits import stratified_subset
from vit_rpe.utils.errors import ConfigError


def splits(**options) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    data = DigitsDataModule(batch_size=8, **options)
    data.setup()
    return data.splits


def test_train_fraction_keeps_that_share_of_every_class_and_leaves_val_and_test_alone():
    full, part = splits(seed=1), splits(seed=1, train_fraction=0.25)
    full_counts = torch.bincount(full["train"][1], minlength=10)
    part_counts = torch.bincount(part["train"][1], minlength=10)
    expected = (full_counts.double() * 0.25).round().long()
    assert torch.equal(part_counts, expected)
    assert part_counts.sum() < full_counts.sum() / 3
    for name in ("val", "test"):
        assert torch.equal(part[name][0], full[name][0]) and torch.equal(part[name][1], full[name][1])
    # every kept image is one of the full training split's, with its label
    flat = full["train"][0].flatten(1)
    for image, label in zip(part["train"][0][:20], part["train"][1][:20]):
        matches = (flat == image.flatten()).all(1).nonzero().flatten()
        assert len(matches) >= 1 and label in full["train"][1][matches]


def test_train_fraction_is_the_same_subset_for_the_same_seed_and_another_for_another():
    first, again = splits(seed=3, train_fraction=0.3), splits(seed=3, train_fraction=0.3)
    other = splits(seed=4, train_fraction=0.3)
    assert torch.equal(first["train"][0], again["train"][0])
    assert not torch.equal(first["train"][0], other["train"][0])


def test_a_smaller_fraction_lies_inside_a_larger_one_of_the_same_seed():
    labels = torch.arange(200) % 7
    small, large = stratified_subset(labels, 0.2, seed=5), stratified_subset(labels, 0.6, seed=5)
    assert set(small.tolist()) < set(large.tolist())
    assert torch.equal(stratified_subset(labels, 1.0, seed=5), torch.arange(200))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match=r"data.train_fraction=.* is outside \(0, 1\]"):
        DigitsDataModule(train_fraction=fraction)
