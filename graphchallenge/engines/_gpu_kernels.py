"""The fused GPU engine's CUDA kernels, and what the host decides for them.

This module holds the CUDA source, compiles the variants a network needs,
and computes on the host (numpy only, testable anywhere) what the kernels
are told about each layer: its rounding constants, whether it keeps
saturated rows at 32, the kernel shape for its width, and the resulting
schedule of parking.

Three kernels, all driven by counters in device memory so that a whole
network can be launched (or captured in a CUDA graph) without the host
reading anything back between layers:

``load_inputs``
    Scatters one tile of CSR input rows into the dense activation buffer
    and lists the non-empty rows.
``fused_layer<ROWS, STAGED, UNIFORM, CAREFUL>``
    One layer for every listed row: for each output column ``j`` it sums
    ``w[t, j] * y[index[t, j]]`` over the column's table, adds the bias to
    structural nonzeros, applies ReLU and the clamp, tracks the rounding
    band of :mod:`graphchallenge.engines.exactness`, and appends the surviving
    rows to the next list (rows provably 32 everywhere go to the parked list
    instead, when the next layer provably keeps them at 32). It flags the
    rows whose verdict it cannot prove (see :mod:`graphchallenge.engines.gpu`).
``unpark_rows``
    Brings parked rows back (as rows of 32) before a layer that does not
    provably keep them saturated.

Rows never move: a row keeps its slot (its index within the tile) in both
activation buffers, and the lists hold slots. Compaction therefore costs one
``atomicAdd`` per surviving row instead of a copy of its activations.

Template parameters of ``fused_layer``:

``ROWS``
    Rows per work item. The column table entry ``index[t, j]`` is loaded
    once and reused for ``ROWS`` rows.
``STAGED``
    Copy the ``ROWS`` input rows to shared memory first (rows short enough to
    fit); otherwise gather straight from global memory.
``UNIFORM``
    Every column has ``n_terms`` entries of one positive weight: sum the
    activations, multiply once.
``CAREFUL``
    The bias is >= 0 and the layer has negative weights (or inputs): a
    computed sum of 0 no longer proves the reference's is 0, and the bias on
    the structure makes that decision discontinuous, so rows whose sum is
    within the band of 0 while some product is nonzero are flagged.
"""

from dataclasses import dataclass

import numpy as np

from ..catalog import YMAX
from . import exactness as bounds

#: Threads per block of every kernel (a multiple of the warp size).
THREADS = 256

#: Output columns one work item of ``fused_layer`` covers.
COLUMN_CHUNK = 1024

#: NVRTC options of the engine's module (CuPy adds its own, e.g. the architecture).
COMPILE_OPTIONS = ("--std=c++17",)

#: Most bytes of staged rows per block: two blocks fit on a Hopper multiprocessor.
STAGED_SHARED_MAX = 96 * 1024
#: Bytes of a block's shared memory left to the kernels' own ``__shared__`` variables:
#: CUDA caps the dynamic size a kernel may ask for at the opt-in maximum minus them.
STATIC_SHARED_RESERVE = 1024

