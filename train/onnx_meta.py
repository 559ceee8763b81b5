"""Read and write the scrapsort metadata stored inside ONNX files (no torch needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import onnx


def add_metadata(proto: onnx.ModelProto, metadata: Dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value


def stamp(path: Path, metadata: Dict[str, str]) -> None:
    """Add/overwrite metadata keys of an ONNX file in place."""
    proto = onnx.load(str(path))
    add_metadata(proto, metadata)
    onnx.save(proto, str(path))


def input_name(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name
