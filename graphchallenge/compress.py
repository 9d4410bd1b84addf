"""Exact structural compaction of a sparse DNN.

The challenge networks hide a much smaller one: in every real neuron1024
layer the output neurons come in groups of 16 (or 32) whose incoming
columns are identical, so they hold identical values on every input.
:func:`compact` finds that network; :func:`save_compact` writes it in the
derived-network format of :mod:`graphchallenge.derived` (challenge-format
TSV layers, now rectangular, beside a ``manifest.json``), which
``graphchallenge run --network DIR`` loads.

What compaction does, in one forward pass over the layers (``Y @ W``
convention: a neuron's incoming weights are a column of its layer, its
outgoing weights a row of the next layer):

1. **never-nonzero neurons** go: a neuron whose column has no entry from a
   neuron that can be nonzero (the first layer's inputs all can);
2. **dead ends** go: a hidden neuron whose row in the next layer has no
   entry into a kept neuron;
3. **duplicates merge**: output neurons of layer k whose columns (after the
   rows of layer k were folded, step 4) hold the same rows and the same
   values keep one representative;
4. **folding**: in layer k + 1 the rows of a merged group are summed into
   one row (``1/16 * 16 = 1`` on the challenge networks), which can make
   columns of layer k + 1 identical, found in step 3 for that layer.

The first layer keeps all N inputs: the images are not transformed.

Why the categories cannot change
--------------------------------
*Removals are bitwise exact, for any bias.* The reference adds the bias
only to the structural nonzeros of ``Y @ W``; a neuron without a term from
a possibly-nonzero neuron gets no structure, so it is exactly 0 on every
input and contributes no term downstream. A dead end contributes terms only
to removed neurons. Removing either leaves every kept neuron's sum with the
same terms in the same order.

*Merges are exact in real arithmetic.* Identical columns compute the same
real value from the same inputs, so by induction over the layers every
kept neuron's real value equals that of each original neuron it stands
for, and ``z_c = sum_i y_i W[i, c] = sum_g y_g * sum_{i in g} W[i, c]``.
A group is merged only when every folded weight ``sum_{i in g} W[i, c]`` is
exactly representable in float64 and nonzero (checked with error-free
sums; any other group is left unmerged), so the compact network computes
in real arithmetic exactly the original's function. In floating point its
sums are reassociated and round differently, which matters only for values
within rounding distance of 0 or 32. The compact network therefore carries
``origin=`` the original: every engine bounds its rounding per row
(:mod:`graphchallenge.engines.exactness`) and recomputes any row that came
near a threshold on the original network in float64 (``engines.recheck``).

*The last layer.* Categories are the rows with any final output > 0;
merged copies hold the representative's value, so ``any`` is unchanged.

*Inputs-aware mode* (``inputs_aware=True``) also removes neurons that the
float64 reference leaves at 0 on every given input. On those inputs such a
neuron is stored nowhere, so removing it is bitwise exact there, as above;
on other inputs it may matter. The manifest says so (``"kind":
"inputs-aware"``, ``"exact_only_on"``) and :func:`compact` checks the
result by running it through the reference engine on the same inputs.

Examples
--------
>>> from graphchallenge import catalog, compress
>>> compaction = compress.compress_challenge(catalog.config(1024, 120), "data",
...                                          "n1024-compact")           # doctest: +SKIP
>>> compaction.report.compression_rate                                 # doctest: +SKIP
"""

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from . import derived
from .derived import layer_digest
# The format's calls under the names this module has always offered
# (docs/compress.md); they live in graphchallenge.derived.
from .derived import load as load_compact, read_manifest  # noqa: F401
from .errors import DataError, GraphChallengeError
from .network import Network


# ---------------------------------------------------------------- report

@dataclass
class LayerChange:
    """One layer before and after compaction, and why neurons went."""

    layer: int
    inputs_before: int
    inputs_after: int
    neurons_before: int
    neurons_after: int
    edges_before: int
    edges_after: int
    merged: int = 0           # neurons folded into a duplicate's representative
    never_nonzero: int = 0    # no term from a neuron that can be nonzero
    inactive: int = 0         # 0 on every given input (inputs-aware only)
    dead_ends: int = 0        # nothing downstream reads them
    left_unmerged: int = 0    # duplicate groups whose folded weights would round


