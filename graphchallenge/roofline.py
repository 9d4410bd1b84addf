"""How far the CPU engine is from this machine's limits: a roofline per group of layers.

Two numbers bound any layer of the engine: the multiply-adds per second the
cores can do (measured with the engine's own column sum on data that stays
in the L1 cache) and the bytes per second memory can deliver
(a STREAM-style triad over arrays far larger than the caches). For a run
of the engine, :func:`roofline` sets against them, per group of layers, the
multiply-adds the kernels counted (``details["multiply_adds"]``) and the
activation bytes the tiles must move at least (each computed row's input
tile read and its output tile written once, ``8 * (rows in + rows out)``
bytes, where equal columns share a tile row; a first layer scattered from
the images reads 12 bytes a pixel instead), both per core over the layer's
measured time.

Examples
--------
>>> from graphchallenge import roofline                        # doctest: +SKIP
>>> limits = roofline.measure_machine()                          # doctest: +SKIP
>>> report = roofline.roofline(challenge.network, challenge.inputs, limits=limits)  # doctest: +SKIP
>>> print(report.text())                                         # doctest: +SKIP
"""

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import EngineUnavailable

try:
    import numba
except ImportError:
    numba = None

#: The peak kernel's tile: 32 input rows of 128 lanes and one accumulator, all in L1.
_TERMS, _LANES = 32, 128


def _compiled(function):
    if numba is None:
        return function
    return numba.njit(cache=True, nogil=True, fastmath={"contract"})(function)


def _accumulate_rounds(n_rounds, threads):
    """The engine's own column sum (``cpu._accumulate``) ``n_rounds`` times on L1-resident data.

    Its rate is the best the gather can do when nothing waits for memory:
    the compute roof of the roofline. Returns a callable per thread, each
    with data of its own (shared data would bounce between the caches).
    """
    from .engines.cpu import _accumulate

    @_compiled
    def rounds(source, rows, weights, acc, n_rounds):
        total = 0.0
        for _ in range(n_rounds):
            _accumulate(acc, source, rows, weights, rows.size)
            total += acc[0]
        return total

    rng = np.random.default_rng(0)
    rows = np.arange(_TERMS, dtype=np.uint16)
    weights = np.full(_TERMS, 1 / 16)
    data = [(rng.random((_TERMS, _LANES)), np.empty(_LANES)) for _ in range(threads)]
    rounds(data[0][0], rows, weights, data[0][1], 1)
    turns = itertools.count()

    def run():
        source, acc = data[next(turns) % threads]
        rounds(source, rows, weights, acc, n_rounds)

    return run


@_compiled
def _triad(target, first, second, scale):
    for i in range(target.size):
        target[i] = first[i] + scale * second[i]


@dataclass
class MachineLimits:
    """What this machine can do, all threads together and per core."""

    threads: int
    multiply_adds_per_second: float
    bytes_per_second: float

    @property
    def per_core_multiply_adds(self):
        return self.multiply_adds_per_second / self.threads

    @property
    def per_core_bytes(self):
        return self.bytes_per_second / self.threads


