"""The attention benchmark runs end to end, and its kron floor does exactly the products it claims."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vit_rpe.bench import attention as bench_attention
from vit_rpe.bench.common import multiply_adds
from vit_rpe.models.kron import tiled_exp_attend


def flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("grid, branches", [((16, 16), 2), ((24, 16), 2), ((16, 8), 1), ((8, 8), 0)])
def test_kron_floor_is_four_state_products_per_token_and_branch(grid, branches):
    """Per branch (an axis of more than one tile): each token's fk (x) [v1, v1] into a strip state
    and fq, twice, contracted with one: 2 * (2 m e) multiply-adds per token; plus the cls terms.
    Kron does these and more, so the floor counts fewer operations than kron itself."""
    b, h, m, e = 2, 3, 6, 5
    n = grid[0] * grid[1]
    fq, fk, v1 = torch.rand(b, h, 1 + n, m), torch.rand(b, h, 1 + n, m), torch.rand(b, h, 1 + n, e)
    floor = flops(bench_attention.KronFloor(grid).masked_kernel_matmul, fq, fk, v1)
    cls_terms = b * h * 2 * m * e * (n + 2)  # fk^T v1 over every token, then the cls query
    assert floor == branches * 8 * b * h * n * m * e + cls_terms
    if branches:
        kron = flops(tiled_exp_attend, fq[:, :, 1:], fk[:, :, 1:], v1[:, :, 1:], torch.rand(h), grid)
        assert floor - cls_terms < kron


def test_attention_benchmark_writes_records_and_plot(tmp_path, capsys):
    cases = ["performer", "performer+exp/kron", "performer+exp/floor", "linear+exp/fft"]
    assert bench_attention.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cases", *cases]) == 0
    result = json.loads((tmp_path / "attention.json").read_text())
    records = result["records"]
    names = [(bench_attention.case_name(r["kernel"], r["rpe"], r["impl"]), r["grid"]) for r in records]
    assert sorted(names) == sorted((case, grid) for case in cases for grid in (4, 8))
    assert all(r["time_s"] > 0 and r["reps"] >= 1 for r in records)
    gmac = {name: r["gmac"] for name, r in zip(names, records)}
    assert 0 < gmac[("performer+exp/floor", 8)] < gmac[("performer+exp/kron", 8)]
    assert 0 < gmac[("performer", 8)] < gmac[("performer+exp/kron", 8)]
    assert result["environment"]["matmul_gmac_per_s"] > 0
    assert result["environment"]["nb_features"] == bench_attention.build_kernel("performer", 16).nb_features
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "8x8: performer+exp/kron / performer " in out and "performer+exp/floor / performer " in out
    assert "8x8, 2x plain Performer = " in out


def test_multiply_adds_counts_matrix_products_forward_and_backward():
    a = torch.rand(5, 7, requires_grad=True)
    b = torch.rand(7, 3)
    assert multiply_adds(lambda: a @ b) == 5 * 7 * 3
    # backward: only a needs a gradient, g @ b^T (5 x 3 x 7); the elementwise exp is not counted
    assert multiply_adds(lambda: (a @ b).exp().sum().backward()) == 2 * 5 * 7 * 3


def test_rates_for_target_divide_the_work_by_the_time_allowed():
    records = [
        {"kernel": "performer", "rpe": "none", "impl": "-", "grid": 64, "time_s": 0.010, "gmac": 0.1},
        {"kernel": "performer", "rpe": "exp", "impl": "kron", "grid": 64, "time_s": 0.100, "gmac": 0.9},
    ]
    (line,) = bench_attention.rates_for_target(records, matmul_gmac_s=40.0)
    # 2x plain = 20 ms for 0.9 GMAC: 45 GMAC/s needed, 9 reached
    assert line == (
        "64x64, 2x plain Performer = 20.0 ms: kron 0.9 GMAC: needs 45.0 GMAC/s (runs at 9.0); "
        "one large matmul: 40.0 GMAC/s"
    )
