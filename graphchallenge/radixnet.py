"""RadiX-Net layers, the challenge's network construction, and the record of generated folders.

The challenge's networks are RadiX-Nets (Robinett & Kepner, arXiv
1905.00416); :mod:`graphchallenge.synthetic` describes the construction
and builds whole challenges on it. This module holds the layers alone, and
the ``generated.json`` record of a generated folder, so that loading a
network (:mod:`graphchallenge.network`) can rebuild a binary generated
challenge's layers without the generator.
"""

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import io
from .errors import DataError, GraphChallengeError

#: Recorded in ``generated.json``; bump when the generated files change for the same seed.
GENERATOR_VERSION = 1

#: Every RadiX-Net weight: 32 inputs of 1/16 sum to 2.
WEIGHT = 1.0 / 16

#: Name of the record of what a generated data folder holds.
RECORD_NAME = "generated.json"

_KRON = 16  # the ones(16, 16) Kronecker factor that widens the radix net
# Seed streams: the network's permutations and the images never share random numbers.
_STREAM_PERMUTATION, _STREAM_IMAGES = 0, 1


# ---------------------------------------------------------------- RadiX-Net


def _check_neurons(neurons):
    neurons = int(neurons)
    width = neurons // _KRON
    if neurons % _KRON or width < 2 or width & (width - 1):
        raise GraphChallengeError(f"a RadiX-Net needs 16 * 2**m neurons with m >= 1 (got {neurons})")
    return neurons


def _check_seed(seed):
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise GraphChallengeError(f"--seed must be a non-negative integer (got {seed})")
    return int(seed)


