"""`scrapsort doctor`: what this device has and what is missing, before the line runs.

Reports the L4T release and its JetPack, the module, TensorRT, CUDA, the CUDA binding, power
mode and clocks, cameras and GPIO access. Changes nothing unless asked (--apply sets the
module's fastest power mode and locks the clocks, which needs root).
"""
from __future__ import annotations

import grp
import importlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

from jetson import board


def _cmd(args: List[str]) -> Optional[str]:
    if not shutil.which(args[0]):
        return None
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=15).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _module_version(name: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(name), "__version__", "installed")
    except Exception:
        return None


def checks() -> List[Tuple[str, bool, str]]:
    """(what, ok, detail) rows; ok=False rows say what to do."""
    rows = []
    release = board.l4t()
    rows.append(("Jetson L4T", release is not None,
                 release.describe() if release else "not a Jetson (fine on x86: ONNX Runtime or TensorRT for x86)"))
    if release:
        rows.append(("module", bool(board.module_id()), board.module_id() or "unknown: /proc/device-tree/compatible unreadable"))
    trt = _module_version("tensorrt")
    rows.append(("TensorRT", trt is not None, trt or "missing: JetPack ships it (python3-libnvinfer); needed for engines"))
    cuda_binding = _module_version("cuda.bindings") or _module_version("cuda")
    rows.append(("CUDA binding", cuda_binding is not None, cuda_binding or "missing: pip install cuda-python (match CUDA)"))
    nvcc = _cmd(["nvcc", "--version"])
    rows.append(("CUDA toolkit", nvcc is not None, nvcc.splitlines()[-1] if nvcc else "nvcc not on PATH (runtime may still be present)"))
    ort = _module_version("onnxruntime")
    rows.append(("ONNX Runtime", ort is not None, ort or "missing (only needed to run .onnx models)"))
    power = _cmd(["nvpmodel", "-q"])
    top = board.top_power_mode(board.power_modes())
    detail = (power or "nvpmodel not found").replace("\n", " ")
    rows.append(("power mode", power is not None,
                 detail + (f"; fastest here: {top.id} ({top.name}), `scrapsort doctor --apply` sets it" if top else "")))
    clocks = _cmd(["jetson_clocks", "--show"])
    rows.append(("clocks", clocks is not None, "jetson_clocks available" if clocks else "jetson_clocks not found"))
    cameras = sorted(str(p) for p in Path("/dev").glob("video*"))
    rows.append(("cameras", bool(cameras), ", ".join(cameras) or "no /dev/video*: check the camera and the video group"))
    chips = sorted(str(p) for p in Path("/dev").glob("gpiochip*"))
    writable = [c for c in chips if os.access(c, os.R_OK | os.W_OK)]
    rows.append(("GPIO", bool(writable), f"{len(writable)}/{len(chips)} gpiochips accessible" if chips else "no /dev/gpiochip*"))
    for group in ("video", "gpio"):
        try:
            members = grp.getgrnam(group).gr_mem
            rows.append((f"group {group}", True, f"members: {', '.join(members) or 'none'}"))
        except KeyError:
            rows.append((f"group {group}", False, f"no '{group}' group (make install adds the service user to it)"))
    return rows


def apply_performance() -> List[str]:
    """The module's fastest power mode (read from /etc/nvpmodel.conf: mode 0 is not the fastest
    on every module) and locked clocks (steady latency). Needs root on a Jetson."""
    done, steps = [], [["jetson_clocks"]]
    top = board.top_power_mode(board.power_modes())
    if top is not None:
        steps.insert(0, ["nvpmodel", "-m", str(top.id)])
    elif shutil.which("nvpmodel"):
        done.append(f"power mode unchanged: no MAXN or rated mode in {board.NVPMODEL_CONF}; list them with "
                    "`nvpmodel -p --verbose` and set one with `sudo nvpmodel -m <id>`")
    for args in steps:
        if shutil.which(args[0]):
            result = subprocess.run(args, capture_output=True, text=True)
            done.append(f"{' '.join(args)}: {'ok' if result.returncode == 0 else result.stderr.strip()}")
    return done or ["nothing to apply: nvpmodel/jetson_clocks not found (not a Jetson)"]


def report() -> str:
    return "\n".join(f"{'ok' if ok else 'MISSING':<8} {what:<14} {detail}" for what, ok, detail in checks())
