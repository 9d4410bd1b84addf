"""GPU engines on CuPy: ``gpu`` (fused kernels) and ``gpu-cusparse`` (the baseline).

``gpu-cusparse`` is the straightforward port of the reference: activations
are a cuSPARSE CSR matrix on the device, each layer is one SpGEMM, then the
bias on the structure, ReLU and the clamp as elementwise operations, and the
dead rows are dropped. It is the baseline the fused engine is measured
against.

``gpu`` stores every layer as a column table (ELL: for each output neuron
the inputs it reads and their weights, padded with zero weights to the
widest column) and runs one fused kernel per layer over the live rows of a
dense activation tile (see :mod:`._gpu_kernels`). The live-row lists and
their counts stay on the device, so the whole network is launched without a
host round trip and, when every layer fits in device memory, captured once
as a CUDA graph and replayed per input tile (a deep network is thousands of
tiny launches otherwise). Rows provably 32 everywhere are parked while
the next layers provably keep them at 32 (every column sum times 32 plus the
bias clears 32 by more than the rounding band), so saturated rows cost
nothing. Networks larger than device memory are streamed layer by layer
from pinned host buffers on a copy stream, overlapped with the compute.

Exactness. Both engines sum in another order than scipy, so both carry, per
row, the rounding-error bound ``e`` of :mod:`graphchallenge.engines.exactness`
in float64 on the device; a computed value and the reference's differ by at
most ``band`` (twice the bound of the layer). With a negative bias (every
challenge network) the reference's layer is exactly the continuous
``clamp(Y W + bias)``: a structural zero gives ``max(0, bias) = 0``, the same
as the formula. A value near 0 or 32 therefore needs no recheck; its error
carries to the next layer, and a row whose values are all provably clamped
(below ``-band`` or above ``32 + band``) is exact again (``e = 0``). A row
that is all zero but not provably so stays listed one more layer, which
decides it. Only final verdicts can be in doubt: a row alive after the last
layer with no value above ``band``, or one still undecided there. Those
rows, few or none (none on the real neuron1024 data), go to
:func:`graphchallenge.engines.exactness.recheck`, which recomputes them with the
reference on ``network.exact_reference``.
With a bias >= 0 the structure matters: with nonnegative weights and
inputs a computed sum is 0 exactly when the reference's is, and otherwise
a sum within the band of 0 sends its row to the reference at once. Inputs
whose magnitude is outside ``[2**-900, 2**900]`` (where the bounds'
no-underflow assumption could fail) are rechecked as well.

Timing: ``infer_seconds`` starts once the network and the inputs are on the
device and ends with the categories on the host, recheck included; uploads,
compilation and graph capture are ``prepare_seconds``. In streaming mode
the layer uploads are inside the timer.

CuPy is imported only inside functions, so this module imports anywhere.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..catalog import YMAX
from ..errors import DataError, EngineUnavailable
from . import _gpu_kernels as kernels
from . import exactness as bounds
from .base import Engine, InferenceResult, Timer
from .exactness import recheck

log = logging.getLogger(__name__)

CUPY_MISSING = "CuPy is not installed: pip install graphchallenge[cuda12] or [cuda13]"

# Inputs outside this magnitude range are rechecked: the kernels' bound takes the
# first layer's inputs to be at most 32 in magnitude (as every later layer's are),
# and assumes no underflow.
TINY = 2.0**-900
HUGE = YMAX

# Device memory kept free for CuPy, cuSPARSE work space and the driver.
RESERVE_BYTES = 1 << 30


# ---------------------------------------------------------------- CuPy and devices

def _import_cupy():
    """``(cupy, None)``, or ``(None, reason)`` when CuPy is missing or broken."""
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "cupy":
            return None, CUPY_MISSING
        return None, f"CuPy cannot be imported: {exc}"
    except Exception as exc:  # a broken install raises anything from its own imports
        return None, f"CuPy cannot be imported: {str(exc).splitlines()[0]}"
    return cupy, None


def device_availability(device=None):
    """``(True, "")`` if CuPy sees CUDA device ``device`` (default: any), else
    ``(False, reason)``; never raises."""
    cupy, reason = _import_cupy()
    if cupy is None:
        return False, reason
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver, or a missing runtime library
        return False, f"no CUDA device found ({str(exc).splitlines()[0]})"
    if count == 0:
        return False, "no CUDA device found"
    if device is not None and not 0 <= device < count:
        return False, f"no CUDA device {device}: this machine has {count} (0 to {count - 1})"
    return True, ""


def _require_cupy(device):
    available, reason = device_availability(device)
    if not available:
        raise EngineUnavailable(f"the GPU engines cannot run here: {reason}")
    cupy, _ = _import_cupy()
    return cupy


def _progress_bar(iterable, total, description, enabled):
    """``iterable`` with a tqdm bar on stderr when ``enabled`` and tqdm is installed."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=description, unit="layer", leave=False)


