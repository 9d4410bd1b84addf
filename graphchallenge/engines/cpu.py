"""The CPU engine: numba kernels over tiles of inputs kept neuron-major, exact by proof.

Inputs are processed in chunks of rows; inside a chunk, layer after layer,
the rows still alive are packed into tiles of :data:`TILE` rows stored
neuron-major (``tile x neuron x row``), so that gathering a column's
inputs is a run of contiguous vector multiply-adds. One pass per column
fuses the sum, the bias, ReLU, the clamp and the bookkeeping below.
Columns equal to each other (the same inputs and weights: every challenge
layer's outputs come in groups of 16 or 32) have the same values in every
row, so they are computed once and share one tile row, which the next
layer reads for any of them: the tiles of a challenge layer hold a 16th
or a 32nd of its neurons (64 or 32 rows at 1024). Columns that read the
same inputs run one after the other, while those inputs are in L1, and
two at a time where their inputs are exactly the same. Inputs that are
zero across a whole tile are skipped. A first layer whose computed
columns have few weights per input (the challenge's, or a compacted one)
is scattered straight from the sparse images instead.

A chunk crosses the network in one compiled call (:func:`_forward`): the
bookkeeping between layers runs in numba too, so a layer costs no Python
and no lock, and threads take whole chunks (the kernels release the GIL),
so no thread waits for another between layers. The few rows left once the
others died or saturated share narrow tiles (8 to 64 lanes), and a chunk
whose rows have all settled for good stops. A network too large to hold
(streamed from files, or generated layers rebuilt on demand) is
summarized once and converted a segment at a time, as chunks reach it
(:class:`_Streamed`).

Exactness. Sums run in float64 but in another order than scipy's, so
each row carries a bound ``e`` on how far its values are from exact
arithmetic (:mod:`graphchallenge.engines.exactness`); the reference's own
values obey the same bound, so the two can differ only for a value within
``band`` of a threshold. With a negative bias (every challenge network) the
reference's layer is exactly ``min(32, max(0, Y W + bias))`` (the bias on a
structural zero gives ``max(0, bias) = 0`` anyway), a continuous map: a
value near 0 or 32 needs no special care, its error simply carries on to
the next layer, and a row whose values are all provably clamped is exact
again (``e = 0``). Only a row's final verdict can be in doubt (no value
provably above 0, some not provably 0): such rows, few or none, are
recomputed by the reference (:func:`~graphchallenge.engines.exactness.recheck`).
So is, at once, a row whose band has grown to span [0, 32]: its values
hover between the thresholds (a few real images do so for 50 layers) and
no later layer could settle it. With a bias >= 0 a structural zero is not
continuous with a small value, so rows with a value within the band of 0
(or, where weights or inputs are negative, a sum within the band of 0) go
to the reference at once. float32 would not do: the bound doubles every
layer (column abs-sums of 2) from a unit roundoff 2**29 times larger, and
covers most values within a dozen layers.

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

import functools
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .. import io
from ..catalog import YMAX
from ..errors import DataError
from . import exactness
from .base import Engine, InferenceResult, Timer
from .exactness import recheck

try:
    import numba
    from llvmlite import ir as llvm_ir
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:
    numba = None

    def intrinsic(function):
        return function

log = logging.getLogger(__name__)

#: Rows per tile (the default of ``CpuEngine(tile=...)``): a tile is ``neurons x TILE``
#: float64, 1 MiB at N = 1024. Measured on the real neuron1024 network: 128 beats 64
#: by ~8%, and 16 or 32 by more; at N = 16384 (16 MiB tiles) 128 still beat 8, 16
#: and 32 (the gathers of a column's 32 inputs stream from memory either way, and
#: narrow tiles pay the per-tile column setup more often).
TILE = 128
#: Activation memory (two buffers) one worker's chunk may use by default.
CHUNK_BYTES = 128 * 2**20
#: Layers converted together when a network is streamed (see :class:`_Streamed`).
SEGMENT_LAYERS = 8
#: Converted tables of a streamed network kept in memory by default.
STREAMED_BYTES = 2 * 2**30

#: Fewer rows than this per chunk cost more in per-layer overhead than threads win.
_MIN_CHUNK_ROWS = 512
_NO_ROWS = np.empty(0, dtype=np.int64)

# Markers in the source lists of _gather_lanes: an empty lane, a lane set to all 32.
_EMPTY, _SATURATED = -1, -2
#: The fewest lanes a tile has (a few straggling rows share one narrow tile).
_MIN_WIDTH = 8
_UNIT_ROUNDOFF = exactness.unit_roundoff(np.float64)
_SMALLEST_SUBNORMAL = exactness.smallest_subnormal(np.float64)
# Scatter tables for a segment without the network's first layer.
_NO_SCATTER = (np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.uint16), np.empty(0),
               np.zeros(2, dtype=np.int64))
for _array in _NO_SCATTER:
    _array.flags.writeable = False  # as every table is (see _read_only)


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
def _load_inputs(in_indptr, in_indices, in_values, in_stride, lane_rows, out):
    """Tiles holding input rows ``lane_rows`` (negative: an empty lane), neuron-major.

    Nonzero ``q``'s value is ``in_values[q * in_stride]`` (``in_stride`` 0:
    inputs whose nonzeros all hold one value store it once).
    """
    n_tiles, n_in, width = out.shape
    for tile in range(n_tiles):
        block = out[tile]
        block[:, :] = 0.0
        for lane in range(width):
            row = lane_rows[tile * width + lane]
            if row >= 0:
                for q in range(in_indptr[row], in_indptr[row + 1]):
                    block[in_indices[q], lane] = in_values[q * in_stride]


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
def _gather_layer(act, pairs, w_indptr, w_indices, w_values, value_base, value_stride, bias,
                  dense, out, stats):
    """A layer applied to tiles ``act`` (``tile x n_in x TILE``), written to tiles ``out``.

    Row ``j`` of an output tile is ``sum_p w_p * act[tile, k_p, :]`` over
    column ``j`` of the layer's computed columns (CSC, rows already mapped to
    the input tile's rows; see :class:`_Layer`). Columns go by ``pairs``:
    two columns that read the same inputs are summed together, each input
    loaded once for both, and columns with similar inputs follow each
    other, so those inputs are still in L1. Inputs that are zero in every
    lane of the tile (common in the first, sparse layers) are left out of
    the sums; a term ``w * 0`` adds exactly nothing, so the
    result is the same to the bit. The weight of term ``p`` (an index into
    ``w_indices``) is ``w_values[value_base + value_stride * p]``: a stride of
    0 reads one stored weight for a whole layer whose weights are all equal.
    Returns the multiply-adds done (terms summed times lanes).
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
    n_terms = 0
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
                kept_weights[n_kept] = w_values[value_base + value_stride * (start + offset)]
                other_weights[n_kept] = w_values[value_base
                                                 + value_stride * (other_start + offset)]
                n_kept += nonzero[k]
            if other >= 0:
                _accumulate_pair(block[j], block[other], source, kept_rows, kept_weights,
                                 other_weights, n_kept)
                _finish_column(block[other], bias, dense, tile_stats)
                n_terms += n_kept
            else:
                _accumulate(block[j], source, kept_rows, kept_weights, n_kept)
            _finish_column(block[j], bias, dense, tile_stats)
            n_terms += n_kept
    return n_terms * width


# The two compiled versions of _gather_layer: with ``dense`` a constant, the
# choice leaves the innermost loop (measured ~15% faster).
@_kernel()
def _gather_layer_dense(act, pairs, w_indptr, w_indices, w_values, value_base, value_stride,
                        bias, out, stats):
    return _gather_layer(act, pairs, w_indptr, w_indices, w_values, value_base, value_stride,
                         bias, True, out, stats)


@_kernel()
def _gather_layer_structural(act, pairs, w_indptr, w_indices, w_values, value_base, value_stride,
                             bias, out, stats):
    return _gather_layer(act, pairs, w_indptr, w_indices, w_values, value_base, value_stride,
                         bias, False, out, stats)