@dataclass
class CompactionReport:
    """Neurons and edges per layer before and after, totals and timing.

    ``compression_rate`` is ``original_edges / compact_edges``; ``seconds``
    is the time :func:`compact` took (loading excluded).
    """

    network: str
    kind: str
    original_edges: int
    compact_edges: int
    compression_rate: float
    original_neurons: int
    compact_neurons: int
    seconds: float
    layers: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)

    def text(self):
        """The per-layer table and the totals."""
        lines = [f"{'layer':>5}  {'inputs':>13}  {'neurons':>13}  {'edges':>17}  "
                 f"{'merged':>6}  {'removed':>7}"]
        for change in self.layers:
            removed = change.never_nonzero + change.inactive + change.dead_ends
            lines.append(
                f"{change.layer:>5}  {change.inputs_before:>5} -> {change.inputs_after:<5}  "
                f"{change.neurons_before:>5} -> {change.neurons_after:<5}  "
                f"{change.edges_before:>7} -> {change.edges_after:<7}  "
                f"{change.merged:>6}  {removed:>7}")
        unmerged = sum(change.left_unmerged for change in self.layers)
        lines += [
            f"network      {self.network} ({len(self.layers)} layers), compaction: {self.kind}",
            f"neurons      {self.original_neurons:,} -> {self.compact_neurons:,} (all layers' outputs)",
            f"edges        {self.original_edges:,} -> {self.compact_edges:,}",
            f"compression  {self.compression_rate:.1f}x fewer edges",
            f"time         {self.seconds:.2f} s",
        ]
        if unmerged:
            lines.append(f"note         {unmerged} duplicate groups left unmerged: their summed "
                         "weights would not be exact in float64")
        return "\n".join(lines)

    def plot(self, path):
        """Draw neurons and edges per layer, before and after (needs matplotlib).

        The image format follows the suffix of ``path`` (PNG, SVG, PDF).
        """
        from .plot import pyplot, save_figure

        plt = pyplot()
        layer = [change.layer for change in self.layers]
        figure, (neurons_axis, edges_axis) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
        for axis, before, after, what in (
                (neurons_axis, "neurons_before", "neurons_after", "output neurons"),
                (edges_axis, "edges_before", "edges_after", "edges")):
            axis.step(layer, [getattr(c, before) for c in self.layers], where="mid", label="original")
            axis.step(layer, [getattr(c, after) for c in self.layers], where="mid", label="compact")
            axis.set_yscale("log")
            axis.set_ylabel(what)
            axis.legend()
        edges_axis.set_xlabel("layer")
        neurons_axis.set_title(f"{self.network}: {self.kind} compaction, "
                               f"{self.compression_rate:.1f}x fewer edges")
        figure.tight_layout()
        save_figure(plt, figure, path)


@dataclass
class Compaction:
    """The result of :func:`compact`.

    Attributes
    ----------
    network : Network
        The compact network, ``origin=`` the source network.
    groups : list of list of list of int
        Per layer, for each compact output neuron, the source's output
        neurons (0-based, ascending) it stands for.
    report : CompactionReport
    kind : str
        ``"exact"`` or ``"inputs-aware"``.
    source : Network
        The network that was compacted.
    exact_only_on : dict or None
        Inputs-aware only: ``{"count", "inputs_sha256"}`` of the inputs the
        compact network is exact on.
    """

    network: Network
    groups: list
    report: CompactionReport
    kind: str
    source: Network
    exact_only_on: dict = None


# ---------------------------------------------------------------- exact sums