def block_length(neurons):
    """Layers per RadiX-Net block, ``log2(neurons / 16)`` (6 for neuron1024)."""
    return int(_check_neurons(neurons) // _KRON).bit_length() - 1


@functools.lru_cache(maxsize=4)
def _block_rows(neurons, block, seed):
    """How block ``block`` relabels the rows of its base layers.

    Returns ``(row_class, groups)``: layer row ``r`` is base row
    ``perm[r]``, whose connections depend only on ``perm[r] mod M``
    (``row_class[r]``); ``groups[q]`` lists, ascending, the 16 rows of
    class ``q``. Cached because a block's layers share them.
    """
    width = neurons // _KRON
    rows = np.arange(neurons, dtype=np.int32)
    if block == 0:
        permutation = rows
    else:
        rng = np.random.default_rng([seed, _STREAM_PERMUTATION, block])
        permutation = rng.permutation(neurons).astype(np.int32)
    row_class = permutation & (width - 1)  # mod M, M a power of two
    inverse = np.empty_like(permutation)
    inverse[permutation] = rows
    # Base rows of class q are q + j*M, j = 0..15; their layer rows are inverse[q + j*M].
    groups = np.sort(inverse.reshape(_KRON, width).T, axis=1)
    for array in (row_class, groups):
        array.flags.writeable = False
    return row_class, groups


def _layer_position(neurons, k, permute):
    neurons = _check_neurons(neurons)
    if int(k) < 1:
        raise GraphChallengeError(f"layers are numbered from 1 (got {k})")
    block, base = divmod(int(k) - 1, block_length(neurons))
    return neurons, (block if permute else 0), 1 << base


def radixnet_column_indices(neurons, k, seed=0, permute=True):
    """The 32 input rows of every output column of RadiX-Net layer ``k``.

    A fixed 32-per-column index table (ELL layout): engines and benchmarks
    build a layer from it without any file.

    Parameters
    ----------
    neurons : int
        ``16 * 2**m`` (1024, 4096, 16384, 65536 for the challenge).
    k : int
        Layer, 1-based.
    seed : int
        Seed of the row permutations (ignored without ``permute``).
    permute : bool
        Permute the rows of every block after the first, as the challenge
        does; without it every layer is a base layer.

    Returns
    -------
    ndarray of int32, shape (32, neurons)
        ``table[:, c]`` holds the rows ``r`` with ``W[r, c] != 0``, ascending.
    """
    neurons, block, shift = _layer_position(neurons, k, permute)
    _, groups = _block_rows(neurons, block, _check_seed(seed))
    # Column c reads base rows of classes c and c + s (mod M): the same 32
    # rows for all 16 columns of a class, so sort M columns and tile them.
    per_class = np.sort(np.concatenate([groups, np.roll(groups, -shift, axis=0)], axis=1), axis=1)
    table = np.empty((per_class.shape[1], _KRON, neurons // _KRON), dtype=np.int32)
    table[...] = per_class.T[:, None, :]  # a broadcast copy: several times faster than np.tile
    return table.reshape(per_class.shape[1], neurons)


def radixnet_layer(neurons, k, seed=0, permute=True):
    """RadiX-Net layer ``k`` (1-based) as an ``N x N`` float64 CSR matrix of weights 1/16.

    It holds the same nonzeros as :func:`radixnet_column_indices` (see there
    for the parameters), built row-wise: row ``r`` of a base layer feeds the
    columns of classes ``r`` and ``r - s`` (mod M).

    Examples
    --------
    >>> w = radixnet_layer(1024, 3)
    >>> w.getnnz(axis=0).tolist() == w.getnnz(axis=1).tolist() == [32] * 1024
    True
    >>> float(w.data.min()), float(w.data.max())
    (0.0625, 0.0625)
    """
    neurons, block, shift = _layer_position(neurons, k, permute)
    row_class, _ = _block_rows(neurons, block, _check_seed(seed))
    width = neurons // _KRON
    classes = np.arange(width, dtype=np.int32)[:, None]
    spread = np.arange(_KRON, dtype=np.int32)[None, :] * width
    columns_of_class = np.sort(np.concatenate(
        [classes + spread, ((classes - shift) & (width - 1)) + spread], axis=1), axis=1)
    per_row = 2 * _KRON
    indices = columns_of_class[row_class].ravel()
    indptr = np.arange(0, per_row * neurons + 1, per_row, dtype=np.int32)
    # Every layer of a size shares one read-only array of weights (as cached layers do).
    layer = sp.csr_matrix((io.constant_array(indices.size, WEIGHT), indices, indptr),
                          shape=(neurons, neurons))
    layer.has_sorted_indices = True
    return layer


class RadixNetLayers(Sequence):
    """RadiX-Net layers generated on demand, so that deep networks stream.

    ``Network(RadixNetLayers(65536, 1920), bias)`` holds one layer at a time
    when an engine walks it in order (the whole network is 4 billion edges).

    Parameters
    ----------
    neurons, n_layers : int
    seed : int
    permute : bool
        See :func:`radixnet_column_indices`.

    Attributes
    ----------
    shapes : list of (int, int)
        ``(neurons, neurons)`` per layer, known without generating any.
    """

    def __init__(self, neurons, n_layers, seed=0, permute=True, _first=1):
        self.neurons = _check_neurons(neurons)
        self.seed = _check_seed(seed)
        self.permute = bool(permute)
        self.layer_numbers = range(_first, _first + int(n_layers))
        self.shapes = [(self.neurons, self.neurons)] * len(self.layer_numbers)
        #: Every weight's value: engines that take column tables need only the indices.
        self.weight = WEIGHT

    def __len__(self):
        return len(self.layer_numbers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            numbers = self.layer_numbers[index]
            if numbers.step != 1:
                raise ValueError("RadixNetLayers slices must be contiguous")
            return RadixNetLayers(self.neurons, len(numbers), self.seed, self.permute,
                                  _first=numbers.start)
        return radixnet_layer(self.neurons, self.layer_numbers[index], self.seed, self.permute)

    def layer_keys(self):
        """Per layer, the generator's parameters that fix it (see :attr:`Network.layer_keys`)."""
        return [f"radixnet:v{GENERATOR_VERSION}:{self.neurons}:{self.seed}:{self.permute}:{number}"
                for number in self.layer_numbers]

    def column_indices(self, index):
        """The ELL index table of layer ``index`` (0-based position in this sequence)."""
        return radixnet_column_indices(self.neurons, self.layer_numbers[index], self.seed,
                                       self.permute)


def read_record(data_dir):
    """The record of the generated challenges in ``data_dir`` (an empty one if none)."""
    path = Path(data_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"neurons": {}}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); delete it and generate again") from None
    if not isinstance(record.get("neurons"), dict):
        raise DataError(f"{path}: not a record of generated challenges; delete it and generate again")
    return record


def entry_format(entry):
    """The format of a record's entry: ``tsv`` or ``binary``."""
    # Records written before the binary format existed hold TSV files.
    return entry.get("format", "tsv")


def generated_layers(neurons, n_layers, data_dir):
    """The layers of a binary generated challenge in ``data_dir``, rebuilt from its record, or None.

    A binary generated challenge stores no layer files: ``generated.json``
    names the RadiX-Net (neurons, seed, permutations), whose layers are
    rebuilt on demand (:class:`RadixNetLayers`), for any depth.
    """
    root = Path(data_dir)
    if not (root / RECORD_NAME).is_file():
        return None
    entry = read_record(root)["neurons"].get(str(neurons))
    if not entry or entry_format(entry) != "binary":
        return None
    if entry.get("generator_version") != GENERATOR_VERSION:
        raise DataError(f"{root / RECORD_NAME}: generated by generator version "
                        f"{entry.get('generator_version')}, this is version {GENERATOR_VERSION}; "
                        "generate the challenge again")
    return RadixNetLayers(neurons, n_layers, entry.get("seed", 0), entry.get("permute", True))
