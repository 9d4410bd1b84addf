"""The python-graphblas peer: the reference computation on SuiteSparse:GraphBLAS.

Each layer is the four GraphBLAS operations the challenge's GraphBLAS
entries use::

    Z = Y plus.times W                 (mxm, FP64)
    Z = Z + bias                       (apply: only stored entries, i.e. the structure)
    Y = select(Z > 0)                  (ReLU drops the rest)
    Y = min(Y, 32)                     (apply)

This is a peer for benchmarks, not a fast path. SuiteSparse sums in its own
order, so like the CPU engine it carries the rounding band of
:mod:`graphchallenge.engines.exactness` for every row (one extra row-wise
reduction per layer) and leaves rows whose verdict it cannot prove to the
reference; it therefore gives the reference's categories exactly.
python-graphblas is an optional extra: ``pip install python-graphblas``.
"""

import numpy as np

from ..catalog import YMAX
from . import exactness
from .base import Engine, InferenceResult, Timer
from .exactness import recheck


def _graphblas():
    import graphblas

    return graphblas


class GraphblasEngine(Engine):
    """SuiteSparse:GraphBLAS through python-graphblas (multithreaded by SuiteSparse)."""

    name = "graphblas"
    description = "SuiteSparse:GraphBLAS via python-graphblas: mxm, bias, select, min (peer)"

    def __init__(self):
        self._prepared = None  # (network, [(Matrix, growth, max_terms, has_negative), ...])

    @classmethod
    def availability(cls):
        try:
            _graphblas()
        except ImportError:
            return False, "python-graphblas is not installed: pip install python-graphblas"
        return True, ""

    def prepare(self, network):
        """Convert the layers of an in-memory ``network`` to GraphBLAS matrices; returns seconds.

        Lazy networks are converted layer by layer inside :meth:`infer`.
        """
        with Timer() as timer:
            if isinstance(network.layers, list) and (self._prepared is None
                                                     or self._prepared[0] is not network):
                self._prepared = (network, list(_layers(network)))
        return timer.seconds

    def infer(self, network, inputs, progress=False):
        from tqdm import tqdm

        gb = _graphblas()
        prepare_seconds = self.prepare(network)
        layers = (self._prepared[1] if self._prepared and self._prepared[0] is network
                  else _layers(network))
        bias = network.bias
        dense = bias < 0.0  # see engines/cpu.py: the bias on structural zeros is then harmless
        n_rows = inputs.shape[0]
        layer_seconds = []
        with Timer() as total:
            start = exactness.float64_rows(inputs)
            y = gb.io.from_scipy_sparse(start)
            negative_inputs = bool(start.nnz and start.data.min() < 0)
            # The first layer's inputs may exceed 32 (the bound's scale after any layer).
            first_scale = exactness.input_scale(start)
            errors = np.zeros(n_rows)
            flagged = np.zeros(n_rows, dtype=bool)
            for index, (weights, growth, max_terms, has_negative) in enumerate(
                    tqdm(layers, total=network.n_layers, desc=self.name, unit="layer",
                         disable=not progress, leave=False)):
                with Timer() as step:
                    scale = first_scale if index == 0 else YMAX
                    band = exactness.band(errors, growth, max_terms, bias, scale=scale)
                    z = y.mxm(weights, gb.semiring.plus_times).new()
                    mixed = has_negative or (index == 0 and negative_inputs)
                    if not dense:
                        if mixed:
                            flagged |= _row_min(gb, z, gb.unary.abs, n_rows) <= band
                        # MATLAB's logical(Z): a sum that cancelled to 0 is no structure.
                        z = z.select(gb.select.valuene, 0).new()
                    z << z.apply(gb.binary.plus, right=bias)
                    # Rows with a value not provably clamped carry their error on.
                    shifted = z.apply(gb.binary.minus, right=YMAX / 2).new()
                    middle = _row_min(gb, shifted, gb.unary.abs, n_rows)
                    inside = middle < YMAX / 2 + band
                    if dense and bias > -band.max(initial=0.0):
                        # Structural zeros are bias-valued here, and not provably 0 in
                        # the rows whose band reaches the bias (row by row: one row's
                        # wide band says nothing of the others').
                        inside |= (_row_count(gb, z, n_rows) < z.ncols) & (bias > -band)
                    if not dense:
                        flagged |= _row_min(gb, z, gb.unary.abs, n_rows) <= band
                    if index == network.n_layers - 1:
                        flagged |= _doubtful_verdicts(gb, z, band, bias, dense, n_rows)
                    errors = np.where(inside, exactness.next_error(errors, growth, max_terms, bias,
                                                                   scale=scale), 0.0)
                    y = z.select(gb.select.valuegt, 0).new()
                    y << y.apply(gb.binary.min, right=YMAX)
                layer_seconds.append(step.seconds)
            categories = np.flatnonzero(_row_count(gb, y, n_rows)).astype(np.int64) + 1
            categories = recheck(network, inputs, categories, np.flatnonzero(flagged))
        # No live rows per layer: counting them would cost the peer a pass per layer.
        return InferenceResult(categories=categories, infer_seconds=total.seconds, engine=self.name,
                               prepare_seconds=prepare_seconds, layer_seconds=layer_seconds,
                               rechecked_rows=int(flagged.sum()))


def _layers(network):
    """``(Matrix, growth, max_terms, has_negative)`` per layer, one at a time.

    The bound constants come from :func:`exactness.paired_constants` (for a
    derived network they cover the original's rounding too).
    """
    gb = _graphblas()
    for weights, growth, max_terms in exactness.paired_constants(network):
        matrix = gb.io.from_scipy_sparse(weights.tocsr().astype(np.float64))
        yield matrix, growth, max_terms, bool(weights.nnz and weights.data.min() < 0)


def _row_min(gb, matrix, unary, n_rows):
    """Row-wise minimum of ``unary(matrix)`` as a dense array (+inf for empty rows)."""
    values = matrix.apply(unary).new().reduce_rowwise(gb.monoid.min).new()
    return values.to_dense(fill_value=np.inf)[:n_rows]


def _row_count(gb, matrix, n_rows):
    """Stored entries per row, as a dense array."""
    return matrix.reduce_rowwise(gb.agg.count).new().to_dense(fill_value=0)[:n_rows]


def _doubtful_verdicts(gb, z, band, bias, dense, n_rows):
    """Rows of the last layer with no value provably above 0 but some not provably 0."""
    high = z.reduce_rowwise(gb.monoid.max).new().to_dense(fill_value=-np.inf)[:n_rows]
    if dense:
        # A structural zero stands for the value ``bias``.
        high = np.where(_row_count(gb, z, n_rows) < z.ncols, np.maximum(high, bias), high)
    return (high > -band) & (high <= band)