def _exact_segment_sums(values, starts, lengths):
    """Float64 sums of consecutive segments of ``values``, and which are exact.

    A sum is exact when it equals the real sum of its terms. The terms are
    added in order with Knuth's TwoSum, which yields each addition's
    rounding error exactly; segments where some addition rounded get a
    second chance with ``math.fsum`` (correctly rounded), since another
    order may still reach the exact value.
    """
    sums = values[starts].copy()
    rounded = np.zeros(starts.size, dtype=bool)
    for position in range(1, int(lengths.max(initial=1))):
        longer = lengths > position
        partial = sums[longer]
        term = values[starts[longer] + position]
        total = partial + term
        virtual = total - partial
        error = (partial - (total - virtual)) + (term - virtual)
        rounded[longer] |= error != 0
        sums[longer] = total
    exact = ~rounded
    for segment in np.flatnonzero(rounded):
        terms = values[starts[segment]:starts[segment] + lengths[segment]].tolist()
        best = math.fsum(terms)
        if math.fsum(terms + [-best]) == 0.0:
            sums[segment] = best
            exact[segment] = True
    return sums, exact


def _entries(weights):
    """``(rows, cols, values)`` of a sparse matrix's stored entries.

    Built from CSR by hand because layers from the binary cache pair int64
    ``indptr`` with int32 ``indices``, which scipy's ``tocoo`` rejects.
    """
    csr = weights if sp.isspmatrix_csr(weights) else sp.csr_matrix(weights)
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    return rows, csr.indices.astype(np.int64), csr.data


def _fold(weights, row_group, n_groups, keep_columns):
    """Sum the rows of ``weights`` that ``row_group`` sends to one compact input.

    Rows mapped to -1 and columns outside ``keep_columns`` are dropped; the
    result has ``n_groups`` rows and all of the original columns (the
    dropped ones empty). Returns ``(folded CSC, inexact)`` where
    ``inexact[g]`` says that some folded weight of group ``g`` is not the
    exact sum of its terms, or cancelled to 0.
    """
    source_rows, cols, values = _entries(weights)
    rows = row_group[source_rows]
    wanted = (rows >= 0) & keep_columns[cols] & (values != 0)
    rows, cols, values = rows[wanted], cols[wanted], values[wanted]
    n_cols = weights.shape[1]
    order = np.lexsort((rows, cols))
    rows, cols, values = rows[order], cols[order], values[order]
    key = cols * n_groups + rows
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, key.size])
    sums, exact = _exact_segment_sums(values, starts, lengths)
    exact &= sums != 0
    inexact = np.zeros(n_groups, dtype=bool)
    inexact[rows[starts[~exact]]] = True
    folded = sp.csc_matrix((sums, (rows[starts], cols[starts])), shape=(n_groups, n_cols))
    return folded, inexact


# ---------------------------------------------------------------- duplicate columns

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(values):
    """splitmix64's finaliser: a well-spread 64-bit hash of each uint64."""
    with np.errstate(over="ignore"):
        x = values + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _identical_columns(csc):
    """Label the columns of ``csc`` so that identical columns share a label.

    Columns are hashed as sets of ``(row, value bits)`` pairs, candidates are
    grouped by ``(entry count, hash)``, and every member is then compared
    entry by entry with its candidate group's first column, so a hash
    collision can never merge two different columns.

    Returns
    -------
    labels : ndarray of int64
        One label per column; a label is the index of the first (smallest)
        column with that content.
    """
    csc = csc.copy()
    csc.sort_indices()
    n_cols = csc.shape[1]
    counts = np.diff(csc.indptr)
    entry_hash = _mix(csc.indices.astype(np.uint64) ^ _mix(csc.data.view(np.uint64)))
    column_hash = np.zeros(n_cols, dtype=np.uint64)
    filled = counts > 0
    if entry_hash.size:
        with np.errstate(over="ignore"):
            column_hash[filled] = np.add.reduceat(entry_hash, csc.indptr[:-1][filled])
    order = np.lexsort((np.arange(n_cols), column_hash, counts))
    sorted_counts, sorted_hashes = counts[order], column_hash[order]
    same_key = ((sorted_counts[1:] == sorted_counts[:-1])
                & (sorted_hashes[1:] == sorted_hashes[:-1]))
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~same_key], np.arange(n_cols), 0))
    candidate = np.empty(n_cols, dtype=np.int64)
    candidate[order] = order[run_start]
    # Exact comparison of every entry with the candidate representative's.
    entry_column = np.repeat(np.arange(n_cols), counts)
    mirror = csc.indptr[candidate[entry_column]] + (np.arange(csc.nnz) - csc.indptr[entry_column])
    differs = (csc.indices != csc.indices[mirror]) | (csc.data != csc.data[mirror])
    labels = candidate.copy()
    for column in np.unique(entry_column[differs]):
        # A hash collision (astronomically rare): find the first true twin by hand.
        mine = slice(csc.indptr[column], csc.indptr[column + 1])
        for other in np.flatnonzero(candidate == candidate[column]):
            theirs = slice(csc.indptr[other], csc.indptr[other + 1])
            if (np.array_equal(csc.indices[mine], csc.indices[theirs])
                    and np.array_equal(csc.data[mine], csc.data[theirs])):
                labels[column] = other
                break
    return labels


