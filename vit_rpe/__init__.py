"""vit-rpe: Vision Transformers with softmax, Performer and linear attention and relative
position encodings, trained through Lightning and configured with Hydra."""

__version__ = "0.1.0"

from omegaconf import OmegaConf

# conf/hydra/default.yaml: `resume_dir=<run dir>` makes Hydra run in that directory again.
OmegaConf.register_new_resolver(
    "vit_rpe.first", lambda *values: next((v for v in values if v), None), replace=True
)
