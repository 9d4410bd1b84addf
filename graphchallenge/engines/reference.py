"""The reference engine: the challenge's MATLAB ``inferenceReLUvec`` in scipy float64.

For each layer, in this order::

    Z = Y @ W
    Z = Z + logical(Z) .* bias     (bias on the structural nonzeros only)
    Z(Z < 0) = 0
    Z(Z > 32) = 32

and the categories are the rows of the final ``Y`` with any nonzero. That
layer and the forward pass are defined once, in
:mod:`graphchallenge.engines.exactness` (:func:`apply_layer`,
:func:`forward_categories`; importable from here too); this module runs
them as an engine, timed and counted. On a challenge network this engine
*is* the truth. On a derived network (exactly compacted, ``network.origin``
set) its sums are reassociated relative to the original, so it tracks the
rounding band of :mod:`graphchallenge.engines.exactness` and recomputes
flagged rows on the original network.
"""

import numpy as np

from ..catalog import YMAX
from . import exactness
from .base import Engine, InferenceResult, Timer
from .exactness import apply_layer, float64_rows, recheck
from .exactness import forward_categories  # noqa: F401 (the reference's answer, also found here)


def _row_ids(z):
    return np.repeat(np.arange(z.shape[0]), np.diff(z.indptr))


def _classify(z, width, bias):
    """For each row of pre-activations ``z`` (bias included, bias <= 0):

    ``carry``: some value is not provably clamped (dead below ``-width`` or
    saturated above ``32 + width``), so the row's error bound carries on;
    ``surely_live``: some value is provably above 0;
    ``doubtful``: neither provably live nor provably dead.
    A structurally missing value stands for ``bias`` (the reference gives 0).
    """
    rows = _row_ids(z)
    band = width[rows]
    values = z.data
    n = z.shape[0]
    missing_in_band = (np.diff(z.indptr) < z.shape[1]) & (bias >= -width)

    def any_per_row(mask):
        return np.bincount(rows[mask], minlength=n) > 0

    carry = any_per_row((values >= -band) & (values <= YMAX + band)) | missing_in_band
    surely_live = any_per_row(values > band)
    doubtful = ~surely_live & (any_per_row(np.abs(values) <= band) | missing_in_band)
    return carry, doubtful


class ReferenceEngine(Engine):
    """scipy.sparse float64, the MATLAB semantics."""

    name = "reference"
    description = "scipy.sparse float64, the MATLAB reference semantics (the truth)"

    def infer(self, network, inputs, progress=False):
        from tqdm import tqdm

        if network.origin is not None and network.bias > 0:
            # No continuity argument holds at structural zeros with a positive
            # bias: answer with the original network itself.
            result = self.infer(network.exact_reference, inputs, progress)
            result.rechecked_rows = inputs.shape[0]
            return result
        y = float64_rows(inputs)
        first_scale = exactness.input_scale(y)
        error = np.zeros(y.shape[0])
        doubtful = np.zeros(y.shape[0], dtype=bool)
        live_rows, layer_seconds = [], []
        derived = network.origin is not None
        layers = (exactness.paired_constants(network) if derived
                  else ((weights, None, None) for weights in network.layers))
        layers = tqdm(layers, total=network.n_layers, desc=self.name, unit="layer",
                      disable=not progress, leave=False)
        with Timer() as total:
            for k, (weights, growth, max_terms) in enumerate(layers):
                with Timer() as step:
                    if derived:
                        z = y @ weights
                        z.eliminate_zeros()
                        z.data += network.bias
                        scale = first_scale if k == 0 else YMAX
                        width = exactness.band(error, growth, max_terms, network.bias,
                                               scale=scale)
                        carry, doubtful = _classify(z, width, network.bias)
                        error = np.where(carry, exactness.next_error(error, growth, max_terms,
                                                                  network.bias, scale=scale),
                                         0.0)
                        np.clip(z.data, 0.0, YMAX, out=z.data)
                        z.eliminate_zeros()
                        y = z
                    else:
                        y = apply_layer(y, weights, network.bias)
                layer_seconds.append(step.seconds)
                live_rows.append(int(np.count_nonzero(np.diff(y.indptr))))
            categories = np.flatnonzero(np.diff(y.indptr)).astype(np.int64) + 1
            if derived:
                categories = recheck(network, inputs, categories, np.flatnonzero(doubtful))
        return InferenceResult(categories=categories, infer_seconds=total.seconds, engine=self.name,
                               live_rows=live_rows, layer_seconds=layer_seconds,
                               rechecked_rows=int(doubtful.sum()))
