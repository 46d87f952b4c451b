"""Short names for runs and groups: what differs between them, the way the user asked for it.

A training run is named by the overrides that differ between the runs (only those it was given:
a key another run set is not named on a run that left it at its default), else by its model,
attention, RPE and data, else by its directory. An evaluation is named by the run whose checkpoint
it tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_rpe.report.groups import SEED_KEY
from vit_rpe.report.runs import Run, describe, relative

NO_OVERRIDES = "defaults"  # a run given no override among those that differ


def labels(
    runs: Sequence[Run], root: Path, seeds: bool = True, fallback: Sequence[str] | None = None
) -> list[str]:
    """One short, distinct name per run (``fallback`` or their directories where none is found).

    ``seeds=False`` names seed groups by their first runs: the seed of one of them says nothing.
    """
    fallbacks = dict(zip((run.dir for run in runs), fallback or [relative(run.dir, root) for run in runs]))
    trained = [run for run in runs if not run.checkpoint]
    found = training_labels(trained, seeds, [fallbacks[run.dir] for run in trained])
    names = dict(zip((run.dir for run in trained), found))

    evaluations = [run for run in runs if run.checkpoint]
    tested = [f"eval of {model_name(run, names, root)}" for run in evaluations]
    # evaluations of one checkpoint: told apart by their other overrides (data=...)
    others = distinct([overrides(run, seeds, skip=("ckpt_path",)) for run in evaluations])
    for i, (run, name) in enumerate(zip(evaluations, tested)):
        names[run.dir] = f"{name}, {others[i]}" if others and tested.count(name) > 1 else name
    return [names[run.dir] for run in runs]


def training_labels(runs: Sequence[Run], seeds: bool, fallback: Sequence[str]) -> list[str]:
    for items in ([overrides(run, seeds) for run in runs], [describe(run) for run in runs]):
        found = distinct(items)
        if found:
            return found
    return list(fallback)


def distinct(items: Sequence[dict[str, Any]]) -> list[str] | None:
    """``key=value`` of the keys whose values differ, each item naming only the keys it has;
    None unless that tells every item apart."""
    keys = dict.fromkeys(k for item in items for k in item)
    differing = [k for k in keys if len({str(item.get(k)) for item in items}) > 1]
    if not differing:
        return None
    found = [
        ", ".join(f"{k.rsplit('.', 1)[-1]}={short(item[k])}" for k in differing if item.get(k) is not None)
        or NO_OVERRIDES
        for item in items
    ]
    return found if len(set(found)) == len(found) else None


def overrides(run: Run, seeds: bool, skip: Sequence[str] = ()) -> dict[str, str]:
    """The run's command-line overrides; ``+variant=x`` is named ``variant=x``."""
    pairs = [o.split("=", 1) for o in run.overrides if "=" in o]
    named = {key.lstrip("+~"): value for key, value in pairs}
    return {k: v for k, v in named.items() if k not in skip and (seeds or k.rsplit(".", 1)[-1] != SEED_KEY)}


def model_name(run: Run, names: dict[Path, str], root: Path) -> str:
    """An evaluation's model: its training run's name here (or its directory) and checkpoint file,
    else the checkpoint's path."""
    ckpt = Path(run.checkpoint)
    source = run.trained_by
    if source is None:  # not found: the checkpoint as it was given
        return run.checkpoint
    if names.get(source.dir, NO_OVERRIDES) != NO_OVERRIDES:
        return f"{names[source.dir]} ({ckpt.name})"
    inside = source.dir.resolve().is_relative_to(root)
    return f"{relative(source.dir.resolve(), root) if inside else source.dir} ({ckpt.name})"


def short(value: Any) -> str:
    """Sampled numbers (an Optuna learning rate) to three significant digits."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.3g}"
