"""The bad-input catalogue (docs/errors.md): one test per row.

Each wrong input gets one clear error naming the fix, a non-zero exit from the CLI without a
traceback, and leaves what the user had (checkpoints, run directories) as it was.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import FAST, ROOT, compose_config, run_train_main
from vit_rpe.data.synthetic import write_image_folder
from vit_rpe.eval import evaluate
from vit_rpe.train import train
from vit_rpe.utils.config_checks import check_moved_overrides
from vit_rpe.utils.errors import CheckpointError, ConfigError, DataError, UserError
from vit_rpe.utils.run import metric_for_sweeper, user_error_of


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run: config.yaml and checkpoints/last.ckpt, as a user would have."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(compose_config("train", FAST, out))
    return out


class Unpicklable:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def bad_files(root: Path, run_dir: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    corrupt = root / "corrupt.ckpt"
    corrupt.write_bytes(b"this is not a checkpoint")
    plain = root / "net.pt"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    torch.save({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, plain)
    no_data = root / "no_data.ckpt"  # as saved before checkpoints recorded their datamodule
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if not k.startswith("datamodule_")}, no_data)
    code = root / "code.ckpt"
    torch.save({"state_dict": {}, "object": Unpicklable()}, code)
    empty = root / "empty_dir"
    empty.mkdir(exist_ok=True)
    no_ckpt = root / "no_ckpt"
    no_ckpt.mkdir(exist_ok=True)
    (no_ckpt / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    png = root / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    one_class = write_image_folder(root / "one_class", classes=("cat",), per_class=4)
    empty_class = write_image_folder(root / "empty_class", classes=("cat", "dog"), per_class=4)
    (empty_class / "fox").mkdir()
    return {
        "corrupt": corrupt,
        "plain": plain,
        "code": code,
        "empty": empty,
        "no_ckpt": no_ckpt,
        "png": png,
        "one_class": one_class,
        "empty_class": empty_class,
        "no_data": no_data,
    }


# id, overrides ({run}: the finished run, {name}: a file from bad_files), error type, message part
TRAIN_ROWS = [
    ("batch-size-zero", ["data.batch_size=0"], ConfigError, "data.batch_size must be at least 1"),
    (
        "num-classes-mismatch",
        ["data.num_classes=5"],
        ConfigError,
        "data.num_classes=5 but this dataset has 10",
    ),
    ("in-chans-mismatch", ["data.in_chans=3"], ConfigError, "data.in_chans=3 but this dataset has 1"),
    ("patch-does-not-divide", ["model.net.patch_size=3"], ConfigError, "patch_size 3 does not divide"),
    (
        "heads-do-not-divide",
        ["model.net.embed_dim=30", "model.net.num_heads=4"],
        ConfigError,
        "embed_dim 30 is not divisible by num_heads 4",
    ),
    ("unknown-attention", ["model.net.attention=nope"], ConfigError, "unknown attention 'nope'"),
    (
        "spt-patch-too-small",
        ["model.net.patch_embed=spt", "model.net.patch_size=1"],
        ConfigError,
        "patch_embed=spt shifts the image by half a patch, so it needs model.net.patch_size >= 2",
    ),
    ("ema-decay-outside", ["model.ema_decay=1.5"], ConfigError, "model.ema_decay=1.5 must be in (0, 1)"),
    (
        "attention-not-importable",
        ["model.net.attention=no_such_module:MyAttention"],
        ConfigError,
        "model.net.attention='no_such_module:MyAttention': cannot import it",
    ),
    (
        "attention-not-a-kernel",
        ["model.net.attention=torch.nn:Linear"],
        ConfigError,
        "is not a subclass of vit_rpe.models.attention.AttentionKernel",
    ),
    (
        "unknown-rpe-impl",
        ["rpe=general", "model.net.rpe_kwargs.impl=bogus"],
        ConfigError,
        "unknown model.net.rpe_kwargs.impl 'bogus'",
    ),
    ("threads-zero", ["threads=0"], ConfigError, "threads=0: give a number of CPU threads"),
    ("no-gpu", ["trainer=gpu"], ConfigError, "This machine has 0 CUDA GPUs"),
    (
        "train-fraction-outside",
        ["data.train_fraction=1.5"],
        ConfigError,
        "data.train_fraction=1.5 is outside (0, 1]",
    ),
    (
        "mnist-missing-no-download",
        ["data=mnist", "data.download=false", "paths.data_dir={empty}"],
        DataError,
        "MNIST files missing",
    ),
    (
        "ckpt-missing",
        ["ckpt_path=/nonexistent/model.ckpt"],
        CheckpointError,
        "does not exist; check ckpt_path",
    ),
    ("ckpt-last-in-new-run", ["ckpt_path=last"], CheckpointError, "resume a run with resume_dir"),
    ("ckpt-is-a-directory", ["ckpt_path={run}"], CheckpointError, "is a directory"),
    ("ckpt-corrupt", ["ckpt_path={corrupt}"], CheckpointError, "cannot read checkpoint"),
    ("ckpt-pickled-code", ["ckpt_path={code}"], CheckpointError, "it holds pickled Python objects"),
    (
        "ckpt-plain-state-dict",
        ["ckpt_path={plain}"],
        CheckpointError,
        "is a plain state dict, not a Lightning",
    ),
    (
        "ckpt-of-another-model",
        ["ckpt_path={run}/checkpoints/last.ckpt", "model.net.depth=2"],
        CheckpointError,
        "does not fit this model",
    ),
    ("resume-dir-missing", ["resume_dir=/nonexistent/run"], CheckpointError, "is not a directory"),
    ("resume-dir-not-a-run", ["resume_dir={empty}"], CheckpointError, "has no config.yaml"),
    ("resume-dir-without-checkpoint", ["resume_dir={no_ckpt}"], CheckpointError, "saved no checkpoint"),
    (
        "resume-switches-group",
        ["resume_dir={run}", "model=performer"],
        ConfigError,
        "config groups cannot be switched",
    ),
    (
        "loss-diverges",
        ["model.optimizer.lr=1e30", "trainer.gradient_clip_val=null"],
        UserError,
        "the training loss is nan at step 1",
    ),
    (
        "pretrained-scratch-keys",
        ["variant=linear_patch1", "model=timm_vit"],
        ConfigError,
        "does not take model.net.patch_embed (set by variant/linear_patch1.yaml)",
    ),
    (
        "pretrained-with-rpe",
        ["experiment=quickstart", "model=timm_vit", "rpe=exp"],
        ConfigError,
        "rpe=exp works with the from-scratch ViT only",
    ),
    (
        "pretrained-with-rope",
        ["experiment=quickstart", "model=timm_vit", "rpe=rope"],
        ConfigError,
        "rpe=rope works with the from-scratch ViT only",
    ),
    (
        "rope-head-dim",
        ["rpe=rope", "model.net.embed_dim=12", "model.net.num_heads=2"],
        ConfigError,
        "rpe=rope needs a head dimension divisible by 4",
    ),
    (
        "pretrained-other-size",
        ["model=timm_vit", "model.net.depth=2"],
        ConfigError,
        "model.net.depth=2 make timm model vit_small_patch16_224 another size than its pretrained weights",
    ),
    (
        "max-epochs-not-a-number",
        ["trainer.max_epochs=abc"],
        ConfigError,
        "trainer.max_epochs='abc' is not a whole number",
    ),
    (
        "max-epochs-no-limit",
        ["trainer.max_epochs=-1"],
        ConfigError,
        "trainer.max_epochs=-1 (Lightning's 'no limit') is not supported",
    ),
    ("max-epochs-negative", ["trainer.max_epochs=-2"], ConfigError, "trainer.max_epochs=-2 trains nothing"),
    ("max-epochs-zero", ["trainer.max_epochs=0"], ConfigError, "trainer.max_epochs=0 trains nothing"),
    ("lr-not-positive", ["model.optimizer.lr=-1"], ConfigError, "model.optimizer.lr=-1 must be positive"),
    ("num-workers-negative", ["data.num_workers=-1"], ConfigError, "data.num_workers=-1 must be 0"),
    (
        "batch-size-not-a-number",
        ["data.batch_size=ten"],
        ConfigError,
        "data.batch_size='ten' is not a whole number",
    ),
    (
        "image-size-zero",
        ["data=image_folder", "data.data_dir={empty_class}", "data.image_size=0"],
        ConfigError,
        "data.image_size must be at least 1, got 0",
    ),
    (
        "folder-one-class",
        ["data=image_folder", "data.data_dir={one_class}"],
        DataError,
        "has one class folder (cat): a classifier needs at least two",
    ),
    (
        "folder-empty-class",
        ["data=image_folder", "data.data_dir={empty_class}", "data.image_size=16", "data.num_workers=0"],
        DataError,
        "class folders without images in",
    ),
    (
        "rpe-impl-without-rpe",
        ["model.net.rpe_kwargs.impl=fft"],
        ConfigError,
        "model.net.rpe_kwargs.impl=fft chooses how a relative position mask is applied, and rpe=none",
    ),
    (
        "timm-size-impossible",
        ["model=timm_vit", "model.net.pretrained=false", "model.net.embed_dim=32"],
        ConfigError,
        "timm model vit_small_patch16_224 cannot be built with",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "error", "message"), [r[1:] for r in TRAIN_ROWS], ids=[r[0] for r in TRAIN_ROWS]
)
def test_train_rejects(overrides, error, message, run_dir, tmp_path):
    if "trainer=gpu" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    files = {"run": run_dir, **bad_files(tmp_path / "files", run_dir)}
    overrides = [o.format(**files) for o in overrides]
    before = {
        p: digest(p) for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".yaml", ".json")
    }
    if "resume_dir" in overrides[0]:
        fast = []  # the run's saved config
    elif any(o.startswith(("model=", "experiment=")) for o in overrides):
        fast = [o for o in FAST if not o.startswith("model.")]  # FAST's sizes are the scratch ViT's
    else:
        fast = FAST
    with pytest.raises(Exception) as raised:
        train(compose_config("train", [*fast, *overrides], tmp_path / "new_run"))
    user_error = user_error_of(raised.value)
    assert isinstance(user_error, error), raised.value
    assert message in str(user_error)
    after = {p: digest(p) for p in before}
    assert after == before  # the finished run the user had is untouched


def test_optimized_metric_unknown():
    with pytest.raises(UserError, match="optimized_metric='val/nope' is not among the metrics"):
        metric_for_sweeper({"val/acc": 0.5}, "val/nope")


EVAL_ROWS = [
    ("eval-no-ckpt", [], ConfigError, "ckpt_path is required"),
    (
        "eval-image-size-not-divisible",
        ["ckpt_path={run}/checkpoints/last.ckpt", "data.image_size=9"],
        ConfigError,
        r"data\.image_size=9 is not divisible by the model's patch size 2",
    ),
    (
        "eval-ckpt-without-data",
        ["ckpt_path={no_data}"],
        CheckpointError,
        "does not record its data",
    ),
    (
        "eval-ckpt-is-an-image",
        ["ckpt_path={png}"],
        CheckpointError,
        "photo.png: it is a PNG image, not a checkpoint",
    ),
    (
        "eval-plain-state-dict",
        ["ckpt_path={plain}"],
        CheckpointError,
        "is a plain state dict, not a Lightning",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "error", "message"), [r[1:] for r in EVAL_ROWS], ids=[r[0] for r in EVAL_ROWS]
)
def test_eval_rejects(overrides, error, message, run_dir, tmp_path):
    files = {"run": run_dir, **bad_files(tmp_path / "files", run_dir)}
    overrides = [o.format(**files) for o in overrides]
    with pytest.raises(error, match=message):
        evaluate(compose_config("eval", ["trainer=cpu", *overrides], tmp_path / "eval_run"))


# The command line: exit status 1, the message on stderr, no traceback.
CLI_ROWS = {
    "cli-typo-in-key": (["trainer.max_epoch=3"], "Could not override 'trainer.max_epoch'"),
    "cli-unknown-option": (["model=vitt"], "Could not find 'model/vitt'"),
    "cli-user-error": (["data.batch_size=0"], "error: data.batch_size must be at least 1"),
    "cli-bad-value": (["trainer.max_epochs=abc"], "error: trainer.max_epochs='abc' is not a whole number"),
    "cli-moved-rpe-key": (
        ["rpe=rope", "rpe.variant=mixed"],
        "error: rpe.variant=mixed: the rpe options moved under model.net (docs/configs.md): write "
        "model.net.rpe_kwargs.variant=mixed (or rpe=rope_mixed)",
    ),
    "cli-optimized-metric-unknown": (
        [*(o for o in FAST if o != "trainer=cpu"), "optimized_metric=val/nope"],
        "error: optimized_metric='val/nope' is not among the metrics",
    ),
    "cli-pretrained-with-rpe": (
        ["experiment=quickstart", "model=timm_vit", "rpe=exp"],
        "error: rpe=exp works with the from-scratch ViT only",
    ),
    "cli-pretrained-with-scratch-keys": (
        ["variant=linear_patch1", "model=hf_vit"],
        "error: model=hf_vit (vit_rpe.models.pretrained.HFViT) does not take model.net.patch_size",
    ),
}


@pytest.mark.parametrize("name", list(CLI_ROWS))
def test_cli_rejects(name, tmp_path, monkeypatch, capfd):
    """The command line's Hydra main, run in this process (the subprocess tests below and in
    test_train.py start the real ``python -m vit_rpe.train``; here each row would pay its start-up)."""
    monkeypatch.setenv("VIT_RPE_ROOT", str(tmp_path))
    status = run_train_main(*CLI_ROWS[name][0], "trainer=cpu", monkeypatch=monkeypatch)
    _stdout, stderr = capfd.readouterr()
    assert status == 1
    assert CLI_ROWS[name][1] in stderr
    if CLI_ROWS[name][1].startswith("error: "):  # ours: the message is the last line
        assert stderr.strip().splitlines()[-1].startswith(CLI_ROWS[name][1])
    assert "Traceback" not in stderr and "InstantiationException" not in stderr
    message = CLI_ROWS[name][1].removeprefix("error: ")
    assert (_stdout + stderr).count(message) == 1  # once, not also as a log line
    if name in CHECKED_BEFORE_THE_TREE:
        assert "── trainer" not in _stdout  # the config tree comes after the checks


# Config values checked before the config tree is shown and anything heavy is imported.
CHECKED_BEFORE_THE_TREE = ("cli-user-error", "cli-bad-value", "cli-moved-rpe-key")


def test_a_wrong_value_leaves_no_run_directory(tmp_path):
    """Checked before Hydra makes the run directory: nothing to clean up, one line on stderr."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "vit_rpe.train", "model.net.rpe_kwargs.impl=fft", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(
        "error: model.net.rpe_kwargs.impl=fft chooses how a relative position mask"
    )
    assert result.stdout == "" and not run_dir.exists()


