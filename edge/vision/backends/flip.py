"""Test-time flip averaging (runtime.flip_average): each item is classified as seen and
mirrored left to right, and the two answers' logits averaged. A top-down camera sees items
in any orientation, so the mirror image is as valid a view; the cost is a second inference
per item (`scrapsort bench` measures both)."""
from __future__ import annotations

import numpy as np

from edge.vision.backends.base import Backend


class FlipAveraged(Backend):
    """Any backend, run on its input and on the input's mirror image."""

    def __init__(self, inner: Backend):
        self.inner, self.info, self.input = inner, inner.info, inner.input
        self.name = f"{inner.name}, flip-averaged"
        self.unfused_int8 = inner.unfused_int8
        self._seen = np.empty_like(inner.input)

    @property
    def runs_on(self) -> str:
        return self.inner.runs_on

    def expected_input_shape(self):
        return self.inner.expected_input_shape()

    def infer(self) -> np.ndarray:
        np.copyto(self._seen, self.input)
        first = self.inner.infer().copy()
        self.input[...] = self._seen[..., ::-1]  # mirror along the width
        second = self.inner.infer()
        np.copyto(self.input, self._seen)  # the caller's input stays as written
        return (first + second) / 2

    def close(self) -> None:
        self.inner.close()
