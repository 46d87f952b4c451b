"""ResumableDataLoader: stopped after k batches and restored, it hands out the rest of the epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from vit_rpe.data.base import EpochShuffleSampler, TensorImageDataset, collate_gathered
from vit_rpe.data.resumable import ResumableDataLoader

N, BATCH = 40, 4  # 10 batches an epoch (5 per rank with 2 ranks)


class CountingDataset(TensorImageDataset):
    """Remembers every index it was asked for, to show that skipped batches are not loaded."""

    def __init__(self):
        super().__init__(torch.arange(N, dtype=torch.uint8).view(N, 1, 1, 1), torch.arange(N))
        self.loaded: list[int] = []

    def __getitems__(self, indices):
        self.loaded.extend(indices)
        return super().__getitems__(indices)


def make_loader(dataset, workers: int, rank: int | None) -> ResumableDataLoader:
    if rank is None:
        sampler = EpochShuffleSampler(dataset, seed=7)
    else:  # what Lightning swaps in under DDP
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=7)
    return ResumableDataLoader(
        dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, collate_fn=collate_gathered
    )


def labels(batches) -> list[list[int]]:
    return [batch[1].tolist() for batch in batches]


def epoch(loader, number: int) -> list[list[int]]:
    loader.sampler.set_epoch(number)
    return labels(loader)


@pytest.mark.parametrize("rank", [None, 0, 1], ids=["one-process", "rank0", "rank1"])
@pytest.mark.parametrize("workers", [0, 1])
def test_restored_loader_hands_out_the_rest_of_the_epoch(workers, rank):
    first = make_loader(CountingDataset(), workers, rank)
    expected = epoch(first, 3)
    taken = []
    first.sampler.set_epoch(3)
    iterator = iter(first)
    for _ in range(2):
        taken.append(next(iterator)[1].tolist())
    assert taken == expected[:2]
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 2}  # handed out, not prefetched by the worker

    dataset = CountingDataset()
    resumed = make_loader(dataset, workers, rank)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # saved again before it moved: the same position
    # As Lightning does on resume: the iterator is made before the sampler's epoch is set.
    iterator = iter(resumed)
    resumed.sampler.set_epoch(3)
    assert labels(iterator) == expected[2:]
    assert len(resumed) == len(expected)  # Lightning counts the epoch's batches from the start
    if workers == 0:  # a worker loads from its own copy of the dataset
        assert {i for batch in expected[:2] for i in batch}.isdisjoint(dataset.loaded)
    assert resumed.state_dict() == {"epoch": 3, "batches": len(expected)}
    assert epoch(resumed, 4) == epoch(first, 4)  # the next epoch is whole


def test_state_of_an_earlier_epoch_is_not_applied():
    """A checkpoint from the end of epoch 3 (3 batches, trainer.limit_train_batches) resumes at
    epoch 4, which starts at its first batch."""
    loader = make_loader(CountingDataset(), 0, None)
    expected = epoch(loader, 4)
    loader.load_state_dict({"epoch": 3, "batches": 3})
    assert epoch(loader, 4) == expected