# ---------------------------------------------------------------- compaction

def _activity(network, inputs):
    """Run the float64 reference once; which neurons are ever > 0, and the categories."""
    from .engines.exactness import apply_layer

    y = sp.csr_matrix(inputs, dtype=np.float64, copy=True)
    y.eliminate_zeros()
    active = [np.bincount(y.indices, minlength=network.n_features) > 0]
    for weights in network.layers:
        y = apply_layer(y, weights, network.bias)
        active.append(np.bincount(y.indices, minlength=weights.shape[1]) > 0)
    categories = np.flatnonzero(np.diff(y.indptr)).astype(np.int64) + 1
    return active, categories


def _reachable(network, input_live, activity):
    """Per layer, output neurons that can be nonzero (and, inputs-aware, ever were)."""
    live, never, inactive = [], [], []
    previous = input_live
    for k, weights in enumerate(network.layers):
        rows, cols, values = _entries(weights)
        fed = np.zeros(weights.shape[1], dtype=bool)
        fed[cols[previous[rows] & (values != 0)]] = True
        never.append(int(np.count_nonzero(~fed)))
        if activity is not None:
            inactive.append(int(np.count_nonzero(fed & ~activity[k + 1])))
            fed &= activity[k + 1]
        else:
            inactive.append(0)
        live.append(fed)
        previous = fed
    return live, never, inactive


def _useful(network, live):
    """Per layer, live output neurons from which some live path reaches the final layer."""
    keep = [None] * network.n_layers
    keep[-1] = live[-1].copy()
    dead_ends = [0] * network.n_layers
    for k in range(network.n_layers - 2, -1, -1):
        rows, cols, values = _entries(network.layers[k + 1])
        read = np.zeros(network.shapes[k][1], dtype=bool)
        read[rows[keep[k + 1][cols] & (values != 0)]] = True
        keep[k] = live[k] & read
        dead_ends[k] = int(np.count_nonzero(live[k] & ~read))
    return keep, dead_ends


def _groups_from_labels(columns, labels):
    """Members (ascending) of each label, listed in order of their smallest member."""
    order = np.lexsort((columns, labels))
    sorted_labels = labels[order]
    cuts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    groups = np.split(columns[order], cuts[1:])
    groups.sort(key=lambda members: members[0])
    return groups


def _assign(groups, n_outputs):
    """``out_group[j]``: compact index of original output ``j`` (-1 if removed)."""
    out_group = np.full(n_outputs, -1, dtype=np.int64)
    for index, members in enumerate(groups):
        out_group[members] = index
    return out_group


