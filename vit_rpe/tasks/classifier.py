"""One LightningModule that trains any backbone (images -> logits) as an image classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vit_rpe.callbacks.ema import ModelEMA, check_ema_decay
from vit_rpe.callbacks.per_class import PerClassResults, macro_scores
from vit_rpe.models.attention import PerformerAttention
from vit_rpe.models.backbone import PretrainedBackbone, missing_methods
from vit_rpe.tasks.finetune import FineTuning
from vit_rpe.tasks.optim import base_lr, build_optimizer
from vit_rpe.tasks.run_record import RunRecord
from vit_rpe.utils.checkpoint import plain_names, renamed_for
from vit_rpe.utils.errors import ConfigError


def as_factory(spec: Callable | Mapping | None, key: str) -> Callable | None:
    """A callable, or a Hydra config of one: ``_partial_: true``, the rest of its arguments (the
    parameters, the optimizer) are the task's to give."""
    if spec is None or callable(spec):
        return spec
    if not spec.get("_partial_"):
        raise ConfigError(
            f"model.{key} ({spec.get('_target_')}) is called by the task with what it builds: give it "
            f"_partial_: true in its config (+model.{key}._partial_=true on the command line)"
        )
    return instantiate(spec)


def check_backbone(net: nn.Module) -> None:
    """The network implements the backbone interface, or the one error that names what it lacks."""
    missing = missing_methods(net)
    if missing:
        raise ConfigError(
            f"{type(net).__module__}.{type(net).__qualname__} is not a backbone: it lacks "
            f"{', '.join(f'{name}()' for name in missing)}. model.net must implement the backbone "
            "interface (vit_rpe/models/backbone.py, README: The backbone interface)"
        )