def _device_sparse():
    """``cupyx.scipy.sparse`` (a function, so that tests can run the baseline on scipy)."""
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def device_name(device=0):
    """The CUDA device's marketing name, e.g. ``NVIDIA H100 80GB HBM3``."""
    cupy = _require_cupy(device)
    name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------- column tables (ELL)

@dataclass
class EllLayer:
    """One layer as a column table: output ``j`` is ``sum_t weights[t, j] * y[indices[t, j]]``.

    Attributes
    ----------
    indices : ndarray of int32, shape (n_terms, n_out)
        Input neuron of each term; short columns are padded with input 0.
    weights : ndarray of float64, shape (n_terms, n_out), or None
        Weight of each term (0 for padding); None when every entry weighs
        ``uniform_weight``.
    uniform_weight : float
        The weight of every entry when ``weights`` is None (else 0).
    n_in : int
        Input neurons.
    """

    indices: np.ndarray
    weights: np.ndarray
    uniform_weight: float
    n_in: int

    @property
    def n_terms(self):
        return self.indices.shape[0]

    @property
    def n_out(self):
        return self.indices.shape[1]

    @property
    def nbytes(self):
        return self.indices.nbytes + (0 if self.weights is None else self.weights.nbytes)

    def dense_weights(self):
        """``weights``, with the uniform weight spelled out."""
        if self.weights is None:
            return np.full(self.indices.shape, self.uniform_weight)
        return self.weights


def ell_from_csr(matrix):
    """The column table of a scipy sparse layer (``W[i, j]``: edge from input i to output j).

    Columns shorter than the longest are padded with input 0 and weight 0.
    A layer whose columns all hold the same number of entries of one positive
    weight (the challenge's 32 x 1/16) gets ``weights=None``.
    """
    csc = sp.csc_matrix(matrix, dtype=np.float64)
    csc.sort_indices()
    n_in, n_out = csc.shape
    counts = np.diff(csc.indptr)
    n_terms = int(counts.max(initial=0))
    columns = np.repeat(np.arange(n_out), counts)
    terms = np.arange(csc.nnz) - np.repeat(csc.indptr[:-1], counts)
    indices = np.zeros((n_terms, n_out), dtype=np.int32)
    indices[terms, columns] = csc.indices
    data = csc.data
    if csc.nnz and np.all(counts == n_terms) and data[0] > 0 and np.all(data == data[0]):
        return EllLayer(indices, None, float(data[0]), n_in)
    weights = np.zeros((n_terms, n_out))
    weights[terms, columns] = data
    return EllLayer(indices, weights, 0.0, n_in)


def csr_from_ell(layer):
    """The scipy CSR layer a column table stands for (padding dropped)."""
    weights = layer.dense_weights()
    columns = np.broadcast_to(np.arange(layer.n_out), layer.indices.shape)
    keep = weights != 0
    return sp.csr_matrix((weights[keep], (layer.indices[keep], columns[keep])),
                         shape=(layer.n_in, layer.n_out))


class ColumnTableLayers(Sequence):
    """Layers made from column index tables, with one weight for every edge.

    The fast path for generated networks: a layer sequence with a
    ``column_indices(k)`` method and a ``weight`` attribute (this class, or
    any other with both) reaches the GPU engines as tables, with no CSR
    conversion; indexing yields scipy CSR layers, so the reference (and
    the recheck) run the same network.

    Parameters
    ----------
    make_table : callable
        ``make_table(k)`` -> int array ``(n_terms, n_out)``: the input neurons
        feeding each output of layer ``k`` (0-based).
    n_layers : int
    n_in : int
        Input neurons of the first layer (every layer is ``n_out`` wide after it).
    weight : float
        The weight of every edge (1/16 for the challenge).
    n_out : int, optional
        Output neurons per layer (default ``n_in``).
    cache : bool
        Keep tables once made (memory for speed, when several engines run).
    """

    def __init__(self, make_table, n_layers, n_in, weight, n_out=None, cache=False):
        n_out = n_in if n_out is None else n_out
        self.make_table = make_table
        self.weight = float(weight)
        self.shapes = [(n_in, n_out)] + [(n_out, n_out)] * (n_layers - 1)
        self._tables = {} if cache else None

    def __len__(self):
        return len(self.shapes)

    def column_indices(self, k):
        """The int32 index table of layer ``k`` (0-based), checked against the layer's shape."""
        if self._tables is not None and k in self._tables:
            return self._tables[k]
        table = np.ascontiguousarray(self.make_table(k), dtype=np.int32)
        if table.ndim != 2 or table.shape[1] != self.shapes[k][1]:
            raise DataError(f"layer {k + 1}: index table of shape {table.shape}, expected "
                            f"(terms, {self.shapes[k][1]})")
        if table.size and (table.min() < 0 or table.max() >= self.shapes[k][0]):
            raise DataError(f"layer {k + 1}: index table names inputs outside "
                            f"0..{self.shapes[k][0] - 1}")
        if self._tables is not None:
            self._tables[k] = table
        return table

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        return csr_from_ell(_column_table_source(self)(k))


