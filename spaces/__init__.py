"""Search spaces: define-by-run functions ``space(trial, fixed) -> dict`` (see ARCHITECTURE.md).

``load_space("supcon")`` imports ``spaces/supcon.py``; ``load_space("path/to/my_space.py")`` imports a user's file
exposing the same ``space`` function. ``list_spaces()`` names the bundled ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from spaces._describe import describe_space
from trainables.config import ConfigError

__all__ = ["SpaceModule", "describe_space", "list_spaces", "load_space"]


@dataclass(frozen=True)
class SpaceModule:
    """A loaded space: its name, the define-by-run function and its optional first points."""

    name: str
    module: ModuleType

    @property
    def space(self):
        return self.module.space

    @property
    def points_to_evaluate(self) -> list[dict[str, Any]]:
        from trainables.trial import typed_settings

        return [typed_settings(p) for p in getattr(self.module, "POINTS_TO_EVALUATE", [])]

    @property
    def trials(self) -> int:
        """Default number of configurations to sample (``TRIALS``, else 20)."""
        return int(getattr(self.module, "TRIALS", 20))

    @property
    def fixed(self) -> dict[str, Any]:
        """Settings the space fixes for every trial (``FIXED``); the user's ``--set`` values override them."""
        from trainables.trial import typed_settings

        return typed_settings(getattr(self.module, "FIXED", {}))

    @property
    def perturbable(self) -> tuple[str, ...]:
        """Settings a population scheduler (``--scheduler pbt|pb2``) may change mid-run (``PERTURBABLE``): only
        ones the loop and the method read afresh at every step (lr, temperatures, loss weights, EMA momenta)."""
        return tuple(getattr(self.module, "PERTURBABLE", ()))

    @property
    def description(self) -> str:
        return getattr(self.module, "DESCRIPTION", (self.module.__doc__ or "").strip().splitlines()[0])


def list_spaces() -> list[str]:
    """Names of the bundled spaces (modules of this package not starting with an underscore)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_space(name_or_path: str) -> SpaceModule:
    """Import a bundled space by name, or a user's Python file by path; ConfigError listing choices otherwise."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        path = Path(name_or_path).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"`space` file {str(path)!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"csweep_user_space_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # the searcher's saved state refers to space() by module name
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a broken user file is a usage error, reported in one line
            del sys.modules[spec.name]
            raise ConfigError(f"`space` file {str(path)!r} failed to import: {type(e).__name__}: {e}") from e
        name = path.stem
    else:
        if name_or_path not in list_spaces():
            raise ConfigError(f"`space` must be one of {', '.join(list_spaces())} or a path to a .py file; "
                              f"got space={name_or_path!r}")
        module = importlib.import_module(f"{__name__}.{name_or_path}")
        name = name_or_path
    if not callable(getattr(module, "space", None)):
        raise ConfigError(f"`space` {name_or_path!r} must define a function space(trial, fixed) -> dict")
    return SpaceModule(name=name, module=module)
