"""LightningModules: one image classifier for every backbone."""

from vit_rpe.tasks.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
