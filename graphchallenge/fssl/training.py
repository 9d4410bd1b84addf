"""FSSL training: structured (neuron) sparsity by group lasso, pruning and fine-tuning.

The method of Wang et al. (HPEC 2019), after SSL (Wen et al., NIPS 2016),
applied to the challenge networks: penalise groups of weights with
``lambda * sum_g ||w_g||_2``, remove the groups that reach exactly zero,
and fine-tune what remains with the pattern fixed and ``lambda = 0``. The
result is a narrower network (fewer neurons per layer), written in the
derived-network format (:mod:`graphchallenge.derived`) so that
``graphchallenge run --network DIR`` runs it.

How this module applies it, and why
-----------------------------------
*Groups are neurons.* A neuron of layer k is its incoming column of
``W_k`` and its outgoing row of ``W_{k+1}``; removing it removes both.
The penalty is on the **outgoing row** by default (``groups="outgoing"``):
a neuron goes when the next layer can reproduce the teacher without it,
which is what lets redundancy go (late layers of the real network hold 64
neurons that are all 32 or all 0 on every real input). The final layer's
neurons answer to a virtual readout (one weight per neuron, fitted so that
the kept ones are nonzero exactly on the teacher's categories), which
picks the outputs to keep. ``groups="incoming"`` penalises incoming
columns instead; measured in ``docs/finetune.md``: a neuron then goes only
when its own activation is cheap to lose, so redundant neurons stay.

*The teacher is the original network.* Training starts from its exact
compaction (:func:`graphchallenge.compress.compact`), whose activations at
each kept neuron equal the original's: identical copies of a neuron would
otherwise get identical gradients and could never be told apart by the
group penalty. The targets of layer k are the teacher's activations at the
student's kept neurons of layer k.

*Layer-local targets.* Every layer is fitted on its own: ``X_{k-1} W_k``
must reproduce the teacher's layer k, with ``X_{k-1}`` the teacher's
activations (group-lasso phase) or the student's own (fine-tuning phase,
so that each layer corrects the drift of those before it). An end-to-end
loss would have to pass its gradient through 120 clamps, and on the real
training inputs every unit of every row is dead (0) or saturated (32)
from layer 16 on (the report's ``open_units``): the gradient of any loss
on the outputs is exactly 0 for the layers that decide the categories.

*Residuals in pre-activation space* (:func:`ops.set_residual`): a
unit the teacher leaves at 0 only needs ``z <= -margin``, a saturated one
``z >= 32 + margin``; the squared distance to that set is convex and keeps
a gradient exactly where the student is on the wrong side of a threshold,
which is where the clamp's own derivative is 0.

*Non-negative weights.* With ``W >= 0``, inputs ``>= 0`` and a negative
bias, adding the bias to every entry equals adding it to the structural
nonzeros only (the reference's rule), so the dense arithmetic of training
is the reference's arithmetic, and the result is a network of the
challenge's kind. The bias stays the challenge's scalar.

*Optimisation.* Each layer's problem is convex for fixed inputs; every
epoch sweeps the layers (last to first while sparsifying, so that the kept
outputs of layer k are the inputs layer k+1 still uses; first to last
while fine-tuning) and takes ``inner_steps`` accelerated proximal-gradient
(FISTA) steps on each, with step ``1/L`` from the layer's curvature. With
``reweight`` the penalty of each group is scaled every epoch by
``2m / (m + ||w_g||)`` (``m`` the layer's mean nonzero group norm), a
majorise-minimise step towards a log penalty that makes the strong groups
of a tie win instead of all shrinking together. A group's penalty also
grows with the square root of its edge count (Yuan and Lin's weighting),
so the cheap neurons of the first six layers (two edges each after
compaction), which decide which rows die, are the last to go.

*Fine-tuning starts debiased* (``debias``): from the start network's
weights on the kept pattern rather than the shrunk ones, so a layer that
lost no input starts exact and stays so.
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from ..catalog import YMAX
from ..engines.exactness import apply_layer
from ..errors import GraphChallengeError
from ..network import Network
from . import ops

GROUPINGS = ("outgoing", "incoming")


class NothingLeft(GraphChallengeError):
    """Pruning removed every neuron of a layer (lambda too large)."""

FINETUNE_INPUTS = ("student", "teacher")


@dataclass
class FsslOptions:
    """Settings of one FSSL training run.

    Attributes
    ----------
    lam : float
        Group-lasso strength, in weight units per proximal step (each
        layer's fidelity is divided by its curvature, so one ``lam`` fits
        all layers). 0 prunes nothing.
    epochs : int
        Group-lasso epochs (sweeps over all layers).
    finetune_epochs : int
        Fine-tuning epochs after pruning, pattern fixed, ``lam = 0``.
    inner_steps : int
        Accelerated proximal-gradient steps per layer and epoch.
    margin : float
        Required distance beyond the thresholds for units the teacher
        leaves dead (``z <= -margin``) or saturated (``z >= 32 + margin``).
    reweight : bool
        Reweight the group penalties every epoch (see the module docstring).
    debias : bool
        Fine-tune from the start network's weights on the kept pattern
        rather than from the shrunk group-lasso weights.
    groups : {"outgoing", "incoming"}
        Which weights of a neuron the penalty acts on.
    finetune_inputs : {"student", "teacher"}
        Inputs of each layer while fine-tuning.
    seed : int
        Seeds the virtual readout's initial weights (the only random draw).
    device : {"cpu", "gpu"}
    """

    lam: float = 0.0003
    epochs: int = 100
    finetune_epochs: int = 40
    inner_steps: int = 5
    margin: float = 0.05
    reweight: bool = True
    groups: str = "outgoing"
    finetune_inputs: str = "student"
    seed: int = 0
    device: str = "cpu"
    debias: bool = True

    def check(self):
        """Raise GraphChallengeError naming the first bad setting."""
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise GraphChallengeError(f"--lambda must be a finite number >= 0 (got {self.lam})")
        for name in ("epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise GraphChallengeError(f"--{name.replace('_', '-')} must be >= 0")
        if self.inner_steps < 1:
            raise GraphChallengeError("inner_steps must be at least 1")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise GraphChallengeError(f"--margin must be a finite number >= 0 (got {self.margin})")
        if self.groups not in GROUPINGS:
            raise GraphChallengeError(f"groups must be one of {', '.join(GROUPINGS)}")
        if self.finetune_inputs not in FINETUNE_INPUTS:
            raise GraphChallengeError(f"--finetune-inputs must be one of {', '.join(FINETUNE_INPUTS)}")
        if self.device not in ("cpu", "gpu"):
            raise GraphChallengeError(f"--device must be cpu or gpu (got {self.device!r})")

    def to_dict(self):
        return asdict(self)


@dataclass
class EpochRecord:
    """One line of the training history (also the progress bar's postfix)."""

    phase: str
    epoch: int
    loss: float
    fidelity: float
    sparsity: float
    neurons: int
    edges: int
    seconds: float


@dataclass
class FsslResult:
    """A trained network and how it was trained.

    Attributes
    ----------
    network : Network
        The fine-tuned network, its own reference (``origin=None``).
    kept : list of ndarray
        Per layer, the start network's output neurons (0-based) kept.
    history : list of EpochRecord
    sparsify_seconds, finetune_seconds, train_seconds : float
        Wall time of the two phases (teacher activations, pruning and the
        transfers included in ``train_seconds``).
    open_units : list of float
        Per layer, the fraction of the teacher's units (live rows only) strictly
        between 0 and 32: the only ones an end-to-end gradient passes.
    options : FsslOptions
    """

    network: Network
    kept: list
    history: list
    sparsify_seconds: float
    finetune_seconds: float
    train_seconds: float
    open_units: list
    options: FsslOptions


# ---------------------------------------------------------------- activations

class _Block:
    """Activations of the live rows of one layer: ``values[i]`` is row ``rows[i]``."""

    def __init__(self, backend, rows, values, n_rows):
        self.rows, self.values, self.n_rows = rows, values, n_rows
        xp = backend.xp
        self.position = xp.full(n_rows, -1, dtype=xp.int64)
        self.position[rows] = xp.arange(rows.size)

    def values_at(self, xp, rows, columns=None):
        """Values at ``rows`` (0 where this block has no such row), optionally only ``columns``."""
        values = self.values if columns is None else self.values[:, columns]
        out = xp.zeros((rows.size, values.shape[1]), dtype=values.dtype)
        where = self.position[rows]
        present = where >= 0
        out[present] = values[where[present]]
        return out


def _live_block(backend, values, rows, n_rows):
    """The block of the rows of ``values`` with any nonzero."""
    live = (values > 0).any(axis=1)
    return _Block(backend, rows[live], values[live], n_rows)


def teacher_blocks(backend, network, inputs, columns=None):
    """The teacher's activations on ``inputs``, layer by layer, live rows only.

    Computed on the CPU with the reference's own layer function (the
    network's exact arithmetic), then moved to the backend's device.

    Parameters
    ----------
    columns : list of int arrays, optional
        Per layer, the teacher's neurons to keep, in the student's order
        (e.g. one representative of each compact neuron); all by default.

    Returns
    -------
    list of _Block
        ``L + 1`` blocks: the inputs, then every layer's activations.
    """
    y = sp.csr_matrix(inputs, dtype=np.float64, copy=True)
    y.eliminate_zeros()
    n_rows = y.shape[0]
    blocks = []
    for k in range(network.n_layers + 1):
        if k:
            y = apply_layer(y, network.layers[k - 1], network.bias)
        rows = np.flatnonzero(np.diff(y.indptr))
        values = y[rows]
        if k and columns is not None:
            values = values[:, columns[k - 1]]
        values = values.toarray()
        live = (values > 0).any(axis=1)
        blocks.append(_Block(backend, backend.asarray(rows[live]), backend.asarray(values[live]),
                             n_rows))
    return blocks


def open_unit_fractions(blocks):
    """Per layer, the fraction of live units strictly inside (0, 32)."""
    fractions = []
    for block in blocks[1:]:
        values = block.values
        fractions.append(float(((values > 0) & (values < YMAX)).sum()) / values.size
                         if values.size else 0.0)
    return fractions


# ---------------------------------------------------------------- one layer

class _Edges:
    """A layer under training: its pattern, one value per edge, its shape."""

    def __init__(self, backend, weights):
        coo = sp.coo_matrix(weights)
        self.rows = backend.asarray(coo.row.astype(np.int64))
        self.cols = backend.asarray(coo.col.astype(np.int64))
        self.values = backend.asarray(coo.data.astype(np.float64))
        self.shape = tuple(int(n) for n in weights.shape)

    def to_csr(self, backend):
        """The layer as scipy CSR, zero edges dropped."""
        values = backend.to_host(self.values)
        keep = values != 0
        matrix = sp.csr_matrix((values[keep], (backend.to_host(self.rows)[keep],
                                               backend.to_host(self.cols)[keep])), shape=self.shape)
        matrix.sort_indices()
        return matrix


def _gradient(backend, edges, values, inputs, targets, column_weights, bias, margin, n_total):
    """Fidelity ``sum R^2 / n`` of one layer and its gradient on the pattern."""
    xp = backend.xp
    pre = ops.layer_product(backend, inputs, edges.rows, edges.cols, values, edges.shape) + bias
    residual = ops.set_residual(xp, pre, targets, margin)
    if column_weights is not None:
        residual = residual * column_weights
    grads = residual * (2.0 / n_total)
    gradient = ops.sampled_product(xp, inputs, grads, edges.rows, edges.cols, edges.shape)
    return float((residual * residual).sum()) / n_total, gradient


def _fista(backend, edges, inputs, targets, column_weights, steps, prox, bias, margin, n_total,
           n_steps):
    """``n_steps`` accelerated proximal-gradient steps on one layer; returns its fidelity."""
    values = previous = edges.values
    momentum = 1.0
    fidelity = 0.0
    for _ in range(n_steps):
        fidelity, gradient = _gradient(backend, edges, values, inputs, targets, column_weights,
                                       bias, margin, n_total)
        updated = prox(values - steps * gradient)
        next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        values = updated + ((momentum - 1.0) / next_momentum) * (updated - previous)
        previous, momentum = updated, next_momentum
    edges.values = previous
    return fidelity


def _group_thresholds(xp, norms, sizes, lam, reweight):
    """``lam * sqrt(size)`` per group, scaled by ``2m / (m + ||w_g||)`` when reweighting."""
    thresholds = lam * xp.sqrt(sizes)
    if not reweight:
        return thresholds
    positive = norms[norms > 0]
    mean = float(positive.mean()) if positive.size else 1.0
    return thresholds * 2.0 * mean / (mean + norms)


# ---------------------------------------------------------------- the two phases

def _readout(backend, n_outputs, seed):
    """The virtual layer that picks the final neurons: every output -> one category unit.

    Its initial weights are a seeded random draw summing to 2 (the
    challenge's column sum): equal weights on neurons that are identical on
    the data would get equal gradients and could never be told apart.
    """
    weights = np.random.default_rng(seed).uniform(0.5, 1.5, size=n_outputs)
    weights *= 2.0 / weights.sum()
    column = sp.csr_matrix((weights, (np.arange(n_outputs), np.zeros(n_outputs, dtype=np.int64))),
                           shape=(n_outputs, 1))
    return _Edges(backend, column)


def _relative(numerator, denominator):
    return numerator / denominator if denominator > 0 else 0.0


class _Sparsifier:
    """The group-lasso phase: layer-local fits on teacher inputs, groups driven to exact zeros.

    With outgoing groups a neuron of layer k is the row of ``W_{k+1}`` it
    feeds (the readout's weight for the final layer); with incoming groups
    it is its column of ``W_k``. ``used[k]`` marks the output neurons of
    layer k that are still in the network.
    """

    def __init__(self, backend, layers, teacher, options, bias, n_total):
        xp = backend.xp
        self.backend, self.layers, self.options = backend, layers, options
        self.bias, self.n_total = bias, n_total
        self.teacher_inputs = [block.values for block in teacher[:-1]]
        # Teacher inputs are fixed in this phase: targets and step sizes are computed once.
        self.targets = [teacher[k + 1].values_at(xp, teacher[k].rows) for k in range(len(layers))]
        self.curvatures = [2.0 * ops.squared_spectral_norm(xp, values) / n_total
                           for values in self.teacher_inputs]
        self.outgoing = options.groups == "outgoing"
        if self.outgoing:
            self.readout = _readout(backend, layers[-1].shape[1], options.seed)
            final = teacher[-1].values
            self.readout_inputs = final
            self.readout_targets = xp.full((final.shape[0], 1), YMAX)
            self.readout_curvature = 2.0 * ops.squared_spectral_norm(xp, final) / n_total
        # A group's penalty grows with the square root of its edges at the start
        # (Yuan and Lin's weighting): a neuron that costs more edges goes sooner.
        self.sizes = [xp.bincount(self._groups(edges), minlength=self._n_groups(edges))
                      .astype(edges.values.dtype) for edges in layers]
        self.used = [xp.ones(edges.shape[1], dtype=bool) for edges in layers]

    def _groups(self, edges):
        return edges.rows if self.outgoing else edges.cols

    def _n_groups(self, edges):
        return edges.shape[0] if self.outgoing else edges.shape[1]

    def _prox(self, edges, sizes):
        """The proximal map of this epoch's penalty on ``edges``, and the penalty's value."""
        xp = self.backend.xp
        groups, n_groups = self._groups(edges), self._n_groups(edges)
        norms = ops.group_norms(xp, edges.values, groups, n_groups)
        thresholds = _group_thresholds(xp, norms, sizes, self.options.lam, self.options.reweight)

        def prox(values):
            return ops.proximal_group_step(xp, values, groups, n_groups, thresholds)

        return prox, float((thresholds * norms).sum())

    def _fit(self, edges, inputs, targets, used, curvature, prox):
        """Proximal steps on one layer; returns ``(normalised objective, fidelity, energy)``."""
        xp = self.backend.xp
        weights = used.astype(targets.dtype)
        # Edges into neurons nobody uses any more are dead weight: zero them now,
        # so that the rows' group norms count only edges that matter.
        edges.values = xp.where(used[edges.cols], edges.values, 0.0)
        # Each layer's fidelity is divided by its curvature, so that a step of
        # 1 / curvature is a unit step and one lambda fits every layer.
        step = 1.0 / curvature if curvature > 0 else 0.0
        fidelity = _fista(self.backend, edges, inputs, targets, weights, step, prox, self.bias,
                          self.options.margin, self.n_total, self.options.inner_steps)
        energy = float(((targets * weights) ** 2).sum()) / self.n_total
        return fidelity * step, fidelity, energy

    def epoch(self):
        """One sweep over the layers; returns ``(objective, relative fidelity)``."""
        xp = self.backend.xp
        objective = residual = energy = 0.0
        layers = self.layers
        if self.outgoing:
            prox, penalty = self._prox(self.readout, xp.ones(self.readout.shape[0]))
            scaled, _, _ = self._fit(self.readout, self.readout_inputs, self.readout_targets,
                                     xp.ones(1, dtype=bool), self.readout_curvature, prox)
            objective += scaled + penalty
            used = self.readout.values > 0
            order = range(len(layers) - 1, -1, -1)
        else:
            order = range(len(layers))
        for k in order:
            edges = layers[k]
            if not self.outgoing:
                used = ops.group_norms(xp, edges.values, edges.cols, edges.shape[1]) > 0
            self.used[k] = used
            if self.outgoing and k == 0:  # the first layer's inputs are the images: never pruned
                prox, penalty = (lambda values: xp.maximum(values, 0.0)), 0.0
            else:
                prox, penalty = self._prox(edges, self.sizes[k])
            scaled, fit, scale = self._fit(edges, self.teacher_inputs[k], self.targets[k], used,
                                           self.curvatures[k], prox)
            objective += scaled + penalty
            residual, energy = residual + fit, energy + scale
            if self.outgoing and k:
                used = ops.group_norms(xp, edges.values, edges.rows, edges.shape[0]) > 0
        return objective, _relative(residual, energy)

    def kept_outputs(self):
        """Final neurons to keep (host bool array)."""
        xp = self.backend.xp
        if self.outgoing:
            return self.backend.to_host(self.readout.values > 0)
        last = self.layers[-1]
        return self.backend.to_host(ops.group_norms(xp, last.values, last.cols, last.shape[1]) > 0)

    def counts(self):
        """``(neurons, edges)`` still in use."""
        neurons = int(sum(int(used.sum()) for used in self.used))
        edges = int(sum(int(((e.values != 0) & self.used[k][e.cols]).sum())
                        for k, e in enumerate(self.layers)))
        return neurons, edges


def _finetune_epoch(backend, layers, kept, teacher, options, bias, n_total):
    """One forward sweep of pattern-fixed, unpenalised fits; returns ``(objective, fidelity)``."""
    xp = backend.xp
    student = teacher[0]
    objective = residual = energy = 0.0
    for k, edges in enumerate(layers):
        if options.finetune_inputs == "student" or k == 0:
            inputs = student
            values = inputs.values
        else:
            inputs = teacher[k]
            values = inputs.values[:, kept[k - 1]]
        targets = teacher[k + 1].values_at(xp, inputs.rows, kept[k])
        whole = ops.squared_spectral_norm(xp, values)
        curvature = 2.0 * ops.column_curvatures(xp, values, edges.rows, edges.cols, edges.shape[1],
                                                whole) / n_total
        # Without a penalty the columns' problems are independent: one step per column.
        steps = xp.where(curvature > 0, 1.0 / xp.where(curvature > 0, curvature, 1.0), 0.0)[edges.cols]
        fit = _fista(backend, edges, values, targets, None, steps,
                     lambda w: xp.maximum(w, 0.0), bias, options.margin, n_total,
                     options.inner_steps)
        scale = float((targets * targets).sum()) / n_total
        objective += fit
        residual, energy = residual + fit, energy + scale
        if options.finetune_inputs == "student":
            out = ops.clamp(xp, ops.layer_product(backend, values, edges.rows, edges.cols,
                                                  edges.values, edges.shape) + bias)
            student = _live_block(backend, out, inputs.rows, n_total)
    return objective, _relative(residual, energy)


# ---------------------------------------------------------------- pruning

def prune_network(network, keep_outputs=None):
    """Remove zero edges, and every neuron that has no effect, until nothing changes.

    A hidden neuron goes when it has no nonzero incoming edge from a kept
    neuron (it is 0 on every input: the bias is added only to structural
    nonzeros) or no nonzero outgoing edge into a kept neuron (nothing reads
    it); a final neuron goes when it has no incoming edge or
    ``keep_outputs`` says so. The first layer keeps all its inputs. Apart
    from the final neurons that ``keep_outputs`` drops, every kept neuron's
    value is unchanged on every input.

    Parameters
    ----------
    network : Network
    keep_outputs : array of bool, optional
        Final neurons allowed to stay.

    Returns
    -------
    (Network, list of ndarray)
        The pruned network (``origin`` unchanged) and, per layer, the
        original indices of the output neurons kept.

    Raises
    ------
    NothingLeft
        If a layer would lose all its neurons.
    """
    layers = [sp.csr_matrix(w, dtype=np.float64, copy=True) for w in network.layers]
    for w in layers:
        w.eliminate_zeros()
    alive = [np.ones(w.shape[1], dtype=bool) for w in layers]
    if keep_outputs is not None:
        alive[-1] &= np.asarray(keep_outputs, dtype=bool)
    changed = True
    while changed:
        changed = False
        inputs = np.ones(layers[0].shape[0], dtype=bool)
        for k, w in enumerate(layers):
            coo = w.tocoo()
            fed = np.zeros(w.shape[1], dtype=bool)
            fed[coo.col[inputs[coo.row]]] = True
            changed |= bool((alive[k] & ~fed).any())
            alive[k] &= fed
            inputs = alive[k]
        for k in range(len(layers) - 2, -1, -1):
            coo = layers[k + 1].tocoo()
            read = np.zeros(layers[k].shape[1], dtype=bool)
            read[coo.row[alive[k + 1][coo.col]]] = True
            changed |= bool((alive[k] & ~read).any())
            alive[k] &= read
    for k, mask in enumerate(alive, 1):
        if not mask.any():
            raise NothingLeft(f"every neuron of layer {k} was pruned: no input can reach "
                                      "the outputs; use a smaller --lambda")
    kept = [np.flatnonzero(mask) for mask in alive]
    pruned = []
    rows = np.arange(layers[0].shape[0])
    for k, w in enumerate(layers):
        pruned.append(sp.csr_matrix(w[rows][:, kept[k]]))
        rows = kept[k]
    return Network(pruned, network.bias, name=network.name, origin=network.origin,
                   config=network.config), kept


# ---------------------------------------------------------------- training

def _check_trainable(network):
    if network.bias >= 0:
        raise GraphChallengeError(f"fine-tuning needs a negative bias (got {network.bias}): the "
                                  "training arithmetic adds it to every entry, which equals the "
                                  "reference's rule only for a negative bias")
    for k, w in enumerate(network.layers, 1):
        if w.nnz and w.data.min() < 0:
            raise GraphChallengeError(f"layer {k} has negative weights; fine-tuning starts from "
                                      "a network with non-negative weights (a challenge network "
                                      "or its compaction)")


def train_fssl(network, inputs, options=None, teacher=None, representatives=None, progress=False):
    """Sparsify, prune and fine-tune ``network`` against a teacher.

    Parameters
    ----------
    network : Network
        The start network: a challenge network's exact compaction
        (recommended, see the module docstring) or any network with
        non-negative weights and a negative bias.
    inputs : scipy.sparse matrix
        Training inputs, ``n x network.n_features``.
    options : FsslOptions, optional
    teacher : Network, optional
        The network whose activations are the targets (the original);
        ``network`` itself by default.
    representatives : list of int arrays, optional
        Per layer, for each output neuron of ``network``, a neuron of
        ``teacher`` with the same activations (one member of each compact
        neuron's group); needed when ``teacher`` is wider than ``network``.
    progress : bool
        Draw a progress bar over the epochs on stderr (loss, group
        sparsity and fidelity in its postfix).

    Returns
    -------
    FsslResult

    Examples
    --------
    >>> result = train_fssl(compaction.network, inputs[train], FsslOptions(lam=0.01))  # doctest: +SKIP
    >>> result.network.edges                                                          # doctest: +SKIP
    """
    from tqdm import tqdm

    options = options or FsslOptions()
    options.check()
    network = network.in_memory()
    _check_trainable(network)
    if inputs.shape[1] != network.n_features:
        raise GraphChallengeError(f"the inputs have {inputs.shape[1]} features but the network "
                                  f"takes {network.n_features}")
    backend = ops.Backend(options.device)
    n_total = inputs.shape[0]
    history = []
    bar = tqdm(total=options.epochs + options.finetune_epochs, desc="fssl", unit="epoch",
               disable=not progress, leave=False)
    start = time.perf_counter()
    if teacher is not None and teacher.n_layers != network.n_layers:
        raise GraphChallengeError(f"the teacher has {teacher.n_layers} layers, the network "
                                  f"{network.n_layers}")
    teacher = teacher_blocks(backend, teacher.in_memory() if teacher is not None else network,
                             inputs, representatives)
    layers = [_Edges(backend, w) for w in network.layers]
    prunable = sum(shape[1] for shape in network.shapes)

    def record(phase, epoch, loss, fidelity, neurons, edges, began):
        backend.synchronize()
        entry = EpochRecord(phase, epoch, loss, fidelity, 1.0 - neurons / prunable, neurons,
                            edges, time.perf_counter() - began)
        history.append(entry)
        bar.set_postfix(phase=phase, loss=f"{loss:.4g}", sparsity=f"{entry.sparsity:.3f}",
                        fidelity=f"{fidelity:.2e}", refresh=False)
        bar.update()

    began = time.perf_counter()
    sparsifier = _Sparsifier(backend, layers, teacher, options, network.bias, n_total)
    for epoch in range(1, options.epochs + 1):
        loss, fidelity = sparsifier.epoch()
        record("sparsify", epoch, loss, fidelity, *sparsifier.counts(), began)
    keep_outputs = sparsifier.kept_outputs() if options.epochs else None
    sparse_network = Network([e.to_csr(backend) for e in layers], network.bias, name=network.name)
    sparsify_seconds = time.perf_counter() - began

    pruned, kept = prune_network(sparse_network, keep_outputs)
    began = time.perf_counter()
    if options.debias:
        # The group lasso shrinks every surviving weight; fine-tuning starts
        # from the start network's weights on the kept pattern instead, so a
        # layer whose inputs all survived starts (and stays) exact.
        rows = np.arange(network.n_features)
        restarted = []
        for k, w in enumerate(pruned.layers):
            restarted.append(sp.csr_matrix(network.layers[k][rows][:, kept[k]].multiply(w != 0)))
            rows = kept[k]
        pruned = Network(restarted, network.bias)
    layers = [_Edges(backend, w) for w in pruned.layers]
    device_kept = [backend.asarray(k) for k in kept]
    neurons = int(sum(k.size for k in kept))
    for epoch in range(1, options.finetune_epochs + 1):
        loss, fidelity = _finetune_epoch(backend, layers, device_kept, teacher, options,
                                         network.bias, n_total)
        record("finetune", epoch, loss, fidelity, neurons,
               int(sum(int((e.values != 0).sum()) for e in layers)), began)
    finetune_seconds = time.perf_counter() - began
    bar.close()
    # Fine-tuning may drive whole columns to 0 under the w >= 0 projection;
    # pruning them again is exact.
    trained, still = prune_network(Network([e.to_csr(backend) for e in layers], network.bias,
                                           name=f"{network.name}-fssl", config=network.config))
    kept = [k[s] for k, s in zip(kept, still)]
    return FsslResult(network=trained, kept=kept, history=history,
                      sparsify_seconds=sparsify_seconds, finetune_seconds=finetune_seconds,
                      train_seconds=time.perf_counter() - start,
                      open_units=open_unit_fractions(teacher), options=options)
