"""CIFAR-100 (fine and coarse labels) and SVHN (.mat files, 10 -> 0, extra) in their published formats."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request

import numpy as np
import pytest
import torch
from scipy.io import loadmat

from vit_rpe.data import CIFAR100DataModule, SVHNDataModule
from vit_rpe.data import svhn as svhn_module
from vit_rpe.data.synthetic import write_cifar100, write_svhn
from vit_rpe.utils.errors import DataError


def test_cifar100_fine_labels_pixels_and_names(tmp_path):
    write_cifar100(tmp_path, n_train=200, n_test=100)
    dm = CIFAR100DataModule(tmp_path, val_size=0.5, download=False)
    dm.setup()
    with open(tmp_path / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    test_x, test_y = dm.splits["test"]
    assert torch.equal(test_x, torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)))
    assert test_y.tolist() == raw[b"fine_labels"]
    assert len(dm.splits["train"][1]) == len(dm.splits["val"][1]) == 100
    assert torch.bincount(dm.splits["val"][1], minlength=100).tolist() == [1] * 100  # stratified
    assert dm.num_classes == 100 and dm.class_names[:2] == ["fine00", "fine01"]


def test_cifar100_coarse_labels_are_the_20_superclasses(tmp_path):
    write_cifar100(tmp_path, n_train=200, n_test=100)
    fine = CIFAR100DataModule(tmp_path, val_size=0.5, download=False)
    coarse = CIFAR100DataModule(tmp_path, val_size=0.5, download=False, labels="coarse")
    fine.setup()
    coarse.setup()
    assert coarse.num_classes == 20 and coarse.class_names[-1] == "coarse19"
    assert torch.equal(coarse.splits["test"][1], fine.splits["test"][1] // 5)  # the writer's superclass rule
    assert torch.equal(coarse.splits["test"][0], fine.splits["test"][0])
    with pytest.raises(DataError, match=r"'fine'.*'coarse'"):
        CIFAR100DataModule(tmp_path, labels="medium")


def test_cifar100_download_verifies_the_publishers_checksum(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_cifar100(source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    payload = buffer.getvalue()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    with pytest.raises(DataError, match="checksum mismatch"):
        CIFAR100DataModule(tmp_path / "a").setup()
    monkeypatch.setattr(CIFAR100DataModule, "md5", hashlib.md5(payload).hexdigest())
    dm = CIFAR100DataModule(tmp_path / "b", val_size=0.5)
    dm.setup()
    assert len(dm.splits["test"][1]) == 100
    assert not (tmp_path / "b" / "cifar-100-python.tar.gz").exists()


def test_svhn_reads_mat_files_and_maps_label_10_to_digit_0(tmp_path):
    write_svhn(tmp_path, n_train=100, n_test=40)
    dm = SVHNDataModule(tmp_path, val_size=0.2, download=False)
    dm.setup()
    raw = loadmat(tmp_path / "test_32x32.mat")
    test_x, test_y = dm.splits["test"]
    assert torch.equal(test_x, torch.from_numpy(raw["X"].transpose(3, 2, 0, 1).copy()))
    assert test_y.tolist() == [int(y) % 10 for y in raw["y"][:, 0]]
    assert 10 in raw["y"] and 0 in test_y.tolist()
    assert (len(dm.splits["train"][1]), len(dm.splits["val"][1])) == (80, 20)
    assert dm.class_names == [str(d) for d in range(10)]


def test_svhn_extra_joins_the_training_split(tmp_path):
    write_svhn(tmp_path, n_train=100, n_test=40, n_extra=50)
    plain = SVHNDataModule(tmp_path, val_size=0.2, download=False)
    extra = SVHNDataModule(tmp_path, val_size=0.2, download=False, extra=True)
    plain.setup()
    extra.setup()
    assert len(extra.splits["train"][1]) + len(extra.splits["val"][1]) == 150
    assert len(plain.splits["train"][1]) + len(plain.splits["val"][1]) == 100


def test_svhn_missing_and_corrupt_files_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"train_32x32.mat.*test_32x32.mat.*data.data_dir"):
        SVHNDataModule(tmp_path, download=False).setup()
    write_svhn(tmp_path)
    test_file = tmp_path / "test_32x32.mat"
    whole = test_file.read_bytes()
    for damaged in (b"MATLAB 5.0 MAT-file, truncated", whole[: len(whole) // 2]):
        test_file.write_bytes(damaged)
        with pytest.raises(DataError, match=r"test_32x32\.mat is truncated or corrupt"):
            SVHNDataModule(tmp_path, download=False).setup()


def test_svhn_download_checks_each_file(tmp_path, monkeypatch):
    source = write_svhn(tmp_path / "source")
    served = {name: (source / name).read_bytes() for name in ("train_32x32.mat", "test_32x32.mat")}
    urls = []

    def urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="checksum mismatch"):
        SVHNDataModule(tmp_path / "a").setup()
    checksums = {
        split: (name, hashlib.md5(served[name]).hexdigest())
        for split, (name, _) in svhn_module.SVHN_FILES.items()
        if name in served
    }
    monkeypatch.setattr(svhn_module, "SVHN_FILES", {**svhn_module.SVHN_FILES, **checksums})
    dm = SVHNDataModule(tmp_path / "b", val_size=0.2)
    dm.setup()
    assert len(dm.splits["test"][1]) == 40
    assert urls[-2:] == [svhn_module.SVHN_URL + "train_32x32.mat", svhn_module.SVHN_URL + "test_32x32.mat"]
    assert np.array_equal(
        loadmat(tmp_path / "b" / "train_32x32.mat")["y"], loadmat(source / "train_32x32.mat")["y"]
    )
