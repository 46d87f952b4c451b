"""Data-parallel training (``trainer=ddp_sim``: 2 CPU processes over gloo).

- It equals one process: with a global batch split across 2 ranks, DistributedSampler hands the
  ranks the same examples a single process with twice the batch size sees (same seed, same epoch
  order), and DDP averages the gradients, so without per-rank randomness (no drop path, no
  augmentation) the two runs take the same steps up to float summation order. Validation is
  sharded the same way and the accuracy metric is synced across ranks.
- The quickstart, as a user runs it, trains and tests with every rank running the same collectives.
- A backbone frozen for the whole run or its first epochs stays frozen, and the ranks agree.

The first test runs ddp_sim as users do, spawning its processes (the trainer pickled, the results
sent back); the others fork them (FORKED_DDP: the same strategy and collectives, without 12 s of
imports in each new process).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from omegaconf import open_dict

from tests.conftest import FAST, compose_config
from tests.helpers import FORKED_DDP
from vit_rpe.train import train

# The tiny FAST settings, but 2 epochs x 4 steps, no drop path, and a quicker start.
REPLACED = ("trainer=", "trainer.max_epochs", "trainer.limit_train_batches")
COMMON = (
    *(o for o in FAST if not o.startswith(REPLACED)),
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "test=false",  # each ddp_spawn stage starts 2 processes: one (fit) keeps the test quick
    "model.net.drop_path_rate=0.0",
    "model.optimizer.lr=3e-3",
    "model.scheduler.warmup_epochs=0",
    "model.label_smoothing=0",
    # cls pooling skips the last block's mask (VisionTransformer.forward_features): DDP must still
    # see a gradient for every parameter, or it stops with "parameters that were not used".
    "rpe=exp",
)
GLOBAL_BATCH = 32


def test_ddp_sim_matches_one_process(tmp_path):
    single = train(
        compose_config(
            "train",
            [
                "trainer=cpu",
                f"data.batch_size={GLOBAL_BATCH}",
                f"+data.eval_batch_size={GLOBAL_BATCH}",
                *COMMON,
            ],
            tmp_path / "single",
        )
    )
    ddp_dir = tmp_path / "ddp"
    half = GLOBAL_BATCH // 2  # data.batch_size is per device
    ddp = train(
        compose_config(
            "train",
            ["trainer=ddp_sim", f"data.batch_size={half}", f"+data.eval_batch_size={half}", *COMMON],
            ddp_dir,
        )
    )
    # Measured: val/loss equal to the last digit, train/loss 1e-7 apart (summation order).
    assert ddp["val/acc"] == pytest.approx(single["val/acc"], abs=1 / 64)  # at most one image apart
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
    assert ddp["train/loss"] == pytest.approx(single["train/loss"], rel=1e-4)
    # One run directory, written once, with one metrics.json and the run's checkpoints.
    written = json.loads((ddp_dir / "metrics.json").read_text())
    assert written["val/acc"] == ddp["val/acc"]
    # The run summary comes back from the worker processes (it used to read epochs 0, no speed).
    assert written["epochs"] == single["epochs"] == 2
    assert written["seconds_per_epoch"] > 0 and written["train_images_per_sec"] > 0
    assert not any(key.startswith("run/") for key in written)
    assert (ddp_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["ddp", "single"]


COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter",
)


def describe(value) -> object:
    """What a collective's argument must agree on across ranks: dtype and shape of tensors."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    return type(value).__name__


