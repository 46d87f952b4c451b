"""Named classes of one kind (attention kernels, RPE families) that user code can extend.

A class joins by ``@registry.register("name")`` in any module, or is named from the command line
by its import path, ``package.module:Class`` (or Hydra's ``package.module.Class``), so a user adds
a kernel or a mask family without editing vit_rpe: ``model.net.attention=my_kernels:MyAttention``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from hydra.utils import get_class

from vit_rpe.utils.errors import ConfigError


class Registry(Mapping[str, type]):
    """name -> class; ``resolve`` also takes an import path. Every class is a subclass of ``base``."""

    def __init__(self, kind: str, key: str, base: type | tuple[type, ...]):
        self.kind = kind  # what the classes are, for messages
        self.key = key  # the config key that names one
        self.base = base
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: ``@KERNELS.register("cosine")``. Registering a name twice replaces it
        only with the same class (a module imported again), never silently with another."""

        def add(cls: type) -> type:
            self.check(cls, name)
            known = self._classes.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({known.__module__}.{known.__qualname__})"
                )
            self._classes[name] = cls
            return cls

        return add

    def resolve(self, name: str) -> type:
        """The class registered as ``name``, or imported from the path ``name``."""
        if name in self._classes:
            return self._classes[name]
        if ":" not in name and "." not in name:
            raise ConfigError(
                f"unknown {self.kind} {name!r}: set {self.key} to one of {sorted(self._classes)}, "
                "or to a class of your own by its import path, package.module:Class"
            )
        try:
            cls = get_class(name.replace(":", "."))
        except Exception as err:  # Hydra wraps the ImportError or AttributeError
            raise ConfigError(
                f"{self.key}={name!r}: cannot import it ({err}); check the path and PYTHONPATH"
            ) from None
        self.check(cls, name)
        return cls

    def check(self, cls: type, name: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            bases = self.base if isinstance(self.base, tuple) else (self.base,)
            wanted = " or ".join(f"{b.__module__}.{b.__name__}" for b in bases)
            raise ConfigError(f"{self.key}={name!r} is not a subclass of {wanted}")
