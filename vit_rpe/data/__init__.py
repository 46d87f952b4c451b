"""LightningDataModules: format readers feeding uint8 batches to device-side transforms."""

from vit_rpe.data.base import ImageDataModule, TensorImageDataset
from vit_rpe.data.mnist import DigitsDataModule, MNISTDataModule

__all__ = ["DigitsDataModule", "ImageDataModule", "MNISTDataModule", "TensorImageDataset"]