def _column_table_source(layers):
    """``k -> EllLayer`` for sequences that hold column tables and one weight, else None."""
    make_table = getattr(layers, "column_indices", None)
    weight = getattr(layers, "weight", None)
    if make_table is None or weight is None:
        return None
    return lambda k: EllLayer(np.ascontiguousarray(make_table(k), dtype=np.int32), None,
                              float(weight), layers.shapes[k][0])


def ell_layers(layers):
    """Yield every layer of a network as an :class:`EllLayer`, in order, one at a time."""
    from_tables = _column_table_source(layers)
    for k in range(len(layers)):
        yield from_tables(k) if from_tables is not None else ell_from_csr(layers[k])


def canonical_inputs(inputs, n_features):
    """A float64 CSR copy of ``inputs`` without stored zeros or duplicates (never mutates)."""
    if not sp.issparse(inputs):
        inputs = sp.csr_matrix(np.asarray(inputs, dtype=np.float64))
    if inputs.ndim != 2 or inputs.shape[1] != n_features:
        raise DataError(f"inputs have {inputs.shape[-1]} columns but the network expects "
                        f"{n_features}")
    result = sp.csr_matrix(inputs, dtype=np.float64, copy=True)
    result.sum_duplicates()
    result.eliminate_zeros()
    return result


def unproven_input_rows(inputs):
    """0-based rows holding a value whose magnitude the error bounds do not cover."""
    magnitude = np.abs(inputs.data)
    outside = (magnitude < TINY) | (magnitude > HUGE)
    if not outside.any():
        return np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(inputs.shape[0]), np.diff(inputs.indptr))
    return np.unique(rows[outside]).astype(np.int64)


# ---------------------------------------------------------------- the fused engine

class _Tile:
    """Device buffers for a tile of ``capacity`` input rows ``width`` wide."""

    def __init__(self, cupy, capacity, width, n_layers):
        self.capacity, self.width = capacity, width
        self.y = [cupy.empty((capacity, width)) for _ in range(2)]
        self.error = [cupy.zeros(capacity) for _ in range(2)]
        self.live = [cupy.zeros(capacity, dtype=np.int32) for _ in range(2)]
        self.parked = cupy.zeros(capacity, dtype=np.int32)
        self.flagged = cupy.zeros(capacity, dtype=np.int32)
        self.row_bits = cupy.zeros(capacity, dtype=np.uint32)
        self.chunks_done = cupy.zeros(capacity, dtype=np.int32)
        self.counts = cupy.zeros(n_layers + 1, dtype=np.int32)
        self.parked_new = cupy.zeros(n_layers, dtype=np.int32)
        self.pending_new = cupy.zeros(n_layers, dtype=np.int32)
        self.parked_count = cupy.zeros(1, dtype=np.int32)

    @staticmethod
    def bytes_per_row(width):
        return 16 * width + 16 + 4 * 6


def _memset(cupy, array, stream, nbytes=None):
    cupy.cuda.runtime.memsetAsync(array.data.ptr, 0, array.nbytes if nbytes is None else nbytes,
                                  stream.ptr)


class _DeviceLayer:
    """One layer on the device: its table (and weights unless uniform) and constants."""

    def __init__(self, layer, constants, careful, indices, weights):
        self.n_in, self.n_out, self.n_terms = layer.n_in, layer.n_out, layer.n_terms
        self.uniform = layer.weights is None
        self.uniform_weight = layer.uniform_weight
        self.constants = constants
        self.careful = careful
        self.indices = indices
        self.weights = weights

    @classmethod
    def upload(cls, cupy, layer, constants, careful):
        indices = cupy.asarray(layer.indices)
        weights = None if layer.weights is None else cupy.asarray(layer.weights)
        return cls(layer, constants, careful, indices, weights)