@_kernel(inline=True)
def _scatter_inputs(in_indptr, in_indices, in_values, in_stride, lane_rows, w_indptr, w_indices,
                    w_values, w_form, bias, dense, out, stats):
    """The first layer straight from the sparse input rows, written to tiles ``out``.

    Each input nonzero ``x`` at neuron ``k`` adds ``x * W[k, :]`` (the row of
    ``W``, CSR, holding only the computed columns, numbered as the output
    tile's rows) to its lane: work in proportion to the images' pixels, not
    to the layer's width, and no dense input tile to build. The sums hold
    the same terms as the gather's, in another order, which the rounding
    band covers. ``w_form`` is ``(degree, value stride)``: where every row
    of ``W`` holds ``degree`` > 0 entries, row ``k``'s start at
    ``k * degree`` and no pointer is read; entry ``p``'s weight is
    ``w_values[p * value_stride]`` (0: one weight for all). With 16-bit
    columns, the two cut the time per pixel 2.6x on the first layer at
    65536 neurons (its tables then fit in L2). Returns the multiply-adds
    done.
    """
    n_tiles, n_out, width = out.shape
    degree, value_stride = w_form[0], w_form[1]
    n_terms = 0
    # One row's sums in a small contiguous accumulator (L1), then copied into
    # the tile's lane: scattering into the tile itself strides by a lane's width.
    acc = np.zeros(n_out)
    for tile in range(n_tiles):
        block = out[tile]
        for lane in range(width):
            row = lane_rows[tile * width + lane]
            if row >= 0:
                start, stop = in_indptr[row], in_indptr[row + 1]
                if degree > 0:
                    for q in range(start, stop):
                        x = in_values[q * in_stride]
                        first = in_indices[q] * degree
                        for p in range(first, first + degree):
                            acc[w_indices[p]] += x * w_values[p * value_stride]
                    n_terms += (stop - start) * degree
                else:
                    for q in range(start, stop):
                        k = in_indices[q]
                        x = in_values[q * in_stride]
                        for p in range(w_indptr[k], w_indptr[k + 1]):
                            acc[w_indices[p]] += x * w_values[p * value_stride]
                        n_terms += w_indptr[k + 1] - w_indptr[k]
            # Every tile row is a computed column.
            for j in range(n_out):
                block[j, lane] = acc[j]
                acc[j] = 0.0
        tile_stats = stats[tile]
        _start_stats(tile_stats)
        for j in range(n_out):
            _finish_column(block[j], bias, dense, tile_stats)
    return n_terms


@_kernel()
def _scatter_inputs_dense(in_indptr, in_indices, in_values, in_stride, lane_rows, w_indptr,
                          w_indices, w_values, w_form, bias, out, stats):
    return _scatter_inputs(in_indptr, in_indices, in_values, in_stride, lane_rows, w_indptr,
                           w_indices, w_values, w_form, bias, True, out, stats)


@_kernel()
def _scatter_inputs_structural(in_indptr, in_indices, in_values, in_stride, lane_rows, w_indptr,
                               w_indices, w_values, w_form, bias, out, stats):
    return _scatter_inputs(in_indptr, in_indices, in_values, in_stride, lane_rows, w_indptr,
                           w_indices, w_values, w_form, bias, False, out, stats)


@_kernel()
def _gather_lanes(act, sources, out):
    """Repack tiles: lane ``s`` of ``out`` gets lane ``sources[s]`` of ``act``.

    Lanes are numbered tile by tile in each array's own width (``act`` and
    ``out`` may differ). A source of ``_EMPTY`` gives a zero lane,
    ``_SATURATED`` an all-32 lane.
    """
    n_tiles, n_rows, width = out.shape
    source_width = act.shape[2]
    source_tiles = np.empty(width, dtype=np.int64)
    source_lanes = np.empty(width, dtype=np.int64)
    for tile in range(n_tiles):
        for lane in range(width):
            source = sources[tile * width + lane]
            source_tiles[lane] = source // source_width
            source_lanes[lane] = source % source_width
        block = out[tile]
        for k in range(n_rows):
            for lane in range(width):
                source = sources[tile * width + lane]
                if source >= 0:
                    block[k, lane] = act[source_tiles[lane], k, source_lanes[lane]]
                else:
                    block[k, lane] = YMAX if source == _SATURATED else 0.0


@intrinsic
def _cycles(typingctx):
    """The processor's cycle counter (``llvm.readcyclecounter``): a clock numba can cache.

    Only ratios of it are used (a chunk's measured seconds shared out among
    its layers), so its frequency does not matter.
    """
    def codegen(context, builder, signature, args):
        counter = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(counter, [])
    return numba.types.int64(), codegen


@_kernel(inline=True)
def _next_error(error, growth, max_terms, bias, scale):
    """:func:`exactness.next_error` for one row in float64, compiled (same formula, same order)."""
    n = max_terms + 1.0
    g = n * _UNIT_ROUNDOFF / (1.0 - n * _UNIT_ROUNDOFF)
    return (growth * error + g * (growth * (scale + error) + abs(bias))
            + n * _SMALLEST_SUBNORMAL)


@_kernel(inline=True)
def _width_for(n_rows, tile):
    """Lanes per tile for ``n_rows`` rows: ``tile``, or the power of two >= n_rows (>= 8).

    A few rows that stay alive for many layers then cost a few lanes each,
    not a whole tile.
    """
    width = _MIN_WIDTH
    while width < n_rows and width < tile:
        width *= 2
    return width


@_kernel(inline=True)
def _tile_view(buffer, n_tiles, n_neurons, width):
    return buffer[:n_tiles * n_neurons * width].reshape((n_tiles, n_neurons, width))


