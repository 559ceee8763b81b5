"""Work beside the sorting loop (a canary check, a shadow model) in a child process at low
priority.

Why a process and not a low-priority thread: every thread of the daemon needs Python's GIL.
A niced thread that holds it and is then preempted, because the cores are busy, keeps the
loop and the ejection timer waiting until the scheduler gets round to it again: measured
with the cores loaded, a nice-19 thread doing Python work stretched a 2-ms sleep of another
thread by up to 146 ms (p99 114 ms), against 14 ms at equal priority. A child process has
its own GIL, and its nice value then only ever costs itself.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge.errors import ModelError

SIDE_NICE = 10            # the child yields the cores to the loop (a nice-10 task gets ~1/10 of a nice-0 one)
START_TIMEOUT_S = 120.0   # a fresh interpreter, imports and the model's session
_CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that runs threads


def lower_priority() -> None:
    """This process (and every thread it starts later, the runtime's included) yields the cores."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, SIDE_NICE)
    except (AttributeError, OSError):
        pass  # not POSIX: the child runs at normal priority, still without the loop's GIL


def run_aside(fn: Callable, *args, timeout: float) -> Any:
    """fn(*args) in a low-priority child process; its exception is raised here."""
    with _CONTEXT.Pool(1, initializer=lower_priority) as pool:
        return pool.apply_async(fn, args).get(timeout)


class SideModel:
    """A model in a low-priority child process: crop in, logits out (one inference thread,
    flip-averaged where the line is). Raises ModelError when it cannot open or has died."""

    def __init__(self, path: Path, flip_average: bool, name: str = "side-model"):
        self._conn, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=_serve, args=(str(path), flip_average, child),
                                         name=f"scrapsort-{name}", daemon=True)
        self._process.start()
        child.close()
        self._broken = False
        self.info = self._answer(START_TIMEOUT_S)

    @property
    def alive(self) -> bool:
        """False once the link to the child broke (a killed process can read as alive for a
        moment after its pipe is gone)."""
        return not self._broken and self._process.is_alive()

    def logits(self, crop: np.ndarray, timeout: float = 30.0) -> np.ndarray:
        try:
            self._conn.send(crop)
        except (OSError, ValueError) as exc:
            raise self._ended(exc) from exc
        return self._answer(timeout)

    def _answer(self, timeout: float):
        try:
            if not self._conn.poll(timeout):
                self.close()  # a late answer would be taken for the next crop's
                raise ModelError(f"{self._process.name}: no answer within {timeout:.0f} s; stopped")
            kind, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._ended(exc) from exc
        if kind == "error":
            raise ModelError(value)
        return value

    def _ended(self, exc: Exception) -> ModelError:
        self._broken = True
        return ModelError(f"{self._process.name}: the child process ended (exit code {self._process.exitcode}): {exc}")

    def close(self) -> None:
        self._broken = True
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()


def _serve(path: str, flip_average: bool, conn) -> None:
    """The child: open the model, then answer each crop until told to stop (None)."""
    lower_priority()  # before the imports: loading the runtime takes a core for a while
    from edge.vision.backends import open_side_instance
    from edge.vision.predict import Classifier

    try:
        classifier = Classifier(open_side_instance(Path(path), flip_average))
    except Exception as exc:
        conn.send(("error", f"{path}: {exc}"))
        return
    conn.send(("ready", classifier.backend.info))
    while True:
        crop: Optional[np.ndarray] = conn.recv()
        if crop is None:
            break
        try:
            conn.send(("logits", np.asarray(classifier.logits(crop), np.float32).copy()))
        except Exception as exc:  # one bad crop: say so and keep serving
            conn.send(("error", f"{path}: {type(exc).__name__}: {exc}"))
    classifier.backend.close()
