"""A training DataLoader that a checkpoint taken mid-epoch resumes at the next batch.

Lightning 2.6 saves ``state_dict()`` of every training loader that has one (and
``load_state_dict``) in the checkpoint, and hands it back to the resumed run's loader; a loader
without them restarts the interrupted epoch from its first batch (Lightning warns that it is
"not resumable"). Lightning hands the state back only when it builds the loader after restoring
the checkpoint: ImageClassifier.on_train_start covers the case where it is built earlier.

Why not torchdata's ``StatefulDataLoader``, which has the same protocol: it would be one more
dependency for one feature, and its generality (sampler and per-worker dataset states) buys
nothing here, where a map-style dataset with a seeded sampler is resumed by skipping the batches
already yielded. This one is a few lines over torch's own DataLoader, and tests/test_resume.py
checks that it resumes exactly, with workers and under DDP. StatefulDataLoader was not tried.
"""

from __future__ import annotations

from itertools import islice

from torch.utils.data import DataLoader


class SkipFirst:
    """The loader's batch sampler, minus the first ``skip`` batches of a pass. Their indices are
    still drawn, so the rest of the order is unchanged, but no image of theirs is loaded."""

    def __init__(self, batches):
        self.batches = batches
        self.skip = 0

    def __iter__(self):
        return islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is (epoch, batches handed out in it).

    The epoch is the sampler's (``set_epoch``: EpochShuffleSampler, or the DistributedSampler
    Lightning swaps in under DDP), so the order must depend only on it. Iteration starts at the
    first ``next()``, not at ``iter()``: Lightning creates a resumed run's iterator before it sets
    the sampler's epoch, and worker processes would draw the indices at ``iter()`` (the epoch-0
    order under DDP). By the first ``next()`` the epoch is set, and a loaded state applies only if
    it is of that epoch: a checkpoint from the end of epoch ``e`` resumes at batch 0 of ``e + 1``.

    Batches are counted as they are handed out, not as workers prefetch them; ``len()`` stays the
    whole epoch's, as Lightning counts the batches of a resumed epoch from the checkpoint's.
    The constructor is DataLoader's, so Lightning can rebuild it with another sampler.
    """

    _epoch = 0
    _batches = 0
    _resume: dict[str, int] | None = None
    _skip_first: SkipFirst | None = None

    @property
    def _index_sampler(self):  # DataLoader's iterators draw their indices from this object
        if self._skip_first is None:
            self._skip_first = SkipFirst(super()._index_sampler)
        return self._skip_first

    def state_dict(self) -> dict[str, int]:
        if self._resume is not None:  # loaded, not iterated yet: still the same position
            return dict(self._resume)
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self):
        epoch = int(getattr(self.sampler, "epoch", 0))
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self._index_sampler.skip = skip
        self._epoch, self._batches = epoch, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch
