"""python -m vit_rpe.bench favor: the kernel's timings and ratios, written where asked."""

from __future__ import annotations

import json

from tests.helpers import needs_compiler
from vit_rpe.bench import favor as bench_favor


@needs_compiler
def test_bench_favor_times_every_path_and_says_where_performer_would_use_it(tmp_path, capsys):
    argv = [
        "--cases",
        "quickstart",
        "dim64_m256",
        "--min-time",
        "0.01",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert bench_favor.main(argv) == 0
    cases = json.loads((tmp_path / "favor_threads1.json").read_text())["cases"]
    assert list(cases) == ["quickstart", "dim64_m256"]
    quick = cases["quickstart"]
    assert quick["shape"] == dict(batch=32, heads=4, tokens=16, head_dim=24, features=76)  # m = int(24 ln 24)
    assert min(quick["c_ms"], quick["pytorch_ms"], quick["sdpa_ms"]) > 0
    assert quick["pytorch_over_c"] == quick["pytorch_ms"] / quick["c_ms"]
    assert quick["used"] is True  # with model.net.attention_kwargs.native_kernel=true
    assert cases["dim64_m256"]["used"] is False  # beyond MAX_FEATURES
    assert "quickstart" in capsys.readouterr().out
