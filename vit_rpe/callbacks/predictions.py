"""W&B at the end of testing: a confusion matrix and a table of sample predictions."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class WandbTestPredictions(L.Callback):
    """At the end of testing: a confusion matrix and a table of sample predictions, in W&B.

    Does nothing unless a WandbLogger is attached. Reads the logits the test step returns; a
    LightningModule whose test step returns none gets the model run once more on the batch.
    """

    def __init__(self, num_samples: int = 64, class_names: Sequence[str] | None = None):
        self.num_samples = num_samples
        self.class_names = list(class_names) if class_names else None
        self._reset()

    def _reset(self) -> None:
        self.targets: list[torch.Tensor] = []
        self.predictions: list[torch.Tensor] = []
        self.samples: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # image, target, probabilities

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not wandb_loggers(trainer):
            return
        images, targets = batch
        targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        probs = (pl_module(images) if logits is None else logits).softmax(dim=-1).float()
        self.targets.append(targets.cpu())
        self.predictions.append(probs.argmax(dim=-1).cpu())
        for image, target, prob in zip(images, targets, probs):
            if len(self.samples) >= self.num_samples:
                break
            self.samples.append((image.detach().float().cpu(), int(target), prob.cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or not self.targets or not trainer.is_global_zero:
            return
        import wandb

        targets = torch.cat(self.targets).tolist()
        predictions = torch.cat(self.predictions).tolist()
        num_classes = int(getattr(pl_module, "num_classes", max(targets + predictions) + 1))
        names = self.class_names or self._datamodule_class_names(trainer, num_classes)
        table = wandb.Table(columns=["image", "target", "prediction", "confidence", "correct"])
        for image, target, prob in self.samples:
            predicted = int(prob.argmax())
            table.add_data(
                wandb.Image(to_display(image)),
                names[target],
                names[predicted],
                float(prob[predicted]),
                predicted == target,
            )
        confusion = wandb.plot.confusion_matrix(y_true=targets, preds=predictions, class_names=names)
        loggers[0].experiment.log({"test/confusion_matrix": confusion, "test/predictions": table})
        self._reset()

    @staticmethod
    def _datamodule_class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
        names = getattr(trainer.datamodule, "class_names", None)
        names = list(names) if names is not None else []
        return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def to_display(image: torch.Tensor):
    """A normalised [C, H, W] tensor as a uint8 [H, W(, C)] array, stretched to the full range."""
    low, high = image.min(), image.max()
    pixels = ((image - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8)
    pixels = pixels.permute(1, 2, 0)
    return (pixels[..., 0] if pixels.shape[-1] == 1 else pixels).numpy()
