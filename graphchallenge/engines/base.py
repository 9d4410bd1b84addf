"""What every engine shares: the interface, the result type and the timer.

An engine turns ``(network, inputs)`` into the 1-based categories the
float64 reference would give. Engines that compute in another order (or
another precision) prove agreement with
:mod:`graphchallenge.engines.exactness`: they flag every row whose values
came within a rounding band of the 0 and 32 thresholds, and
:func:`~graphchallenge.engines.exactness.recheck` recomputes exactly those
rows with the reference. This module imports no engine and nothing of the
exactness machinery.
"""

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class InferenceResult:
    """What an engine returns.

    Attributes
    ----------
    categories : ndarray of int64
        1-based indices, ascending, of the inputs whose final row is nonzero.
    infer_seconds : float
        Inference only (the challenge's timer): no file reading, no
        validation, no one-off preparation.
    engine : str
    prepare_seconds : float
        One-off work outside the timer (format conversion, uploads, JIT).
    live_rows : list of int, optional
        Rows with any nonzero after each layer.
    layer_seconds : list of float, optional
        Time per layer, where the engine measures it.
    rechecked_rows : int
        Rows recomputed by the reference because they came near a threshold.
    """

    categories: np.ndarray
    infer_seconds: float
    engine: str
    prepare_seconds: float = 0.0
    live_rows: list = None
    layer_seconds: list = None
    rechecked_rows: int = 0
    details: dict = field(default_factory=dict)


class Engine:
    """The interface: ``Engine(**options).infer(network, inputs) -> InferenceResult``."""

    #: Name used by ``--engine``.
    name = None
    #: One line for ``graphchallenge info``.
    description = ""

    @classmethod
    def availability(cls):
        """``(True, "")`` if the engine can run here, else ``(False, reason)``."""
        return True, ""

    def infer(self, network, inputs, progress=False):
        """Run ``inputs`` (``n_inputs x N`` scipy CSR) through ``network``."""
        raise NotImplementedError


class Timer:
    """``with Timer() as t: ...; t.seconds``: wall time with ``perf_counter``."""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        return False
