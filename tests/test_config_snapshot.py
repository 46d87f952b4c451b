"""The config tree's refactors change where values are written, not what a run gets: every shipped
combination composes to the recorded snapshot (tests/snapshots/composed.json), apart from the key
moves listed in docs/configs.md, applied here by ``moved``."""

from __future__ import annotations

import json

import pytest

from tests.snapshots.composed import SNAPSHOT, combinations, compose_all

# old command-line key -> new one (docs/configs.md, Key moves)
RENAMED_OVERRIDES = {
    "rpe.distance": "model.net.rpe_kwargs.distance",
    "rpe.impl": "model.net.rpe_kwargs.impl",
    "rpe.init": "model.net.rpe_kwargs.init",
    "rpe.variant": "model.net.rpe_kwargs.variant",
    "rpe.theta": "model.net.rpe_kwargs.theta",
}
SWEEPS = {"experiment=mnist_vit_small_pretrained_vs_scratch"}  # gained hydra.mode: MULTIRUN


def renamed(override: str) -> str:
    key, _, value = override.partition("=")
    for old, new in RENAMED_OVERRIDES.items():
        if key == old or key.startswith(old + "."):
            return f"{new}{key[len(old) :]}={value}"
    return override


def moved(label: str, old: dict) -> dict:
    """The snapshot's config with the documented key moves applied."""
    new = {k: v for k, v in old.items() if not k.startswith("rpe.")}  # now model.net.rpe(_kwargs)
    new["threads"] = None  # torch's CPU threads: the default, from the usable CPUs
    for part in ("optimizer", "scheduler"):
        if f"model.{part}._target_" in new:
            new[f"model.{part}._partial_"] = True
    if new.get("model.net.attention") == "performer":  # the C kernel became an opt-in
        new["model.net.attention_kwargs.native_kernel"] = False
    if new.get("model.net.rpe") == "rope":  # its options sit in rpe_kwargs, no longer in its init
        init = new.pop("model.net.rpe_kwargs.init") or {}
        new["model.net.rpe_kwargs.init"] = {}
        new.update({f"model.net.rpe_kwargs.{k}": v for k, v in init.items()})
    if label in SWEEPS:
        new["hydra.mode"] = "RunMode.MULTIRUN"
    return new


def flat(config: dict) -> dict:
    """Dict values spread into dotted leaves: an interpolated block (``init: ${rpe.init}``) was
    recorded as one value, the same block written in place as several."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and not key.startswith("hydra."):
            out.update(flat({f"{key}.{k}": v for k, v in value.items()}))
        else:
            out[key] = value
    return out


COMBINATIONS = combinations()


def in_default_tests(label: str) -> bool:
    """The defaults, every experiment and the from-scratch models with each RPE are checked by
    ``make test``; the grids of data x model, data x network and the rest (two thirds of the
    compositions, a third of a second each) by ``make test-full``."""
    overrides = COMBINATIONS[label]
    return not overrides or overrides[0].startswith(("experiment=", "model="))


@pytest.mark.parametrize(
    "label",
    [
        pytest.param(label, marks=() if in_default_tests(label) else pytest.mark.slow)
        for label in COMBINATIONS
    ],
)
def test_composed_config_matches_the_snapshot(label):
    # one composition a test, not all of them in a shared fixture: each pytest worker would compose all
    composed = compose_all({label: [renamed(o) for o in COMBINATIONS[label]]})[label]
    expected = flat(moved(label, json.loads(SNAPSHOT.read_text())[label]))
    got = flat(json.loads(json.dumps(composed, default=str)))
    changed = {k: (expected.get(k, "<absent>"), got.get(k, "<absent>")) for k in expected.keys() | got.keys()}
    changed = {k: v for k, v in sorted(changed.items()) if v[0] != v[1]}
    assert not changed, f"{label}: (snapshot, now) differ at {changed}"
