"""W&B without network: offline when there is no key, what the offline run holds (config, metrics,
test predictions, checkpoints), and one run per job of a multirun, grouped by the sweep."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_train_main
from tests.helpers import SWEEP_FAST
from vit_rpe.callbacks import predictions
from vit_rpe.loggers import choose_wandb_mode, has_wandb_api_key
from vit_rpe.train import train
from vit_rpe.utils.run import run_job

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of CRC-framed chunks


def read_wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` file, as ``wandb sync`` reads them."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def item_key(item) -> str:
    return item.key or ".".join(item.nested_key)


def offline_run(run_dir: Path, wait_s: float = 20.0) -> dict:
    """What an offline run recorded: its run record, config, history rows, summary, artifacts, exit.

    W&B's service process may write the exit record just after ``finish()`` returns: wait for it.
    """
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"one W&B run per job, found {files}"
    deadline = time.monotonic() + wait_s
    while True:
        out = read_offline_run(files[0])
        if "exit_code" in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def read_offline_run(path: Path) -> dict:
    out = {"config": {}, "history": [], "summary": {}, "artifacts": [], "dir": path.parent}
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update if u.key})
        elif kind == "history":
            out["history"].append({item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({item_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    """A user who never ran `wandb login`: no key, no netrc, no WANDB_MODE."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))


def test_mode_offline_without_key_or_network_explicit_mode_wins(no_wandb_credentials, monkeypatch, tmp_path):
    assert not has_wandb_api_key()
    assert choose_wandb_mode()[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == (None, "WANDB_MODE=disabled")
    monkeypatch.delenv("WANDB_MODE")

    netrc = tmp_path / "home" / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_wandb_api_key()
    # A key but no server: port 9 on this machine refuses at once.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    mode, reason = choose_wandb_mode()
    assert mode == "offline" and "cannot be reached" in reason
    assert choose_wandb_mode(offline=True)[0] == "offline"
    assert choose_wandb_mode(offline=False)[0] == "online"


def test_offline_run_holds_config_metrics_predictions_and_checkpoints(no_wandb_credentials, train_config):
    cfg = train_config("logger=wandb", "tags=[digits,test]", "logger.wandb.log_model=true")
    metrics = run_job(train, cfg)  # as the CLI runs it: the W&B run is finished at the end

    import wandb

    assert wandb.run is None, "the job's W&B run is finished"
    run_dir = Path(cfg.paths.output_dir)
    got = offline_run(run_dir)
    assert got["run"].job_type == "train" and list(got["run"].tags) == ["digits", "test"]
    assert got["run"].run_group == "", "a single run has no group"
    assert got["run"].display_name == run_dir.name
    config = got["config"]
    assert config["model"]["net"]["embed_dim"] == 32 and config["data"]["image_size"] == 8
    assert config["output_dir"] == str(run_dir) and "git_commit" in config
    assert "${" not in json.dumps(config["model"]), "the logged config is resolved"

    val = [row["val/acc"] for row in got["history"] if "val/acc" in row]
    assert val and val[-1] == pytest.approx(metrics["val/acc"])
    assert got["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    logged = {key.split(".")[0] for key in got["summary"]}  # tables are summarised as path, nrows, ...
    assert {"test/predictions", "test/confusion_matrix_table"} <= logged
    tables = {p.name.split("_")[0]: p for p in (got["dir"] / "files" / "media" / "table" / "test").iterdir()}
    predictions = json.loads(tables["predictions"].read_text())
    assert predictions["columns"] == ["image", "target", "prediction", "confidence", "correct"]
    assert len(predictions["data"]) == 64
    assert any(a.type == "model" for a in got["artifacts"]), "log_model=true logs the checkpoint"
    assert got["exit_code"] == 0
    # The CSV log that `vit_rpe.report` reads is still there.
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_multirun_jobs_are_separate_runs_grouped_by_sweep(no_wandb_credentials, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep_2026-01-01"
    fast = (o for o in SWEEP_FAST if not o.startswith("model.net.depth="))
    args = ("-m", "logger=wandb", "model.net.depth=1,2", *fast, "callbacks.wandb_predictions=null")
    assert run_train_main(*args, f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch) == 0
    runs = [offline_run(sweep / job) for job in ("0", "1")]
    assert [r["run"].run_group for r in runs] == [sweep.name, sweep.name]
    assert runs[0]["run"].run_id != runs[1]["run"].run_id
    assert [r["config"]["model"]["net"]["depth"] for r in runs] == [1, 2]
    name = runs[0]["run"].display_name  # the job's number and overrides
    assert name.startswith("0: ") and "model.net.depth=1" in name
    assert [r["exit_code"] for r in runs] == [0, 0]


def test_test_predictions_use_the_test_step_logits(monkeypatch):
    """The callback reads the logits test_step returns; it runs the model itself only without them."""
    monkeypatch.setattr(predictions, "wandb_loggers", lambda trainer: ["a wandb logger"])
    calls = []

    def model(images):
        calls.append(images.shape[0])
        return torch.zeros(images.shape[0], 3)

    callback = predictions.WandbTestPredictions(num_samples=2)
    images, targets = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    logits = torch.eye(3)[[0, 1, 2, 2]] * 5
    callback.on_test_batch_end(None, model, {"logits": logits}, (images, targets), 0)
    assert calls == [] and torch.cat(callback.predictions).tolist() == [0, 1, 2, 2]
    assert len(callback.samples) == 2
    callback.on_test_batch_end(None, model, None, (images, targets), 1)
    assert calls == [4] and len(callback.predictions) == 2