def compact(network, inputs=None, inputs_aware=False, progress=False):
    """Merge duplicate neurons and remove the ones that cannot matter.

    Parameters
    ----------
    network : Network
        The network to compact (square or rectangular layers).
    inputs : scipy.sparse matrix, optional
        ``n_inputs x n_features``; needed (and used) only with ``inputs_aware``.
    inputs_aware : bool
        Also remove neurons the float64 reference leaves at 0 on every one
        of ``inputs``. The result is exact only on those inputs (checked
        before returning).
    progress : bool
        Draw a progress bar over the layers (stderr).

    Returns
    -------
    Compaction
        ``.network`` (``origin=network``), ``.groups``, ``.report``, ``.kind``.

    Raises
    ------
    DataError
        If no output can ever be nonzero (nothing would be left), or the
        inputs do not fit the network.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from graphchallenge.network import Network
    >>> first = sp.csr_matrix([[1.0, 1.0], [1.0, 1.0]])   # outputs 0 and 1 are twins
    >>> second = sp.csr_matrix([[0.5], [0.5]])
    >>> result = compact(Network([first, second], -0.3))
    >>> result.groups, result.network.layers[1].toarray().tolist()
    ([[[0, 1]], [[0]]], [[1.0]])
    """
    from tqdm import tqdm

    started = time.perf_counter()
    kind = "inputs-aware" if inputs_aware else "exact"
    activity = exact_only_on = None
    input_live = np.ones(network.n_features, dtype=bool)
    if inputs_aware:
        if inputs is None:
            raise ValueError("inputs_aware=True needs the inputs")
        if inputs.shape[1] != network.n_features:
            raise DataError(f"the inputs have {inputs.shape[1]} features but {network.name} "
                            f"takes {network.n_features}")
        activity, expected = _activity(network, inputs)
        input_live = activity[0]
        exact_only_on = {"count": int(inputs.shape[0]), "inputs_sha256": layer_digest(inputs)}

    live, never, inactive = _reachable(network, input_live, activity)
    keep, dead_ends = _useful(network, live)
    if not keep[-1].any():
        what = "on the given inputs" if inputs_aware else "on any input"
        raise DataError(f"no output of {network.name} can be nonzero {what}: every category "
                        "set is empty and there is no network left to write")

    layers, all_groups, changes = [], [], []
    row_group = np.where(input_live, np.arange(network.n_features), -1)
    weights = network.layers[0]
    folded, _ = _fold(weights, row_group, network.n_features, keep[0])
    steps = tqdm(range(network.n_layers), desc="compress", unit="layer", disable=not progress,
                 leave=False)
    for k in steps:
        columns = np.flatnonzero(keep[k])
        labels = columns[_identical_columns(folded[:, columns])]
        groups = _groups_from_labels(columns, labels)
        unmerged = 0
        if k + 1 < network.n_layers:
            next_weights = network.layers[k + 1]
            out_group = _assign(groups, weights.shape[1])
            next_folded, inexact = _fold(next_weights, out_group, len(groups), keep[k + 1])
            split = {g for g in np.flatnonzero(inexact) if groups[g].size > 1}
            if split:
                unmerged = len(split)
                kept = [members for g, members in enumerate(groups) if g not in split]
                singles = [single for g in split for single in np.split(groups[g], groups[g].size)]
                groups = sorted(kept + singles, key=lambda members: members[0])
                out_group = _assign(groups, weights.shape[1])
                next_folded, _ = _fold(next_weights, out_group, len(groups), keep[k + 1])
        representatives = np.array([members[0] for members in groups], dtype=np.int64)
        layer = sp.csr_matrix(folded[:, representatives])
        layer.sort_indices()
        layer.indices = layer.indices.astype(np.int32, copy=False)
        layers.append(layer)
        all_groups.append([members.tolist() for members in groups])
        changes.append(LayerChange(
            layer=k + 1, inputs_before=weights.shape[0], inputs_after=layer.shape[0],
            neurons_before=weights.shape[1], neurons_after=layer.shape[1],
            edges_before=int(weights.nnz), edges_after=int(layer.nnz),
            merged=int(columns.size - len(groups)), never_nonzero=never[k],
            inactive=inactive[k], dead_ends=dead_ends[k], left_unmerged=unmerged))
        if k + 1 < network.n_layers:
            weights, folded = next_weights, next_folded

    result = Network(layers, network.bias, name=f"{network.name}-compact", origin=network,
                     config=network.config)
    if inputs_aware:
        _check_on_inputs(result, inputs, expected)
    original_edges = sum(change.edges_before for change in changes)
    compact_edges = result.edges
    report = CompactionReport(
        network=network.name, kind=kind, original_edges=original_edges,
        compact_edges=compact_edges, compression_rate=original_edges / compact_edges,
        original_neurons=sum(change.neurons_before for change in changes),
        compact_neurons=sum(change.neurons_after for change in changes),
        seconds=time.perf_counter() - started, layers=changes)
    return Compaction(result, all_groups, report, kind, network, exact_only_on)


