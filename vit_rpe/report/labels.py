"""Short names for runs and groups: what differs between them, the way the user asked for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_rpe.report.groups import SEED_KEY
from vit_rpe.report.runs import Run, describe, relative


def labels(
    runs: Sequence[Run], root: Path, seeds: bool = True, fallback: Sequence[str] | None = None
) -> list[str]:
    """Short names: what differs between the runs (their overrides, else their names, else
    ``fallback`` or their directories).

    ``seeds=False`` names seed groups by their first runs: the seed of one of them says nothing.
    """

    def differing(items: list[dict[str, Any]]) -> list[str]:
        keys = dict.fromkeys(k for item in items for k in item)
        return [k for k in keys if len({str(item.get(k)) for item in items}) > 1]

    def pick(items: list[dict[str, Any]], keys: list[str]) -> list[str]:
        return [", ".join(f"{k.rsplit('.', 1)[-1]}={short(item.get(k))}" for k in keys) for item in items]

    def overrides(run: Run) -> dict[str, str]:
        pairs = [o.split("=", 1) for o in run.overrides if "=" in o]
        named = {key.lstrip("+~"): value for key, value in pairs}  # +variant=x is named variant=x
        return {k: v for k, v in named.items() if seeds or k.rsplit(".", 1)[-1] != SEED_KEY}

    for items in ([overrides(run) for run in runs], [describe(run) for run in runs]):
        keys = differing(items)
        if keys:
            found = pick(items, keys)
            if len(set(found)) == len(found):
                return found
    return list(fallback) if fallback else [relative(run.dir, root) for run in runs]


def short(value: Any) -> str:
    """Sampled numbers (an Optuna learning rate) to three significant digits."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.3g}"
