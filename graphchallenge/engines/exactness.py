"""Exactness: what the reference computes, and how a fast engine proves it matches.

An engine turns ``(network, inputs)`` into the 1-based categories the
float64 reference would give. This module holds the whole argument:

* the reference's own layer, in float64 (:func:`apply_layer`,
  :func:`forward_categories`): the challenge's definition of the answer;
* rounding-error bounds for any other summation order or precision
  (:func:`next_error`, :func:`band`, :func:`paired_constants`), with which
  an engine flags every row whose verdict it cannot prove;
* :func:`recheck`, which recomputes exactly those rows with the reference.

Engines import it; it imports no engine, so the reference engine
(:mod:`graphchallenge.engines.reference`) and the fast ones all stand on it.

The bounds
----------
The reference sums each output in scipy's order in float64. An engine that
sums in another order (a gather over a column's 32 weights, a compacted
network whose merged weights reassociate the sums, float32 arithmetic)
produces slightly different values. Where a value is far from the ReLU
threshold 0 and the clamp 32, both land on the same side; only values
within a rounding band of a threshold can flip a category.

For one row let ``e`` bound ``|computed - exact|`` over its activations
(0 for the input images, which are exact). For a layer with largest
column abs-sum ``C``, at most ``M`` nonzeros per column, bias ``b`` and
unit roundoff ``u`` (standard forward error of a sum, Higham 2002, 3.1)::

    e' = C * e + gamma(M + 1) * (C * (YMAX + e) + |b|),  gamma(n) = n u / (1 - n u)

bounds the error of every pre-activation. The reference's own error obeys
the same bound with the float64 ``u``, so a computed value farther than
``band = e'(fast) + e'(float64)`` from 0 and from 32 is on the reference's
side. ReLU and the clamp are 1-Lipschitz, and a value firmly below 0 or
above 32 comes out exact (0 or 32) in both, so the row's next ``e`` is
``e'`` if any value stayed strictly between the thresholds, else 0.

With a bias <= 0 (every challenge network) the reference's layer is the
continuous map ``min(32, max(0, Y W + bias))`` (the bias on a structural zero
gives ``max(0, bias) = 0`` anyway), so a value near a threshold needs no
special care: its error carries on to the next layer. Only a row's final
verdict can be in doubt -- no value provably above 0, some not provably 0
-- and only such rows are recomputed by the reference. With a bias > 0 a
structural zero is not continuous with a small value, and engines must be
stricter (each engine documents how).

For a derived network (compacted, ``network.origin`` set) the reference
sums the *original* layer's terms, so the constants of a layer are the
larger of the derived layer's and the original's (:func:`paired_constants`).
"""

import numpy as np
import scipy.sparse as sp

from .. import io
from ..catalog import YMAX


# ---------------------------------------------------------------- the reference's layer

def apply_layer(y, weights, bias):
    """One layer of the reference: ``min(32, max(0, Y @ W + bias on the structure)))``."""
    z = y @ weights
    # MATLAB's logical(Z): values that cancelled to 0 are not structure.
    z.eliminate_zeros()
    z.data += bias
    np.clip(z.data, 0.0, YMAX, out=z.data)
    z.eliminate_zeros()
    return z


def float64_rows(inputs):
    """``inputs`` as the reference starts from them: float64 CSR, duplicates summed, no stored
    zeros, a copy."""
    y = sp.csr_matrix(inputs, dtype=np.float64, copy=True)
    # MATLAB's sparse() adds up entries given twice; so does the product.
    y.sum_duplicates()
    y.eliminate_zeros()
    return y


def forward_categories(layers, bias, inputs, settled_after=None):
    """1-based categories of ``inputs`` through ``layers`` (no timing, no bookkeeping).

    ``settled_after[k]``, where given, says that every layer after layer
    ``k`` provably maps a row of all 32s to a row of all 32s in this very
    arithmetic (the CPU engine's saturation test, which covers float64
    rounding): a row that is all 32 there is then a category, and is not
    carried through the remaining layers. The other rows' sums are not
    touched (a row's sums depend on its own values only), so the answer is
    the same as without it.
    """
    y = float64_rows(inputs)
    rows = np.arange(y.shape[0])
    saturated = [rows[:0]]
    for index, weights in enumerate(layers):
        if y.nnz == 0:
            # Every row is 0 and stays 0 (a structural zero gets no bias): no more categories.
            break
        y = apply_layer(y, weights, bias)
        if settled_after is not None and settled_after[index] and y.nnz:
            full = np.flatnonzero(np.diff(y.indptr) == y.shape[1])
            if full.size:
                lowest = np.minimum.reduceat(y.data, y.indptr[full])
                done = full[lowest == YMAX]
                if done.size:
                    saturated.append(rows[done])
                    left = np.setdiff1d(np.arange(y.shape[0]), done)
                    y, rows = y[left], rows[left]
    alive = rows[np.diff(y.indptr) > 0]
    return np.sort(np.concatenate(saturated + [alive])).astype(np.int64) + 1


# ---------------------------------------------------------------- rounding bounds

def unit_roundoff(dtype):
    """Half the machine epsilon of ``dtype`` (2**-53 for float64)."""
    return float(np.finfo(dtype).eps) / 2


