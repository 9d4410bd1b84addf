"""Array kernels of FSSL training, written once for numpy and CuPy.

Every function takes its arrays from one array module (``numpy`` or
``cupy``) and returns arrays of the same module, so the training loop in
:mod:`graphchallenge.fssl.training` runs unchanged on the CPU and the GPU; only
:class:`Backend` knows which one it is.

A layer under training keeps its sparsity pattern as two index arrays
(``rows``, ``cols``: the edge from input neuron ``rows[e]`` to output
neuron ``cols[e]``) and one value per edge. Gradients exist only on those
edges: ``dL/dW[r, c] = sum_i X[i, r] G[i, c]``, a sampled dense-dense
product (:func:`sampled_product`).
"""

import numpy as np
import scipy.sparse as sp

from ..catalog import YMAX
from ..errors import EngineUnavailable

#: A layer whose dense form holds at most this many entries per edge (or few
#: entries in all) is multiplied as a dense matrix: BLAS beats sparse kernels
#: there, and every compacted challenge layer qualifies.
DENSE_RATIO = 16
DENSE_ENTRIES = 1 << 16
#: Entries of the ``rows x edges`` temporaries of the sparse gradient, per chunk.
CHUNK_ENTRIES = 1 << 24


class Backend:
    """The array module of one device: ``numpy``/``scipy.sparse`` or ``cupy``/``cupyx``.

    Parameters
    ----------
    device : {"cpu", "gpu"}

    Raises
    ------
    EngineUnavailable
        ``gpu`` without CuPy or without a CUDA device.
    """

    def __init__(self, device="cpu"):
        if device == "cpu":
            self.xp, self.sparse = np, sp
        elif device == "gpu":
            try:
                import cupy
                import cupyx.scipy.sparse as cusparse

                cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # ImportError, CUDARuntimeError: same advice
                raise EngineUnavailable(f"--device gpu needs CuPy and a CUDA device ({exc}); "
                                        "use --device cpu") from None
            self.xp, self.sparse = cupy, cusparse
        else:
            raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
        self.device = device

    def asarray(self, array, dtype=None):
        """``array`` (numpy or already on the device) as an array of this backend."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array):
        """A numpy copy of a device array (the array itself on the CPU)."""
        return array.get() if self.device == "gpu" else np.asarray(array)

    def synchronize(self):
        """Wait for queued device work, so wall-clock timings are honest."""
        if self.device == "gpu":
            self.xp.cuda.Device().synchronize()


def is_dense_friendly(shape, n_edges):
    """True when a layer of ``shape`` with ``n_edges`` edges is best handled as a dense matrix."""
    entries = shape[0] * shape[1]
    return entries <= DENSE_ENTRIES or entries <= DENSE_RATIO * n_edges


def densify(xp, rows, cols, values, shape):
    """The dense ``shape`` matrix with ``values`` at ``(rows, cols)`` (patterns have no duplicates)."""
    dense = xp.zeros(shape, dtype=values.dtype)
    dense[rows, cols] = values
    return dense


def layer_product(backend, inputs, rows, cols, values, shape):
    """``inputs @ W`` for the layer with edges ``(rows, cols, values)``: dense ``n x outputs``."""
    xp = backend.xp
    if is_dense_friendly(shape, values.size):
        return inputs @ densify(xp, rows, cols, values, shape)
    transposed = backend.sparse.coo_matrix((values, (cols, rows)),
                                           shape=(shape[1], shape[0])).tocsr()
    return xp.ascontiguousarray((transposed @ xp.ascontiguousarray(inputs.T)).T)


def sampled_product(xp, inputs, grads, rows, cols, shape):
    """``sum_i inputs[i, rows[e]] * grads[i, cols[e]]`` for every edge ``e`` (SDDMM).

    Parameters
    ----------
    inputs : array (n, shape[0])
    grads : array (n, shape[1])
    rows, cols : int arrays (edges,)

    Returns
    -------
    array (edges,)
    """
    if is_dense_friendly(shape, rows.size):
        return (inputs.T @ grads)[rows, cols]
    out = xp.zeros(rows.size, dtype=grads.dtype)
    step = max(1, CHUNK_ENTRIES // max(1, rows.size))
    for start in range(0, inputs.shape[0], step):
        block = slice(start, start + step)
        out += (inputs[block][:, rows] * grads[block][:, cols]).sum(axis=0)
    return out


def set_residual(xp, preactivations, targets, margin=0.0):
    """Signed distance from each pre-activation to the values the clamp maps onto its target.

    The clamp ``min(32, max(0, z))`` sends every ``z <= 0`` to 0 and every
    ``z >= 32`` to 32, so a teacher activation of 0 asks only for
    ``z <= -margin``, one of 32 only for ``z >= 32 + margin``, and one in
    between for ``z`` equal to it. The squared residual is convex in ``z``
    and its gradient is nonzero wherever the student is on the wrong side
    of a threshold, even where the clamp's own derivative is 0: this is
    what keeps dead and saturated units trainable.
    """
    residual = preactivations - targets
    dead = targets <= 0.0
    saturated = targets >= YMAX
    residual = xp.where(dead, xp.maximum(preactivations + margin, 0.0), residual)
    return xp.where(saturated, xp.minimum(preactivations - (YMAX + margin), 0.0), residual)


def clamp(xp, preactivations):
    """The challenge's activation: ReLU, then the clamp at 32."""
    return xp.clip(preactivations, 0.0, YMAX)


