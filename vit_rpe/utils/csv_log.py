"""A resumed run's CSV log goes on in the same ``metrics.csv``."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("vit_rpe.checkpoint")


def continue_csv_logs(loggers: Iterable[Any], global_step: float) -> None:
    """Keep a resumed run's metrics.csv: Lightning's CSVLogger deletes it when it opens the folder.

    Rows up to the checkpoint's step are kept (rows logged after it are redone by the resumed
    run), and new rows are appended under the same header. Also used before testing after
    ``ddp_spawn`` training, whose logger lived in the worker processes.
    """
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if not row.get("step") or float(row["step"]) <= global_step]
        writer = logger.experiment  # opening the folder removes metrics.csv; write the kept rows back
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header
        log.info("continuing %s (%d rows kept)", path, len(rows))
