"""Optional packages, handled one way: import on use, or exit 69 naming what to install.

The edge runtime installs without torch, pymodbus, paho or TensorRT; a command that needs
one of them says which pip extra (or which system package) brings it.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

from edge.errors import MissingDependencyError

OWN_PACKAGES = ("edge", "train", "calibration", "jetson")


def require(module: str, extra: Optional[str] = None, fix: Optional[str] = None) -> ModuleType:
    """Import `module`. If it, or a package it imports, is not installed: MissingDependencyError
    saying `fix` (the whole message), or else naming the pip extra `extra` that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or module).split(".")[0]
        if missing in OWN_PACKAGES:
            raise  # our own code is broken: a bug, not an install step
        if fix:
            raise MissingDependencyError(fix) from None
        raise MissingDependencyError(f"{module} needs the package '{missing}', which is not installed: pip install "
                                     f"'.[{extra}]' in the project folder (`make setup` installs every extra)") from None
