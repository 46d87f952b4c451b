"""Device-side crop/flip against a reference, mixup/cutmix soft targets, RandAugment, on-device batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vit_rpe.data import CIFAR10DataModule
from vit_rpe.data.synthetic import write_cifar10
from vit_rpe.utils.errors import ConfigError


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_train=100, n_test=20)
    return root


def datamodule(root, **kwargs):
    plain = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), val_size=0.2, download=False, batch_size=16)
    dm = CIFAR10DataModule(root, **{**plain, **kwargs})
    # what the datamodule asks of a trainer
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    dm.trainer = SimpleNamespace(training=True, strategy=strategy, global_rank=0, current_epoch=0)
    return dm


def test_crop_and_flip_match_a_reference(cifar_dir):
    dm = datamodule(cifar_dir, crop_padding=4, hflip=1.0)
    images, labels = next(iter(dm.train_dataloader()))
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(out_labels, labels) and out.shape == images.shape
    padded = F.pad(images.float() / 255, (4, 4, 4, 4)).flip(-1)  # every image flipped (p=1)
    offsets = []
    for i in range(len(images)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(out[i], padded[i, :, dy : dy + 32, dx : dx + 32], atol=1e-6)
        ]
        assert hits, f"image {i} is no 32x32 window of its padded, flipped self"
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # windows are drawn per image
    dm.trainer.training = False  # evaluation: no augmentation at all
    plain, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.allclose(plain, images.float() / 255)


def test_mixup_soft_targets_and_pixels(cifar_dir):
    dm = datamodule(cifar_dir, mixup=0.8)
    images, labels = next(iter(dm.train_dataloader()))
    x = images.float() / 255
    out, targets = dm.on_after_batch_transfer((images, labels), 0)
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(1), torch.ones(16))
    i = next(i for i in range(16) if labels[i] != labels[15 - i])  # paired with a different class
    lam = targets[i, labels[i]].item()  # one weight for the whole batch
    onehot = F.one_hot(labels, 10).float()
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.flip(0), atol=1e-6)
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-5)


def test_cutmix_pastes_boxes_with_the_area_as_weight(cifar_dir):
    dm = datamodule(cifar_dir, cutmix=1.0)
    images, labels = next(iter(dm.train_dataloader()))
    x = images.float() / 255
    out, targets = dm.on_after_batch_transfer((images, labels), 0)
    from_self = (out == x).all(1)  # [B, H, W] pixels kept
    from_partner = (out == x.flip(0)).all(1) & ~from_self
    assert torch.all(from_self | from_partner | (x == x.flip(0)).all(1))
    pasted = (~from_self).float().mean().item()  # one box for the whole batch
    i = next(i for i in range(16) if labels[i] != labels[15 - i])
    assert targets[i, labels[i]].item() == pytest.approx(1 - pasted, abs=0.02)


def test_mixup_takes_odd_batches_and_keeps_the_tail(cifar_dir):
    dm = datamodule(cifar_dir, mixup=1.0, mix_prob=1.0, batch_size=15)  # 80 training images: 15 x 5 + 5
    assert [len(images) for images, _ in dm.train_dataloader()] == [15] * 5 + [5]
    images, labels = next(iter(dm.train_dataloader()))
    x = images.float() / 255
    out, targets = dm.on_after_batch_transfer((images, labels), 0)
    assert targets.shape == (15, 10) and torch.allclose(targets.sum(1), torch.ones(15))
    # the last image of an odd batch keeps its pixels and its one-hot label
    assert torch.equal(out[-1], x[-1]) and torch.equal(targets[-1], F.one_hot(labels[-1], 10).float())
    # the first 14 are mixed as timm mixes an even batch: image i with image 13 - i
    i = next(i for i in range(14) if labels[i] != labels[13 - i])
    lam = targets[i, labels[i]].item()
    assert torch.allclose(out[i], lam * x[i] + (1 - lam) * x[13 - i], atol=1e-5)


def test_randaugment_changes_training_images_only(cifar_dir):
    plain = datamodule(cifar_dir)
    augmented = datamodule(cifar_dir, randaugment="rand-m9-mstd0.5-n2")
    a, la = next(iter(plain.train_dataloader()))
    b, lb = next(iter(augmented.train_dataloader()))
    assert b.dtype == torch.uint8 and b.shape == a.shape and torch.equal(la, lb)
    assert not torch.equal(a, b)
    assert torch.equal(next(iter(plain.val_dataloader()))[0], next(iter(augmented.val_dataloader()))[0])
    with pytest.raises(ConfigError, match="RandAugment"):
        datamodule(cifar_dir, randaugment="nonsense").train_dataloader()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_device_gathers_batches_on_the_gpu(cifar_dir):
    dm = datamodule(cifar_dir, on_device=True, crop_padding=4, hflip=0.5)
    dm.to_device("cuda")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.is_cuda and images.dtype == torch.uint8 and labels.is_cuda
    out, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert out.is_cuda and out.dtype == torch.float32


def test_randaugment_at_the_top_magnitude_posterizes_instead_of_crashing():
    """timm's increasing posterize keeps 0 bits at magnitude 10, which Pillow refuses; the default
    string (rand-m9-mstd0.5-inc1) samples 10 for ~2% of the operations, so a CIFAR epoch meets it."""
    from vit_rpe.data.augment import RandAugmentImages

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    dataset = [(image, 0) for image in images]
    only_posterize = RandAugmentImages(dataset, "rand-n1-m10-p1.0-inc1")  # m10: the top magnitude, no spread
    only_posterize.augment.ops = [op for op in only_posterize.augment.ops if op.name == "PosterizeIncreasing"]
    out = torch.stack([only_posterize[i][0] for i in range(len(dataset))])
    assert torch.equal(out, images & 0b1000_0000)  # one bit kept: the strongest posterize Pillow allows


def test_random_erasing_fills_boxes_with_noise_in_training_batches_only(cifar_dir):
    dm = datamodule(cifar_dir, random_erasing=1.0)  # every image gets a box
    images, labels = next(iter(dm.train_dataloader()))
    x = images.float() / 255
    out, _ = dm.on_after_batch_transfer((images.clone(), labels), 0)
    changed = (out != x).any(1)  # [B, H, W]
    for i in range(len(out)):
        rows, cols = changed[i].nonzero(as_tuple=True)
        assert len(rows) > 0
        box = changed[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.99  # one rectangle, every pixel replaced
    dm.trainer.training = False
    plain, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(plain, x)
    with pytest.raises(ConfigError, match=r"data\.random_erasing=1\.5"):
        datamodule(cifar_dir, random_erasing=1.5)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_repeated_augmentation_deals_each_image_three_times_across_ranks(world):
    from vit_rpe.data.augment import RepeatedAugmentationSampler

    dataset = range(600)
    samplers = [
        RepeatedAugmentationSampler(dataset, seed=7, repeats=3, num_replicas=world, rank=r)
        for r in range(world)
    ]
    for sampler in samplers:
        sampler.set_epoch(4)
    per_rank = [list(s) for s in samplers]
    assert all(
        len(indices) == 512 // world == len(s) for indices, s in zip(per_rank, samplers)
    )  # 600 -> 512 per epoch
    drawn = [i for indices in per_rank for i in indices]
    counts = torch.bincount(torch.tensor(drawn), minlength=600)
    assert counts.max() <= 3 and (counts == 3).sum() >= len(drawn) // 3 - 2  # repeats, not new images
    if world == 3:  # the three copies of an image go to three ranks, at the same position
        assert per_rank[0] == per_rank[1] == per_rank[2]
    again = RepeatedAugmentationSampler(dataset, seed=7, repeats=3, num_replicas=world, rank=0)
    again.set_epoch(4)
    assert list(again) == per_rank[0]  # (seed, epoch) decide the order: a resumed run draws it again
    again.set_epoch(5)
    assert list(again) != per_rank[0]


def test_the_datamodule_uses_the_sampler_with_its_rank(cifar_dir):
    from torch.utils.data import DistributedSampler

    dm = datamodule(cifar_dir, repeated_augmentation=3)
    dm.trainer.world_size = 2
    dm.trainer.global_rank = 1
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler)  # so Lightning does not shard it again under DDP
    assert (sampler.num_replicas, sampler.rank, sampler.repeats) == (2, 1, 3)
    with pytest.raises(ConfigError, match=r"data\.repeated_augmentation=0"):
        datamodule(cifar_dir, repeated_augmentation=0)
