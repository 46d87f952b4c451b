"""The model and epoch benchmarks run end to end and record the ratios they print."""

from __future__ import annotations

import json

import pytest
import torch

from vit_rpe.bench import epoch as bench_epoch
from vit_rpe.bench import model as bench_model


def test_model_benchmark_times_quickstart_models_in_turns(tmp_path, capsys):
    argv = ["--size", "quickstart", "--quick", "--threads", "1", "--out", str(tmp_path)]
    assert bench_model.main(argv) == 0
    result = json.loads((tmp_path / "model_quickstart_threads1.json").read_text())
    assert list(result["models"]) == ["softmax", "performer+exp"]
    softmax, performer = result["models"]["softmax"], result["models"]["performer+exp"]
    assert performer["params"] == softmax["params"] + 4 * 4  # one exp rate per head and layer
    assert result["config"]["img_size"] == 8 and result["config"]["pool"] == "mean"
    assert "performer+exp / softmax step time: " in capsys.readouterr().out


def test_model_benchmark_reports_best_and_median_rounds(tmp_path, monkeypatch, capsys):
    """With known step times (softmax rounds 10, 12, 30 ms; Performer 15, 24, 60 ms) the record
    holds the hand-computed figures: best 10 and 15 ms, medians 12 and 24 ms, ratios 1.5 and 2."""
    # each model's first call is its warm-up (1 s: never counted)
    times = {"softmax": iter([1, 0.010, 0.012, 0.030]), "performer+exp": iter([1, 0.015, 0.024, 0.060])}

    def timed(model, opt, images, labels, steps, device):
        is_performer = any(isinstance(m, bench_model.PerformerAttention) for m in model.modules())
        return next(times["performer+exp" if is_performer else "softmax"]) * steps

    monkeypatch.setattr(bench_model, "train_steps", timed)
    argv = ["--size", "quickstart", "--rounds", "3", "--steps", "2", "--threads", "1", "--out", str(tmp_path)]
    assert bench_model.main(argv) == 0
    result = json.loads((tmp_path / "model_quickstart_threads1.json").read_text())
    softmax, performer = result["models"]["softmax"], result["models"]["performer+exp"]
    assert (softmax["step_ms"], softmax["step_ms_median"]) == pytest.approx((10, 12))
    assert (performer["step_ms"], performer["step_ms_median"]) == pytest.approx((15, 24))
    assert result["step_time_ratios"]["performer+exp"] == pytest.approx({"best": 1.5, "median": 2.0})
    assert "performer+exp / softmax step time: 1.50x (median rounds 2.00x)" in capsys.readouterr().out


def test_favor_floor_backward_is_the_gradient_of_its_forward():
    """The floor does a real backward's products: its gradients are those of its own formula."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(7, 4, dtype=torch.float64) * 0.5
    weights = torch.randn(2, 3, 5, 4, dtype=torch.float64)

    def plain(q, k, v):
        return ((q @ w.T).exp() @ (k @ w.T).exp().transpose(-2, -1)) @ v

    got = bench_model.FavorFloor.apply(q, k, v, w)
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    expected = plain(q, k, v)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_floor_model_swaps_every_performer_kernel(tmp_path):
    net = bench_model.net_of(bench_model.SIZES["quickstart"])
    floor = bench_model.build("performer+exp/floor", net, "auto")
    kernels = [m.kernel for m in floor.modules() if isinstance(m, bench_model.MultiHeadSelfAttention)]
    assert len(kernels) == net["depth"]
    assert all(isinstance(kernel, bench_model.FloorAttention) for kernel in kernels)
    assert kernels[0].nb_features == 76  # int(24 ln 24), as the model it stands in for
    argv = ["--size", "quickstart", "--quick", "--threads", "1", "--out", str(tmp_path)]
    assert bench_model.main([*argv, "--models", "softmax", "performer+exp/floor"]) == 0
    assert (tmp_path / "model_quickstart_softmax_performer-exp-floor_threads1.json").exists()
    with pytest.raises(SystemExit, match="only Performer models have a floor"):
        bench_model.build("softmax+exp/floor", net, "auto")


def test_model_benchmark_file_names():
    args = bench_model.argparse.Namespace(size="seed003", models=["softmax", "timm"], threads=None)
    assert bench_model.json_name(args) == "model.json"  # the recorded ours-against-timm file
    args.threads = 1
    assert bench_model.json_name(args) == "model_threads1.json"
    args.models = ["performer+exp"]
    assert bench_model.json_name(args) == "model_seed003_performer-exp_threads1.json"


def test_epoch_benchmark_runs_the_cli_path_in_turns(tmp_path, capsys):
    """Two tiny quickstart runs, two epochs each: the first warms up, the second is timed."""
    tiny = [
        "model.net.depth=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "logger=none",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.root_dir={tmp_path}",
    ]
    argv = ["--epochs", "2", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]
    argv += ["--run", "model=vit", "--run", "model=linear rpe=exp"]
    assert bench_epoch.main([*argv, *tiny]) == 0
    result = json.loads((tmp_path / "epoch_quickstart_threads1.json").read_text())
    assert list(result["runs"]) == ["model=vit", "model=linear rpe=exp"]
    vit, linear = result["runs"]["model=vit"], result["runs"]["model=linear rpe=exp"]
    assert vit["epochs"] == linear["epochs"] == 1
    assert linear["wall_s_median"] > 0 and linear["cpu_s_median"] > 0 and linear["cpu_ratio"] > 0
    assert "model=linear rpe=exp" in capsys.readouterr().out
