"""Classify image files with a trained checkpoint:
``python -m vit_rpe.predict ckpt_path=<file.ckpt> images=<file | folder | glob> [top_k=5]``.

A checkpoint carries what it needs (``input_config``, stored by the classifier from the
datamodule it trained on): the class names, the channels, and the preprocessing, i.e. the side a
file is cropped and resized to as the data's reader does, then the device transform's size and
normalisation (a pretrained backbone's own). Any file PIL reads is converted to the model's
channels (grey <-> RGB, alpha dropped) and goes the same way as the training images did.
Checkpoints saved before ``input_config`` existed need the data they were trained on
(``data=<name>``), whose datamodule gives the same values.

Writes ``<run dir>/predictions.csv`` (path, the top-k classes and probabilities, and an error
for a file that could not be read) and prints a table. Unreadable files do not stop the others;
the exit status is 0 when every file was classified, 2 when some could not be read and 1 on a
user error (nothing written). ``predict(...)`` is the same from Python.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import rich
import rich.table
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vit_rpe.build import check_matches_data, saved_model_config
from vit_rpe.data import ImageDataModule
from vit_rpe.data.decoded import IMAGE_EXTENSIONS, decode_image
from vit_rpe.data.folder import image_files
from vit_rpe.data.transforms import DeviceTransform
from vit_rpe.models.backbone import PretrainedBackbone
from vit_rpe.utils.checkpoint import load_weights, read_task_checkpoint
from vit_rpe.utils.errors import CheckpointError, ConfigError, DataError
from vit_rpe.utils.run import CONF_DIR, exit_on_user_error

log = logging.getLogger("vit_rpe.predict")

EXIT_SOME_FAILED = 2  # predictions.csv written, but some files could not be read


@dataclass
class Prediction:
    """One file's top-k classes, most probable first; ``error`` says why a file was not classified."""

    path: str
    classes: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None