def _check_on_inputs(compact_network, inputs, expected):
    """An inputs-aware network must reproduce the reference's categories on its inputs."""
    from .engines.reference import ReferenceEngine

    got = ReferenceEngine().infer(compact_network, inputs).categories
    if not np.array_equal(got, expected):
        raise GraphChallengeError(
            f"inputs-aware compaction changed {np.setxor1d(got, expected).size} categories on "
            "its own inputs; this is a bug, please report it")


def compress_challenge(cfg, data_dir, out_dir, inputs_aware=False, n_inputs=None, progress=False):
    """Load challenge ``cfg`` from ``data_dir``, compact it and save it to ``out_dir``.

    The library call behind ``graphchallenge compress``.

    Parameters
    ----------
    cfg : catalog.Config
    data_dir : path-like or None
        See :func:`graphchallenge.layout.data_dir`.
    out_dir : path-like
        Folder to write (replaced if it holds an earlier compact network).
    inputs_aware : bool
        See :func:`compact`; uses the challenge's input file.
    n_inputs : int, optional
        Inputs-aware only: use the first ``n_inputs`` images.

    Returns
    -------
    Compaction
    """
    from . import layout, network as network_mod

    if n_inputs is not None and not inputs_aware:
        raise GraphChallengeError("--inputs only makes sense with --inputs-aware")
    derived.check_out_dir(out_dir)  # fail before the work, not after it
    if inputs_aware:
        challenge = network_mod.load_challenge(cfg, data_dir, n_inputs=n_inputs, need_truth=False)
        source, inputs, files = challenge.network, challenge.inputs, dict(challenge.files)
    else:
        root = layout.data_dir(data_dir)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; pass --data-dir or set "
                            f"${layout.DATA_ENV}")
        source, inputs = network_mod.load_network(cfg, root), None
        files = {"network": str(layout.find_network_dir(cfg, root))}
    compaction = compact(source, inputs, inputs_aware=inputs_aware, progress=progress)
    save_compact(compaction, out_dir, cfg, files)
    return compaction


# ---------------------------------------------------------------- writing

def save_compact(compaction_or_network, out_dir, source_cfg=None, source_files=None, kind=None,
                 groups=None, extra=None, source_network=None):
    """Write a compaction: ``layer-0001.tsv ...`` and ``manifest.json``.

    Writes through :func:`graphchallenge.derived.save` (see there for the
    format and the atomic placement), filling in what a :class:`Compaction`
    knows: its kind, groups, source, report and, inputs-aware, the inputs
    it is exact on.

    Parameters
    ----------
    compaction_or_network : Compaction or Network
        A :func:`compact` result (``kind``, ``groups`` and the source come
        from it), or any network derived from a challenge network (for
        example a fine-tuned one).
    out_dir, source_cfg, source_files, extra, source_network
        As for :func:`graphchallenge.derived.save`; ``source_network``
        defaults to the compaction's source or the network's ``origin``.
    kind, groups
        As for :func:`graphchallenge.derived.save`; taken from a
        :class:`Compaction`, required with a plain Network.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    report = exact_only_on = None
    if isinstance(compaction_or_network, Compaction):
        compaction = compaction_or_network
        network = compaction.network
        kind = kind or compaction.kind
        groups = groups if groups is not None else compaction.groups
        source_network = source_network or compaction.source
        report = compaction.report.to_dict()
        exact_only_on = compaction.exact_only_on
    else:
        network = compaction_or_network
    return derived.save(network, out_dir, source_cfg, source_files, kind, groups, extra,
                        source_network, report=report, exact_only_on=exact_only_on)