class _FusedRun:
    """Everything the fused engine holds on the device for one ``infer`` call."""

    def __init__(self, cupy, network, inputs, progress):
        self.cupy = cupy
        self.network = network
        self.bias = float(network.bias)
        self.originals = bounds.original_constants(network)
        self.inputs = inputs
        self.progress = progress
        self.n_rows = inputs.shape[0]
        self.n_layers = network.n_layers
        self.widths = [network.n_features] + [shape[1] for shape in network.shapes]
        self.width = max(1, max(self.widths))
        self.negative_inputs = bool((inputs.data < 0).any())
        self.unproven_rows = unproven_input_rows(inputs)
        device_id = cupy.cuda.Device().id
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        self.n_sm = int(props["multiProcessorCount"])
        self.shared_limit = kernels.shared_limit(int(props["sharedMemPerBlockOptin"]))
        self.details = {"device": device_name(device_id)}
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # Every upload and fill goes on this stream, so the kernels see them finished
        # (a non-blocking stream is not ordered after the default stream).
        with self.stream:
            # Stands in for the pointers a kernel never reads (the weights of a uniform layer).
            self.placeholder = cupy.zeros(1)
            self.zero_count = cupy.zeros(1, dtype=np.int32)
            self.indptr = cupy.asarray(inputs.indptr.astype(np.int64))
            self.indices = cupy.asarray(inputs.indices.astype(np.int32))
            self.values = cupy.asarray(np.ascontiguousarray(inputs.data))
            self.layers, self.constants = self._upload_layers()
            self.details["mode"] = "resident" if self.layers is not None else "streamed"
            self.tile = self._allocate_tile()
            self.details["tile_rows"] = self.tile.capacity
            self._compile()
        self.stream.synchronize()
        self.graph = None
        if self.layers is not None:
            self.park_after, self.unpark_before = kernels.schedule(self.constants)
            self._capture()

    # ---- planning

    def _free_bytes(self):
        free, _ = self.cupy.cuda.runtime.memGetInfo()
        return free + self.cupy.get_default_memory_pool().free_bytes()

    def _upload_layers(self):
        """``(device layers, constants)`` if the whole network fits next to a minimal
        tile, else ``(None, None)`` (the layers will be streamed)."""
        min_rows = min(self.n_rows, 4096) or 1
        budget = (self._free_bytes() - RESERVE_BYTES
                  - min_rows * _Tile.bytes_per_row(self.width) - 4 * self.inputs.nnz)
        uploaded, constants, used = [], [], 0
        for k, layer in enumerate(self._progress(ell_layers(self.network.layers), "upload")):
            used += layer.nbytes
            if used > budget:
                log.info("the network needs more than %.1f GB of device memory: streaming it",
                         budget / 1e9)
                return None, None
            layer_consts = kernels.layer_constants(layer, self.bias, self.originals[k])
            careful = kernels.needs_care(layer_consts, self.bias, k == 0 and self.negative_inputs)
            uploaded.append(_DeviceLayer.upload(self.cupy, layer, layer_consts, careful))
            constants.append(layer_consts)
        return uploaded, constants

    def _allocate_tile(self):
        # Streamed layers need two device slots; a challenge-like layer is 32 terms of
        # int32 + float64 per output (the slots grow if a layer is larger).
        streamed_room = 0 if self.layers is not None else 2 * 12 * 32 * max(self.widths[1:])
        room = self._free_bytes() - RESERVE_BYTES - streamed_room
        capacity = min(self.n_rows, room // _Tile.bytes_per_row(self.width))
        if capacity < 1:
            raise EngineUnavailable(f"not enough GPU memory for one input row of {self.width} "
                                    "neurons next to the network")
        return _Tile(self.cupy, int(capacity), self.width, self.n_layers)

    def _variant(self, layer):
        rows, staged, _ = kernels.kernel_shape(layer.n_in, self.shared_limit)
        return rows, staged, layer.uniform, layer.careful

    def _compile(self):
        if self.layers is not None:
            variants = {self._variant(layer) for layer in self.layers}
        else:  # streamed layers are only known later: every variant their widths need
            variants = {kernels.kernel_shape(n_in, self.shared_limit)[:2] + (uniform, careful)
                        for n_in in set(self.widths[:-1])
                        for uniform in (False, True) for careful in (False, True)}
        module = kernels.compile_module(self.cupy, variants)
        self.load_kernel = module.get_function("load_inputs")
        self.unpark_kernel = module.get_function("unpark_rows")
        self.fused = {}
        for variant in variants:
            kernel = module.get_function(kernels.fused_name(*variant))
            if variant[1]:
                # Dynamic shared memory above 48 KiB must be allowed per kernel (set on
                # every device: one rule, checked in tests/test_gpu_build.py).
                kernel.max_dynamic_shared_size_bytes = self.shared_limit
            self.fused[variant] = kernel
        self._warm_up(variants)

    def _progress(self, iterable, what):
        return _progress_bar(iterable, self.n_layers, f"gpu {what}", self.progress)

    # ---- launches

    def _grid(self):
        # The kernels loop over their work, whose size only the device knows.
        return (4 * self.n_sm,)

    def _warm_up(self, variants):
        """Launch every kernel once with nothing to do: modules load lazily, which a
        stream capture must not trigger."""
        tile = self.tile
        no_terms = np.zeros((0, 1), dtype=np.int32)
        nothing = kernels.LayerConstants(0.0, 0.0, False, False)
        with self.stream:
            self.unpark_kernel((1,), (kernels.THREADS,), (
                tile.y[0], np.int64(self.width), np.int32(0), tile.parked, self.zero_count,
                tile.live[0], tile.counts, tile.error[0]))
            for variant in variants:
                _, _, uniform, careful = variant
                empty = EllLayer(no_terms, None if uniform else np.zeros((0, 1)), 0.0, 1)
                layer = _DeviceLayer(empty, nothing, careful, self.placeholder, None)
                self.fused[variant]((1,), (kernels.THREADS,),
                                    self._fused_args(layer, 0, True, self.zero_count))
        self.stream.synchronize()

    def _fused_args(self, layer, k, park, count_in=None):
        """Arguments of ``fused_layer`` for layer ``k`` (in the kernel's order)."""
        tile = self.tile
        constants = layer.constants
        return (
            tile.y[k % 2], tile.y[(k + 1) % 2], np.int64(self.width),
            np.int32(layer.n_in), np.int32(layer.n_out), np.int32(layer.n_terms),
            layer.indices, self.placeholder if layer.weights is None else layer.weights,
            np.float64(layer.uniform_weight), np.float64(self.bias),
            np.float64(constants.growth), np.float64(constants.gamma),
            tile.live[k % 2], tile.counts[k:k + 1] if count_in is None else count_in,
            tile.live[(k + 1) % 2], tile.counts[k + 1:k + 2],
            tile.parked, tile.parked_count, tile.parked_new[k:k + 1],
            tile.pending_new[k:k + 1], np.int32(park),
            np.int32(k == self.n_layers - 1), tile.error[k % 2], tile.error[(k + 1) % 2],
            tile.flagged, tile.row_bits, tile.chunks_done, np.int32(kernels.COLUMN_CHUNK),
        )

    def _launch_layer(self, k, layer, park, unpark):
        """Queue layer ``k`` (and the return of parked rows before it) on the current stream."""
        tile = self.tile
        if unpark:
            self.unpark_kernel(self._grid(), (kernels.THREADS,), (
                tile.y[k % 2], np.int64(self.width), np.int32(layer.n_in), tile.parked,
                tile.parked_count, tile.live[k % 2], tile.counts[k:k + 1], tile.error[k % 2]))
            _memset(self.cupy, tile.parked_count, self.stream)
        shared = kernels.kernel_shape(layer.n_in, self.shared_limit)[2]
        self.fused[self._variant(layer)](self._grid(), (kernels.THREADS,),
                                         self._fused_args(layer, k, park), shared_mem=shared)

    def _launch_network(self):
        for k, layer in enumerate(self.layers):
            self._launch_layer(k, layer, self.park_after[k], self.unpark_before[k])

    def _capture(self):
        """Record the launches of all layers as one CUDA graph (else they run one by one)."""
        try:
            with self.stream:
                self.stream.begin_capture()
                try:
                    self._launch_network()
                finally:
                    graph = self.stream.end_capture()
            self.graph = graph
            self.details["graph"] = True
        except Exception as exc:  # the eager launches in run() do the same work
            log.warning("CUDA graph capture failed (%s); launching layer by layer", exc)
            self.details["graph"] = f"not used: {str(exc).splitlines()[0]}"

    def _start_tile(self, first_row, n_rows):
        tile, cupy = self.tile, self.cupy
        _memset(cupy, tile.y[0], self.stream, n_rows * self.width * 8)
        for array in (tile.error[0], tile.flagged, tile.counts, tile.parked_new, tile.pending_new,
                      tile.parked_count):
            _memset(cupy, array, self.stream)
        self.load_kernel((max(1, min(n_rows, 16 * self.n_sm)),), (kernels.THREADS,), (
            self.indptr, self.indices, self.values, np.int64(first_row), np.int32(n_rows),
            tile.y[0], np.int64(self.width), tile.live[0], tile.counts[0:1]))

    def _finish_tile(self, first_row, n_rows, unpark_before):
        """Categories (1-based), flagged rows (0-based) and live rows per layer of one tile."""
        cupy, tile = self.cupy, self.tile
        self.stream.synchronize()
        counts = cupy.asnumpy(tile.counts)
        parked_count = int(cupy.asnumpy(tile.parked_count)[0])
        final = tile.live[self.n_layers % 2]
        slots = np.concatenate([cupy.asnumpy(final[:int(counts[-1])]),
                                cupy.asnumpy(tile.parked[:parked_count])]).astype(np.int64)
        flagged = np.flatnonzero(cupy.asnumpy(tile.flagged[:n_rows])) + first_row
        live = kernels.live_rows_per_layer(counts, cupy.asnumpy(tile.parked_new),
                                   cupy.asnumpy(tile.pending_new), unpark_before)
        return np.sort(slots) + first_row + 1, flagged, live

    def run(self):
        """Infer every tile; returns ``(categories, flagged rows, live rows per layer)``."""
        categories, flagged = [], [self.unproven_rows]
        live_total = [0] * self.n_layers
        streamed = None if self.layers is not None else _LayerStream(self)
        with self.stream:
            for first_row in range(0, self.n_rows, self.tile.capacity):
                n_rows = min(self.tile.capacity, self.n_rows - first_row)
                self._start_tile(first_row, n_rows)
                if streamed is not None:
                    unpark_before = streamed.run_tile()
                else:
                    if self.graph is not None:
                        self.graph.launch(self.stream)
                    else:
                        self._launch_network()
                    unpark_before = self.unpark_before
                found, flags, live = self._finish_tile(first_row, n_rows, unpark_before)
                categories.append(found)
                flagged.append(flags)
                live_total = [a + b for a, b in zip(live_total, live)]
        return (np.concatenate(categories).astype(np.int64),
                np.concatenate(flagged).astype(np.int64), live_total)


class _LayerStream:
    """Streams a network through the fused kernel: the host prepares layer k+1 and a copy
    stream uploads it into one of two device slots while the compute stream runs layer k."""

    def __init__(self, run):
        self.run_state = run
        self.cupy = run.cupy
        self.copy_stream = self.cupy.cuda.Stream(non_blocking=True)
        self.device_slots = [[], []]   # device arrays (indices[, weights]) of each slot
        self.pinned = [None, None]     # pinned host staging of each slot
        self.copied = [None, None]     # event: the slot's upload has finished
        self.released = [None, None]   # event: the slot's layer has been computed

    def _device_arrays(self, slot, arrays):
        held = self.device_slots[slot]
        if len(held) != len(arrays) or any(h.size < a.size for h, a in zip(held, arrays)):
            # A larger layer than before: wait until the old slot is unused, then grow it.
            self.copy_stream.synchronize()
            self.run_state.stream.synchronize()
            held = [self.cupy.empty(a.size, dtype=a.dtype) for a in arrays]
            self.device_slots[slot] = held
        return held

    def _stage(self, slot, layer, constants, careful):
        """Upload ``layer`` into ``slot`` on the copy stream; returns its _DeviceLayer."""
        cupy = self.cupy
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()      # its pinned buffer is free again
        if self.released[slot] is not None:
            self.copy_stream.wait_event(self.released[slot])
        arrays = [layer.indices] + ([] if layer.weights is None else [layer.weights])
        nbytes = sum(a.nbytes for a in arrays)
        if self.pinned[slot] is None or self.pinned[slot].size() < nbytes:
            self.pinned[slot] = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        views, offset = [], 0
        for host, device in zip(arrays, self._device_arrays(slot, arrays)):
            staging = np.frombuffer(self.pinned[slot], dtype=host.dtype, count=host.size,
                                    offset=offset)
            staging[:] = host.ravel()
            view = device[:host.size]
            view.set(staging, stream=self.copy_stream)
            views.append(view.reshape(host.shape))
            offset += host.nbytes
        self.copied[slot] = cupy.cuda.Event(block=False, disable_timing=True)
        self.copied[slot].record(self.copy_stream)
        weights = views[1] if len(views) > 1 else None
        return _DeviceLayer(layer, constants, careful, views[0], weights)

    def run_tile(self):
        """Queue every layer for the current tile; returns whether parked rows came back
        before each layer."""
        run = self.run_state
        source = ell_layers(run.network.layers)
        ahead = next(source)
        ahead_constants = kernels.layer_constants(ahead, run.bias, run.originals[0])
        unpark_before = []
        for k in range(run.n_layers):
            layer, constants = ahead, ahead_constants
            if k + 1 < run.n_layers:
                ahead = next(source)
                ahead_constants = kernels.layer_constants(ahead, run.bias, run.originals[k + 1])
            slot = k % 2
            careful = kernels.needs_care(constants, run.bias, k == 0 and run.negative_inputs)
            device_layer = self._stage(slot, layer, constants, careful)
            run.stream.wait_event(self.copied[slot])
            park = ahead_constants.keeps_saturation if k + 1 < run.n_layers else True
            unpark = k > 0 and not constants.keeps_saturation
            unpark_before.append(unpark)
            run._launch_layer(k, device_layer, park, unpark)
            self.released[slot] = self.cupy.cuda.Event(block=False, disable_timing=True)
            self.released[slot].record(run.stream)
        return unpark_before


class _CupyEngine(Engine):
    """What both GPU engines share: a device number, checked when the engine is made."""

    def __init__(self, device=None):
        self.device = 0 if device is None else int(device)
        available, reason = device_availability(self.device)
        if not available:
            raise EngineUnavailable(f"engine {self.name!r} cannot run here: {reason}")

    @classmethod
    def availability(cls):
        return device_availability()


class GpuEngine(_CupyEngine):
    """Fused CuPy kernels over column tables, live rows compacted on the device."""

    name = "gpu"
    description = ("CuPy fused kernels (float64, column tables, device-side compaction, "
                   "CUDA graphs), exact by a proven rounding band")

    def infer(self, network, inputs, progress=False):
        cupy = _require_cupy(self.device)
        with cupy.cuda.Device(self.device):
            with Timer() as prepare:
                host_inputs = canonical_inputs(inputs, network.n_features)
                run = _FusedRun(cupy, network, host_inputs, progress)
            with Timer() as timed:
                categories, flagged, live_rows = run.run()
                categories = recheck(network, inputs, categories, flagged)
            details = dict(run.details)
            del run
            cupy.get_default_memory_pool().free_all_blocks()
        return InferenceResult(categories=categories, infer_seconds=timed.seconds,
                               engine=self.name, prepare_seconds=prepare.seconds,
                               live_rows=live_rows, rechecked_rows=int(np.unique(flagged).size),
                               details=details)


# ---------------------------------------------------------------- the cuSPARSE baseline

class CusparseEngine(_CupyEngine):
    """cuSPARSE SpGEMM through cupyx.scipy.sparse, the straightforward port of the reference."""

    name = "gpu-cusparse"
    description = "cuSPARSE SpGEMM via cupyx.scipy.sparse (float64), the GPU baseline"

    def infer(self, network, inputs, progress=False):
        cupy = _require_cupy(self.device)
        with cupy.cuda.Device(self.device):
            with Timer() as prepare:
                host_inputs = canonical_inputs(inputs, network.n_features)
                negative_inputs = bool((host_inputs.data < 0).any())
                unproven = unproven_input_rows(host_inputs)
                resident = self._upload_network(cupy, network, host_inputs, negative_inputs)
                y = self._device_csr(cupy, host_inputs)
                cupy.cuda.get_current_stream().synchronize()
            with Timer() as timed:
                categories, flagged, live_rows, layer_seconds = self._forward(
                    cupy, network, y, resident, negative_inputs, progress)
                flagged = np.union1d(flagged, unproven).astype(np.int64)
                categories = recheck(network, inputs, categories, flagged)
            del y, resident
            cupy.get_default_memory_pool().free_all_blocks()
        return InferenceResult(categories=categories, infer_seconds=timed.seconds,
                               engine=self.name, prepare_seconds=prepare.seconds,
                               live_rows=live_rows, layer_seconds=layer_seconds,
                               rechecked_rows=int(flagged.size),
                               details={"device": device_name(self.device)})

    @staticmethod
    def _device_csr(cupy, matrix):
        # Contiguous first: inputs read from a binary file hold their one value as a
        # stride-0 view (see io.read_inputs).
        return _device_sparse().csr_matrix((cupy.asarray(np.ascontiguousarray(matrix.data)),
                                            cupy.asarray(matrix.indices),
                                            cupy.asarray(matrix.indptr)), shape=matrix.shape)

    def _device_layer(self, cupy, layers, k, bias, careful_inputs, original=None):
        """``(W on the device as CSR, growth, gamma, careful)`` of layer ``k``.

        ``original``: the original layer's ``(C, M)`` for a derived network.
        """
        from_tables = _column_table_source(layers)
        if from_tables is not None:
            layer = from_tables(k)
            constants = kernels.layer_constants(layer, bias, original)
            n_terms, n_out = layer.indices.shape
            # Column j of the table is column j of W: a CSC matrix as it stands.
            indices = cupy.ascontiguousarray(cupy.asarray(layer.indices).T).ravel()
            if layer.weights is None:
                data = cupy.full(indices.size, layer.uniform_weight)
            else:
                data = cupy.ascontiguousarray(cupy.asarray(layer.weights).T).ravel()
            indptr = cupy.arange(n_out + 1, dtype=np.int32) * n_terms
            weights_csr = _device_sparse().csc_matrix((data, indices, indptr),
                                                      shape=(layer.n_in, n_out)).tocsr()
            growth, n_terms_max = bounds.widen(constants.growth, n_terms, original)
            signed = constants.signed
        else:
            host = sp.csr_matrix(layers[k], dtype=np.float64)
            growth, n_terms_max = bounds.widen(*bounds.layer_constants(host), original)
            weights_csr = self._device_csr(cupy, host)
            signed = bool((host.data < 0).any())
        gamma = bounds.folded_gamma(growth, n_terms_max, bias)
        careful = bias >= 0 and (signed or careful_inputs)
        return weights_csr, growth, gamma, careful

    def _upload_network(self, cupy, network, inputs, negative_inputs):
        """Every layer on the device if they fit next to the activations, else None."""
        free, _ = cupy.cuda.runtime.memGetInfo()
        # SpGEMM outputs can be dense (12 bytes an entry): leave room for a few of them.
        width = max(max(shape[1] for shape in network.shapes), network.n_features)
        budget = free - RESERVE_BYTES - 4 * 12 * inputs.shape[0] * width
        resident, used = [], 0
        originals = bounds.original_constants(network)
        for k in range(network.n_layers):
            layer = self._device_layer(cupy, network.layers, k, network.bias,
                                       k == 0 and negative_inputs, originals[k])
            matrix = layer[0]
            used += matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
            if used > budget:
                log.info("network does not fit in device memory: cuSPARSE engine streams layers")
                return None
            resident.append(layer)
        return resident

    def _forward(self, cupy, network, y, resident, negative_inputs, progress):
        bias = float(network.bias)
        rows = cupy.arange(y.shape[0], dtype=np.int64)
        error = cupy.zeros(y.shape[0])
        flagged = cupy.zeros(y.shape[0], dtype=bool)
        live_rows, layer_seconds = [], []
        originals = bounds.original_constants(network) if resident is None else None
        for k in _progress_bar(range(network.n_layers), network.n_layers, self.name, progress):
            with Timer() as step:
                weights, growth, gamma, careful = (
                    resident[k] if resident is not None else
                    self._device_layer(cupy, network.layers, k, bias, k == 0 and negative_inputs,
                                       originals[k]))
                n_out = weights.shape[1]
                if y.shape[0] == 0:
                    y, n_alive = _device_sparse().csr_matrix((0, n_out)), 0
                else:
                    y, rows, error, doubtful, n_alive = self._layer(
                        cupy, y @ weights, rows, error, bias, growth, gamma, careful,
                        last=k == network.n_layers - 1)
                    flagged[doubtful] = True
                cupy.cuda.get_current_stream().synchronize()
            layer_seconds.append(step.seconds)
            live_rows.append(n_alive)
        categories = np.sort(cupy.asnumpy(rows)) + 1
        flagged_rows = np.flatnonzero(cupy.asnumpy(flagged))
        return categories.astype(np.int64), flagged_rows, live_rows, layer_seconds

    @staticmethod
    def _layer(cupy, product, rows, error, bias, growth, gamma, careful, last):
        """Bias on the structure, the proof's bookkeeping, ReLU, clamp and dead-row removal
        of ``product = Y @ W``, as in the fused kernel (see the module docstring).

        Returns the next activations (rows alive or not provably dead), their
        original row numbers and error bounds, the original numbers of flagged
        rows, and how many rows are alive.
        """
        n_live, n_out = product.shape
        entry_rows = cupy.searchsorted(product.indptr, cupy.arange(product.nnz), side="right") - 1
        sums = product.data
        next_error = growth * error + gamma * (growth * (YMAX + error) + abs(bias))
        width = 2.0 * next_error[entry_rows]
        # With a negative bias every entry, stored or not, is sum + bias.
        checked = (sums != 0) | (bias < 0)
        values = cupy.where(checked, sums + bias, 0.0)
        carry = checked & (values >= -width) & (values <= YMAX + width)
        sure = values > width

        def any_per_row(entries):
            return cupy.bincount(entry_rows[entries], minlength=n_live) > 0

        row_carry = any_per_row(carry)
        if bias < 0:  # entries not stored are bias: not provably 0 if the band reaches it
            stored = cupy.diff(product.indptr)
            row_carry |= (stored < n_out) & (bias >= -2.0 * next_error)
        values = cupy.clip(values, 0.0, YMAX)
        keep = values > 0
        per_row = cupy.bincount(entry_rows[keep], minlength=n_live)
        alive = per_row > 0
        # Zero here but not provably zero in the reference: the next layer decides
        # (after the last one, the reference).
        pending = ~alive & row_carry
        doubt = pending if last else cupy.zeros_like(pending)
        if careful:
            doubt |= any_per_row(cupy.abs(sums) <= width)
        if last:
            doubt |= alive & ~any_per_row(sure)
        kept = alive if last else alive | pending
        error = cupy.where(row_carry, next_error, 0.0)
        indptr = cupy.concatenate([cupy.zeros(1, dtype=np.int64), cupy.cumsum(per_row[kept])])
        y = _device_sparse().csr_matrix(
            (values[keep], product.indices[keep].astype(np.int32), indptr.astype(np.int32)),
            shape=(int(kept.sum()), n_out))
        return y, rows[kept], error[kept], rows[doubt], int(alive.sum())
