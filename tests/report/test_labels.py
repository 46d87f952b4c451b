"""Labels name what differs between runs."""

from __future__ import annotations

from tests.report.helpers import net, write_run
from vit_rpe.report import labels, load_run


def test_labels_name_what_differs(tmp_path):
    runs = [
        load_run(
            write_run(tmp_path / str(i), {}, overrides=[f"model.optimizer.lr={lr}", "trainer=cpu"], **net())
        )
        for i, lr in enumerate((0.000123456, 0.002))
    ]
    assert labels(runs, tmp_path) == ["lr=0.000123", "lr=0.002"]
    plain = [load_run(write_run(tmp_path / f"p{a}", {}, **net(a))) for a in ("softmax", "linear")]
    assert labels(plain, tmp_path) == ["attention=softmax", "attention=linear"]
    same = [load_run(write_run(tmp_path / f"s{i}", {}, **net())) for i in range(2)]
    assert labels(same, tmp_path) == ["s0", "s1"]
