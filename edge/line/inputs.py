"""Plant signals the line reads, behind one small interface each: the belt encoder's count
and the photo-eye's beam. The simulated conveyor provides both; edge.plant has the real
ones (GPIO lines, a PLC counter over Modbus), chosen by the config's `inputs` section.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Optional


class Encoder(ABC):
    @abstractmethod
    def count(self) -> int:
        """Counts since an arbitrary origin; increases as the belt moves downstream."""

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


class PhotoEye(ABC):
    @abstractmethod
    def blocked(self) -> bool:
        """True while an item interrupts the beam."""

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass
class LineInputs:
    encoder: Optional[Encoder] = None
    photo_eye: Optional[PhotoEye] = None

    def faults(self) -> List[str]:
        """Names of the inputs that are configured but not working."""
        return [name for name, signal in (("encoder", self.encoder), ("photo_eye", self.photo_eye))
                if signal is not None and not signal.healthy()]

    def close(self) -> None:
        for signal in (self.encoder, self.photo_eye):
            if signal is not None:
                signal.close()
