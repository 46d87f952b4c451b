"""The data benchmark runs end to end on generated fixtures and records its rows."""

from __future__ import annotations

import json

import pytest

from vit_rpe.bench import data as bench_data


@pytest.mark.slow
def test_data_benchmark_writes_rows(tmp_path):
    argv = [
        "--quick",
        "--only",
        "cifar10",
        "--vit-steps",
        "1",
        "--epochs",
        "1",
        "--max-batches",
        "2",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    assert bench_data.main(argv) == 0
    result = json.loads((tmp_path / "data.json").read_text())
    assert result["vit_images_per_s"] > 0
    assert [r["datamodule"] for r in result["rows"]] == ["cifar10"] * 4
    assert all(r["images_per_s"] > 0 and r["x_vit"] > 0 for r in result["rows"])
