"""The CPU engine: numba kernels over tiles of inputs kept neuron-major, exact by proof.

Inputs are processed in chunks of rows; inside a chunk, layer after layer,
the rows still alive are packed into tiles of :data:`TILE` rows stored
neuron-major (``tile x neuron x row``), so that gathering a column's
inputs is a run of contiguous vector multiply-adds. One pass per column
fuses the sum, the bias, ReLU, the clamp and the bookkeeping below;
columns that read the same inputs run one after the other, while those
inputs are in L1, and two at a time where their inputs are exactly the
same. Inputs that are zero across a whole tile are skipped. (Sparse
alternatives, scattering each row's nonzeros through the rows of ``W``,
measured slower even on the ~10% dense images.)
Threads take whole chunks (the kernels release the GIL), so no thread
ever waits for another between layers.

Exactness. Sums run in float64 but in another order than scipy's, so
each row carries a bound ``e`` on how far its values are from exact
arithmetic (:mod:`graphchallenge.engines.bounds`); the reference's own
values obey the same bound, so the two can differ only for a value within
``band`` of a threshold. With a negative bias (every challenge network) the
reference's layer is exactly ``min(32, max(0, Y W + bias))`` (the bias on a
structural zero gives ``max(0, bias) = 0`` anyway), a continuous map: a
value near 0 or 32 needs no special care, its error simply carries on to
the next layer, and a row whose values are all provably clamped is exact
again (``e = 0``). Only a row's final verdict can be in doubt (no value
provably above 0, some not provably 0): such rows, few or none, are
recomputed by the reference (:func:`~graphchallenge.engines.base.recheck`).
With a bias >= 0 a structural zero is not continuous with a small value,
so rows with a value within the band of 0 (or, where weights or inputs are
negative, a sum within the band of 0) go to the reference at once.
float32 would not do: the bound doubles every layer (column abs-sums of
2) from a unit roundoff 2**29 times larger, and covers most values within
a dozen layers.

After each layer a row leaves the tiles when it

* died (every value provably 0), or provably dies in the next layer (its
  largest value times the next layer's largest sum of positive weights,
  plus the bias, is below 0 by the band): it stays dead;
* saturated (every value provably 32): it stays all-32, at no cost,
  through every layer whose smallest column sum ``s`` gives
  ``32 s + bias >= 32 + band``; a layer that fails this test brings it back;
* was sent to the reference (see above).

The result equals the float64 reference's categories on every input, for
any network (any shape, weight signs or bias); see ``docs/cpu.md``.
"""

import math
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..catalog import YMAX
from ..errors import DataError
from . import exactness as bounds
from .base import Engine, InferenceResult, Timer
from .exactness import recheck

try:
    import numba
except ImportError:
    numba = None

#: Rows per tile: a tile is ``neurons x TILE`` float64, 1 MiB at N = 1024. Measured
#: on the real neuron1024 network: 128 beats 64 by ~8%, and 16 or 32 by more.
TILE = 128
#: Activation memory (two buffers) one worker's chunk may use by default.
CHUNK_BYTES = 128 * 2**20

#: Fewer rows than this per chunk cost more in per-layer overhead than threads win.
_MIN_CHUNK_ROWS = 512
_NO_ROWS = np.empty(0, dtype=np.int64)

# Markers in the source lists of _gather_lanes: an empty lane, a lane set to all 32.
_EMPTY, _SATURATED = -1, -2


def _kernel(inline=False):
    """``numba.njit`` with on-disk caching; the plain function where numba is missing.

    ``inline`` helpers are compiled into their callers (measured ~10% faster
    for the per-column helpers than calls).
    """
    if numba is None:
        return lambda function: function
    # 'contract' lets LLVM fuse multiply-adds: a fused sum obeys the same error bound.
    return numba.njit(cache=True, nogil=True, fastmath={"contract"},
                      inline="always" if inline else "never")


# Rows of the per-lane statistics the kernels return: over a row's outputs,
# the largest and smallest pre-activation, the smallest distance to 16 (the
# middle of [0, 32]), the smallest |pre-activation| and the smallest |sum|.
# A structural zero counts as a pre-activation of -inf (provably 0).
_HIGH, _LOW, _MIDDLE, _SMALL, _TINY = range(5)
_N_STATS = 5