def group_norms(xp, values, groups, n_groups):
    """L2 norm of the values of each group (``groups[e]`` is the group of edge ``e``)."""
    return xp.sqrt(xp.bincount(groups, weights=values * values, minlength=n_groups))


def proximal_group_step(xp, values, groups, n_groups, thresholds, nonnegative=True):
    """The proximal map of ``sum_g t_g ||w_g||_2`` (plus ``w >= 0`` when ``nonnegative``).

    ``w_g <- max(0, 1 - t_g / ||w_g||) * w_g``, after projecting onto
    ``w >= 0`` (the proximal map of the sum is the composition in that
    order). A group whose norm is at most its threshold becomes exactly 0.

    Parameters
    ----------
    values : array (edges,)
    groups : int array (edges,)
        Group of each edge, in ``0 .. n_groups - 1``.
    thresholds : float or array (n_groups,)
        ``step * lambda`` per group.

    Returns
    -------
    array (edges,)
    """
    if nonnegative:
        values = xp.maximum(values, 0.0)
    norms = group_norms(xp, values, groups, n_groups)
    thresholds = xp.broadcast_to(xp.asarray(thresholds, dtype=values.dtype), norms.shape)
    safe = xp.where(norms > thresholds, norms, 1.0)
    scale = xp.where(norms > thresholds, 1.0 - thresholds / safe, 0.0)
    return values * scale[groups]


def squared_spectral_norm(xp, matrix, iterations=30):
    """An upper estimate of ``||matrix||_2 ** 2`` by power iteration on ``matrix.T @ matrix``.

    Starts from the all-ones vector (deterministic) and adds 5% so that
    steps ``1 / L`` stay inside the convergence region when the iteration
    has not quite converged.
    """
    if matrix.size == 0:
        return 0.0
    vector = xp.ones(matrix.shape[1], dtype=matrix.dtype)
    estimate = 0.0
    for _ in range(iterations):
        image = matrix.T @ (matrix @ vector)
        norm = float(xp.linalg.norm(image))
        if norm == 0.0:
            return 0.0
        estimate = norm / float(xp.linalg.norm(vector))
        vector = image / norm
    return 1.05 * estimate


def column_curvatures(xp, inputs, rows, cols, n_columns, whole=None):
    """Per output column, an upper bound on the largest eigenvalue of ``X_P.T X_P``.

    ``X_P`` is ``inputs`` restricted to the column's pattern rows. Two
    bounds hold and the smaller is taken: the trace (the sum over the
    pattern of ``||inputs[:, r]||^2``) and ``whole``, the squared spectral
    norm of all of ``inputs``. Where the columns' problems are independent
    (no penalty couples them), ``n / (2 c)`` is a safe step for each.
    """
    energy = (inputs * inputs).sum(axis=0)
    trace = xp.bincount(cols, weights=energy[rows], minlength=n_columns)
    return trace if whole is None else xp.minimum(trace, whole)
