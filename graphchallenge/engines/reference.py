"""The reference engine: the challenge's MATLAB ``inferenceReLUvec`` in scipy float64.

For each layer, in this order::

    Z = Y @ W
    Z = Z + logical(Z) .* bias     (bias on the structural nonzeros only)
    Z(Z < 0) = 0
    Z(Z > 32) = 32

and the categories are the rows of the final ``Y`` with any nonzero. On a
challenge network this engine *is* the truth. On a derived network
(compacted or fine-tuned, ``network.origin`` set) its sums are reassociated
relative to the original, so it tracks the rounding band of
:mod:`graphchallenge.engines.bounds` and recomputes flagged rows on the
original network.
"""

import numpy as np
import scipy.sparse as sp

from ..catalog import YMAX
from . import bounds
from .base import Engine, InferenceResult, Timer, recheck


def apply_layer(y, weights, bias):
    """One layer of the reference: ``min(32, max(0, Y @ W + bias on the structure)))``."""
    z = y @ weights
    # MATLAB's logical(Z): values that cancelled to 0 are not structure.
    z.eliminate_zeros()
    z.data += bias
    np.clip(z.data, 0.0, YMAX, out=z.data)
    z.eliminate_zeros()
    return z


def _as_csr(inputs):
    y = sp.csr_matrix(inputs, dtype=np.float64, copy=True)
    y.eliminate_zeros()
    return y


def forward_categories(layers, bias, inputs):
    """1-based categories of ``inputs`` through ``layers`` (no timing, no bookkeeping)."""
    y = _as_csr(inputs)
    for weights in layers:
        y = apply_layer(y, weights, bias)
    return np.flatnonzero(np.diff(y.indptr)).astype(np.int64) + 1


def _flag_near_thresholds(z, band_per_row):
    """Rows with a stored value within their band of 0 or 32, and rows left strictly between."""
    rows = np.repeat(np.arange(z.shape[0]), np.diff(z.indptr))
    width = band_per_row[rows]
    values = z.data
    near = (np.abs(values) <= width) | (np.abs(values - YMAX) <= width)
    inside = (values > width) & (values < YMAX - width)
    n = z.shape[0]
    return (np.bincount(rows[near], minlength=n) > 0,
            np.bincount(rows[inside], minlength=n) > 0)


class ReferenceEngine(Engine):
    """scipy.sparse float64, the MATLAB semantics."""

    name = "reference"
    description = "scipy.sparse float64, the MATLAB reference semantics (the truth)"

    def infer(self, network, inputs, progress=False):
        from tqdm import tqdm

        derived = network.origin is not None
        y = _as_csr(inputs)
        n_rows = y.shape[0]
        error = np.zeros(n_rows)
        flagged = np.zeros(n_rows, dtype=bool)
        live_rows, layer_seconds = [], []
        layers = tqdm(network.layers, total=network.n_layers, desc=f"{self.name}",
                      unit="layer", disable=not progress, leave=False)
        with Timer() as total:
            for weights in layers:
                with Timer() as step:
                    if derived:
                        growth, max_terms = bounds.layer_constants(weights)
                        z = y @ weights
                        z.eliminate_zeros()
                        z.data += network.bias
                        width = bounds.band(error, growth, max_terms, network.bias)
                        near, inside = _flag_near_thresholds(z, width)
                        flagged |= near
                        error = np.where(inside, bounds.next_error(error, growth, max_terms,
                                                                   network.bias), 0.0)
                        np.clip(z.data, 0.0, YMAX, out=z.data)
                        z.eliminate_zeros()
                        y = z
                    else:
                        y = apply_layer(y, weights, network.bias)
                layer_seconds.append(step.seconds)
                live_rows.append(int(np.count_nonzero(np.diff(y.indptr))))
            categories = np.flatnonzero(np.diff(y.indptr)).astype(np.int64) + 1
            if derived:
                categories = recheck(network, inputs, categories, np.flatnonzero(flagged))
        return InferenceResult(categories=categories, infer_seconds=total.seconds, engine=self.name,
                               live_rows=live_rows, layer_seconds=layer_seconds,
                               rechecked_rows=int(flagged.sum()))