def test_entry_points_import_nothing_heavy():
    """Option errors and ``--cfg job`` answer before lightning and torch are imported."""
    code = (
        "import sys, vit_rpe.train, vit_rpe.eval; "
        "print(sorted(m for m in ('torch', 'lightning', 'timm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # viz is argparse: a wrong option exits (status 2) before torch is imported
    code = (
        "import runpy, sys; sys.argv = ['viz', '--nope']\n"
        "try:\n    runpy.run_module('vit_rpe.viz', run_name='__main__')\n"
        "except SystemExit as stop:\n    print(stop.code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2 False"


@pytest.mark.parametrize(
    ("override", "fix"),
    [
        ("rpe.distance=l2", "write model.net.rpe_kwargs.distance=l2"),
        ("+rpe.init.init_rate=0.1", "write model.net.rpe_kwargs.init.init_rate=0.1"),
        ("rpe.family=exp", "write rpe=exp"),
    ],
)
def test_an_old_rpe_key_names_its_new_place(override, fix):
    with pytest.raises(
        ConfigError, match=re.escape(f"{override}: the rpe options moved under model.net")
    ) as err:
        check_moved_overrides(["model=performer", override])
    assert str(err.value).endswith(fix)
    check_moved_overrides(["rpe=exp", "model.net.rpe_kwargs.distance=l2"])  # the new keys pass
