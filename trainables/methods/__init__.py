"""Methods: one file each, registered by name where they are defined.

Adding a method is one file here (a ``Method`` subclass decorated with :func:`register_method`), one space in
``spaces/`` and one test file. Importing this package imports every method module so the registry is complete.
"""

from __future__ import annotations

import importlib
import pkgutil

from trainables.config import ConfigError
from trainables.methods.base import Batch, DataInfo, Encoder, Method, RunShape, unwrap

__all__ = ["METHODS", "Batch", "DataInfo", "Encoder", "Method", "RunShape", "get_method", "register_method", "unwrap"]

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``METHODS[cls.name]``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice ({METHODS[cls.name]} and {cls})")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; ConfigError listing the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"`method` must be one of {', '.join(sorted(METHODS))}; got method={name!r}") from None


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