SOURCE = r"""
#define YMAX @YMAX@

// Bits of a row's summary over its output columns.
#define ROW_ALIVE  1u   // some output > 0
#define ROW_NOT32  2u   // some output != 32
#define ROW_CARRY  4u   // some value within [-band, 32 + band] (not provably clamped)
#define ROW_SURE   8u   // some pre-activation > band: the reference's output is > 0 too
#define ROW_NEAR  16u   // a structural decision in doubt (careful layers): recheck the row

extern "C" __global__ void load_inputs(
    const long long* __restrict__ indptr, const int* __restrict__ indices,
    const double* __restrict__ values, const long long first_row, const int n_rows,
    double* __restrict__ y, const long long ld, int* __restrict__ live, int* __restrict__ count)
{
    for (int row = blockIdx.x; row < n_rows; row += gridDim.x) {
        const long long begin = indptr[first_row + row];
        const long long end = indptr[first_row + row + 1];
        double* target = y + (long long)row * ld;
        for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {
            target[indices[k]] = values[k];
        }
        if (threadIdx.x == 0 && end > begin) {
            live[atomicAdd(count, 1)] = row;
        }
    }
}

extern "C" __global__ void unpark_rows(
    double* __restrict__ y, const long long ld, const int width,
    const int* __restrict__ parked, const int* __restrict__ parked_count,
    int* __restrict__ live, int* __restrict__ count, double* __restrict__ error)
{
    const int n_parked = *parked_count;
    for (int p = blockIdx.x; p < n_parked; p += gridDim.x) {
        const int slot = parked[p];
        double* target = y + (long long)slot * ld;
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            target[i] = YMAX;
        }
        if (threadIdx.x == 0) {
            error[slot] = 0.0;
            live[atomicAdd(count, 1)] = slot;
        }
    }
}

template <int ROWS, bool STAGED, bool UNIFORM, bool CAREFUL>
__global__ void fused_layer(
    const double* __restrict__ y_in, double* __restrict__ y_out, const long long ld,
    const int n_in, const int n_out, const int n_terms,
    const int* __restrict__ index, const double* __restrict__ weight,
    const double uniform_weight, const double bias, const double growth, const double gamma,
    const int* __restrict__ live_in, const int* __restrict__ count_in,
    int* __restrict__ live_out, int* __restrict__ count_out,
    int* __restrict__ parked, int* __restrict__ parked_count, int* __restrict__ parked_new,
    int* __restrict__ pending_new, const int park, const int last,
    const double* __restrict__ error_in, double* __restrict__ error_out,
    int* __restrict__ flagged, unsigned int* __restrict__ row_bits,
    int* __restrict__ chunks_done, const int column_chunk)
{
    extern __shared__ double staged[];
    __shared__ int slots[ROWS];
    __shared__ unsigned int bits[ROWS];
    __shared__ int finalize;

    const int n_live = *count_in;
    const int n_chunks = n_out > 0 ? (n_out + column_chunk - 1) / column_chunk : 1;
    const long long n_items = (long long)((n_live + ROWS - 1) / ROWS) * n_chunks;
    const unsigned int lane = threadIdx.x & 31u;
    const double abs_bias = fabs(bias);

    for (long long item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int tile = (int)(item / n_chunks);
        const int chunk = (int)(item % n_chunks);
        const int rows_here = min(ROWS, n_live - tile * ROWS);
        if (threadIdx.x < ROWS) {
            slots[threadIdx.x] = threadIdx.x < rows_here ? live_in[tile * ROWS + threadIdx.x] : 0;
            bits[threadIdx.x] = 0u;
        }
        __syncthreads();
        if (STAGED) {
            for (int r = 0; r < rows_here; ++r) {
                const double* source = y_in + (long long)slots[r] * ld;
                for (int i = threadIdx.x; i < n_in; i += blockDim.x) {
                    staged[r * n_in + i] = source[i];
                }
            }
            __syncthreads();
        }

        long long row_base[ROWS];
        double band[ROWS];
        unsigned int my_bits[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            row_base[r] = STAGED ? (long long)r * n_in : (long long)slots[r] * ld;
            const double e = r < rows_here ? error_in[slots[r]] : 0.0;
            band[r] = 2.0 * (growth * e + gamma * (growth * (YMAX + e) + abs_bias));
            my_bits[r] = 0u;
        }

        const int column_end = min(n_out, (chunk + 1) * column_chunk);
        for (int j = chunk * column_chunk + threadIdx.x; j < column_end; j += blockDim.x) {
            double sum[ROWS];
            bool nonzero_term[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                sum[r] = 0.0;
                nonzero_term[r] = false;
            }
            for (int t = 0; t < n_terms; ++t) {
                const long long entry = (long long)t * n_out + j;
                const int i = __ldg(index + entry);
                const double w = UNIFORM ? uniform_weight : __ldg(weight + entry);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    if (r < rows_here) {
                        const double v = STAGED ? staged[row_base[r] + i]
                                                : __ldg(y_in + row_base[r] + i);
                        if (UNIFORM) {
                            sum[r] += v;
                        } else {
                            sum[r] = fma(v, w, sum[r]);
                        }
                        if (CAREFUL) {
                            nonzero_term[r] |= (v != 0.0) && (w != 0.0);
                        }
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                if (r < rows_here) {
                    const double s = UNIFORM ? sum[r] * uniform_weight : sum[r];
                    double out = 0.0;
                    // The bias goes on structural nonzeros only (MATLAB's logical(Z)); with a
                    // negative bias a structural zero gives max(0, bias) = 0 all the same, so
                    // the layer is the continuous clamp(Y W + bias) and every value is checked.
                    if (s != 0.0 || bias < 0.0) {
                        const double z = s + bias;
                        if (z >= -band[r] && z <= YMAX + band[r]) my_bits[r] |= ROW_CARRY;
                        if (z > band[r]) my_bits[r] |= ROW_SURE;
                        out = fmin(fmax(z, 0.0), YMAX);
                    }
                    if (CAREFUL && nonzero_term[r] && fabs(s) <= band[r]) my_bits[r] |= ROW_NEAR;
                    if (out != 0.0) my_bits[r] |= ROW_ALIVE;
                    if (out != YMAX) my_bits[r] |= ROW_NOT32;
                    y_out[(long long)slots[r] * ld + j] = out;
                }
            }
        }

#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            unsigned int warp_bits = my_bits[r];
            for (int offset = 16; offset > 0; offset /= 2) {
                warp_bits |= __shfl_xor_sync(0xffffffffu, warp_bits, offset);
            }
            if (lane == 0 && warp_bits != 0u) atomicOr(&bits[r], warp_bits);
        }
        __syncthreads();

        if (n_chunks == 1) {
            if (threadIdx.x == 0) finalize = 1;
        } else {
            // Several blocks share a row: the last one to finish its chunk finalises it.
            if (threadIdx.x < rows_here && bits[threadIdx.x] != 0u) {
                atomicOr(&row_bits[slots[threadIdx.x]], bits[threadIdx.x]);
            }
            __threadfence();
            __syncthreads();
            if (threadIdx.x == 0) {
                finalize = atomicAdd(&chunks_done[tile], 1) == n_chunks - 1;
            }
            __syncthreads();
            if (finalize) {
                __threadfence();
                if (threadIdx.x < rows_here) {
                    bits[threadIdx.x] = atomicExch(&row_bits[slots[threadIdx.x]], 0u);
                }
                if (threadIdx.x == 0) chunks_done[tile] = 0;
            }
        }
        __syncthreads();

        if (finalize && threadIdx.x < rows_here) {
            const int slot = slots[threadIdx.x];
            const unsigned int summary = bits[threadIdx.x];
            const double e = error_in[slot];
            error_out[slot] = (summary & ROW_CARRY)
                ? growth * e + gamma * (growth * (YMAX + e) + abs_bias) : 0.0;
            bool doubt = (summary & ROW_NEAR) != 0u;
            if (summary & ROW_ALIVE) {
                if (park && !(summary & (ROW_NOT32 | ROW_CARRY))) {
                    parked[atomicAdd(parked_count, 1)] = slot;   // provably 32 everywhere
                    atomicAdd(parked_new, 1);
                } else {
                    live_out[atomicAdd(count_out, 1)] = slot;
                }
                doubt |= last && !(summary & ROW_SURE);           // final verdict not proven
            } else if (summary & ROW_CARRY) {
                // Zero here but maybe not in the reference: the next layer decides.
                if (last) {
                    doubt = true;
                } else {
                    live_out[atomicAdd(count_out, 1)] = slot;
                    atomicAdd(pending_new, 1);
                }
            }
            if (doubt) flagged[slot] = 1;
        }
        __syncthreads();
    }
}
""".replace("@YMAX@", repr(float(YMAX)))