class CollectiveLog(L.Callback):
    """Records every torch.distributed collective of this process, from setup to teardown, into
    ``<dirpath>/<stage>-rank<r>.json``: each call's name and its tensors' dtypes and shapes.

    gloo notices some mismatches (a size that differs) and aborts, but not all (two tensors of
    the same size in bytes, a barrier met by a broadcast): comparing the ranks' logs notices any.
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.calls: list = []
        self.originals = {name: getattr(dist, name) for name in COLLECTIVES}
        for name, original in self.originals.items():
            setattr(dist, name, self.recording(name, original))

    def recording(self, name: str, original):
        @functools.wraps(original)
        def collective(*args, **kwargs):
            self.calls.append([name, describe([a for a in args if not isinstance(a, int)])])
            return original(*args, **kwargs)

        return collective

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for name, original in self.originals.items():
            setattr(dist, name, original)
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        path = Path(self.dirpath) / f"{stage}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.calls))


def test_quickstart_under_ddp_sim_with_the_default_callbacks(tmp_path):
    """``experiment=quickstart trainer=ddp_sim`` as a user runs it (its processes forked), at a tiny
    model size: the real digits splits (1,258 training images: 629 per rank, the last batch of 21;
    a test split of 269 that the sampler pads to 135 per rank), the resumable loader, a sanity
    check, every default callback and early stopping. The rich progress bar reduces the epoch's
    metrics on rank 0 alone (a collective) at the end of each training epoch, where last.ckpt is
    saved (collectives too).

    Every collective must agree in order, dtype and shape on both ranks; the run trains, tests
    and writes metrics.json with its epochs and times."""
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "train",
        [
            "experiment=quickstart",
            *FORKED_DDP,
            "callbacks=early_stopping",  # the default callbacks and early stopping (a reduction)
            "trainer.max_epochs=2",
            # tiny, and quick to learn: 4 patches of 4x4 pixels
            "model.net.patch_size=4",
            "model.optimizer.lr=5e-3",
            "model.scheduler.warmup_epochs=0",
            "model.net.embed_dim=32",
            "model.net.depth=1",
            "model.net.num_heads=2",
        ],
        run_dir,
    )
    with open_dict(cfg):
        cfg.callbacks.collectives = {"_target_": f"{__name__}.CollectiveLog", "dirpath": str(tmp_path)}
    metrics = train(cfg)

    for stage in ("fit", "test"):
        ranks = [json.loads((tmp_path / f"{stage}-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] == ranks[1], f"{stage}: the ranks ran different collectives"
        assert any(name == "all_gather" for name, _ in ranks[0])  # torchmetrics' syncs were seen
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["epochs"] == 2 and written["seconds_per_epoch"] > 0 and written["train_images_per_sec"] > 0
    assert written["test/acc"] == metrics["test/acc"] > 0.5  # learnt (chance: 0.1)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]


class WeightSnapshots(L.Callback):
    """Each rank saves the backbone's weights when training starts and after every epoch."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def save(self, trainer, pl_module, tag: str) -> None:
        weights = {name: p.detach().clone() for name, p in pl_module.net.named_parameters()}
        torch.save(weights, Path(self.dirpath) / f"{tag}-rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, f"epoch{trainer.current_epoch}")


@pytest.mark.parametrize(
    "finetune, frozen_epochs",
    [
        pytest.param(["model.finetune.mode=linear_probe"], (0, 1), id="linear_probe"),
        pytest.param(["model.finetune.freeze_backbone_epochs=1"], (0,), id="freeze_backbone_epochs"),
    ],
)
def test_frozen_backbone_under_ddp_sim(tmp_path, finetune, frozen_epochs):
    """A backbone frozen after DDP wrapped the model: DDP's reducer waits for a gradient of every
    parameter it was built with. While frozen, the backbone stays exactly as it was and the head
    learns; unfrozen, every parameter trains; and the two ranks' replicas stay equal throughout."""
    overrides = [
        *FORKED_DDP,
        *(o for o in FAST if not o.startswith(REPLACED)),
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "test=false",
        *finetune,
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    with open_dict(cfg):
        cfg.callbacks.snapshots = {"_target_": f"{__name__}.WeightSnapshots", "dirpath": str(tmp_path)}
    train(cfg)

    def weights(tag: str) -> dict[str, torch.Tensor]:
        ranks = [torch.load(tmp_path / f"{tag}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        for name, value in ranks[0].items():
            torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0, msg=f"{tag}: {name} differs")
        return ranks[0]

    before = weights("start")
    head = {name for name in before if name.startswith("head.")}
    assert head and len(head) < len(before)
    for epoch in (0, 1):
        after = weights(f"epoch{epoch}")
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        assert head <= changed, f"epoch {epoch}: the head did not learn"
        if epoch in frozen_epochs:
            assert changed == head, f"epoch {epoch}: the frozen backbone changed ({sorted(changed - head)})"
        else:
            assert changed == set(before), f"epoch {epoch}: not trained: {sorted(set(before) - changed)}"
        before = after


class SamplerLog(L.Callback):
    """Each rank writes the training sampler's type, its rank and world, and the epoch's indices."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        record = {
            "type": type(sampler).__name__,
            "ranks": [sampler.rank, sampler.num_replicas],
            "indices": list(sampler),
        }
        (Path(self.dirpath) / f"sampler-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_the_cifar_recipe_under_ddp_sim_deals_repeated_augmentation_to_the_ranks(tmp_path):
    """data=cifar10's recipe (random erasing, mixup/cutmix, repeated augmentation x3) plus EMA and an
    odd batch under 2 processes: Lightning keeps our sampler (it is a DistributedSampler) and each
    rank gets its share of every image's three copies."""
    from vit_rpe.data.synthetic import write_cifar10

    write_cifar10(tmp_path / "cifar", n_train=300, n_test=20)
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "train",
        [
            *COMMON,
            "data=cifar10",
            f"data.data_dir={tmp_path}/cifar",
            "data.val_size=0.2",
            "data.randaugment=null",
            "data.batch_size=7",
            *FORKED_DDP,
            "model.ema_decay=0.9",
            "model.net.patch_size=8",
        ],
        run_dir,
    )
    with open_dict(cfg):
        cfg.callbacks.sampler_log = {"_target_": f"{__name__}.SamplerLog", "dirpath": str(tmp_path)}
    metrics = train(cfg)
    ranks = [json.loads((tmp_path / f"sampler-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["type"] for r in ranks] == ["RepeatedAugmentationSampler"] * 2  # not wrapped again
    assert [r["ranks"] for r in ranks] == [[0, 2], [1, 2]]
    drawn = ranks[0]["indices"] + ranks[1]["indices"]
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 120  # 240 images: half each
    counts = torch.bincount(torch.tensor(drawn))
    assert counts.max() == 3 and set(ranks[0]["indices"]) & set(ranks[1]["indices"])  # copies on both
    assert "val/acc_ema" in metrics and metrics["epochs"] == 2
