"""The network object and loading a challenge from a data folder.

A :class:`Network` is a sequence of sparse weight matrices (``Y @ W``
convention: ``W[i, j]`` is the edge from neuron i to neuron j), one scalar
bias, and, for a network derived from another (a compacted or fine-tuned
one), the network whose float64 evaluation defines the exact answer.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import catalog, io, layout, radixnet
from .errors import DataError

log = logging.getLogger(__name__)


class LayerFiles(Sequence):
    """Layers read from TSV files on demand, through the binary cache.

    Holding only the file names keeps deep networks (65536 x 1920 is 4
    billion edges) out of memory: an engine that walks the layers in order
    holds one at a time.
    """

    def __init__(self, paths, shapes, cache=True):
        if len(paths) != len(shapes):
            raise ValueError("one shape per layer file")
        self.paths = [Path(p) for p in paths]
        self.shapes = [tuple(s) for s in shapes]
        self.cache = cache

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LayerFiles(self.paths[index], self.shapes[index], self.cache)
        return io.read_layer(self.paths[index], shape=self.shapes[index], cache=self.cache)

    def layer_keys(self):
        """Per layer, a string that changes whenever its file does (path, size, mtime).

        Engines key their converted tables on disk by it (see :attr:`Network.layer_keys`).
        """
        return [io.file_key(path) for path in self.paths]

    def read_all(self, progress=False):
        """Every layer, read several at a time (:func:`graphchallenge.io.read_layers`)."""
        return io.read_layers(self.paths, self.shapes, cache=self.cache, progress=progress)


class Network:
    """A sparse DNN: ``Y <- min(32, max(0, Y @ W_k + bias on the structure)))`` per layer.

    Parameters
    ----------
    layers : sequence of scipy.sparse matrices
        In memory (a list) or on demand (:class:`LayerFiles`).
    bias : float
        Added to the structural nonzeros of every ``Y @ W_k``.
    name : str, optional
        For reports, e.g. ``neuron1024-l120``.
    origin : Network, optional
        The network this one was derived from and must agree with exactly
        (see :attr:`exact_reference`).
    config : catalog.Config, optional
        The challenge configuration the network belongs to.
    layer_keys : list of str, optional
        Per layer, a string naming its content (the file it was read from,
        or the generator's record), for the engines' caches of converted
        layers. By default the layer sequence's own ``layer_keys()`` where
        it has one (:class:`LayerFiles`, generated layers), else none: a
        network built from matrices in memory is converted afresh.
    """

    def __init__(self, layers, bias, name=None, origin=None, config=None, layer_keys=None):
        if len(layers) == 0:
            raise DataError("a network needs at least one layer")
        self.layers = layers
        self.bias = float(bias)
        self.name = name or "network"
        self.origin = origin
        self.config = config
        # Lazy sequences (LayerFiles, generated layers) announce their shapes
        # so that building a Network does not read or generate every layer.
        shapes = getattr(layers, "shapes", None)
        self._shapes = [tuple(s) for s in shapes] if shapes is not None else [w.shape for w in layers]
        for k in range(1, len(self._shapes)):
            if self._shapes[k][0] != self._shapes[k - 1][1]:
                raise DataError(f"layer {k + 1} has {self._shapes[k][0]} inputs but layer {k} "
                                f"has {self._shapes[k - 1][1]} outputs")
        self._edges = None
        if layer_keys is None and hasattr(layers, "layer_keys"):
            layer_keys = layers.layer_keys()
        if layer_keys is not None and len(layer_keys) != len(layers):
            raise ValueError("one key per layer")
        self.layer_keys = None if layer_keys is None else [str(key) for key in layer_keys]

    def __repr__(self):
        return (f"Network({self.name!r}, {self.n_layers} layers, {self.n_features} -> "
                f"{self.n_outputs} neurons, bias={self.bias})")

    @property
    def n_layers(self):
        return len(self.layers)

    @property
    def shapes(self):
        """``(inputs, outputs)`` of every layer."""
        return list(self._shapes)

    @property
    def n_features(self):
        """Width of the input rows (N for a challenge network)."""
        return self._shapes[0][0]

    @property
    def n_outputs(self):
        return self._shapes[-1][1]

    @property
    def edges(self):
        """Nonzero weights in all layers (reads every layer once if they are on disk)."""
        if self._edges is None:
            self._edges = int(sum(w.nnz for w in self.layers))
        return self._edges

    @property
    def exact_reference(self):
        """The network whose float64 evaluation by the reference engine is the truth.

        A challenge network is its own; a compacted network answers to the
        original it came from.
        """
        network = self
        while network.origin is not None:
            network = network.origin
        return network

    def in_memory(self):
        """This network with every layer loaded (a no-op for in-memory layers)."""
        if isinstance(self.layers, list):
            return self
        if isinstance(self.layers, LayerFiles):
            layers = self.layers.read_all()
        else:
            layers = list(self.layers)
        return Network(layers, self.bias, self.name, self.origin, self.config, self.layer_keys)


@dataclass
class Challenge:
    """A network, its inputs and (where known) the truth categories."""

    config: catalog.Config
    network: Network
    inputs: object  # scipy.sparse.csr_matrix, n_inputs x N
    truth: np.ndarray = None
    files: dict = field(default_factory=dict)

    @property
    def n_inputs(self):
        return self.inputs.shape[0]


def generated_network(cfg, data_dir):
    """The network of ``cfg`` in a binary generated folder, rebuilt from its record; else None.

    A binary generated challenge stores no layer files: ``generated.json``
    names the RadiX-Net (neurons, seed, permutations), whose layers are
    rebuilt on demand (:class:`graphchallenge.radixnet.RadixNetLayers`), for
    any depth.
    """
    layers = radixnet.generated_layers(cfg.neurons, cfg.layers, data_dir)
    if layers is None:
        return None
    return Network(layers, cfg.bias, name=cfg.name, config=cfg)


def load_network(cfg, root=None, cache=True, lazy=None, progress=False):
    """Load the first ``cfg.layers`` layers of network ``cfg.neurons`` from a data folder.

    Parameters
    ----------
    cfg : catalog.Config
    root : path-like, optional
        Data folder (server or flat layout, see :mod:`graphchallenge.layout`).
        A folder generated in binary form holds no layer files: its layers
        are rebuilt from the generation record (:func:`generated_network`).
    cache : bool
        Use the binary cache.
    lazy : bool, optional
        Read (or rebuild) layers on demand instead of all at once; by
        default lazy when the network has more than 2**28 edges.
    progress : bool
        Draw a progress bar on stderr while the layers are read.
    """
    root = layout.data_dir(root)
    if lazy is None:
        lazy = cfg.edges > 2**28
    generated = generated_network(cfg, root) if root.is_dir() else None
    if generated is not None:
        if not lazy:
            from tqdm import tqdm

            # layer_keys stay those of the generated sequence.
            generated.layers = list(tqdm(generated.layers, desc="build layers", unit="layer",
                                         disable=not progress, leave=False))
        return generated
    folder = layout.require(layout.find_network_dir(cfg, root), "network folder", cfg, root)
    paths = [folder / cfg.layer_name(k) for k in range(1, cfg.layers + 1)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{folder} lacks {len(missing)} of the {cfg.layers} layer files, first "
                        f"{missing[0].name}; download or extract them again")
    layers = LayerFiles(paths, [(cfg.neurons, cfg.neurons)] * cfg.layers, cache=cache)
    keys = layers.layer_keys()
    if not lazy:
        layers = layers.read_all(progress=progress)
    return Network(layers, cfg.bias, name=cfg.name, config=cfg, layer_keys=keys)


def has_challenge(cfg, root, need_truth=True):
    """True when ``root`` holds what a run of ``cfg`` needs (network, inputs and the truth)."""
    root = Path(root)
    if not root.is_dir():
        return False
    try:
        generated = generated_network(cfg, root)
    except DataError:
        return False
    if generated is None:
        folder = layout.find_network_dir(cfg, root)
        if folder is None or not all((folder / cfg.layer_name(k)).is_file()
                                     for k in range(1, cfg.layers + 1)):
            return False
    if layout.find_inputs(cfg, root) is None:
        return False
    return not need_truth or layout.find_truth(cfg, root) is not None


def load_challenge(cfg, root=None, n_inputs=None, cache=True, lazy=None, need_truth=True,
                   progress=False):
    """Load network, inputs and truth of ``cfg`` from a data folder.

    Parameters
    ----------
    n_inputs : int, optional
        Keep only the first ``n_inputs`` inputs; the truth is cut to rows
        ``<= n_inputs`` to match.
    need_truth : bool
        Raise when the truth file is missing (else ``truth`` is None).
    progress : bool
        Draw progress bars on stderr while layers and inputs are read.
    """
    root = layout.data_dir(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data-dir or set "
                        f"${layout.DATA_ENV}")
    inputs_path = layout.require(layout.find_inputs(cfg, root), "input file", cfg, root)
    truth_path = layout.find_truth(cfg, root)
    if need_truth:
        layout.require(truth_path, "truth (categories) file", cfg, root)
    network = load_network(cfg, root, cache=cache, lazy=lazy, progress=progress)
    inputs = io.read_inputs(inputs_path, cfg.neurons, n_inputs=n_inputs, cache=cache,
                            progress=progress)
    truth = None
    if truth_path is not None:
        truth = io.read_categories(truth_path)
        if n_inputs is not None:
            truth = truth[truth <= n_inputs]
        elif truth.size and truth[-1] > inputs.shape[0]:
            raise DataError(f"{truth_path} names row {truth[-1]} but {inputs_path} has only "
                            f"{inputs.shape[0]} inputs")
    network_dir = layout.find_network_dir(cfg, root)
    files = {"network": str(network_dir) if network_dir else str(root / "generated.json"),
             "inputs": str(inputs_path),
             "truth": str(truth_path) if truth_path else None}
    return Challenge(cfg, network, inputs, truth, files)