def _on_threads(threads, work):
    """Wall seconds for ``threads`` threads each running ``work()`` at once."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: work(), range(threads)))
        return time.perf_counter() - start


def measure_machine(threads=None, triad_bytes=256 * 2**20, repeat=5):
    """Measure the peak multiply-add rate and the memory bandwidth of ``threads`` cores.

    Best of ``repeat`` runs of each. The triad counts 24 bytes per element
    (two reads, one write), as STREAM does.
    """
    if numba is None:
        raise EngineUnavailable("the roofline needs numba: pip install numba")
    threads = threads or len(os.sched_getaffinity(0))
    n_rounds = 200_000
    accumulate = _accumulate_rounds(n_rounds, threads)
    peak = max(threads * n_rounds * _TERMS * _LANES / _on_threads(threads, accumulate)
               for _ in range(repeat))
    size = triad_bytes // 24 // threads
    arrays = [(np.zeros(size), np.ones(size), np.ones(size)) for _ in range(threads)]
    _triad(arrays[0][0][:8], arrays[0][1][:8], arrays[0][2][:8], 0.5)
    turns = itertools.count()

    def one_triad():
        target, first, second = arrays[next(turns) % threads]
        _triad(target, first, second, 0.5)

    bandwidth = max(threads * 24 * size / _on_threads(threads, one_triad) for _ in range(repeat))
    return MachineLimits(threads, peak, bandwidth)


@dataclass
class RooflineRow:
    """One group of layers of a run."""

    layers: str
    seconds: float  # thread-seconds, summed over the chunks
    multiply_adds: int
    activation_bytes: int
    multiply_adds_per_second: float  # per core
    bytes_per_second: float  # per core
    peak_fraction: float = None
    bandwidth_fraction: float = None


@dataclass
class RooflineReport:
    """A run of the engine against ``limits``, a row per group of layers (:func:`roofline`)."""

    network: str
    n_inputs: int
    infer_seconds: float
    limits: MachineLimits
    rows: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)

    def text(self):
        lines = [f"network      {self.network}, {self.n_inputs:,} inputs, "
                 f"inference {self.infer_seconds:.4f} s",
                 f"machine      {self.limits.threads} threads: peak "
                 f"{self.limits.per_core_multiply_adds / 1e9:.1f} G multiply-adds/s and "
                 f"{self.limits.per_core_bytes / 1e9:.1f} GB/s memory per core", "",
                 "| layers | seconds | multiply-adds | G/s per core | of peak "
                 "| activation bytes | GB/s per core | of bandwidth | adds per byte |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            intensity = row.multiply_adds / row.activation_bytes if row.activation_bytes else 0
            lines.append(
                f"| {row.layers} | {row.seconds:.4f} | {row.multiply_adds:.3g} "
                f"| {row.multiply_adds_per_second / 1e9:.2f} | {row.peak_fraction:.0%} "
                f"| {row.activation_bytes:.3g} | {row.bytes_per_second / 1e9:.2f} "
                f"| {row.bandwidth_fraction:.0%} | {intensity:.2f} |")
        return "\n".join(lines)


def _groups(n_layers):
    """Layers 1..6 one by one, then 7..20 and 21..L together (0-based slices)."""
    groups = [(k, k + 1) for k in range(min(6, n_layers))]
    if n_layers > 6:
        groups.append((6, min(20, n_layers)))
    if n_layers > 20:
        groups.append((20, n_layers))
    return groups


def roofline(network, inputs, engine=None, limits=None, repeat=3):
    """Run the CPU engine on ``inputs`` and set each group of layers against ``limits``.

    The fastest of ``repeat`` runs is used (after one untimed run).
    ``limits`` defaults to :func:`measure_machine` on the engine's threads.
    """
    from .engines.cpu import CpuEngine

    engine = engine or CpuEngine()
    limits = limits or measure_machine(engine.threads)
    engine.infer(network, inputs)
    result = min((engine.infer(network, inputs) for _ in range(repeat)),
                 key=lambda run: run.infer_seconds)
    seconds = np.asarray(result.layer_seconds)
    multiply_adds = np.asarray(result.details["multiply_adds"], dtype=np.int64)
    computed = np.asarray(result.details["computed_rows"], dtype=np.int64)
    # The tiles' rows: a layer's inputs and its computed columns (equal ones share a row).
    tile_rows = np.asarray(result.details["tile_rows"], dtype=np.int64).reshape(-1, 2)
    activation_bytes = 8 * computed * tile_rows.sum(axis=1)
    if result.details.get("first_layer") == "scatter":
        # Scattered from the sparse images: 12 bytes a pixel in, the dense tile out.
        activation_bytes[0] = 12 * inputs.nnz + 8 * computed[0] * tile_rows[0, 1]
    report = RooflineReport(network.name, inputs.shape[0], result.infer_seconds, limits)
    for start, stop in _groups(network.n_layers):
        spent = float(seconds[start:stop].sum())
        adds = int(multiply_adds[start:stop].sum())
        moved = int(activation_bytes[start:stop].sum())
        add_rate = adds / spent if spent > 0 else 0.0
        byte_rate = moved / spent if spent > 0 else 0.0
        label = str(start + 1) if stop == start + 1 else f"{start + 1}-{stop}"
        report.rows.append(RooflineRow(
            label, spent, adds, moved, add_rate, byte_rate,
            add_rate / limits.per_core_multiply_adds, byte_rate / limits.per_core_bytes))
    return report