@_kernel()
def _forward(first, last_segment, g_indptr, g_start, g_indices, g_values, value_base,
             value_stride, pairs, pair_start, tile_in, tile_out, growth, max_terms,
             positive_growth, keeps, negative, settled_after, following, bias, tile, scatter_first,
             s_indptr, s_indices, s_values, s_form, in_indptr, in_indices, in_values, in_stride,
             negative_inputs,
             input_scale, buffer_a, buffer_b, stats_buffer, act_in_b,
             width, lane_rows, errors, saturated, n_saturated, flagged, n_flagged, live, computed,
             multiply_adds, cycles):
    """Follow one chunk's tiles through a segment of packed layers, all in compiled code.

    The segment is layers ``first .. first + L - 1`` of the network (``L``
    entries in each per-layer table). Layer ``l``'s tiles hold
    ``tile_out[l]`` rows, one per computed column (see :class:`_Layer`), and
    it reads ``tile_in[l]`` (the previous layer's, or the inputs' width).
    ``g_indptr`` holds each layer's column pointers, already offset into
    ``g_indices``, from ``g_start[l]``; term ``p``'s weight is
    ``g_values[value_base[l] + value_stride[l] * p]``; columns go in pairs
    ``pairs[pair_start[l]:pair_start[l + 1]]`` (column, partner or -1).
    ``following`` is ``(has_next, positive_growth, growth, max_terms)`` of the
    layer after the segment. ``input_scale`` bounds the inputs' magnitudes
    (:func:`exactness.input_scale`), as 32 bounds every later layer's.
    ``settled_after[l]``: every layer of the network after layer ``l`` keeps
    saturated rows saturated.

    The state of the chunk goes in and comes out: the tiles (in ``buffer_b``
    when ``act_in_b``, else ``buffer_a``; ``lane_rows``, their ``width``),
    the rows' ``errors``, ``saturated[:n_saturated]`` and
    ``flagged[:n_flagged]``. Per layer it writes the rows not known to be
    dead (``live``), the rows it computed (``computed``), the multiply-adds
    done (``multiply_adds``) and the cycles spent (``cycles``). Returns
    ``(act_in_b, width, lane_rows, errors, n_saturated, n_flagged, done)``;
    ``done``: no later layer can change any verdict.
    """
    has_next, next_positive_growth, next_growth, next_max_terms = following
    n_layers = tile_in.size
    dense = bias < 0.0
    for index in range(n_layers):
        start = _cycles()
        layer = first + index
        last = last_segment and index == n_layers - 1
        # Saturated rows rejoin the tiles before a layer that does not keep them at 32.
        if n_saturated > 0 and not keeps[index]:
            n_valid = 0
            for lane in range(lane_rows.size):
                n_valid += lane_rows[lane] >= 0
            total = n_valid + n_saturated
            new_width = _width_for(total, tile)
            n_lanes = -(-total // new_width) * new_width
            sources = np.full(n_lanes, _EMPTY, dtype=np.int64)
            new_rows = np.full(n_lanes, _EMPTY, dtype=np.int64)
            new_errors = np.zeros(n_lanes)
            position = 0
            for lane in range(lane_rows.size):
                if lane_rows[lane] >= 0:
                    sources[position] = lane
                    new_rows[position] = lane_rows[lane]
                    new_errors[position] = errors[lane]
                    position += 1
            for q in range(n_saturated):
                sources[position] = _SATURATED
                new_rows[position] = saturated[q]
                position += 1
            source = _tile_view(buffer_b if act_in_b else buffer_a, lane_rows.size // width,
                                tile_in[index], width)
            target = _tile_view(buffer_a if act_in_b else buffer_b, n_lanes // new_width,
                                tile_in[index], new_width)
            _gather_lanes(source, sources, target)
            act_in_b = not act_in_b
            width, lane_rows, errors, n_saturated = new_width, new_rows, new_errors, 0
        n_lanes = lane_rows.size
        n_kept = 0
        n_doomed = 0
        n_computed = 0
        if n_lanes > 0:
            n_tiles = n_lanes // width
            out = _tile_view(buffer_a if act_in_b else buffer_b, n_tiles, tile_out[index], width)
            stats = stats_buffer[:n_tiles * _N_STATS * width].reshape((n_tiles, _N_STATS, width))
            column_pointers = g_indptr[g_start[index]:g_start[index] + tile_out[index] + 1]
            order = pairs[pair_start[index]:pair_start[index + 1]]
            if layer == 0 and scatter_first:
                if dense:
                    work = _scatter_inputs_dense(in_indptr, in_indices, in_values, in_stride,
                                                 lane_rows, s_indptr, s_indices, s_values,
                                                 s_form, bias, out, stats)
                else:
                    work = _scatter_inputs_structural(in_indptr, in_indices, in_values,
                                                      in_stride, lane_rows, s_indptr, s_indices,
                                                      s_values, s_form, bias, out, stats)
            else:
                act = _tile_view(buffer_b if act_in_b else buffer_a, n_tiles, tile_in[index],
                                 width)
                if layer == 0:
                    _load_inputs(in_indptr, in_indices, in_values, in_stride, lane_rows, act)
                if dense:
                    work = _gather_layer_dense(act, order, column_pointers, g_indices,
                                               g_values, value_base[index], value_stride[index],
                                               bias, out, stats)
                else:
                    work = _gather_layer_structural(act, order, column_pointers,
                                                    g_indices, g_values, value_base[index],
                                                    value_stride[index], bias, out, stats)
            multiply_adds[index] = work
            act_in_b = not act_in_b
            # Sort the rows (see the module's docstring; the same tests as exactness.py's).
            mixed = negative[index] or (layer == 0 and negative_inputs)
            scale = input_scale if layer == 0 else YMAX
            check_next = has_next or index < n_layers - 1
            if index < n_layers - 1:
                after_positive_growth = positive_growth[index + 1]
                after_growth, after_max_terms = growth[index + 1], max_terms[index + 1]
            else:
                after_positive_growth, after_growth, after_max_terms = \
                    next_positive_growth, next_growth, next_max_terms
            keep = np.zeros(n_lanes, dtype=np.bool_)
            for lane in range(n_lanes):
                row = lane_rows[lane]
                if row < 0:
                    continue
                n_computed += 1
                lane_stats = stats[lane // width, :, lane % width]
                high, low = lane_stats[_HIGH], lane_stats[_LOW]
                error = errors[lane]
                band = 2.0 * _next_error(error, growth[index], max_terms[index], bias, scale)
                # Values provably clamped to 0 or 32 are exact; any other carries the error on.
                if lane_stats[_MIDDLE] < YMAX / 2 + band:
                    error = _next_error(error, growth[index], max_terms[index], bias, scale)
                else:
                    error = 0.0
                errors[lane] = error
                alive = high > -band
                # Where the bias is not negative a value that may be 0 in one
                # computation and not in the other, or (mixed: some products
                # negative) a sum that may have cancelled, goes to the reference.
                near = not dense and (lane_stats[_SMALL] <= band
                                      or (mixed and lane_stats[_TINY] <= band))
                if near:
                    flagged[n_flagged] = row
                    n_flagged += 1
                elif low >= YMAX + band:
                    saturated[n_saturated] = row
                    n_saturated += 1
                elif alive:
                    # Its final verdict in doubt, or a band as wide as [0, 32]: no
                    # later layer can settle such a row (its values hover
                    # between the thresholds, as a few real ones do for 50
                    # layers), so it goes to the reference now, not after the
                    # last layer.
                    if (last and not high > band) or band >= YMAX:
                        flagged[n_flagged] = row
                        n_flagged += 1
                        continue
                    # A row whose largest value y cannot lift any output of the
                    # next layer above 0 dies there: drop it now.
                    largest = min(max(high, 0.0), YMAX) + error
                    if check_next and (after_positive_growth * largest + bias + 2.0 * _next_error(
                            error, after_growth, after_max_terms, bias, YMAX) <= 0.0):
                        n_doomed += 1
                    else:
                        keep[lane] = True
                        n_kept += 1
            # Repacking costs about a third of a layer: worth it when it frees a quarter
            # of the lanes.
            new_width = _width_for(n_kept, tile)
            n_new = -(-n_kept // new_width) * new_width
            if 4 * (n_lanes - n_new) >= n_lanes:
                sources = np.full(n_new, _EMPTY, dtype=np.int64)
                new_rows = np.full(n_new, _EMPTY, dtype=np.int64)
                new_errors = np.zeros(n_new)
                position = 0
                for lane in range(n_lanes):
                    if keep[lane]:
                        sources[position] = lane
                        new_rows[position] = lane_rows[lane]
                        new_errors[position] = errors[lane]
                        position += 1
                if n_new > 0:
                    target = _tile_view(buffer_a if act_in_b else buffer_b, n_new // new_width,
                                        tile_out[index], new_width)
                    _gather_lanes(out, sources, target)
                    act_in_b = not act_in_b
                width, lane_rows, errors = new_width, new_rows, new_errors
            else:
                lane_rows = np.where(keep, lane_rows, _EMPTY)
        live[index] = n_kept + n_saturated + n_flagged + n_doomed
        computed[index] = n_computed
        cycles[index] = _cycles() - start
        if n_kept == 0 and (n_saturated == 0 or settled_after[index]):
            # Every row is dead, flagged or saturated for good: nothing later changes.
            for later in range(index + 1, n_layers):
                live[later] = n_saturated + n_flagged
            return (act_in_b, width, np.empty(0, dtype=np.int64), np.empty(0), n_saturated,
                    n_flagged, True)
    return act_in_b, width, lane_rows, errors, n_saturated, n_flagged, False


@dataclass
class _Summary:
    """A layer's shape and the constants of its exactness checks (see :func:`_summarize`)."""

    n_in: int
    n_out: int
    growth: float  # the bound's C: largest column abs-sum
    max_terms: int  # the bound's M: most nonzeros in a column
    positive_growth: float  # largest sum of a column's positive weights
    keeps_saturated: bool  # an all-32 row provably stays all-32
    has_negative: bool


def _summarize(weights, bias, original=None):
    """The :class:`_Summary` of one layer (``weights`` CSR), without converting it.

    ``original`` is the ``(C, M)`` of the original layer a derived network
    answers to (None otherwise; see :func:`exactness.original_constants`):
    the bound constants are the larger of the two. The same function serves
    in-memory and streamed networks, so a layer's constants never depend on
    how it was read.
    """
    n_in, n_out = weights.shape
    data = weights.data
    counts, abs_sums, positive_sums, sums = _column_statistics(weights.indices, data, n_out)
    growth, max_terms = exactness.widen(float(abs_sums.max(initial=0.0)),
                                        int(counts.max(initial=0)), original)
    # On inputs in [0, y] no output exceeds positive_growth * y (before the bias).
    positive_growth = float(positive_sums.max(initial=0.0))
    return _Summary(n_in, n_out, growth, max_terms, positive_growth,
                    _keeps_saturated(sums, growth, max_terms, bias),
                    bool(data.size and data.min() < 0))


@_kernel()
def _column_statistics(columns, values, n_out):
    """Per column of a CSR layer: its nonzeros, and the sums of ``|w|``, ``max(w, 0)`` and ``w``.

    One pass in storage order (the sums' order is fixed, whoever calls).
    """
    counts = np.zeros(n_out, dtype=np.int64)
    abs_sums = np.zeros(n_out)
    positive_sums = np.zeros(n_out)
    sums = np.zeros(n_out)
    for p in range(columns.size):
        column, value = columns[p], values[p]
        counts[column] += 1
        abs_sums[column] += abs(value)
        positive_sums[column] += max(value, 0.0)
        sums[column] += value
    return counts, abs_sums, positive_sums, sums


@_kernel()
def _transpose(indptr, indices, values, n_out):
    """CSR to CSC (column pointers, row indices, values), rows ascending in every column."""
    counts = np.zeros(n_out + 1, dtype=np.int64)
    for p in range(indices.size):
        counts[indices[p] + 1] += 1
    column_pointers = np.cumsum(counts)
    filled = column_pointers[:-1].copy()
    rows = np.empty(indices.size, dtype=np.int32)
    column_values = np.empty(indices.size)
    for row in range(indptr.size - 1):
        for p in range(indptr[row], indptr[row + 1]):
            q = filled[indices[p]]
            rows[q] = row
            column_values[q] = values[p]
            filled[indices[p]] += 1
    return column_pointers, rows, column_values


def _keeps_saturated(column_sums, growth, max_terms, bias):
    """True when an all-32 input row provably gives an all-32 output row.

    Output ``j`` is then ``32 * s_j + bias`` with ``s_j`` the column sum;
    it must clear 32 by the rounding band (plus the rounding of the column
    sum computed here), and ``32 * s_j`` must be nonzero so that the bias
    applies at all.
    """
    if column_sums.size == 0:
        return False
    smallest = YMAX * float(column_sums.min())
    sum_error = exactness.gamma(max_terms, exactness.unit_roundoff(np.float64)) * growth
    margin = exactness.band(0.0, growth, max_terms, bias) + YMAX * sum_error
    return smallest > margin and smallest + bias - YMAX >= margin


class _Layer:
    """One layer as the kernels want it, with its :class:`_Summary` (``summary``).

    Only computed columns are kept. A column equal to another (the same
    inputs and weights, bit for bit: every challenge layer's outputs come in
    groups of 16 or 32) has the same values in every row, so the tiles hold
    one row per group, and the next layer reads that row wherever it reads
    any member: ``stored`` maps each output neuron to its tile row, and
    ``pairs`` holds the tile rows computed together (row, partner or -1; see
    :func:`_column_pairs`). ``gather`` holds the computed columns in
    tile-row order (CSC), their rows still numbered as the layer's inputs;
    :meth:`_Packed.tables_of` maps them through the previous layer's
    ``stored``. A layer whose weights are all equal stores one, and only the
    first layer (``first``) keeps its rows for scattering from the inputs.
    """

    def __init__(self, weights, bias, original=None, first=False):
        weights = sp.csr_matrix(weights, dtype=np.float64)
        self.summary = _summarize(weights, bias, original)
        weights, csc, self.pairs, computed, self.stored = _grouped(weights)
        self.computed_columns, self.n_stored = computed, computed.size
        kept = csc[:, computed]
        data = kept.data
        self.uniform = bool(data.size and data.min() == data.max())
        self.gather = (kept.indptr.astype(np.int64), kept.indices.astype(np.int32),
                       np.ascontiguousarray(data[:1] if self.uniform else data))
        self.scatter = None
        if first:
            # The rows of W restricted to the computed columns, numbered as tile rows
            # (see _scatter_inputs for the form).
            rows = weights[:, computed]
            degrees = np.diff(rows.indptr)
            degree = int(degrees[0]) if degrees.size and (degrees == degrees[0]).all() else 0
            data = rows.data
            one = bool(data.size and data.min() == data.max())
            self.scatter = (rows.indptr.astype(np.int64),
                            rows.indices.astype(np.uint16 if self.n_stored <= 2**16 else np.int32),
                            np.ascontiguousarray(data[:1] if one else data),
                            np.array([degree, 0 if one else 1], dtype=np.int64))

    def __getattr__(self, name):
        # The summary's fields read as the layer's own (layer.n_in, layer.growth, ...).
        if name == "summary":
            raise AttributeError(name)
        return getattr(self.summary, name)


class _TileRows(NamedTuple):
    """A layer's tile rows (see :class:`_Layer`): output neuron -> row, and how many."""

    stored: np.ndarray
    n_stored: int


def _grouped(weights):
    """``weights`` (CSR float64) grouped into tile rows: ``(weights canonical, CSC, tile pairs,
    computed columns, stored)`` (see :func:`_tile_rows`)."""
    if not weights.has_canonical_format:
        # Duplicate entries summed, indices sorted: on a copy (the layer may be read-only).
        weights = weights.copy()
        weights.sum_duplicates()
    column_pointers, rows, values = _transpose(weights.indptr, weights.indices, weights.data,
                                               weights.shape[1])
    csc = sp.csc_matrix((values, rows, column_pointers), shape=weights.shape)
    pairs, copies = _column_pairs(csc)
    return (weights, csc) + _tile_rows(pairs, copies, weights.shape[1])


def _tile_rows(pairs, copies, n_out):
    """From :func:`_column_pairs`: the pairs as tile rows, the computed columns in tile-row
    order, and each output neuron's tile row (a copy shares its column's)."""
    has_partner = pairs[:, 1] >= 0
    position = np.cumsum(1 + has_partner) - (1 + has_partner)
    tile_pairs = np.stack([position, np.where(has_partner, position + 1, -1)],
                          axis=1).astype(np.int32)
    columns = pairs[:, :2].ravel()
    computed = columns[columns >= 0].astype(np.int64)
    stored = np.empty(n_out, dtype=np.int64)
    stored[computed] = np.arange(computed.size)
    # copies holds, pair after pair, the copies of the column, then of the partner.
    stored[copies] = stored[np.repeat(columns, pairs[:, 3:].ravel())]
    return tile_pairs, computed, stored


def _column_totals(values, indptr):
    """Per column of a CSC layer, the sum of ``values`` in storage order (0 for an empty one)."""
    totals = np.zeros(indptr.size - 1)
    filled = np.flatnonzero(np.diff(indptr))
    if filled.size:
        totals[filled] = np.add.reduceat(values, indptr[filled])
    return totals


class _Buffers:
    """A worker's two flat float64 tile buffers and its statistics buffer, reused.

    The tiles of a layer's input and output take turns in the two buffers;
    reusing them avoids fresh pages (and their faults) for every layer.
    """

    def __init__(self, n_lanes, widest):
        self.n_lanes, self.widest = n_lanes, widest
        self.arrays = (np.empty(n_lanes * widest), np.empty(n_lanes * widest),
                       np.empty(n_lanes * _N_STATS))

    def holds(self, n_lanes, widest):
        return self.n_lanes >= n_lanes and self.widest >= widest

    def fit(self, widest):
        """Room for tiles of ``widest`` rows, keeping what the tiles hold now."""
        if widest <= self.widest:
            return
        grown = tuple(np.empty(self.n_lanes * widest) for _ in range(2))
        for old, new in zip(self.arrays, grown):
            new[:old.size] = old
        self.arrays = grown + self.arrays[2:]
        self.widest = widest


def _column_pairs(csc):
    """The order the kernels take the columns in: ``(pairs, copies)``.

    Columns are sorted by fingerprints of their inputs and weights, so that
    like columns are side by side. A run of columns with exactly the same
    inputs and weights (rows, in the same order, and bit-equal values: every
    challenge layer's outputs come in such groups of 16 or 32) is computed
    once, for its first column, and copied to the others: the same terms in
    the same order give the same bits. Neighbouring computed columns with
    the same inputs but other weights are paired, to be summed together.
    Row ``i`` of ``pairs`` is ``(column, partner or -1, first, n_column,
    n_partner)``: ``copies[first:first + n_column]`` take ``column``'s
    values, the ``n_partner`` after them ``partner``'s.
    """
    counts = np.diff(csc.indptr)
    n_out = csc.shape[1]
    firsts = np.full(n_out, -1)
    firsts[counts > 0] = csc.indices[csc.indptr[:-1][counts > 0]]
    rows = csc.indices.astype(np.float64)
    # Sums of rows and of squared rows are exact in float64 (< 2**53).
    fingerprints = (_column_totals(csc.data, csc.indptr), _column_totals(rows * rows, csc.indptr),
                    _column_totals(rows, csc.indptr), firsts, counts)
    order = np.lexsort(fingerprints)
    return _group_columns(csc.indptr.astype(np.int64), csc.indices,
                          np.ascontiguousarray(csc.data).view(np.int64), order.astype(np.int64))


@_kernel(inline=True)
def _same_column(indptr, indices, value_bits, column, other, with_values):
    """Whether two columns read the same rows in the same order (and, ``with_values``, weights)."""
    length = indptr[column + 1] - indptr[column]
    if indptr[other + 1] - indptr[other] != length:
        return False
    for offset in range(length):
        p, q = indptr[column] + offset, indptr[other] + offset
        if indices[p] != indices[q] or (with_values and value_bits[p] != value_bits[q]):
            return False
    return True


@_kernel()
def _group_columns(indptr, indices, value_bits, order):
    """:func:`_column_pairs` from the sorted ``order``: runs of equal columns, then pairs."""
    n_columns = order.size
    computed = np.empty(n_columns, dtype=np.int64)
    run_start = np.empty(n_columns + 1, dtype=np.int64)
    n_computed = 0
    position = 0
    while position < n_columns:
        column = order[position]
        computed[n_computed] = column
        run_start[n_computed] = position
        n_computed += 1
        position += 1
        while position < n_columns and _same_column(indptr, indices, value_bits, column,
                                                    order[position], True):
            position += 1
    run_start[n_computed] = n_columns
    pairs = np.empty((n_computed, 5), dtype=np.int32)
    copies = np.empty(n_columns - n_computed, dtype=np.int32)
    n_pairs = n_copies = 0
    run = 0
    while run < n_computed:
        column = computed[run]
        partner = -1
        if run + 1 < n_computed and _same_column(indptr, indices, value_bits, column,
                                                 computed[run + 1], False):
            partner = computed[run + 1]
        pairs[n_pairs, 0] = column
        pairs[n_pairs, 1] = partner
        pairs[n_pairs, 2] = n_copies
        for runs, slot in ((1, 3), (2, 4)):
            n_run_copies = 0
            if runs == 1 or partner >= 0:
                first = run + runs - 1
                for q in range(run_start[first] + 1, run_start[first + 1]):
                    copies[n_copies] = order[q]
                    n_copies += 1
                    n_run_copies += 1
            pairs[n_pairs, slot] = n_run_copies
        n_pairs += 1
        run += 1 if partner < 0 else 2
    return pairs[:n_pairs].copy(), copies


def _as_inputs(inputs, n_features):
    """The inputs as the CSR arrays the first-layer kernels take: ``(indptr, columns, values,
    value_stride)``, with no copy when already so.

    Inputs whose nonzeros share one value stored once (a binary input file
    read by :func:`graphchallenge.io.read_inputs`: a stride-0 view) stay
    so: ``values`` holds the one value and ``value_stride`` is 0, where
    writing it out would take 3.2 GB for the 60,000 inputs of 65536 neurons.
    """
    if inputs.ndim != 2 or inputs.shape[1] != n_features:
        raise DataError(f"inputs have {inputs.shape[-1]} columns but the network's first layer "
                        f"has {n_features} inputs")
    x = io.as_csr(inputs, np.float64)
    if not x.has_canonical_format:
        # An entry given twice counts twice, as in the product (on a copy: never mutate).
        x = x.copy()
        x.sum_duplicates()
    data = x.data
    one_value = data.ndim == 1 and data.size > 1 and data.strides[0] == 0
    arrays = (x.indptr.astype(np.int64, copy=False), x.indices.astype(np.int32, copy=False),
              np.ascontiguousarray(data[:1] if one_value else data))
    # Read-only views: one kernel signature whether or not the inputs came
    # read-only from the binary cache (another would compile inside the timer).
    return tuple(_read_only(array) for array in arrays) + (0 if one_value else 1,)


def _scatter_pays(layer, in_indptr, lane_rows):
    """Whether the first layer is cheaper scattered from the sparse inputs than gathered.

    Per input row, scattering costs a strided write per input nonzero and
    outgoing weight of a computed column (copies aside); gathering costs
    building a dense tile column (``n_in`` values) plus the vectorised terms.
    The weights are measured on the real images (about 106 pixels of 1024):
    the compacted first layer (2 outgoing weights per input) runs 1.7x
    faster scattered, the original (32) 1.8x slower before equal columns
    were computed once.
    """
    rows = lane_rows[lane_rows >= 0]
    if rows.size == 0 or layer.n_in == 0:
        return False
    pixels = float(np.mean(in_indptr[rows + 1] - in_indptr[rows]))
    terms = layer.scatter[0][-1]
    return 25.0 * pixels * terms / layer.n_in < 10.0 * layer.n_in + terms


class _FirstLayer(NamedTuple):
    """What choosing and running the first layer's scatter needs (see :func:`_scatter_pays`)."""

    n_in: int
    scatter: tuple  # rows of W restricted to computed columns: indptr, columns, values, form


#: The tables a :class:`_Packed` segment holds, in the order :func:`_forward` takes them
#: (``settled_after`` follows, set by whoever packs the segment).
_TABLE_NAMES = ("g_indptr", "g_start", "g_indices", "g_values", "value_base", "value_stride",
                "pairs", "pair_start", "tile_in", "tile_out", "growth", "max_terms",
                "positive_growth", "keeps", "negative")
_SCATTER_NAMES = ("s_indptr", "s_indices", "s_values", "s_form")


def _read_only(array):
    """A read-only view of ``array``: built and memory-mapped tables get one kernel signature."""
    view = array.view()
    view.flags.writeable = False
    return view


class _Packed:
    """Consecutive layers ``first ..`` of a network as the flat tables :func:`_forward` takes.

    ``tables`` maps :data:`_TABLE_NAMES` (and, for a segment that starts
    the network, :data:`_SCATTER_NAMES`) to arrays, built by :meth:`tables_of`
    or mapped from disk (:class:`_TableCache`). ``settled_after[l]`` says
    whether every later layer of the whole network keeps saturated rows
    saturated; ``None`` (unknown) counts as no for all but the network's
    last layer.
    """

    def __init__(self, tables, first, n_network_layers, settled_after=None):
        for name in _TABLE_NAMES:
            setattr(self, name, _read_only(tables[name]))
        self.first = first
        self.n_layers = int(self.tile_in.size)
        self.last = first + self.n_layers == n_network_layers
        if settled_after is None:
            settled_after = np.zeros(self.n_layers, dtype=np.bool_)
            settled_after[-1:] = self.last
        self.settled_after = _read_only(np.asarray(settled_after, dtype=np.bool_))
        # The first layer's rows, for scattering straight from the inputs.
        self.first_layer = None
        if first == 0 and self.n_layers and _SCATTER_NAMES[0] in tables:
            self.first_layer = _FirstLayer(
                int(self.tile_in[0]), tuple(_read_only(tables[name]) for name in _SCATTER_NAMES))

    @staticmethod
    def tables_of(layers, first, previous=None):
        """The tables of :class:`_Layer` ``layers``, the network's ``first`` onwards.

        ``previous`` is the :class:`_TileRows` (or :class:`_Layer`) of the
        layer before them, None for the network's first layer, which reads
        the inputs themselves.
        """
        column_pointers, starts, value_base, value_stride = [], [], [], []
        rows, tile_in = [], []
        n_terms = n_pointers = n_values = 0
        for layer in layers:
            indptr, inputs, values = layer.gather
            column_pointers.append(indptr + n_terms)
            starts.append(n_pointers)
            # Term p's weight: values[p - n_terms] of this layer, or its one weight.
            value_base.append(n_values if layer.uniform else n_values - n_terms)
            value_stride.append(0 if layer.uniform else 1)
            n_terms += int(indptr[-1])
            n_pointers += indptr.size
            n_values += values.size
            # Inputs read from the previous layer's tile rows (a copy's is its column's).
            rows.append(inputs if previous is None else previous.stored[inputs])
            tile_in.append(layer.n_in if previous is None else previous.n_stored)
            previous = layer
        index_type = np.uint16 if max(tile_in, default=0) <= 2**16 else np.int32
        tables = {
            "g_indptr": _concatenate(column_pointers, np.int64),
            "g_start": np.array(starts, dtype=np.int64),
            "g_indices": _concatenate(rows, index_type),
            "g_values": _concatenate([layer.gather[2] for layer in layers], np.float64),
            "value_base": np.array(value_base, dtype=np.int64),
            "value_stride": np.array(value_stride, dtype=np.int64),
            "pairs": _concatenate([layer.pairs for layer in layers], np.int32).reshape(-1, 2),
            "pair_start": np.cumsum([0] + [len(layer.pairs) for layer in layers]).astype(np.int64),
            "tile_in": np.array(tile_in, dtype=np.int64),
            "tile_out": np.array([layer.n_stored for layer in layers], dtype=np.int64),
            # The bound constants and saturation tests, as a streamed network keeps them.
            **_summary_tables([layer.summary for layer in layers]),
        }
        if first == 0 and layers:
            tables.update(zip(_SCATTER_NAMES, layers[0].scatter))
        return tables

    def widest(self, scatter_first):
        """The most rows a tile of this segment holds: a layer's computed columns, or its
        input (the inputs themselves for a first layer gathered, not scattered)."""
        rows = [self.tile_out.max(initial=0), self.tile_in[1:].max(initial=0)]
        if self.first_layer is None or not scatter_first:
            rows.append(self.tile_in[0] if self.n_layers else 0)
        return int(max(rows))

    @property
    def nbytes(self):
        return sum(table.nbytes for table in self.tables())

    def tables(self):
        return tuple(getattr(self, name) for name in _TABLE_NAMES) + (self.settled_after,)


def _concatenate(arrays, dtype):
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)


def _settled_after(keeps):
    """Per layer: every later layer keeps saturated rows saturated (True after the last).

    ``keeps[l]`` says whether layer ``l`` keeps saturated rows saturated.
    """
    keeps = np.asarray(keeps, dtype=np.bool_)
    later = np.ones(keeps.size, dtype=np.bool_)
    if keeps.size > 1:
        later[:-1] = np.logical_and.accumulate(keeps[::-1])[::-1][1:]
    return later


_NO_FOLLOWING = (False, 0.0, 0.0, 0)


def _following(layer):
    return _NO_FOLLOWING if layer is None else (True, layer.positive_growth, layer.growth,
                                                int(layer.max_terms))


def _segments(prepared):
    """``(packed segment, constants of the layer after it)`` pairs, in order.

    ``prepared`` is a :class:`_Packed` network (one segment) or a
    :class:`_Streamed` one.
    """
    if isinstance(prepared, _Packed):
        return iter([(prepared, _NO_FOLLOWING)])
    return prepared.segments()


class _Streamed:
    """A streamed network: its layers' summaries, and packed segments built on first use.

    The summaries (one pass over the layers, made once, and kept on disk
    by ``cache``) give every chunk the bound constants and the saturation
    test of every layer, so a chunk whose rows have all settled stops
    without reading further. Segments of :data:`SEGMENT_LAYERS` layers are
    mapped from ``cache`` or converted (``threads`` layers at a time) by the
    first chunk that needs them, and shared by the others; they are kept
    while their tables fit in ``budget`` bytes, else dropped after use and
    made again by the next chunk that needs them.
    """

    def __init__(self, network, budget, progress=False, cache=None, threads=1):
        self.network, self.budget, self.cache, self.threads = network, budget, cache, threads
        self.originals = exactness.original_constants(network)
        n_layers = network.n_layers
        # The layers before a segment: their tile rows number the segment's first inputs.
        ends = list(range(SEGMENT_LAYERS - 1, n_layers - 1, SEGMENT_LAYERS))

        def summarize():
            def one(k):
                weights = sp.csr_matrix(network.layers[k], dtype=np.float64)
                summary = _summarize(weights, network.bias, self.originals[k])
                return summary, (_grouped(weights)[4] if k in ends else None)

            done = _map(one, range(n_layers), threads, progress, "summarize layers")
            rows = [stored for _, stored in done if stored is not None]
            return {**_summary_tables([summary for summary, _ in done]),
                    "end_rows": _concatenate(rows, np.int32),
                    "end_start": np.cumsum([0] + [r.size for r in rows]).astype(np.int64)}

        stored = _cached_tables(cache, network, self.originals, 0, n_layers, "summaries",
                                summarize)
        self.summaries = _summaries_from(stored)
        self.settled_after = _settled_after(stored["keeps"])
        self.ends = {}
        for index, end in enumerate(ends):
            rows = stored["end_rows"][stored["end_start"][index]:stored["end_start"][index + 1]]
            self.ends[end + 1] = _TileRows(rows, int(rows.max(initial=-1)) + 1)
        self.kept_bytes = 0
        self._lock = threading.Lock()
        self._built = {}  # first layer -> Future of its _Packed segment

    def segments(self):
        n_layers = self.network.n_layers
        for start in range(0, n_layers, SEGMENT_LAYERS):
            stop = min(start + SEGMENT_LAYERS, n_layers)
            following = _following(self.summaries[stop]) if stop < n_layers else _NO_FOLLOWING
            yield self._segment(start, stop), following

    def _segment(self, start, stop):
        with self._lock:
            future = self._built.get(start)
            building = future is None
            if building:
                future = self._built[start] = Future()
        if not building:
            return future.result()
        try:
            packed = _pack_layers(self.network, self.originals, start, stop, self.settled_after,
                                  self.cache, self.threads, progress=False, kind="segment",
                                  previous=self.ends.get(start))
        except BaseException as exc:
            with self._lock:
                del self._built[start]
            future.set_exception(exc)
            raise
        future.set_result(packed)
        with self._lock:
            if self.kept_bytes + packed.nbytes <= self.budget:
                self.kept_bytes += packed.nbytes
            else:
                del self._built[start]
        return packed


#: Version of the converted tables kept on disk; bump when what they hold or mean changes.
TABLES_VERSION = 3


class _TableCache:
    """Converted layer tables kept on disk, so that a second run does not convert again.

    One file per packed segment (and one for a streamed network's
    summaries) in ``folder``, by default ``cpu-tables`` in the binary
    cache's folder (:func:`graphchallenge.io.cache_root`). A file is named
    by a digest of everything its tables depend on: the layers' keys
    (:attr:`~graphchallenge.network.Network.layer_keys`: a layer file's
    path, size and mtime, or the generator's parameters), the bias, the
    original network's bound constants and :data:`TABLES_VERSION`. Files
    are written atomically and mapped read-only; one that is truncated or
    written under another key is converted again. A network without layer
    keys (built from matrices in memory) is converted every time.
    """

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else io.cache_root() / "cpu-tables"

    def key(self, network, originals, start, stop, kind):
        """The digest naming ``kind`` tables of layers ``start:stop``; None if not cacheable."""
        if network.layer_keys is None:
            return None
        constants = [None if c is None else [repr(float(c[0])), int(c[1])]
                     for c in originals[start:stop]]
        # A segment's tables depend on the layer before it too (its tile rows).
        record = [kind, TABLES_VERSION, SEGMENT_LAYERS, repr(network.bias), start == 0,
                  network.layer_keys[max(0, start - 1):stop], constants]
        return hashlib.sha256(json.dumps(record).encode()).hexdigest()

    def load(self, key):
        # Read in whole now: in preparation, not page by page inside the timer.
        return None if key is None else io.load_arrays(self._path(key), key, populate=True)

    def save(self, key, tables):
        if key is None:
            return
        try:
            io.save_arrays(self._path(key), tables, key)
        except DataError as exc:
            log.warning("cannot keep converted layer tables (%s); continuing without", exc)

    def _path(self, key):
        return self.folder / f"{key[:40]}.tables"


def _cached_tables(cache, network, originals, start, stop, kind, build):
    """``kind`` tables of layers ``start:stop``: mapped from ``cache``, else ``build()`` and
    kept there (``cache`` None: built every time)."""
    key = cache.key(network, originals, start, stop, kind) if cache else None
    tables = cache.load(key) if cache else None
    if tables is None:
        tables = build()
        if cache:
            cache.save(key, tables)
    return tables


_SUMMARY_NAMES = ("n_in", "n_out", "growth", "max_terms", "positive_growth", "keeps", "negative")


def _summary_tables(summaries):
    """:class:`_Summary` list -> arrays named as the :class:`_Packed` tables that hold them."""
    fields = ("n_in", "n_out", "growth", "max_terms", "positive_growth", "keeps_saturated",
              "has_negative")
    types = (np.int64, np.int64, np.float64, np.int64, np.float64, np.bool_, np.bool_)
    return {name: np.array([getattr(summary, field) for summary in summaries], dtype=kind)
            for name, field, kind in zip(_SUMMARY_NAMES, fields, types)}


def _summaries_from(tables):
    """The inverse of :func:`_summary_tables`."""
    columns = [tables[name] for name in _SUMMARY_NAMES]
    return [_Summary(int(n_in), int(n_out), float(growth), int(max_terms), float(positive),
                     bool(keeps), bool(negative))
            for n_in, n_out, growth, max_terms, positive, keeps, negative in zip(*columns)]


def _map(function, items, threads, progress, desc):
    """``[function(item) for item in items]`` on ``threads`` threads, with a progress bar."""
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="layer", disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
        results = []
        for result in pool.map(function, items):
            results.append(result)
            bar.update()
    return results


def _pack_layers(network, originals, start, stop, settled_after, cache, threads, progress, kind,
                 previous=None):
    """Layers ``start:stop`` of ``network`` as a :class:`_Packed`, mapped from ``cache`` or
    converted ``threads`` layers at a time (and then kept in ``cache``).

    ``settled_after`` is the whole network's (see :func:`_settled_after`);
    None when the layers are the whole network, whose tables then give it.
    ``previous``: the :class:`_TileRows` of layer ``start - 1`` (None for 0).
    """
    def convert():
        def one(k):
            return _Layer(network.layers[k], network.bias, originals[k], first=k == 0)

        return _Packed.tables_of(_map(one, range(start, stop), threads, progress,
                                      "convert layers"), start, previous)

    tables = _cached_tables(cache, network, originals, start, stop, kind, convert)
    if settled_after is None:
        settled_after = _settled_after(tables["keeps"])
    return _Packed(tables, start, network.n_layers, settled_after[start:stop])


@dataclass
class _ChunkOutcome:
    """What one chunk of rows came to."""

    survivors: np.ndarray  # 0-based rows alive after the last layer
    flagged: np.ndarray  # 0-based rows left to the reference
    live_rows: np.ndarray  # per layer: rows not known to be dead (tiles, saturated, flagged)
    computed_rows: np.ndarray  # per layer: rows the layer was computed for
    multiply_adds: np.ndarray  # per layer: multiply-adds done (lanes x terms summed)
    layer_seconds: np.ndarray
    tile_rows: np.ndarray  # per layer reached: rows of its input and output tiles (else 0)
    scattered: bool  # the first layer was scattered from the sparse inputs


def _run_chunk(rows, segments, bias, inputs, negative_inputs, input_scale, buffers, n_layers,
               tile, scatter_first):
    """Follow input ``rows`` through the network's ``segments``; returns a :class:`_ChunkOutcome`.

    ``inputs`` are the arrays of all inputs (:func:`_as_inputs`); ``negative_inputs``
    tells whether any of them is negative, ``input_scale`` bounds their magnitudes;
    ``scatter_first``: the first layer is scattered from them (:func:`_scatter_pays`).
    ``buffers`` grow where a segment's tiles need more rows than they hold.
    """
    start = time.perf_counter()
    width = _width_for(rows.size, tile)
    lane_rows = np.full(-(-rows.size // width) * width, _EMPTY, dtype=np.int64)
    lane_rows[:rows.size] = rows
    errors = np.zeros(lane_rows.size)
    saturated = np.empty(rows.size, dtype=np.int64)
    flagged = np.empty(rows.size, dtype=np.int64)
    n_saturated = n_flagged = 0
    act_in_b = False
    live = np.zeros(n_layers, dtype=np.int64)
    computed = np.zeros(n_layers, dtype=np.int64)
    multiply_adds = np.zeros(n_layers, dtype=np.int64)
    cycles = np.zeros(n_layers, dtype=np.int64)
    tile_rows = np.zeros((n_layers, 2), dtype=np.int64)
    for packed, following in segments:
        buffers.fit(packed.widest(scatter_first))
        buffer_a, buffer_b, stats_buffer = buffers.arrays
        scatter = _NO_SCATTER if packed.first_layer is None else packed.first_layer.scatter
        span = slice(packed.first, packed.first + packed.n_layers)
        tile_rows[span] = np.stack([packed.tile_in, packed.tile_out], axis=1)
        act_in_b, width, lane_rows, errors, n_saturated, n_flagged, done = _forward(
            packed.first, packed.last, *packed.tables(), following, bias, tile, scatter_first,
            *scatter, *inputs, negative_inputs, input_scale, buffer_a, buffer_b, stats_buffer,
            act_in_b,
            width, lane_rows, errors, saturated, n_saturated, flagged, n_flagged, live[span],
            computed[span], multiply_adds[span], cycles[span])
        if done:
            live[span.stop:] = n_saturated + n_flagged
            break
    survivors = np.concatenate([lane_rows[lane_rows >= 0], saturated[:n_saturated]])
    # The chunk's measured time, shared out among its layers by their cycle counts.
    seconds = time.perf_counter() - start
    total = cycles.sum()
    layer_seconds = cycles * (seconds / total) if total > 0 else np.zeros(n_layers)
    return _ChunkOutcome(survivors, flagged[:n_flagged].copy(), live, computed, multiply_adds,
                         layer_seconds, tile_rows, scatter_first)


class CpuEngine(Engine):
    """Multithreaded float64 numba kernels, exact by a per-row rounding band.

    Parameters
    ----------
    threads : int, optional
        Worker threads, each following its own chunks of rows through the
        network (default: the CPUs this process may use).
    tile : int, optional
        Lanes (rows) per tile, a power of two >= 8 (default :data:`TILE`);
        rows left over after the others died or saturated share narrower
        tiles whatever this is.
    chunk_rows : int, optional
        Rows followed through the network together. By default the inputs
        are cut into at least two chunks per thread (for balance; every
        chunk pays a per-layer overhead, so not more) of at most
        :data:`CHUNK_BYTES` of activations each; peak memory depends on the
        chunk and the width, not on the depth.
    streamed_bytes : int, optional
        Converted layer tables of a streamed network kept in memory
        (default :data:`STREAMED_BYTES`); segments beyond it are mapped or
        converted again by each chunk that reaches them.
    table_cache : bool or path-like, optional
        Keep converted layer tables on disk and map them back on the next
        run (:class:`_TableCache`): True (default) in ``cpu-tables`` under
        the binary cache's folder, a path for another folder, False never.

    Notes
    -----
    The layer tables of an in-memory network are built once (on every
    thread) and kept for the last network seen, so repeated runs
    (benchmarks) reuse them; on disk too, so that the next process maps
    them instead of converting again. A streamed network (``LayerFiles``,
    or generated layers rebuilt on demand) is summarized in
    :meth:`prepare` (or its summaries mapped from disk) and converted, or
    mapped, a segment at a time inside the timer, as the chunks reach it;
    chunks whose rows have all settled read no further.
    """

    name = "cpu"
    description = "numba float64 tiles, multithreaded, exact by a proven rounding band"

    def __init__(self, threads=None, chunk_rows=None, tile=None, streamed_bytes=STREAMED_BYTES,
                 table_cache=True):
        if threads is not None and threads < 1:
            raise ValueError("threads must be positive")
        if tile is not None and (tile < _MIN_WIDTH or tile & (tile - 1)):
            raise ValueError(f"tile must be a power of two >= {_MIN_WIDTH}")
        self.tile = tile
        self.streamed_bytes = streamed_bytes
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        if threads is None:
            threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1)
        self.threads = threads
        self.chunk_rows = chunk_rows
        self.table_cache = None
        if table_cache is not False and table_cache is not None:
            self.table_cache = _TableCache(None if table_cache is True else table_cache)
        self._prepared = None  # (network, _Packed)
        self._buffers = []  # one _Buffers per worker, reused across calls

    @classmethod
    def availability(cls):
        if numba is None:
            return False, "numba is not installed: pip install numba"
        return True, ""

    def prepare(self, network, progress=False):
        """Compile the kernels and build the layer tables of ``network``; returns the seconds spent.

        An in-memory network is converted whole, or mapped from the table
        cache; a streamed one (``LayerFiles``, rebuilt generated layers) is
        summarized here, one pass over its layers unless the cache holds
        the summaries, and converted a segment at a time as chunks reach it
        (:class:`_Streamed`). Either is kept for the last network seen.
        :meth:`infer` calls this when needed; call it first to keep one-off
        work out of a measurement.
        """
        with Timer() as timer:
            _warm_up()
            if self._prepared is None or self._prepared[0] is not network:
                self._prepared = None  # the last network's tables go first
                tables = (_pack(network, progress, self.table_cache, self.threads)
                          if isinstance(network.layers, list)
                          else _Streamed(network, self.streamed_bytes, progress, self.table_cache,
                                         self.threads))
                self._prepared = (network, tables)
        return timer.seconds

    def _chunk_rows(self, widest, n_rows, streamed):
        """Rows per chunk: within the memory limit for tiles of ``widest`` rows, enough
        chunks to keep the threads busy."""
        if self.chunk_rows:
            return self.chunk_rows
        limit = max(TILE, CHUNK_BYTES // (2 * 8 * widest))
        # A streamed network's segments beyond the budget are read once per
        # chunk: as few chunks as possible.
        wanted = self.threads if streamed else 2 * self.threads
        n_chunks = max(math.ceil(n_rows / limit), min(wanted, math.ceil(n_rows / _MIN_CHUNK_ROWS)))
        return max(1, math.ceil(n_rows / max(n_chunks, 1)))

    def infer(self, network, inputs, progress=False):
        from tqdm import tqdm

        prepare_seconds = self.prepare(network, progress=progress)
        prepared = self._prepared[1]
        n_rows = inputs.shape[0]
        tile = self.tile or TILE
        with Timer() as total:
            x = _as_inputs(inputs, network.n_features)
            negative_inputs = bool(x[2].size and x[2].min() < 0)
            input_scale = exactness.input_scale(x[2])
            # One way into the first layer for every chunk, and chunks sized by the
            # tiles that way needs (computed columns, or the inputs when gathered).
            first = next(_segments(prepared))[0]
            scatter_first = bool(first.first_layer is not None
                                 and _scatter_pays(first.first_layer, x[0], np.arange(n_rows)))
            widest = _widest(prepared, first, scatter_first)
            chunk_rows = self._chunk_rows(widest, n_rows, isinstance(prepared, _Streamed))
            starts = range(0, n_rows, chunk_rows)
            n_workers = max(1, min(self.threads, len(starts)))
            # One set of buffers per worker, handed from chunk to chunk, and kept
            # for the next call (fresh pages would fault in again every run).
            n_lanes = -(-chunk_rows // tile) * tile
            if len(self._buffers) < n_workers or not self._buffers[0].holds(n_lanes, widest):
                self._buffers = [_Buffers(n_lanes, widest) for _ in range(n_workers)]
            idle_buffers = queue.SimpleQueue()
            for buffers in self._buffers[:n_workers]:
                idle_buffers.put(buffers)

            def run(start):
                buffers = idle_buffers.get()
                try:
                    return _run_chunk(np.arange(start, min(start + chunk_rows, n_rows)),
                                      _segments(prepared), network.bias, x,
                                      negative_inputs, input_scale, buffers, network.n_layers,
                                      tile, scatter_first)
                finally:
                    idle_buffers.put(buffers)

            with ThreadPoolExecutor(n_workers) as pool:
                outcomes = list(tqdm(pool.map(run, starts), total=len(starts), desc=self.name,
                                     unit="chunk", disable=not progress, leave=False))
            survivors = [outcome.survivors for outcome in outcomes]
            flagged = np.concatenate([outcome.flagged for outcome in outcomes] + [_NO_ROWS])
            categories = np.sort(np.concatenate(survivors + [_NO_ROWS])) + 1
            # The saturation tests hold for the reference's arithmetic on the
            # network itself, not on the original behind a derived one.
            settled_after = prepared.settled_after if network.exact_reference is network else None
            categories = recheck(network, inputs, categories, flagged, settled_after)
        live_rows = _column_sums([o.live_rows for o in outcomes], network.n_layers, int)
        layer_seconds = _column_sums([o.layer_seconds for o in outcomes], network.n_layers, float)
        computed_rows = _column_sums([o.computed_rows for o in outcomes], network.n_layers, int)
        multiply_adds = _column_sums([o.multiply_adds for o in outcomes], network.n_layers, int)
        tile_rows = (np.max([o.tile_rows for o in outcomes], axis=0) if outcomes
                     else np.zeros((network.n_layers, 2), dtype=np.int64))
        return InferenceResult(
            categories=categories, infer_seconds=total.seconds, engine=self.name,
            prepare_seconds=prepare_seconds, live_rows=live_rows, layer_seconds=layer_seconds,
            rechecked_rows=int(flagged.size),
            details={"threads": n_workers, "chunks": len(starts), "chunk_rows": chunk_rows,
                     "tile": tile, "computed_rows": computed_rows,
                     "multiply_adds": multiply_adds, "tile_rows": tile_rows.tolist(),
                     "first_layer": "scatter" if any(o.scattered for o in outcomes) else "gather"})


def _widest(prepared, first, scatter_first):
    """The most rows a tile needs, as far as known before a streamed network's later segments
    are converted: those of ``first``, its first segment, and of the layers before the others
    (a segment that needs more grows the buffers; see :meth:`_Buffers.fit`). At least 1."""
    rows = [first.widest(scatter_first), 1]
    if isinstance(prepared, _Streamed):
        rows += [ends.n_stored for ends in prepared.ends.values()]
    return max(rows)


def _column_sums(per_chunk, n_layers, kind):
    """Per layer, the sum over chunks (zeros without chunks), as a list of ``kind``."""
    total = np.sum(per_chunk, axis=0) if per_chunk else np.zeros(n_layers)
    return [kind(value) for value in total]


def _layers(network):
    """``network``'s layers as :class:`_Layer`, one at a time."""
    for index, (weights, original) in enumerate(zip(network.layers,
                                                    exactness.original_constants(network))):
        yield _Layer(weights, network.bias, original, first=index == 0)


def _pack(network, progress=False, cache=None, threads=1):
    """An in-memory network as one :class:`_Packed` segment (see :func:`_pack_layers`)."""
    return _pack_layers(network, exactness.original_constants(network), 0, network.n_layers,
                        None, cache, threads, progress, "network")


@functools.cache
def _warm_up():
    """Compile every kernel (or load it from numba's cache) on one-neuron tiles, once a process."""
    from ..network import Network

    one = sp.csr_matrix(np.ones((1, 1)))
    inputs = _as_inputs(sp.csr_matrix(np.ones((2, 1))), 1)
    # Negative bias: rows saturate at once, the 0.5 weight brings them back
    # (every kernel runs); then the kernel for biases >= 0.
    for network in (Network([one * 40.0, one, one * 0.5], -0.25), Network([one, one], 0.25)):
        _run_chunk(np.arange(2), _segments(_pack(network)), network.bias, inputs,
                   False, YMAX, _Buffers(TILE, 1), network.n_layers, TILE, False)
