"""CIFAR-10 from pickled batches: pixels, labels, splits, the download and every kind of bad file."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from vit_rpe.data import CIFAR10DataModule
from vit_rpe.data import cifar as cifar_module
from vit_rpe.data.synthetic import write_cifar10
from vit_rpe.utils.errors import DataError


@pytest.fixture
def cifar_dir(tmp_path):
    write_cifar10(tmp_path, n_train=100, n_test=20)
    return tmp_path


def raw_batch(folder, name):
    with open(folder / "cifar-10-batches-py" / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_pixels_labels_and_split_sizes(cifar_dir):
    dm = CIFAR10DataModule(cifar_dir, val_size=0.2, download=False)
    dm.setup()
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (dm.splits[s] for s in ("train", "val", "test"))
    assert (len(train_y), len(val_y), len(test_y)) == (80, 20, 20)
    assert train_x.dtype == torch.uint8 and tuple(train_x.shape[1:]) == (3, 32, 32)
    assert train_y.dtype == torch.int64
    assert torch.bincount(val_y, minlength=10).tolist() == [2] * 10  # stratified
    raw = raw_batch(cifar_dir, "test_batch")  # rows of 3072 bytes: R plane, G plane, B plane
    assert torch.equal(test_x, torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)))
    assert test_y.tolist() == list(raw[b"labels"])
    assert dm.class_names[:3] == ["airplane", "automobile", "bird"] and dm.num_classes == 10
    # train + val are exactly the five training batches
    all_train = np.concatenate([raw_batch(cifar_dir, f"data_batch_{i}")[b"data"] for i in range(1, 6)])
    got = torch.cat([train_x, val_x]).reshape(100, -1).numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, all_train))


def test_validation_split_is_seeded_and_the_test_set_is_not(cifar_dir):
    def splits(seed):
        dm = CIFAR10DataModule(cifar_dir, val_size=0.2, seed=seed, download=False)
        dm.setup()
        return dm.splits

    assert torch.equal(splits(1)["val"][0], splits(1)["val"][0])
    assert not torch.equal(splits(1)["val"][0], splits(2)["val"][0])
    assert torch.equal(splits(1)["test"][0], splits(2)["test"][0])


def test_data_dir_may_be_the_batches_folder_itself(cifar_dir):
    dm = CIFAR10DataModule(cifar_dir / "cifar-10-batches-py", val_size=0.2, download=False)
    dm.setup()
    assert len(dm.splits["test"][1]) == 20


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b"not a pickle at all"), "truncated or corrupt"),
        (lambda p: p.write_bytes(pickle.dumps({b"pixels": 1})), "lacks the keys"),
        (
            lambda p: p.write_bytes(
                pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]})
            ),
            "3072",
        ),
        (lambda p: p.write_bytes(pickle.dumps({b"data": os.system, b"labels": []})), "truncated or corrupt"),
        (lambda p: p.unlink(), "data_batch_3"),
    ],
)
def test_bad_files_raise_one_clear_error(cifar_dir, damage, message):
    damage(cifar_dir / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match=message) as info:
        CIFAR10DataModule(cifar_dir, download=False).setup()
    assert "data_batch_3" in str(info.value)


def test_pickles_cannot_run_code(cifar_dir, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (cifar_dir / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="test_batch"):
        CIFAR10DataModule(cifar_dir, download=False).setup()
    assert not marker.exists()


def test_offline_download_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(tmp_path / "cifar").setup()
    message = str(info.value)
    assert (
        "download failed" in message
        and "cifar-10-batches-py" in message
        and cifar_module.CIFAR10_URL in message
    )
    assert not any(p.is_file() for p in (tmp_path / "cifar").rglob("*"))


def make_archive(source_dir, members=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for name, data in members or []:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(monkeypatch, payload: bytes):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    monkeypatch.setattr(CIFAR10DataModule, "md5", hashlib.md5(payload).hexdigest())


def test_download_verifies_and_extracts(cifar_dir, tmp_path, monkeypatch):
    serve(monkeypatch, make_archive(cifar_dir))
    dest = tmp_path / "fresh"
    dm = CIFAR10DataModule(dest, val_size=0.2)
    dm.setup()
    assert len(dm.splits["test"][1]) == 20
    assert sorted(p.name for p in dest.iterdir()) == ["cache", "cifar-10-batches-py"]  # archive removed


def test_checksum_mismatch_and_unsafe_archives_are_refused(cifar_dir, tmp_path, monkeypatch):
    payload = make_archive(cifar_dir)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    with pytest.raises(DataError, match="checksum mismatch"):
        CIFAR10DataModule(tmp_path / "a").setup()
    assert not any((tmp_path / "a").iterdir())

    serve(monkeypatch, make_archive(cifar_dir, members=[("../escaped.txt", b"x")]))
    with pytest.raises(DataError, match="unexpected entry"):
        CIFAR10DataModule(tmp_path / "b").setup()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "b" / "cifar-10-batches-py").exists()
