"""python -m vit_rpe.bench share: the runs it starts and the table it writes (no timing here: the
measurement itself is for an idle machine, docs/benchmarks.md)."""

from __future__ import annotations

import json

from vit_rpe.bench import share


def test_each_choice_runs_alone_then_in_pairs_with_its_threads_and_wait_policy(tmp_path, monkeypatch):
    started = []

    class Done:
        def wait(self):
            return 0

    def fake_start(overrides, threads, wait, run_dir):
        started.append((run_dir.name, threads, wait, overrides))
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"seconds_per_epoch": 0.5}))
        return Done(), 0.0

    monkeypatch.setattr(share, "start", fake_start)
    clock = iter([10.0, 30.0, 31.0])  # each run starts at 0 (fake_start): alone 10 s, the pair 30 and 31 s
    monkeypatch.setattr(share.time, "perf_counter", lambda: next(clock))
    assert (
        share.main(["--threads", "1", "--wait", "PASSIVE", "--out", str(tmp_path), "trainer.max_epochs=2"])
        == 0
    )
    assert [(name, threads, wait) for name, threads, wait, _ in started] == [
        ("alone", "1", "PASSIVE"),
        ("pair0", "1", "PASSIVE"),
        ("pair1", "1", "PASSIVE"),
    ]
    assert started[0][3] == ["experiment=quickstart", "trainer.max_epochs=2"]
    record = json.loads((tmp_path / "share.json").read_text())["records"][0]
    assert [record["alone"]["wall_s"], *(p["wall_s"] for p in record["pair"])] == [10.0, 30.0, 31.0]
    assert record["worst_slowdown"] == 3.1
    assert "| 1 | PASSIVE | 10 (0.50) | 30 (0.50), 31 (0.50) | 3.10x |" in share.table([record])