@_kernel(inline=True)
def _finish_column(values, bias, dense, stats):
    """Bias, ReLU and clamp of one output neuron across a tile's lanes, in place.

    ``values`` holds the sums ``z``. With ``dense`` (bias < 0) the bias goes
    on every sum, which gives the reference's result exactly (a structural
    zero becomes ``max(0, bias) = 0`` either way) and makes the layer a
    continuous map; otherwise a zero sum is a structural zero that gets no
    bias. ``stats`` (``_N_STATS x lanes``) accumulates the lanes' statistics.
    """
    high, low, middle, small, tiny = (stats[_HIGH], stats[_LOW], stats[_MIDDLE], stats[_SMALL],
                                      stats[_TINY])
    # Selects, min and max only: no branches, so the loops vectorize.
    if dense:
        # Only the statistics a negative bias needs (see _apply_layer).
        for lane in range(values.size):
            pre = values[lane] + bias
            values[lane] = min(max(pre, 0.0), YMAX)
            high[lane] = max(high[lane], pre)
            low[lane] = min(low[lane], pre)
            middle[lane] = min(middle[lane], abs(pre - YMAX / 2))
        return
    for lane in range(values.size):
        z = values[lane]
        pre = z + bias if z != 0.0 else -np.inf
        values[lane] = min(max(pre, 0.0), YMAX)
        high[lane] = max(high[lane], pre)
        low[lane] = min(low[lane], pre)
        middle[lane] = min(middle[lane], abs(pre - YMAX / 2))
        small[lane] = min(small[lane], abs(pre))
        tiny[lane] = min(tiny[lane], abs(z))


@_kernel(inline=True)
def _start_stats(stats):
    """Empty statistics: -inf for the maxima, +inf for the minima."""
    for lane in range(stats.shape[1]):
        stats[_HIGH, lane] = -np.inf
        for row in range(1, _N_STATS):
            stats[row, lane] = np.inf


@_kernel()
def _load_inputs(in_indptr, in_indices, in_values, lane_rows, out):
    """Tiles holding input rows ``lane_rows`` (negative: an empty lane), neuron-major."""
    n_tiles, n_in, width = out.shape
    for tile in range(n_tiles):
        block = out[tile]
        block[:, :] = 0.0
        for lane in range(width):
            row = lane_rows[tile * width + lane]
            if row >= 0:
                for q in range(in_indptr[row], in_indptr[row + 1]):
                    block[in_indices[q], lane] = in_values[q]


@_kernel(inline=True)
def _accumulate(acc, source, rows, weights, n_terms):
    """``acc = sum_p weights[p] * source[rows[p]]`` over ``p < n_terms``, four terms a pass.

    Each term is a contiguous vector multiply-add across the lanes; four per
    pass read and write the accumulator once per four terms.
    """
    for lane in range(acc.size):
        acc[lane] = 0.0
    p = 0
    while p + 4 <= n_terms:
        r0 = source[rows[p]]
        r1 = source[rows[p + 1]]
        r2 = source[rows[p + 2]]
        r3 = source[rows[p + 3]]
        w0 = weights[p]
        w1 = weights[p + 1]
        w2 = weights[p + 2]
        w3 = weights[p + 3]
        for lane in range(acc.size):
            acc[lane] += (w0 * r0[lane] + w1 * r1[lane]) + (w2 * r2[lane] + w3 * r3[lane])
        p += 4
    while p < n_terms:
        r0 = source[rows[p]]
        w0 = weights[p]
        for lane in range(acc.size):
            acc[lane] += w0 * r0[lane]
        p += 1


@_kernel(inline=True)
def _accumulate_pair(acc, other_acc, source, rows, weights, other_weights, n_terms):
    """:func:`_accumulate` for two columns with the same inputs: each input read once for both."""
    for lane in range(acc.size):
        acc[lane] = 0.0
        other_acc[lane] = 0.0
    p = 0
    while p + 4 <= n_terms:
        r0 = source[rows[p]]
        r1 = source[rows[p + 1]]
        r2 = source[rows[p + 2]]
        r3 = source[rows[p + 3]]
        w0 = weights[p]
        w1 = weights[p + 1]
        w2 = weights[p + 2]
        w3 = weights[p + 3]
        v0 = other_weights[p]
        v1 = other_weights[p + 1]
        v2 = other_weights[p + 2]
        v3 = other_weights[p + 3]
        for lane in range(acc.size):
            x0 = r0[lane]
            x1 = r1[lane]
            x2 = r2[lane]
            x3 = r3[lane]
            acc[lane] += (w0 * x0 + w1 * x1) + (w2 * x2 + w3 * x3)
            other_acc[lane] += (v0 * x0 + v1 * x1) + (v2 * x2 + v3 * x3)
        p += 4
    while p < n_terms:
        r0 = source[rows[p]]
        w0 = weights[p]
        v0 = other_weights[p]
        for lane in range(acc.size):
            acc[lane] += w0 * r0[lane]
            other_acc[lane] += v0 * r0[lane]
        p += 1