#: Rows per work item tried, largest first, when the rows fit in shared memory.
STAGED_ROWS = (8, 4, 2, 1)
#: Rows per work item when gathering from global memory.
GLOBAL_ROWS = 4


def fused_name(rows, staged, uniform, careful):
    """The C++ name expression of one ``fused_layer`` variant."""
    flag = {True: "true", False: "false"}
    return f"fused_layer<{rows}, {flag[staged]}, {flag[uniform]}, {flag[careful]}>"


def compile_module(cupy, variants):
    """A ``cupy.RawModule`` with ``load_inputs``, ``unpark_rows`` and the given variants.

    Parameters
    ----------
    cupy : module
    variants : iterable of tuple
        ``(rows, staged, uniform, careful)`` of each ``fused_layer`` needed.
    """
    names = sorted({fused_name(*variant) for variant in variants})
    return cupy.RawModule(code=SOURCE, options=COMPILE_OPTIONS, name_expressions=names)


@dataclass
class LayerConstants:
    """What the fused kernel needs to know about a layer besides its table.

    Attributes
    ----------
    growth : float
        Largest column abs-sum ``C`` of :mod:`bounds`.
    gamma : float
        ``gamma(n_terms + 1)`` in float64, folded with the underflow term
        (:func:`graphchallenge.engines.exactness.folded_gamma`).
    keeps_saturation : bool
        A row of 32s (exact) comes out of this layer as 32s in the reference
        and here: ``32 * (smallest column sum) + bias - 32`` clears the
        rounding band with room to spare.
    signed : bool
        Some weight is negative.
    """

    growth: float
    gamma: float
    keeps_saturation: bool
    signed: bool


