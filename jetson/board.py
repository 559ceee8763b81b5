"""What Jetson this is: L4T release -> JetPack -> TensorRT, the module id, the power modes.

Read from files the board support package writes (paths are parameters so the parsers are
tested on recorded contents): /etc/nv_tegra_release, /proc/device-tree/compatible and
/etc/nvpmodel.conf.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

RELEASE_FILE = Path("/etc/nv_tegra_release")
COMPATIBLE_FILE = Path("/proc/device-tree/compatible")
NVPMODEL_CONF = Path("/etc/nvpmodel.conf")

# L4T release -> (JetPack, the TensorRT it ships). From NVIDIA's JetPack archive notes.
JETPACK = {
    "35.1.0": ("5.0.2", "8.4.1"), "35.2.1": ("5.1", "8.5.2"), "35.3.1": ("5.1.1", "8.5.2"),
    "35.4.1": ("5.1.2", "8.5.2"), "35.5.0": ("5.1.3", "8.5.2"), "35.6.0": ("5.1.4", "8.5.2"),
    "35.6.1": ("5.1.5", "8.5.2"), "36.2.0": ("6.0 DP", "8.6.2"), "36.3.0": ("6.0", "8.6.2"),
    "36.4.0": ("6.1", "10.3.0"), "36.4.3": ("6.2", "10.3.0"), "36.4.4": ("6.2.1", "10.3.0"),
    "38.2.0": ("7.0", "10.13.3"),
}
OLDEST_TENSORRT = (8, 5)


@dataclass(frozen=True)
class L4T:
    release: str            # "35.4.1"
    jetpack: Optional[str]  # "5.1.2", None when the table does not know it
    tensorrt: Optional[str]

    def describe(self) -> str:
        if self.jetpack is None:
            return f"L4T {self.release} (JetPack unknown to this table: see NVIDIA's Jetson archive)"
        text = f"L4T {self.release} = JetPack {self.jetpack} (TensorRT {self.tensorrt})"
        if tuple(int(p) for p in self.tensorrt.split(".")[:2]) < OLDEST_TENSORRT:
            text += "; scrapsort needs TensorRT 8.5 or later: upgrade to JetPack 5.1 or later"
        return text


def l4t(path: Optional[Path] = None) -> Optional[L4T]:
    """Parse '# R35 (release), REVISION: 4.1, GCID: ...' as 35.4.1 (None: not a Jetson)."""
    path = path or RELEASE_FILE
    if not path.is_file():
        return None
    match = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", path.read_text())
    if not match:
        return None
    parts = f"{match.group(1)}.{match.group(2)}".split(".")
    release = ".".join((parts + ["0"])[:3])
    jetpack, tensorrt = JETPACK.get(release, (None, None))
    return L4T(release, jetpack, tensorrt)


def module_id(path: Optional[Path] = None) -> str:
    """The module's part number and SoC, e.g. 'p3767-0005/tegra234' ('' off a Jetson). Every
    Orin reports the GPU name "Orin": this tells an Orin Nano from an Orin NX or AGX Orin."""
    path = path or COMPATIBLE_FILE
    if not path.is_file():
        return ""
    entries = [e.split(",", 1)[-1] for e in path.read_bytes().decode(errors="replace").split("\0") if e]
    soc = next((e for e in entries if e.startswith("tegra")), "")
    modules = [e.split("+")[-1] for e in entries if re.search(r"p\d{4}-\d{4}", e)]
    return "/".join(p for p in (modules[0] if modules else "", soc) if p)


@dataclass(frozen=True)
class PowerMode:
    id: int
    name: str


def power_modes(path: Optional[Path] = None) -> List[PowerMode]:
    path = path or NVPMODEL_CONF
    if not path.is_file():
        return []
    return [PowerMode(int(i), name) for i, name in
            re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([\w.-]+)\s*>", path.read_text())]


def top_power_mode(modes: List[PowerMode]) -> Optional[PowerMode]:
    """The fastest mode: a MAXN one (MAXN_SUPER over MAXN), else the highest wattage. Its id
    differs between modules (0 on AGX Orin, 2 on an Orin Nano with the Super modes)."""
    maxn = [m for m in modes if m.name.upper().startswith("MAXN")]
    if maxn:
        return max(maxn, key=lambda m: len(m.name))
    rated = [(float(w), m) for m in modes for w in re.findall(r"(\d+(?:\.\d+)?)W", m.name.upper())[:1]]
    return max(rated, key=lambda r: r[0])[1] if rated else None