@_kernel(inline=True)
def _gather_layer(act, pairs, w_indptr, w_indices, w_values, bias, dense, out, stats):
    """A layer applied to tiles ``act`` (``tile x n_in x TILE``), written to tiles ``out``.

    Output neuron ``j`` of a tile is ``sum_p w_p * act[tile, k_p, :]`` over
    column ``j`` of ``W`` (CSC). Columns go by ``pairs`` (see
    :func:`_column_pairs`): two columns that read the same inputs are summed
    together, each input loaded once for both, and columns with similar
    inputs follow each other, so those inputs are still in L1. Inputs that
    are zero in every lane of the tile (common in the first, sparse layers)
    are left out of the sums; a term ``w * 0`` adds exactly nothing, so the
    result is the same to the bit.
    """
    n_tiles, n_out, width = out.shape
    n_in = act.shape[1]
    longest = 0
    for j in range(n_out):
        longest = max(longest, w_indptr[j + 1] - w_indptr[j])
    nonzero = np.empty(n_in, dtype=np.bool_)
    kept_rows = np.empty(longest, dtype=w_indices.dtype)
    kept_weights = np.empty(longest)
    other_weights = np.empty(longest)
    for tile in range(n_tiles):
        source = act[tile]
        block = out[tile]
        for k in range(n_in):
            row = source[k]
            found = False
            for lane in range(width):
                found |= row[lane] != 0.0
            nonzero[k] = found
        tile_stats = stats[tile]
        _start_stats(tile_stats)
        for pair in range(pairs.shape[0]):
            j, other = pairs[pair, 0], pairs[pair, 1]
            start = w_indptr[j]
            other_start = w_indptr[other] if other >= 0 else start
            # Branch-free: write every term, advance past the nonzero ones only
            # (about half are skipped in sparse tiles: a branch would mispredict).
            n_kept = 0
            for offset in range(w_indptr[j + 1] - start):
                k = w_indices[start + offset]
                kept_rows[n_kept] = k
                kept_weights[n_kept] = w_values[start + offset]
                other_weights[n_kept] = w_values[other_start + offset]
                n_kept += nonzero[k]
            if other >= 0:
                _accumulate_pair(block[j], block[other], source, kept_rows, kept_weights,
                                 other_weights, n_kept)
                _finish_column(block[other], bias, dense, tile_stats)
            else:
                _accumulate(block[j], source, kept_rows, kept_weights, n_kept)
            _finish_column(block[j], bias, dense, tile_stats)


# The two compiled versions of _gather_layer: with ``dense`` a constant, the
# choice leaves the innermost loop (measured ~15% faster).
@_kernel()
def _gather_layer_dense(act, pairs, w_indptr, w_indices, w_values, bias, out, stats):
    _gather_layer(act, pairs, w_indptr, w_indices, w_values, bias, True, out, stats)


@_kernel()
def _gather_layer_structural(act, pairs, w_indptr, w_indices, w_values, bias, out, stats):
    _gather_layer(act, pairs, w_indptr, w_indices, w_values, bias, False, out, stats)


@_kernel(inline=True)
def _scatter_inputs(in_indptr, in_indices, in_values, lane_rows, w_indptr, w_indices, w_values,
                    bias, dense, out, stats):
    """The first layer straight from the sparse input rows, written to tiles ``out``.

    Each input nonzero ``x`` at neuron ``k`` adds ``x * W[k, :]`` (the row of
    ``W``, CSR) to its lane: work in proportion to the images' pixels, not
    to the layer's width, and no dense input tile to build. The sums hold
    the same terms as the gather's, in another order, which the rounding
    band covers.
    """
    n_tiles, n_out, width = out.shape
    # One row's sums in a small contiguous accumulator (L1), then copied into
    # the tile's lane: scattering into the tile itself strides by a lane's width.
    acc = np.empty(n_out)
    for tile in range(n_tiles):
        block = out[tile]
        for lane in range(width):
            acc[:] = 0.0
            row = lane_rows[tile * width + lane]
            if row >= 0:
                for q in range(in_indptr[row], in_indptr[row + 1]):
                    k = in_indices[q]
                    x = in_values[q]
                    for p in range(w_indptr[k], w_indptr[k + 1]):
                        acc[w_indices[p]] += x * w_values[p]
            for j in range(n_out):
                block[j, lane] = acc[j]
        tile_stats = stats[tile]
        _start_stats(tile_stats)
        for j in range(n_out):
            _finish_column(block[j], bias, dense, tile_stats)


