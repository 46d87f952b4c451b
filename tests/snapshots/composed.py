"""The composed config of every shipped combination the tests and the README use, as plain data.

``python -m tests.snapshots.composed`` rewrites composed.json (only when the config tree changes on
purpose); tests/test_config_snapshot.py compares today's tree with it, key moves applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SNAPSHOT = Path(__file__).with_name("composed.json")

DATA = ("digits", "mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet", "hf", "image_folder")
MODELS = ("vit", "performer", "linear", "timm_vit", "hf_vit")
SCRATCH = ("vit", "performer", "linear")
RPES = ("none", "general", "exp", "poly", "rope")
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
VARIANTS = ("softmax_patch2", "linear_patch1", "linear_conv_stem")
NETS = ("tiny", "small", "base", "seed003", "seed001")
DEBUG = ("default", "fdr", "limit", "overfit")


def combinations() -> dict[str, list[str]]:
    """label -> overrides. Labels are the overrides as typed; a key renamed since is written in
    its new name by the test (RENAMED_OVERRIDES there)."""
    combos: list[list[str]] = [[]]
    combos += [[f"data={d}", f"model={m}"] for d in DATA for m in MODELS]
    combos += [[f"model={m}", f"rpe={r}"] for m in SCRATCH for r in RPES]
    combos += [["data=cifar10", f"model={m}", f"rpe={r}"] for m in SCRATCH for r in RPES]
    combos += [[f"experiment={e}"] for e in EXPERIMENTS]
    combos += [["experiment=cifar10_attention_study", f"variant={v}"] for v in VARIANTS]
    combos += [[f"data={d}", f"model/net={n}"] for d in ("digits", "cifar10") for n in NETS]
    combos += [["experiment=quickstart", f"debug={d}"] for d in DEBUG]
    combos += [
        ["hparams_search=optuna"],
        ["model=performer", "rpe=exp", "data=cifar10", "trainer=gpu"],
        ["model=linear", "rpe=poly", "rpe.distance=l2", "data=mnist"],
        ["model=performer", "model.net.attention_kwargs.nb_features=64", "rpe=general", "rpe.impl=fft"],
        ["experiment=quickstart", "model=performer", "rpe=exp"],
        ["experiment=mnist_rpe_cpu_study", "model=performer", "rpe=exp", "seed=1"],
        ["model=timm_vit", "model.net.name=vit_small_patch16_224", "data=cifar10"],
        ["model=hf_vit", "data=tiny_imagenet", "trainer=gpu"],
        ["model=vit", "rpe=rope", "rpe.variant=mixed"],
        ["data=svhn", "model=performer", "rpe=rope"],
    ]
    return {" ".join(c) or "(defaults)": c for c in combos}


def plain(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of ``cfg`` by its dotted key, resolved where it can be (a run directory or a
    time cannot be outside a run: those stay as written), plus the sweep settings of hydra."""
    leaves: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if OmegaConf.is_dict(node) and len(node) > 0:
            for key in node:
                walk(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
            return
        try:
            value = OmegaConf.select(cfg, prefix, throw_on_missing=False)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # an interpolation only a running job resolves
            value = node._value() if hasattr(node, "_value") else str(node)
        leaves[prefix] = "???" if OmegaConf.is_missing(cfg, prefix) else value

    sweep: dict[str, Any] = {"hydra.mode": str(cfg.hydra.mode), "hydra.sweeper.params": None}
    if cfg.hydra.sweeper.get("params"):
        sweep["hydra.sweeper.params"] = {str(k): str(v) for k, v in cfg.hydra.sweeper.params.items()}
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    walk(cfg, "")
    return {**dict(sorted(leaves.items())), **sweep}


def compose_all(overrides_of: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    out = {}
    GlobalHydra.instance().clear()
    # outside a run, as in a fresh process: a run's config left by an earlier test would resolve
    # ${hydra:runtime.output_dir}
    running, HydraConfig.instance().cfg = HydraConfig.instance().cfg, None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for label, overrides in overrides_of.items():
                out[label] = plain(compose("train", overrides=overrides, return_hydra_config=True))
    finally:
        HydraConfig.instance().cfg = running
        GlobalHydra.instance().clear()
    return out


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(compose_all(combinations()), indent=1, default=str) + "\n")
    print(f"wrote {SNAPSHOT}")
