"""vit-rpe: Vision Transformers with softmax, Performer and linear attention and relative
position encodings, trained through Lightning and configured with Hydra."""

__version__ = "0.1.0"