@_kernel()
def _scatter_inputs_dense(in_indptr, in_indices, in_values, lane_rows, w_indptr, w_indices,
                          w_values, bias, out, stats):
    _scatter_inputs(in_indptr, in_indices, in_values, lane_rows, w_indptr, w_indices, w_values,
                    bias, True, out, stats)


@_kernel()
def _scatter_inputs_structural(in_indptr, in_indices, in_values, lane_rows, w_indptr, w_indices,
                               w_values, bias, out, stats):
    _scatter_inputs(in_indptr, in_indices, in_values, lane_rows, w_indptr, w_indices, w_values,
                    bias, False, out, stats)


@_kernel()
def _gather_lanes(act, sources, out):
    """Repack tiles: lane ``s`` of ``out`` gets lane ``sources[s]`` of ``act``.

    A source of ``_EMPTY`` gives a zero lane, ``_SATURATED`` an all-32 lane.
    """
    n_tiles, n_rows, width = out.shape
    source_tiles = np.empty(width, dtype=np.int64)
    source_lanes = np.empty(width, dtype=np.int64)
    for tile in range(n_tiles):
        for lane in range(width):
            source = sources[tile * width + lane]
            source_tiles[lane] = source // width
            source_lanes[lane] = source % width
        block = out[tile]
        for k in range(n_rows):
            for lane in range(width):
                source = sources[tile * width + lane]
                if source >= 0:
                    block[k, lane] = act[source_tiles[lane], k, source_lanes[lane]]
                else:
                    block[k, lane] = YMAX if source == _SATURATED else 0.0


class _Layer:
    """One layer as the kernels want it, with the constants of its exactness checks.

    ``growth`` and ``max_terms`` are the bound constants of
    :func:`bounds.paired_constants` (for a derived network they also cover
    the reference's rounding on the original layer).
    """

    def __init__(self, weights, bias, growth, max_terms):
        weights = sp.csr_matrix(weights, dtype=np.float64)
        self.n_in, self.n_out = weights.shape
        csc = weights.tocsc()
        csc.sort_indices()
        self.gather = (csc.indptr.astype(np.int64), csc.indices.astype(np.int32),
                       np.ascontiguousarray(csc.data))
        self.pairs = _column_pairs(csc)
        self.scatter = (weights.indptr.astype(np.int64), weights.indices.astype(np.int32),
                        np.ascontiguousarray(weights.data))
        self.growth, self.max_terms = growth, max_terms
        self.has_negative = bool(csc.nnz and csc.data.min() < 0)
        # Largest sum of a column's positive weights: on inputs in [0, y] no
        # output exceeds positive_growth * y (before the bias).
        column_of = np.repeat(np.arange(self.n_out), np.diff(csc.indptr))
        self.positive_growth = float(np.bincount(column_of, weights=np.maximum(csc.data, 0.0),
                                                 minlength=self.n_out).max(initial=0.0))
        self.keeps_saturated = self._keeps_saturated(csc, bias)

    def _keeps_saturated(self, csc, bias):
        """True when an all-32 input row provably gives an all-32 output row.

        Output ``j`` is then ``32 * s_j + bias`` with ``s_j`` the column sum;
        it must clear 32 by the rounding band (plus the rounding of the
        column sum computed here), and ``32 * s_j`` must be nonzero so that
        the bias applies at all.
        """
        if self.n_out == 0 or csc.nnz == 0:
            return False
        column_sums = np.bincount(np.repeat(np.arange(self.n_out), np.diff(csc.indptr)),
                                  weights=csc.data, minlength=self.n_out)
        smallest = YMAX * float(column_sums.min())
        sum_error = bounds.gamma(self.max_terms, bounds.unit_roundoff(np.float64)) * self.growth
        margin = bounds.band(0.0, self.growth, self.max_terms, bias) + YMAX * sum_error
        return smallest > margin and smallest + bias - YMAX >= margin

    def bands(self, errors, bias):
        return bounds.band(errors, self.growth, self.max_terms, bias)

    def next_errors(self, errors, inside, bias):
        return np.where(inside, bounds.next_error(errors, self.growth, self.max_terms, bias), 0.0)