def pick_device(device: str) -> torch.device:
    """``auto``: the accelerator when there is one (CUDA, then Apple MPS), else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a device ({err}): use auto, cpu, cuda or mps") from None


class Predictor:
    """A checkpoint's model with the preprocessing its training used: uint8 images in, class
    probabilities out."""

    def __init__(
        self, model: nn.Module, input_config: Mapping[str, Any], device: str | torch.device = "auto"
    ):
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device)
        self.class_names = list(input_config["class_names"])
        self.in_chans = int(input_config["in_chans"])
        self.decode_size = int(input_config["decode_size"][0])  # square, as the readers crop
        self.transform = DeviceTransform(
            input_config["mean"], input_config["std"], image_size=tuple(input_config["image_size"])
        ).to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        data: Mapping | ImageDataModule | None = None,
        device: str | torch.device = "auto",
    ) -> Predictor:
        """The model a checkpoint of ``ImageClassifier`` saved, and its ``input_config`` (or, for a
        checkpoint without one, ``data``'s: a datamodule or its config)."""
        ckpt = read_task_checkpoint(ckpt_path)
        model_cfg = saved_model_config(ckpt, ckpt_path)
        model = instantiate(model_cfg)
        input_config = ckpt.get("input_config")
        if input_config is None:
            if data is None:
                raise CheckpointError(
                    f"checkpoint {ckpt_path} holds no input_config (it was saved before vit_rpe stored "
                    "the class names and preprocessing in checkpoints): give the data it was trained on, "
                    f"e.g. python -m vit_rpe.predict ckpt_path={ckpt_path} images=... data=digits "
                    "(with the data.* overrides of its training run, see its config.yaml)"
                )
            datamodule = data if isinstance(data, ImageDataModule) else instantiate(data)
            if isinstance(model.net, PretrainedBackbone):  # its weights' input, not the data's
                datamodule.apply_data_config(model.net.data_config())
            check_matches_data(ckpt["hyper_parameters"], datamodule, str(ckpt_path))
            input_config = datamodule.input_config
        elif data is not None:
            log.info("data= is not used: %s carries its input_config (class names, preprocessing)", ckpt_path)
        load_weights(model, ckpt["state_dict"], source=ckpt_path)
        return cls(model, input_config, device)

    def read(self, path: str | Path) -> torch.Tensor:
        """A file as uint8 [C, S, S], as the data's reader decodes training images (centre crop to
        a square, resize to ``decode_size``); a DataError naming the file when PIL cannot."""
        try:
            pixels = decode_image(str(path), self.decode_size, self.in_chans)
        except Image.DecompressionBombError as err:
            raise DataError(f"the image file {path} cannot be decoded ({err})") from err
        return torch.from_numpy(pixels)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> class probabilities [B, num_classes] (float32, on the CPU)."""
        x = self.transform(images.to(self.device, non_blocking=True), train=False)
        return self.model(x).float().softmax(dim=-1).cpu()


class ImageFiles(Dataset):
    """Reads files for a DataLoader: (index, pixels or None, reason it failed or None)."""

    def __init__(self, paths: Sequence[Path], predictor: Predictor):
        self.paths = list(paths)
        self.predictor = predictor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.predictor.read(self.paths[index]), None
        except DataError as err:
            cause = err.__cause__ or err
            return index, None, f"{type(cause).__name__}: {cause}"


def find_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """A file, a folder (its image files, recursively), a glob, or a list of files."""
    if isinstance(images, (list, tuple)) or OmegaConf.is_list(images):
        return [Path(p) for p in images]
    spec = str(images)
    hint = "give an image file, a folder of images or a quoted glob such as images='photos/*.jpg'"
    if any(char in spec for char in "*?["):
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"images={spec} matches no file: {hint}")
        return found
    path = Path(spec).expanduser()
    if path.is_dir():
        found = image_files(path)
        if not found:
            raise DataError(
                f"images={spec} is a folder with no image files (looked for {', '.join(IMAGE_EXTENSIONS)} "
                f"in it and its subfolders): {hint}"
            )
        return found
    if not path.exists():
        raise DataError(f"images={spec} does not exist: {hint}")
    return [path]


def predict(
    ckpt_path: str | Path,
    images: str | Path | Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    data: Mapping | ImageDataModule | None = None,
    device: str = "auto",
    num_workers: int = 0,
) -> list[Prediction]:
    """The top ``top_k`` classes of every image file, in batches on ``device``; a file that cannot
    be read gets its ``error`` and the others go on."""
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    paths = find_images(images)
    predictor = Predictor.from_checkpoint(ckpt_path, data=data, device=device)
    k = min(top_k, len(predictor.class_names))
    loader = DataLoader(
        ImageFiles(paths, predictor), batch_size=batch_size, num_workers=num_workers, collate_fn=list
    )
    results: list[Prediction] = []
    start = time.perf_counter()
    for batch in loader:
        readable = [(index, pixels) for index, pixels, _ in batch if pixels is not None]
        top: dict[int, tuple[list[float], list[int]]] = {}
        if readable:
            probs = predictor.probabilities(torch.stack([pixels for _, pixels in readable]))
            values, classes = probs.topk(k, dim=-1)
            top = {index: (v, c) for (index, _), v, c in zip(readable, values.tolist(), classes.tolist())}
        for index, _, error in batch:
            path = str(paths[index])
            if error is not None:
                results.append(Prediction(path, error=error))
                continue
            values, classes = top[index]
            results.append(Prediction(path, [predictor.class_names[c] for c in classes], values))
    seconds = time.perf_counter() - start
    log.info(
        "%d images in %.2f s: %.1f images/s on %s (reading the files included, loading the model not)",
        len(results),
        seconds,
        len(results) / max(seconds, 1e-9),
        predictor.device,
    )
    return results


def write_predictions(predictions: Sequence[Prediction], path: Path, top_k: int) -> None:
    """predictions.csv: path, class_1, prob_1, ..., class_k, prob_k, error (empty when classified)."""
    k = max([len(p.classes) for p in predictions] + [0]) or top_k
    header = ["path", *(f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")), "error"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in predictions:
            cells = [cell for name, prob in zip(p.classes, p.probs) for cell in (name, f"{prob:.6f}")]
            writer.writerow([p.path, *cells, *[""] * (2 * k - len(cells)), p.error or ""])


def print_predictions(predictions: Sequence[Prediction], shown: int = 30) -> None:
    """The first ``shown`` classified files, and every file that failed, as tables (paths under
    the files' common folder)."""
    if not predictions:
        return
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p.path)) for p in predictions])
    name = {p.path: os.path.relpath(os.path.abspath(p.path), root) for p in predictions}
    done = [p for p in predictions if p.error is None]
    table = rich.table.Table(title=f"predictions ({len(done)} images in {root})")
    for column in ("path", "class", "probability", "next classes"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for p in done[:shown]:
        others = ", ".join(f"{name} {prob:.3f}" for name, prob in zip(p.classes[1:], p.probs[1:]))
        table.add_row(name[p.path], p.classes[0], f"{p.probs[0]:.3f}", others)
    if len(done) > shown:
        table.caption = f"... and {len(done) - shown} more in predictions.csv"
    rich.print(table)
    failed = [p for p in predictions if p.error is not None]
    if failed:
        errors = rich.table.Table(title=f"{len(failed)} files could not be read", title_style="bold red")
        errors.add_column("path")
        errors.add_column("reason")
        for p in failed:
            errors.add_row(name[p.path], p.error)
        rich.print(errors)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The command: predict, write predictions.csv into the run directory, print the tables."""
    try:
        ckpt_path, images = cfg.ckpt_path, cfg.images
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"{err.full_key} is required: python -m vit_rpe.predict ckpt_path=<file.ckpt> "
            "images=<file | folder | glob>"
        ) from None
    predictions = predict(
        ckpt_path,
        images,
        top_k=int(cfg.top_k),
        batch_size=int(cfg.batch_size),
        data=cfg.get("data"),
        device=str(cfg.device),
        num_workers=int(cfg.num_workers),
    )
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(predictions, output_dir / "predictions.csv", int(cfg.top_k))
    print_predictions(predictions)
    failed = sum(p.error is not None for p in predictions)
    log.info("predictions of %d files in %s", len(predictions), output_dir / "predictions.csv")
    if failed:
        log.error(
            "%d of %d files could not be read (listed above and in predictions.csv)", failed, len(predictions)
        )
    return {"images": len(predictions), "failed": failed, "output_dir": str(output_dir)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    summary = exit_on_user_error(run, cfg)
    if summary["failed"]:
        raise SystemExit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
