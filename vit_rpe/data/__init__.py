"""LightningDataModules: format readers feeding uint8 batches to device-side transforms."""

from vit_rpe.data.base import ImageDataModule, TensorImageDataset
from vit_rpe.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from vit_rpe.data.decoded import DecodedImageDataModule
from vit_rpe.data.folder import ImageFolderDataModule
from vit_rpe.data.hf import HFImageDataModule
from vit_rpe.data.metadata import fill_data_metadata
from vit_rpe.data.mnist import DigitsDataModule, MNISTDataModule
from vit_rpe.data.svhn import SVHNDataModule
from vit_rpe.data.tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DecodedImageDataModule",
    "DigitsDataModule",
    "HFImageDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "TensorImageDataset",
    "TinyImageNetDataModule",
    "fill_data_metadata",
]