class _Buffers:
    """Two flat float64 buffers, reused as tiles of any shape that fits.

    Reusing them avoids fresh pages (and their faults) for every layer.
    """

    def __init__(self, n_values):
        self.size = n_values
        self._buffers = (np.empty(n_values), np.empty(n_values))

    def take(self, n_tiles, n_neurons, avoid=None):
        """A C-contiguous ``n_tiles x n_neurons x TILE`` view of the buffer without ``avoid``."""
        size = n_tiles * n_neurons * TILE
        first, second = self._buffers
        buffer = second if avoid is not None and np.may_share_memory(first, avoid) else first
        return buffer[:size].reshape(n_tiles, n_neurons, TILE)


def _column_pairs(csc):
    """The order the kernels take the columns in, as ``(column, partner or -1)`` rows.

    Columns are sorted by a fingerprint of their inputs, so that columns
    with the same inputs are side by side; neighbours with exactly the same
    inputs (rows, in the same order) are paired, to be summed together.
    """
    counts = np.diff(csc.indptr)
    n_out = csc.shape[1]
    firsts = np.full(n_out, -1)
    firsts[counts > 0] = csc.indices[csc.indptr[:-1][counts > 0]]
    sums = np.bincount(np.repeat(np.arange(n_out), counts), weights=csc.indices, minlength=n_out)
    order = np.lexsort((sums, firsts, counts))
    # same[i]: columns order[i] and order[i + 1] read exactly the same inputs.
    left, right = order[:-1], order[1:]
    same = counts[left] == counts[right]
    lengths = counts[left] * same
    ends = np.cumsum(lengths)
    offsets = np.arange(ends[-1] if ends.size else 0) - np.repeat(ends - lengths, lengths)
    equal = (csc.indices[np.repeat(csc.indptr[left], lengths) + offsets]
             == csc.indices[np.repeat(csc.indptr[right], lengths) + offsets])
    differing = np.bincount(np.repeat(np.arange(left.size), lengths), weights=~equal,
                            minlength=left.size)
    same &= differing == 0
    # In a run of identical neighbours pair the 1st with the 2nd, 3rd with 4th, ...
    run_start = np.maximum.accumulate(np.where(~same, np.arange(same.size) + 1, 0)) \
        if same.size else same
    linked = same & ((np.arange(same.size) - run_start) % 2 == 0)
    partners = np.full(n_out, -1)
    partners[np.flatnonzero(linked)] = right[linked]
    taken = np.zeros(n_out + 1, dtype=bool)
    taken[np.flatnonzero(linked) + 1] = True
    keep = ~taken[:n_out]
    return np.stack([order[keep], partners[keep]], axis=1).astype(np.int64)