def gamma(n, u):
    """Higham's gamma_n = n u / (1 - n u)."""
    return n * u / (1.0 - n * u)


def layer_constants(weights):
    """``(C, M)``: largest column abs-sum and largest column nonzero count of a layer."""
    csc = sp.csc_matrix(weights)
    counts = np.diff(csc.indptr)
    filled = np.flatnonzero(counts)
    sums = np.add.reduceat(np.abs(csc.data), csc.indptr[filled]) if filled.size else counts[:0]
    return float(sums.max(initial=0.0)), int(counts.max(initial=0))


def smallest_subnormal(dtype=np.float64):
    """The smallest positive subnormal of ``dtype`` (2**-1074 for float64)."""
    return float(np.finfo(dtype).smallest_subnormal)


def next_error(error, growth, max_terms, bias, dtype=np.float64, scale=YMAX):
    """The bound ``e'`` on a layer's pre-activations, given the bound ``error`` on its inputs.

    ``scale`` bounds the magnitude of the exact inputs: 32 after any layer,
    the largest input value before the first (:func:`input_scale`). The last
    term is what underflow adds on top of the relative rounding: each of a
    sum's ``M + 1`` roundings (products, fused or not, and the bias) may
    lose up to the smallest subnormal, whatever its relative size. Works
    elementwise on arrays (one bound per row).
    """
    g = gamma(max_terms + 1, unit_roundoff(dtype))
    return (growth * error + g * (growth * (scale + error) + abs(bias))
            + (max_terms + 1) * smallest_subnormal(dtype))


def band(error, growth, max_terms, bias, dtype=np.float64, scale=YMAX):
    """Half-width of the band around 0 and 32 inside which a value is not trusted.

    ``error`` bounds the inputs of the fast engine in ``dtype``; the band
    adds the reference's own float64 error (bounded by the same recursion
    with the float64 roundoff, which is at most the fast engine's).
    """
    fast = next_error(error, growth, max_terms, bias, dtype, scale)
    return 2.0 * fast


def input_scale(inputs):
    """The ``scale`` of a network's first layer: 32, or the largest input magnitude if more."""
    data = inputs.data if hasattr(inputs, "data") else np.asarray(inputs)
    return max(YMAX, float(np.abs(data).max(initial=0.0)))


def folded_gamma(growth, max_terms, bias, dtype=np.float64):
    """A ``gamma`` for kernels that compute ``C e + gamma (C (32 + e) + |b|)`` themselves.

    It also covers the underflow term of :func:`next_error`: since
    ``C (32 + e) + |b| >= 32 C + |b|``, adding that term divided by
    ``32 C + |b|`` to gamma bounds it for every ``e >= 0``.
    """
    g = gamma(max_terms + 1, unit_roundoff(dtype))
    floor = YMAX * growth + abs(bias)
    underflow = (max_terms + 1) * smallest_subnormal(dtype)
    return g + (underflow / floor if floor > 0 else underflow) * (1 + 2 * unit_roundoff(dtype))


def original_constants(network):
    """Per layer, the ``(C, M)`` of the original layer a derived network answers to.

    ``None`` for every layer of a network that is its own reference, or of a
    derived network whose depth differs from the original's (its own
    constants must then stand for the original's).
    """
    exact = network.exact_reference
    if exact is network or exact.n_layers != network.n_layers:
        return [None] * network.n_layers
    return [layer_constants(original) for original in exact.layers]


def widen(growth, max_terms, original):
    """The larger of a layer's constants and its original's (``original`` may be None)."""
    if original is None:
        return growth, max_terms
    return max(growth, original[0]), max(max_terms, original[1])


def paired_constants(network):
    """Yield ``(weights, C, M)`` for every layer of ``network``.

    For a derived network of the same depth as its exact reference, ``C``
    and ``M`` are the larger of the layer's and the original layer's, since
    the band must cover the reference's rounding on the original too.
    """
    for weights, original in zip(network.layers, original_constants(network)):
        yield (weights, *widen(*layer_constants(weights), original))


# ---------------------------------------------------------------- the recheck

def recheck(network, inputs, categories, flagged, settled_after=None):
    """Replace the verdict on ``flagged`` rows by the float64 reference's.

    Parameters
    ----------
    network : Network
        The reference runs on ``network.exact_reference``.
    inputs : scipy.sparse.csr_matrix
    categories : ndarray of int64
        1-based categories from a fast engine.
    flagged : ndarray of int64
        0-based rows whose verdict the fast engine could not prove.
    settled_after : sequence of bool, optional
        Per layer of ``network.exact_reference``, see
        :func:`forward_categories`.

    Returns
    -------
    ndarray of int64
        The categories with the flagged rows decided by the reference.
    """
    flagged = np.unique(np.asarray(flagged, dtype=np.int64))
    if flagged.size == 0:
        return np.asarray(categories, dtype=np.int64)
    exact = network.exact_reference
    sub = forward_categories(exact.layers, exact.bias, io.select_rows(inputs, flagged),
                             settled_after)
    keep = np.setdiff1d(np.asarray(categories, dtype=np.int64), flagged + 1)
    return np.union1d(keep, flagged[sub - 1] + 1).astype(np.int64)
