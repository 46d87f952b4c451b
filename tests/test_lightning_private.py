"""The private Lightning API vit_rpe relies on, pinned: an upgrade of Lightning that removes or
changes it fails here, with a message naming the version and the call, not in a user's run.

Everything else vit_rpe does with Lightning goes through public API; the first test keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers.logger import Logger

import vit_rpe
from tests.conftest import quiet_trainer

PACKAGE = Path(vit_rpe.__file__).parent
LIGHTNING_OBJECTS = ("trainer", "loop", "strategy", "pl_module", "lightning_module")

# private attribute -> where vit_rpe uses it (each one is tested below)
PINNED = {"_logger_connector": "vit_rpe.callbacks.last_checkpoint.log_step_metrics"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def attribute_reached(node: ast.AST) -> tuple[ast.expr, str] | None:
    """(object, attribute name) of ``obj.name`` and of ``getattr(obj, "name", ...)``."""
    if isinstance(node, ast.Attribute):
        return node.value, node.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
        name = node.args[1] if len(node.args) > 1 else None
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return node.args[0], name.value
    return None


def private_lightning_attributes() -> dict[str, list[str]]:
    """Private attributes (``_name``) reached through a Trainer, a loop, a strategy or a module."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            reached = attribute_reached(node)
            if reached is None or not is_private(reached[1]):
                continue
            owner, attr = ast.unparse(reached[0]), reached[1]
            if any(name in owner for name in LIGHTNING_OBJECTS):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} ({owner}.{attr})"
                found.setdefault(attr, []).append(where)
    return found


def test_private_lightning_api_is_pinned():
    found = private_lightning_attributes()
    unpinned = {attr: where for attr, where in found.items() if attr not in PINNED}
    assert not unpinned, (
        f"vit_rpe reaches into Lightning's private API: {unpinned}. Use public API, or pin the call "
        "in tests/test_lightning_private.py (PINNED and a test of what vit_rpe needs from it)"
    )
    assert set(found) == set(PINNED), f"pinned but no longer used: {sorted(set(PINNED) - set(found))}"


class RecordingLogger(Logger):
    """Keeps every (step, metrics) Lightning logs."""

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


class LogsAStepMetric(BoringModel):
    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("train/value", float(batch_idx + 1), on_step=True, on_epoch=False)
        return output


class LogStepMetricsAtBatchEnd(L.Callback):
    """What LastCheckpoint.save_and_exit does before it saves and exits at a batch end."""

    def __init__(self, logger: RecordingLogger):
        self.logger = logger
        self.seen: list[tuple[int, dict]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            before = len(self.logger.logged)
            trainer._logger_connector.update_train_step_metrics()
            self.seen = self.logger.logged[before:]


def test_update_train_step_metrics_logs_the_batch_that_ends(tmp_path):
    """``Trainer._logger_connector.update_train_step_metrics()``, called in on_train_batch_end,
    logs that batch's step metrics at its step: a run stopped by Ctrl+C (LastCheckpoint) keeps
    the interrupted batch's row in its CSV log, and its resumed log equals an uninterrupted one."""
    call = "Trainer._logger_connector.update_train_step_metrics()"
    logger = RecordingLogger()
    probe = LogStepMetricsAtBatchEnd(logger)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[probe],
    )
    update = getattr(getattr(trainer, "_logger_connector", None), "update_train_step_metrics", None)
    assert callable(update), (
        f"lightning {L.__version__} has no {call}: vit_rpe.callbacks.last_checkpoint.log_step_metrics needs "
        "another way to log the interrupted batch's metrics before it exits"
    )
    trainer.fit(LogsAStepMetric())
    assert [(step, metrics.get("train/value")) for step, metrics in probe.seen] == [(1, 2.0)], (
        f"lightning {L.__version__}: {call} in on_train_batch_end of batch 1 logged {probe.seen}, "
        "not that batch's metrics at step 1: see vit_rpe.callbacks.last_checkpoint.log_step_metrics"
    )