def _tiles(n_rows):
    return -(-n_rows // TILE)


def _pad(values, fill):
    """``values`` followed by ``fill`` up to a whole number of tiles."""
    padded = np.full(_tiles(values.size) * TILE, fill, dtype=values.dtype)
    padded[:values.size] = values
    return padded


def _repack(act, sources, n_neurons, buffers):
    """New tiles holding lanes ``sources`` of ``act`` (or all-32 lanes, see _gather_lanes)."""
    target = buffers.take(_tiles(sources.size), n_neurons, avoid=act)
    _gather_lanes(act, _pad(sources, _EMPTY), target)
    return target


def _as_inputs(inputs, n_features):
    """The inputs as the CSR arrays the first-layer kernel takes (no copy when already so)."""
    if inputs.ndim != 2 or inputs.shape[1] != n_features:
        raise DataError(f"inputs have {inputs.shape[-1]} columns but the network's first layer "
                        f"has {n_features} inputs")
    x = sp.csr_matrix(inputs, dtype=np.float64)
    arrays = (x.indptr.astype(np.int64, copy=False), x.indices.astype(np.int32, copy=False),
              np.ascontiguousarray(x.data))
    # Read-only views: one kernel signature whether or not the inputs came
    # read-only from the binary cache (another would compile inside the timer).
    views = tuple(array.view() for array in arrays)
    for view in views:
        view.flags.writeable = False
    return views


def _scatter_pays(layer, in_indptr, lane_rows):
    """Whether the first layer is cheaper scattered from the sparse inputs than gathered.

    Per input row, scattering costs a strided write per input nonzero and
    outgoing weight; gathering costs building a dense tile column (``n_in``
    values) plus the vectorised terms. The weights are measured on the real
    images (about 106 pixels of 1024): the compacted first layer (2 outgoing
    weights per input) runs 1.7x faster scattered, the original (32) 1.8x
    slower.
    """
    rows = lane_rows[lane_rows >= 0]
    if rows.size == 0 or layer.n_in == 0:
        return False
    pixels = float(np.mean(in_indptr[rows + 1] - in_indptr[rows]))
    out_degree = layer.scatter[0][-1] / layer.n_in
    return 25.0 * pixels * out_degree < 10.0 * layer.n_in + layer.scatter[0][-1]


def _apply_layer(layer, following, first, mixed, act, lane_rows, errors, saturated, bias, inputs,
                 buffers):
    """One layer on the tiles of a chunk; sorts its rows into kept, saturated, dead and flagged.

    ``following`` is the next layer (None after the last one).

    Returns
    -------
    act, lane_rows, errors, saturated, flagged, n_doomed
        The new tiles, their rows (-1: empty lane) and error bounds, the
        saturated rows, the rows newly left to the reference, and how many
        rows, alive now, were dropped because ``following`` provably kills them.
    """
    last = following is None
    n_lanes = lane_rows.size
    n_tiles = n_lanes // TILE
    stats = np.empty((n_tiles, _N_STATS, TILE))
    out = buffers.take(n_tiles, layer.n_out, avoid=act)
    dense = bias < 0.0
    if first and _scatter_pays(layer, inputs[0], lane_rows):
        kernel = _scatter_inputs_dense if dense else _scatter_inputs_structural
        kernel(*inputs, lane_rows, *layer.scatter, bias, out, stats)
    else:
        if first:
            act = buffers.take(n_tiles, layer.n_in, avoid=out)
            _load_inputs(*inputs, lane_rows, act)
        kernel = _gather_layer_dense if dense else _gather_layer_structural
        kernel(act, layer.pairs, *layer.gather, bias, out, stats)
    high, low, middle, small, tiny = stats.transpose(1, 0, 2).reshape(_N_STATS, n_lanes)
    band = layer.bands(errors, bias)
    # Values provably clamped to 0 or 32 are exact; any other carries the error on.
    inside = middle < YMAX / 2 + band
    alive = high > -band
    sure = high > band
    full = low >= YMAX + band
    # Where the bias is not negative, whether a sum is a structural zero
    # matters: a value that may be 0 in one computation and not in the
    # other, or (``mixed``: some products negative) a sum that may have
    # cancelled, sends its row to the reference.
    near = np.zeros(n_lanes, dtype=bool) if dense else (small <= band) | (mixed & (tiny <= band))
    errors = layer.next_errors(errors, inside, bias)
    valid = lane_rows >= 0
    doubtful = near | (alive & ~sure) if last else near
    flagged = lane_rows[valid & doubtful]
    settled = valid & ~doubtful
    saturated = np.concatenate([saturated, lane_rows[settled & full]])
    keep = settled & alive & ~full
    if not last:
        # A row whose largest value y cannot lift any output of the next layer
        # above 0 (positive_growth * y + bias clears 0 by the band, for the
        # reference too) dies there: drop it now rather than compute it.
        largest = np.clip(high, 0.0, YMAX) + errors
        doomed = keep & (following.positive_growth * largest + bias
                         + following.bands(errors, bias) <= 0.0)
        keep &= ~doomed
    n_doomed = 0 if last else int(np.count_nonzero(doomed))
    # Repacking costs about a third of a layer: worth it when it frees a quarter of the tiles.
    if 4 * (n_tiles - _tiles(np.count_nonzero(keep))) >= n_tiles:
        sources = np.flatnonzero(keep)
        return (_repack(out, sources, layer.n_out, buffers), _pad(lane_rows[sources], _EMPTY),
                _pad(errors[sources], 0.0), saturated, flagged, n_doomed)
    return out, np.where(keep, lane_rows, _EMPTY), errors, saturated, flagged, n_doomed


@dataclass
class _ChunkOutcome:
    """What one chunk of rows came to."""

    survivors: np.ndarray  # 0-based rows alive after the last layer
    flagged: np.ndarray  # 0-based rows left to the reference
    live_rows: list  # per layer: rows not known to be dead (tiles, saturated, flagged)
    layer_seconds: list


def _run_chunk(rows, layers, bias, inputs, negative_inputs, buffers, n_layers):
    """Follow input ``rows`` through the ``n_layers`` ``layers``; returns a :class:`_ChunkOutcome`.

    ``inputs`` are the CSR arrays of all inputs; ``negative_inputs`` tells
    whether any of them is negative.
    """
    lane_rows = _pad(rows, _EMPTY)
    errors = np.zeros(lane_rows.size)
    act = None
    saturated = _NO_ROWS
    flagged = [_NO_ROWS]
    live_rows = [0] * n_layers
    layer_seconds = [0.0] * n_layers
    layers = iter(layers)
    following = next(layers, None)
    for index in range(n_layers):
        layer, following = following, next(layers, None)
        start = time.perf_counter()
        n_doomed = 0
        if saturated.size and not layer.keeps_saturated:
            valid = lane_rows >= 0
            sources = np.concatenate([np.flatnonzero(valid),
                                      np.full(saturated.size, _SATURATED, dtype=np.int64)])
            act = _repack(act, sources, layer.n_in, buffers)
            lane_rows = _pad(np.concatenate([lane_rows[valid], saturated]), _EMPTY)
            errors = _pad(np.concatenate([errors[valid], np.zeros(saturated.size)]), 0.0)
            saturated = _NO_ROWS
        if lane_rows.size:
            act, lane_rows, errors, saturated, now_flagged, n_doomed = _apply_layer(
                layer, following, index == 0,
                layer.has_negative or (index == 0 and negative_inputs), act, lane_rows, errors,
                saturated, bias, inputs, buffers)
            flagged.append(now_flagged)
        n_flagged = sum(part.size for part in flagged)
        live_rows[index] = (int(np.count_nonzero(lane_rows >= 0)) + saturated.size + n_flagged
                            + n_doomed)
        layer_seconds[index] = time.perf_counter() - start
        if not lane_rows.size and not saturated.size:
            # Every row died or awaits the recheck: later layers change nothing.
            live_rows[index + 1:] = [n_flagged] * (n_layers - index - 1)
            break
    return _ChunkOutcome(np.concatenate([lane_rows[lane_rows >= 0], saturated]),
                         np.concatenate(flagged), live_rows, layer_seconds)


class CpuEngine(Engine):
    """Multithreaded float64 numba kernels, exact by a per-row rounding band.

    Parameters
    ----------
    threads : int, optional
        Worker threads, each following its own chunks of rows through the
        network (default: the CPUs this process may use).
    chunk_rows : int, optional
        Rows followed through the network together. By default the inputs
        are cut into at least two chunks per thread (for balance; every
        chunk pays a per-layer overhead, so not more) of at most
        :data:`CHUNK_BYTES` of activations each; peak memory depends on the
        chunk and the width, not on the depth.

    Notes
    -----
    The layer tables of an in-memory network are built once and kept for
    the last network seen, so repeated runs (benchmarks) reuse them. A lazy
    network (``LayerFiles``) is converted layer by layer as it streams,
    inside the timer, once per chunk (so it gets one chunk per thread).
    """

    name = "cpu"
    description = "numba float64 tiles, multithreaded, exact by a proven rounding band"

    def __init__(self, threads=None, chunk_rows=None):
        if threads is not None and threads < 1:
            raise ValueError("threads must be positive")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        if threads is None:
            threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1)
        self.threads = threads
        self.chunk_rows = chunk_rows
        self._prepared = None  # (network, [_Layer, ...])
        self._compiled = False
        self._buffers = []  # one _Buffers per worker, reused across calls

    @classmethod
    def availability(cls):
        if numba is None:
            return False, "numba is not installed: pip install numba"
        return True, ""

    def prepare(self, network):
        """Compile the kernels and build the layer tables of ``network``; returns the seconds spent.

        :meth:`infer` calls it when needed; call it first to keep one-off
        work out of a measurement.
        """
        with Timer() as timer:
            if not self._compiled:
                _warm_up()
                self._compiled = True
            if isinstance(network.layers, list) and (self._prepared is None
                                                     or self._prepared[0] is not network):
                self._prepared = (network, list(_layers(network)))
        return timer.seconds

    def _chunk_rows(self, network, n_rows, streamed):
        """Rows per chunk: within the memory limit, enough chunks to keep the threads busy."""
        if self.chunk_rows:
            return self.chunk_rows
        widest = max(max(shape) for shape in network.shapes)
        limit = max(TILE, CHUNK_BYTES // (2 * 8 * widest))
        # A streamed network is read once per chunk: as few chunks as possible.
        wanted = self.threads if streamed else 2 * self.threads
        n_chunks = max(math.ceil(n_rows / limit), min(wanted, math.ceil(n_rows / _MIN_CHUNK_ROWS)))
        return max(1, math.ceil(n_rows / max(n_chunks, 1)))

    def infer(self, network, inputs, progress=False):
        from tqdm import tqdm

        prepare_seconds = self.prepare(network)
        prepared = self._prepared[1] if self._prepared and self._prepared[0] is network else None
        n_rows = inputs.shape[0]
        chunk_rows = self._chunk_rows(network, n_rows, streamed=prepared is None)
        starts = range(0, n_rows, chunk_rows)
        widest = max(max(shape) for shape in network.shapes)
        n_workers = max(1, min(self.threads, len(starts)))
        with Timer() as total:
            x = _as_inputs(inputs, network.n_features)
            negative_inputs = bool(x[2].size and x[2].min() < 0)
            # One pair of buffers per worker, handed from chunk to chunk, and kept
            # for the next call (fresh pages would fault in again every run).
            size = _tiles(chunk_rows) * widest * TILE
            if len(self._buffers) < n_workers or self._buffers[0].size < size:
                self._buffers = [_Buffers(size) for _ in range(n_workers)]
            idle_buffers = queue.SimpleQueue()
            for buffers in self._buffers[:n_workers]:
                idle_buffers.put(buffers)

            def run(start):
                buffers = idle_buffers.get()
                try:
                    return _run_chunk(np.arange(start, min(start + chunk_rows, n_rows)),
                                      prepared if prepared is not None else _layers(network),
                                      network.bias, x, negative_inputs, buffers, network.n_layers)
                finally:
                    idle_buffers.put(buffers)

            with ThreadPoolExecutor(n_workers) as pool:
                outcomes = list(tqdm(pool.map(run, starts), total=len(starts), desc=self.name,
                                     unit="chunk", disable=not progress, leave=False))
            survivors = [outcome.survivors for outcome in outcomes]
            flagged = np.concatenate([outcome.flagged for outcome in outcomes] + [_NO_ROWS])
            categories = np.sort(np.concatenate(survivors + [_NO_ROWS])) + 1
            categories = recheck(network, inputs, categories, flagged)
        live_rows = [int(sum(column)) for column in zip(*(o.live_rows for o in outcomes))]
        layer_seconds = [float(sum(column)) for column in zip(*(o.layer_seconds for o in outcomes))]
        return InferenceResult(
            categories=categories, infer_seconds=total.seconds, engine=self.name,
            prepare_seconds=prepare_seconds, live_rows=live_rows or [0] * network.n_layers,
            layer_seconds=layer_seconds or [0.0] * network.n_layers,
            rechecked_rows=int(flagged.size),
            details={"threads": n_workers, "chunks": len(starts), "chunk_rows": chunk_rows,
                     "tile": TILE})


def _layers(network):
    """``network``'s layers as :class:`_Layer`, one at a time."""
    for weights, growth, max_terms in bounds.paired_constants(network):
        yield _Layer(weights, network.bias, growth, max_terms)


def _warm_up():
    """Compile every kernel (or load it from numba's cache) on one-neuron tiles."""
    from ..network import Network

    one = sp.csr_matrix(np.ones((1, 1)))
    inputs = _as_inputs(sp.csr_matrix(np.ones((2, 1))), 1)
    # Negative bias: rows saturate at once, the 0.5 weight brings them back
    # (every kernel runs); then the kernel for biases >= 0.
    for network in (Network([one * 40.0, one, one * 0.5], -0.25), Network([one, one], 0.25)):
        _run_chunk(np.arange(2), list(_layers(network)), network.bias, inputs, False,
                   _Buffers(TILE), network.n_layers)
