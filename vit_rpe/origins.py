"""Which file set each value of a composed config.

    python -m vit_rpe.origins data=cifar10 model=performer              # every key
    python -m vit_rpe.origins data=cifar10 model=performer --key model.optimizer
    python -m vit_rpe.origins --config-name eval ckpt_path=x.ckpt --key data

Hydra composes a config by merging one file per entry of its defaults list, in order (``python -m
vit_rpe.train --info defaults`` lists them, ``--info defaults-tree`` shows who chose whom); the
command line's key=value come last. This asks Hydra for that list and those files and replays the
merge key by key, so each key is named with the last file (or override) that wrote it. Values are
shown as written there: an interpolation (``${data.image_size}``) stays one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from vit_rpe.utils.run import CONF_DIR


@dataclass(frozen=True)
class Origin:
    value: Any
    source: str  # "recipe/cifar10.yaml" or "the command line: model.optimizer.lr=3e-4"


def origins(
    overrides: Sequence[str] = (), config_name: str = "train", config_dir: str | None = None
) -> dict[str, Origin]:
    """Every leaf key of the composed ``config_name`` with overrides -> its value and the file or
    override that set it last. Uses the running Hydra app's search path when there is one."""
    with config_loader(config_dir) as loader:
        defaults = loader.compute_defaults_list(config_name, list(overrides), RunMode.RUN)
        # the search path with the run's hydra.searchpath additions, as the composed config records it
        composed = compose(config_name, list(overrides), return_hydra_config=True)
    sources = [s for s in composed.hydra.runtime.config_sources if s.schema == "file"]
    found: dict[str, Origin] = {}
    for default in defaults.defaults:
        name = f"{default.config_path}.yaml"
        source = next((s for s in sources if (Path(s.path) / name).is_file()), None)
        if default.config_path is None or source is None:
            continue  # Hydra's own configs (a package, not files), or an optional entry with no file
        loaded = OmegaConf.to_container(OmegaConf.load(Path(source.path) / name)) or {}
        body = {k: v for k, v in loaded.items() if k != "defaults"}
        label = name if source.provider == "main" else str(Path(source.path) / name)  # a user's tree: in full
        record(found, default.package or "", body, label)
    for override in defaults.config_overrides:
        key = override.key_or_group
        if override.is_delete():
            forget(found, key)
        else:
            record(found, key, override.value(), f"the command line: {override.input_line}")
    return found


def record(found: dict[str, Origin], key: str, value: Any, source: str) -> None:
    """Merge ``value`` at ``key`` as OmegaConf does: a mapping merges into what is there, anything
    else replaces it (and the keys under it)."""
    if isinstance(value, dict) and value:
        found.pop(key, None)  # a scalar (or null) replaced by a mapping
        for sub, item in value.items():
            record(found, f"{key}.{sub}" if key else str(sub), item, source)
        return
    if isinstance(value, dict) and any(k.startswith(key + ".") for k in found):
        return  # an empty mapping merged into a full one changes nothing
    forget(found, key)
    found[key] = Origin(value, source)


def forget(found: dict[str, Origin], key: str) -> None:
    for known in [k for k in found if k == key or k.startswith(key + ".")]:
        del found[known]


@contextmanager
def config_loader(config_dir: str | None) -> Iterator[ConfigLoader]:
    """The running app's config loader, or one for ``config_dir`` (default: this package's conf/)."""
    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def who_set(key: str) -> str | None:
    """Inside a composed run (the Hydra app, or a test's compose): the file or override that set
    ``key`` last; None outside one."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    main = [s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main" and s.schema == "file"]
    overrides = [*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task]
    config_dir = main[0] if main else None
    origin = origins(overrides, hydra_cfg.job.config_name or "train", config_dir).get(key)
    return origin.source if origin else None


def shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_rpe.origins", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="the overrides of the run, as given to vit_rpe.train")
    parser.add_argument("--config-name", default="train", help="train (default) or eval")
    parser.add_argument(
        "--key", action="append", default=[], help="show only these keys and the keys under them (repeatable)"
    )
    args = parser.parse_args(argv)
    wanted = args.key or [""]
    rows = [
        (key, shown(origin.value), origin.source)
        for key, origin in origins(args.overrides, args.config_name).items()
        if any(key == k or key.startswith(k + ".") or not k for k in wanted)
        and (args.key or not key.startswith("hydra."))
    ]
    width = max((len(f"{k}: {v}") for k, v, _ in rows), default=0)
    for key, value, source in sorted(rows):
        print(f"{f'{key}: {value}':<{width}}  # {source}")


if __name__ == "__main__":
    main()
