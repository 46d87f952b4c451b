"""Helpers shared by several test modules (no test module imports another): tiny pretrained
checkpoints written in the libraries' own formats, a quiet Trainer and a simulated crash, the
command line, sweeps and forked DDP, dense attention references, and checks every rotary family
must pass. (conftest.py keeps what needs no torch: pytest-xdist's controller loads it too.)"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import timm
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from tests.conftest import FAST
from vit_rpe.models.rpe import build_rpe

# --- tiny pretrained models (no network) -------------------------------------------------------------

TINY_TIMM = dict(depth=2, embed_dim=32, num_heads=2)  # vit_tiny_patch16_224's layout, smaller


GREY_8X8 = dict(pretrained=False, img_size=8, in_chans=1, patch_size=2, model_kwargs=TINY_TIMM)


MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def save_tiny_hf_vit(folder, num_labels: int = 3, image_size: int = 16, seed: int = 0):
    """A random 2-layer ViT (hidden 32, 4x4 patches) and its image processor, saved by save_pretrained."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=4,
        num_labels=num_labels,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=MEAN, image_std=STD
    ).save_pretrained(folder)
    return folder


def pretrained_source(model: str, folder: Path) -> list[str]:
    """A tiny pretrained checkpoint in the library's own format, and the overrides that fine-tune it
    at 16x16 with the checkpoint's normalisation (digits are 8x8, with their own mean and std)."""
    if model == "hf_vit":
        save_tiny_hf_vit(folder, image_size=16)
        return [f"model.net.name_or_path={folder}"]
    torch.manual_seed(0)
    weights = folder / "vit_tiny.safetensors"
    folder.mkdir()
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    safetensors.torch.save_file(source.state_dict(), weights)
    sizes = [f"+model.net.model_kwargs.{key}={value}" for key, value in TINY_TIMM.items()]
    return [
        "model.net.name=vit_tiny_patch16_224",
        f"model.net.checkpoint_path={weights}",
        "model.net.img_size=16",
        "model.net.patch_size=4",
        *sizes,
    ]


# --- trainers and callbacks for tests ----------------------------------------------------------------


class Crash(L.Callback):
    """Dies at the start of an epoch, as a killed process would: nothing is saved on the way out."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def quiet_trainer(tmp_path: Path, **options) -> L.Trainer:
    """A CPU Trainer that logs, checkpoints and prints nothing unless ``options`` say so."""
    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return L.Trainer(accelerator="cpu", default_root_dir=tmp_path, **{**quiet, **options})


# --- the command line and sweeps ---------------------------------------------------------------------

# FAST with fewer batches: every job of a sweep pays the full start-up anyway.
SWEEP_FAST = (
    *FAST,
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


# ddp_sim with its 2 processes forked from the test process, not started afresh: the same DDP
# strategy without the 12 s of imports each spawned process pays on two busy cores. For tests of what
# DDP does (freezing, samplers, metric syncs); what spawning adds (pickling the trainer, results
# coming back from new processes) is tested with ddp_sim as users run it, in tests/test_ddp.py.
FORKED_DDP = ("trainer=ddp_sim", "trainer.strategy=ddp_fork")


def run_train_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m vit_rpe.train ARGS`` as a user types it, in ``cwd``, one thread, W&B offline."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "1",
        **(env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "vit_rpe.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-5000:])
    return done


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# --- attention references (float64, dense) -----------------------------------------------------------

GRID = (7, 9)  # the patch grid of the attention references


def perturbed_rpe(family, distance, prefix, heads=2, dtype=torch.float64, grid=GRID):
    torch.manual_seed(1)
    rpe = build_rpe(family, grid, heads, prefix, distance).to(dtype)
    with torch.no_grad():
        for p in rpe.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return rpe


def qkv(heads, tokens, d=8, dtype=torch.float64, scale=1.0, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, heads, tokens, d, generator=g, dtype=dtype) for _ in range(3)]


def autograd_performer(kernel, q, k, v, mask):
    """FAVOR+ attention written out for autograd, stabilisers and eps included (the formulas the
    fused Functions replace), optionally under a dense mask."""
    w, d = kernel.projection.to(q.dtype), q.shape[-1]
    q, k = q * d**-0.25, k * d**-0.25
    wq, wk = q @ w.T, k @ w.T
    scale = w.shape[0] ** -0.5
    fq = scale * (
        torch.exp(wq - (q * q).sum(-1, keepdim=True) / 2 - wq.amax(-1, keepdim=True).detach()) + kernel.eps
    )
    fk = scale * (
        torch.exp(wk - (k * k).sum(-1, keepdim=True) / 2 - wk.amax((-2, -1), keepdim=True).detach())
        + kernel.eps
    )
    a = fq @ fk.transpose(-2, -1)
    if mask is not None:
        a = a * mask
    return (a @ v) / a.sum(-1, keepdim=True).clamp_min(kernel.eps)


# --- the C kernel ------------------------------------------------------------------------------------

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build the kernel"
)


# --- rotary position embeddings ----------------------------------------------------------------------


def assert_scores_depend_on_the_2d_offset_only(module) -> None:
    """The same query and key contents at every position: (R_i q).(R_j k) between grid tokens is
    one number per offset (y_j - y_i, x_j - x_i), whichever pair has it (and not one number
    overall); prefix tokens are not rotated. For every rotary family (test_contract.py too)."""
    heads, d, p = module.num_heads, module.head_dim, module.num_prefix_tokens
    n = module.num_tokens
    q0, k0 = torch.randn(2, 1, heads, 1, d, dtype=torch.float64)
    q, k = module(q0.expand(1, heads, n, d), k0.expand(1, heads, n, d))
    assert torch.equal(q[:, :, :p], q0.expand(1, heads, p, d))
    scores = (q @ k.transpose(-2, -1))[0, :, p:, p:]  # [H, N, N] between grid tokens
    hg, wg = module.grid_size
    by_offset: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(hg * wg):
        for j in range(hg * wg):
            offset = (j // wg - i // wg, j % wg - i % wg)
            by_offset.setdefault(offset, []).append(scores[:, i, j])
    assert len(by_offset) == (2 * hg - 1) * (2 * wg - 1)
    for values in by_offset.values():
        torch.testing.assert_close(torch.stack(values), values[0].expand(len(values), -1), rtol=0, atol=1e-12)
    assert scores.std() > 0.1  # positions do change the scores


def recorded_epochs_and_images(ckpt_path: Path) -> list[tuple[float, float]]:
    """The run record of a checkpoint without its timings: what two equal runs share."""
    from vit_rpe.tasks.run_record import read_run_record

    return [(e["epoch"], e["images"]) for e in read_run_record(ckpt_path)]