def as_plain(spec: Any) -> Any:
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification with top-1 (and top-5) accuracy, AdamW and warmup-cosine.

    ``net`` is an nn.Module or a Hydra config of one. Given as a config, the task builds the
    backbone itself and stores the config in its hyperparameters, so
    ``ImageClassifier.load_from_checkpoint(path)`` needs nothing else (not even the source of a
    pretrained backbone: see ``resolved_source`` in models/pretrained/). ``net`` implements the
    backbone interface (models/backbone.py), which is all the task calls. ``optimizer`` and
    ``scheduler`` are callables or configs of them: ``optimizer(param_groups)``, whose own lr
    and weight decay hold wherever the groups make no exception (tasks/optim.py), and
    ``scheduler(optimizer, total_steps=..., steps_per_epoch=...)``. ``finetune`` (mode,
    freeze_backbone_epochs, layer_decay) says what trains at which rate: see tasks/finetune.py.

    The test also counts a confusion matrix: ``test/macro_f1`` and ``test/balanced_acc``, and the
    per-class files of callbacks/per_class.py. Checkpoints carry the datamodule's ``input_config``
    (class names and preprocessing), so ``vit_rpe.predict`` needs nothing else.
    """

    def __init__(
        self,
        net: nn.Module | Mapping,
        num_classes: int,
        optimizer: Callable | Mapping,
        scheduler: Callable | Mapping | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
        finetune: Mapping | None = None,
        ema_decay: float | None = None,
    ):
        super().__init__()
        plain = {k: as_plain(v) for k, v in dict(net=net, optimizer=optimizer, scheduler=scheduler).items()}
        # Configs go into the checkpoint's hyperparameters; Python objects (a module, a partial) cannot.
        storable = {k: v for k, v in plain.items() if isinstance(v, (Mapping, type(None)))}
        self.save_hyperparameters(
            {
                **storable,
                "num_classes": num_classes,
                "label_smoothing": label_smoothing,
                "compile": compile,
                "finetune": as_plain(finetune),
                "ema_decay": ema_decay,
            }
        )
        self.finetune = FineTuning.from_config(as_plain(finetune))
        self.net = net if isinstance(net, nn.Module) else instantiate(plain["net"], _convert_="all")
        check_backbone(self.net)
        if "net" in storable and isinstance(self.net, PretrainedBackbone):
            # A pretrained backbone's architecture and preprocessing, as its source resolved them:
            # a checkpoint rebuilds it from these alone, with no download, and loads its own weights.
            self.hparams["net"] = {**storable["net"], "resolved_source": self.net.resolved_source()}
        self.finetune.freeze(self.net)  # a linear probe's backbone, for good
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.make_optimizer = as_factory(plain["optimizer"], "optimizer")
        self.make_scheduler = as_factory(plain["scheduler"], "scheduler")
        self.compile_net = compile
        self.ema_decay = None if ema_decay is None else check_ema_decay(ema_decay)

        top_ks = (1, 5) if num_classes > 10 else (1,)
        for stage in ("train", "val", "test"):
            for k in top_ks:
                metric = MulticlassAccuracy(num_classes, top_k=k, average="micro")
                self.add_module(f"{stage}_acc{'' if k == 1 else k}", metric)
            self.add_module(f"{stage}_loss", MeanMetric())
        self.top_ks = top_ks
        # The test's counts per (true, predicted) class: per-class results and their macro averages.
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()
        self.run_record = RunRecord()  # each epoch's seconds and images/s; metrics.json's summary
        self._carried_states: dict | None = None  # metric totals from the checkpoint resumed
        self._train_loader_state: dict | None = None  # and the training loader's position

    def configure_model(self) -> None:
        if self.compile_net and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints store the plain backbone's names, compiled (model.compile=true) or not.
        checkpoint["state_dict"] = plain_names(checkpoint["state_dict"])
        checkpoint["metric_states"] = self.carried_states()
        loader = self.trainer.train_dataloader
        if hasattr(loader, "state_dict"):  # ResumableDataLoader: its position in the epoch
            checkpoint["train_loader_state"] = loader.state_dict()
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "input_config"):  # what vit_rpe.predict needs to read image files
            checkpoint["input_config"] = datamodule.input_config

    def carried_metrics(self) -> dict[str, Metric]:
        """The running totals a resumed run continues: this epoch's training metrics (a checkpoint
        can be taken mid-epoch) and the best validation accuracy so far."""
        return {
            name: module
            for name, module in self.named_children()
            if isinstance(module, Metric) and (name.startswith("train_") or name == "val_acc_best")
        }

    def carried_states(self) -> dict:
        """The states of ``carried_metrics``, the whole job's under DDP (a collective: every rank
        saves), and the position they were taken at (epoch, batches processed in it)."""
        states = {}
        for name, metric in self.carried_metrics().items():
            with metric.sync_context():
                states[name] = {key: value.detach().clone() for key, value in metric.metric_state.items()}
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "batches": batches, "states": states}

    def restore_carried_states(self) -> None:
        """Continue the totals of a resumed checkpoint: the training metrics only if training
        resumes where they were taken (mid-epoch). Rank 0 takes the whole job's totals and the
        other ranks start empty, since the ranks' totals are summed (maximised) when computed."""
        carried, self._carried_states = self._carried_states, None
        if not carried or self.trainer.global_rank > 0:
            return
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        mid_epoch = (carried["epoch"], carried["batches"]) == (self.trainer.current_epoch, batches)
        metrics = self.carried_metrics()
        for name, state in carried["states"].items():
            if name in metrics and (mid_epoch or not name.startswith("train_")):
                for key, value in state.items():
                    setattr(metrics[name], key, value.to(self.device))

    def restore_train_loader_state(self) -> None:
        """Give the resumed training loader its saved position (mid-epoch: the next batch).

        Lightning does it only when it builds the loader after restoring the checkpoint, and
        ``estimated_stepping_batches`` in configure_optimizers builds it before (Lightning issue
        #20550), so the task keeps its own copy of the position and hands it over at train start.
        Loading it twice (should Lightning do it too) is harmless: the state is the same.
        """
        state, self._train_loader_state = self._train_loader_state, None
        loader = self.trainer.train_dataloader
        if state is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._carried_states = checkpoint.get("metric_states")
        self._train_loader_state = checkpoint.get("train_loader_state")
        checkpoint["state_dict"] = renamed_for(self, checkpoint["state_dict"])  # e.g. resuming a compiled run

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and logits of one batch; updates and logs the stage's metrics."""
        images, targets = batch
        logits = self(images)
        # Soft targets (mixup / cutmix) arrive as [B, num_classes] probabilities.
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
        hard_targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
        getattr(self, f"{stage}_loss")(loss.detach(), weight=len(images))  # a mean over images, not batches
        for k in self.top_ks:
            name = f"{stage}_acc{'' if k == 1 else k}"
            getattr(self, name)(logits.detach(), hard_targets)
            self.log(
                f"{stage}/acc{'' if k == 1 else f'_top{k}'}",
                getattr(self, name),
                on_step=False,
                on_epoch=True,
                prog_bar=k == 1,
            )
        self.log(
            f"{stage}/loss",
            getattr(self, f"{stage}_loss"),
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "test",
        )
        return loss, logits

    def on_train_start(self) -> None:
        for module in self.net.modules():
            if isinstance(module, PerformerAttention):  # its random features settle halfway
                module.plan_redraws(int(self.trainer.estimated_stepping_batches))
        # Sanity-check batches must not count towards the best validation accuracy.
        self.val_acc_best.reset()
        self.restore_train_loader_state()  # before the first batch
        self.restore_carried_states()
        # Lightning does not call on_train_epoch_start for an epoch resumed mid-way: its entry
        # continues from here (tests/test_resume.py fails without this line).
        self.run_record.start_epoch(self.current_epoch, self.trainer.world_size)

    def on_train_epoch_start(self) -> None:
        self.run_record.start_epoch(self.current_epoch, self.trainer.world_size)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        # The schedule's lr, which the head trains at; layer decay scales it down for lower layers.
        self.log("train/lr", base_lr(self.optimizers()), on_step=True, on_epoch=False)
        self.run_record.update(images=len(batch[0]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.run_record.update()  # the backward and the step too

    def on_train_epoch_end(self) -> None:
        entry = self.run_record.last_epoch()
        self.log("train/epoch_time", entry["seconds"], on_epoch=True, sync_dist=True)
        self.log("train/images_per_sec", entry["images_per_sec"], on_epoch=True, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        _, logits = self._step(batch, "test")
        targets = batch[1].argmax(dim=1) if batch[1].ndim == 2 else batch[1]
        self.test_confusion.update(logits.detach(), targets)
        return {"logits": logits.detach()}  # for callbacks (W&B predictions); Lightning keeps none

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        # compute() sums the counts of every rank, so each logs the job's numbers.
        macro_f1, balanced_acc = macro_scores(self.test_confusion.compute())
        self.log("test/macro_f1", macro_f1, sync_dist=True)
        self.log("test/balanced_acc", balanced_acc, sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).softmax(dim=-1)

    def configure_callbacks(self) -> list[L.Callback]:
        # A backbone frozen for some or all epochs; per_class.csv and the confusion matrix of every test.
        callbacks = [*self.finetune.callbacks(), PerClassResults()]
        if self.ema_decay is not None:
            callbacks.append(ModelEMA(self.ema_decay))  # val/acc_ema; checkpoints hold the average
        return callbacks

    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self.make_optimizer, self.net, self.finetune.layer_decay)
        if self.make_scheduler is None:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        scheduler = self.make_scheduler(
            optimizer, total_steps=total_steps, steps_per_epoch=max(total_steps // epochs, 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