def layer_constants(layer, bias, original=None):
    """The :class:`LayerConstants` of an :class:`EllLayer` under ``bias``.

    ``original`` is the ``(C, M)`` of the original layer when the network is
    derived (:func:`bounds.original_constants`): the bounds must cover the
    reference's rounding on the original too.
    """
    if layer.weights is None:  # every column: n_terms entries of one weight
        growth = layer.n_terms * abs(layer.uniform_weight)
        smallest = layer.n_terms * layer.uniform_weight
        signed = layer.uniform_weight < 0
    else:
        growth = float(np.abs(layer.weights).sum(axis=0).max(initial=0.0))
        smallest = float(layer.weights.sum(axis=0).min(initial=np.inf))
        signed = bool((layer.weights < 0).any())
    growth, n_terms = bounds.widen(growth, layer.n_terms, original)
    # The kernels compute the bound with this gamma, which also covers underflow.
    gamma = bounds.folded_gamma(growth, n_terms, bias)
    # Margin: the band (twice the error of a sum of exact inputs) plus the
    # error of this host-side column sum and of the exact value, each below it.
    margin = 4.0 * bounds.next_error(0.0, growth, n_terms, bias)
    keeps = layer.n_out > 0 and smallest > 0 and YMAX * smallest + bias - YMAX > margin
    return LayerConstants(float(growth), gamma, bool(keeps), bool(signed))


def needs_care(constants, bias, negative_inputs=False):
    """Whether a layer's structural zeros need the careful check.

    With a negative bias the reference's layer is the continuous
    ``clamp(Y W + bias)`` (a structural zero gives ``max(0, bias) = 0``),
    and with nonnegative weights and inputs a computed sum is 0 exactly when
    the reference's is. Only a bias >= 0 with negative weights or inputs
    leaves the structure (and so the output) in doubt for sums near 0.
    """
    return bias >= 0 and (constants.signed or negative_inputs)


def shared_limit(shared_optin):
    """Bytes of staged rows a block may hold on a device whose opt-in maximum of
    shared memory per block is ``shared_optin`` (``sharedMemPerBlockOptin``).

    The kernels' static ``__shared__`` variables come out of the same budget,
    so :data:`STATIC_SHARED_RESERVE` is kept for them.
    """
    return max(0, min(shared_optin - STATIC_SHARED_RESERVE, STAGED_SHARED_MAX))


def kernel_shape(n_in, shared_limit):
    """``(rows, staged, shared_bytes)`` of the fused kernel for rows ``n_in`` wide.

    Rows go to shared memory when ``rows`` of them fit in ``shared_limit``
    bytes (the most rows per work item that fit, for table reuse);
    otherwise the kernel gathers from global memory.
    """
    row_bytes = 8 * max(n_in, 1)
    for rows in STAGED_ROWS:
        if rows * row_bytes <= shared_limit:
            return rows, True, rows * row_bytes
    return GLOBAL_ROWS, False, 0


def fused_variants(shared_limit):
    """Every ``(rows, staged, uniform, careful)`` the engine may instantiate under
    ``shared_limit``: the shapes :func:`kernel_shape` picks for any row width, with
    every combination of the two flags.

    :func:`kernel_shape` changes its choice only where ``rows`` rows of ``n_in``
    values stop fitting, so evaluating it at those widths finds every shape.
    """
    widths = {1, shared_limit // 8 + 1}
    for rows in STAGED_ROWS:
        fitting = shared_limit // (8 * rows)
        widths.update(width for width in (fitting, fitting + 1) if width >= 1)
    shapes = {kernel_shape(width, shared_limit)[:2] for width in widths}
    return sorted((rows, staged, uniform, careful) for rows, staged in shapes
                  for uniform in (False, True) for careful in (False, True))


def live_rows_per_layer(counts, parked_new, pending_new, unparks_before):
    """Rows alive (any value > 0) after each layer: listed ones plus parked ones.

    Parameters
    ----------
    counts : ndarray of int, length L + 1
        Rows listed as input of each layer (and after the last). Rows brought
        back before layer k are in ``counts[k]``.
    parked_new : ndarray of int, length L
        Rows parked by each layer.
    pending_new : ndarray of int, length L
        Rows listed by each layer although all zero (not provably so).
    unparks_before : sequence of bool, length L
        Whether parked rows were brought back before each layer.
    """
    n_layers = len(parked_new)
    live, parked = [], 0
    for k in range(n_layers):
        if unparks_before[k]:
            parked = 0
        parked += int(parked_new[k])
        returned = k + 1 < n_layers and unparks_before[k + 1]
        live.append(int(counts[k + 1]) - int(pending_new[k]) + (0 if returned else parked))
    return live


def schedule(constants):
    """``(park_after, unpark_before)``: per layer, whether all-32 rows leaving it are
    parked (the next layer keeps them at 32; always after the last), and whether
    parked rows come back before it (it does not)."""
    n = len(constants)
    park_after = [constants[k + 1].keeps_saturation if k + 1 < n else True for k in range(n)]
    unpark_before = [k > 0 and not constants[k].keeps_saturation for k in range(n)]
    return park_after, unpark_before
