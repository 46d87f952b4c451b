"""vit-rpe: Vision Transformers with softmax, Performer and linear attention and relative
position encodings, trained through Lightning and configured with Hydra."""

__version__ = "0.1.0"

import os

# Idle OpenMP threads sleep instead of spinning, so runs sharing cores do not burn each other's
# time (utils/threads.py). Read when torch loads its OpenMP runtime: set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from omegaconf import OmegaConf

# conf/hydra/default.yaml: `resume_dir=<run dir>` makes Hydra run in that directory again.
OmegaConf.register_new_resolver(
    "vit_rpe.first", lambda *values: next((v for v in values if v), None), replace=True
)
