"""Synthetic challenges: RadiX-Net layers, MNIST-like inputs, reference truth.

The challenge's networks are RadiX-Nets (Robinett & Kepner, arXiv
1905.00416). With ``N = 16 * 2**m`` neurons, ``M = N / 16`` and blocks of
``m`` layers, base layer ``b`` (1..m) is ``kron(ones(16, 16), I + S**s)``
with ``s = 2**(b - 1)`` and ``S`` the cyclic shift over ``M`` neurons::

    W[r, c] != 0  exactly when  ((r - c) mod N) mod M  is 0 or s     (0-based)

every weight 1/16, 32 nonzeros per row and column. Layer ``k`` is base
layer ``((k - 1) mod m) + 1`` with its rows permuted by the permutation of
its block ``(k - 1) // m``; block 0 is not permuted and every later block
has one permutation shared by its ``m`` layers. Without permutations the
neuron1024 generator reproduces the real layers 1..6 exactly; the real
permutations are unknown, so permuted layers share the real ones'
structure, not their values.

The inputs imitate the real images: pen strokes on a 28 x 28 canvas,
upsampled to ``sqrt(N) x sqrt(N)``, binarised and flattened column-major.

Examples
--------
>>> from graphchallenge import synthetic
>>> synthetic.radixnet_layer(1024, 1).nnz
32768
>>> synthetic.radixnet_column_indices(65536, 7).shape
(32, 65536)
"""

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tqdm import tqdm

from . import catalog, io, layout
from .engines.base import Timer
from .engines.reference import apply_layer
from .errors import DataError, GraphChallengeError
from .network import Network

#: Recorded in ``generated.json``; bump when the generated files change for the same seed.
GENERATOR_VERSION = 1

#: Every RadiX-Net weight: 32 inputs of 1/16 sum to 2.
WEIGHT = 1.0 / 16

#: Name of the record of what a generated data folder holds.
RECORD_NAME = "generated.json"

_KRON = 16  # the ones(16, 16) Kronecker factor that widens the radix net
_CANVAS = 28  # MNIST's image side; images are drawn here, then upsampled

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
    layer = sp.csr_matrix((np.full(indices.size, WEIGHT), indices, indptr),
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

    def column_indices(self, index):
        """The ELL index table of layer ``index`` (0-based position in this sequence)."""
        return radixnet_column_indices(self.neurons, self.layer_numbers[index], self.seed,
                                       self.permute)


def radixnet_network(neurons, n_layers, seed=0, permute=True):
    """A streamed :class:`~graphchallenge.network.Network` of RadiX-Net layers with the challenge bias."""
    cfg = catalog.config(neurons, int(n_layers))
    return Network(RadixNetLayers(neurons, n_layers, seed, permute), cfg.bias,
                   name=f"{cfg.name}-generated", config=cfg)


# ---------------------------------------------------------------- MNIST-like inputs

# Shape of the drawn digits, tuned so that the pixel counts and the
# survival curve on a generated network resemble the real data's (see
# docs/synthetic.md for the measured comparison).
_STROKE_COUNT_P = (0.2, 0.3, 0.5)  # P(1, 2, 3 strokes)
_RADIUS_MEDIAN = 0.95  # pen radius in canvas pixels, lognormal
_RADIUS_SIGMA = 0.25
_ASPECT_RANGE = (0.4, 1.0)  # the digit's width over its height, uniform
_BOX = 18.0  # longer side of the strokes' centre lines, in canvas pixels

_CHUNK = 256  # images drawn per seeded chunk, so image i depends only on (seed, i)
_SAMPLES = 48  # points along a stroke; spacing stays about a pixel for MNIST-sized strokes
_RENDER_BATCH = 64  # images per distance computation (bounds its memory to ~20 MB)


def _draw_strokes(rng, n_images):
    """Pen strokes of ``n_images`` digits: sample points and one pen radius per image.

    Returns ``points`` (n_images, strokes * samples, 2) as (y, x) canvas
    coordinates (unused strokes are moved far off the canvas) and
    ``radius`` (n_images,).
    """
    max_strokes = len(_STROKE_COUNT_P)
    n_strokes = rng.choice(np.arange(1, max_strokes + 1), size=n_images, p=_STROKE_COUNT_P)
    # Cubic Bezier strokes in a box as tall as a digit and as wide as this one (a "1" is narrow).
    aspect = rng.uniform(*_ASPECT_RANGE, size=(n_images, 1, 1))
    control = np.stack([rng.uniform(-1.0, 1.0, size=(n_images, max_strokes, 4)),
                        aspect * rng.uniform(-1.0, 1.0, size=(n_images, max_strokes, 4))],
                       axis=-1)
    radius = rng.lognormal(math.log(_RADIUS_MEDIAN), _RADIUS_SIGMA, size=n_images)
    t = np.linspace(0.0, 1.0, _SAMPLES)
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)
    points = np.einsum("sk,nckd->ncsd", basis, control)
    used = np.broadcast_to((np.arange(max_strokes)[None, :] < n_strokes[:, None])[:, :, None],
                           points.shape[:3])
    # Size-normalise as MNIST does: the longer side of the digit's box
    # becomes _BOX pixels, the box centred on the canvas.
    low = np.where(used[..., None], points, np.inf).min(axis=(1, 2))
    high = np.where(used[..., None], points, -np.inf).max(axis=(1, 2))
    scale = _BOX / np.maximum((high - low).max(axis=1), 1e-9)
    points = (points - ((low + high) / 2)[:, None, None, :]) * scale[:, None, None, None] + _CANVAS / 2
    points[~used] = -1e3
    return points.reshape(n_images, -1, 2), radius


def _render(points, radius):
    """Grey-level canvases (n, 28, 28): full ink within the pen radius, a one-pixel soft edge."""
    centres = np.stack(np.meshgrid(np.arange(_CANVAS), np.arange(_CANVAS), indexing="ij"),
                       axis=-1).reshape(-1, 2).astype(np.float32) + 0.5
    canvases = np.empty((points.shape[0], _CANVAS * _CANVAS), dtype=np.float32)
    for start in range(0, points.shape[0], _RENDER_BATCH):
        batch = points[start:start + _RENDER_BATCH].astype(np.float32)
        # |c - p|^2 = |c|^2 - 2 c.p + |p|^2, the cross term as one matrix product.
        cross = np.matmul(batch, centres.T)  # (n, samples, pixels)
        squared = (np.einsum("nsd,nsd->ns", batch, batch)[:, :, None] - 2.0 * cross
                   + np.einsum("pd,pd->p", centres, centres)[None, None, :])
        distance = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        ink = radius[start:start + _RENDER_BATCH, None] + 0.5 - distance
        canvases[start:start + _RENDER_BATCH] = np.clip(ink, 0.0, 1.0)
    return canvases.reshape(-1, _CANVAS, _CANVAS)  # [image, y, x]


@functools.lru_cache(maxsize=4)
def _upsampling(side):
    """Bilinear interpolation matrix (side x 28), pixel centres aligned."""
    source = (np.arange(side) + 0.5) * (_CANVAS / side) - 0.5
    low = np.clip(np.floor(source), 0, _CANVAS - 1).astype(int)
    high = np.minimum(low + 1, _CANVAS - 1)
    frac = np.clip(source - low, 0.0, 1.0)
    matrix = np.zeros((side, _CANVAS), dtype=np.float32)
    np.add.at(matrix, (np.arange(side), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(side), high), frac)
    return matrix


def _images(neurons, n_images, rng):
    """``n_images`` binary images flattened column-major, as a CSR matrix."""
    side = math.isqrt(neurons)
    canvases = _render(*_draw_strokes(rng, n_images))
    upsample = _upsampling(side)
    # [image, y, x] -> [image, x, y]: pixel index x * side + y is column-major.
    lit = np.einsum("yi,nij,xj->nxy", upsample, canvases, upsample, optimize=True) >= 0.5
    lit = lit.reshape(n_images, neurons)
    indptr = np.concatenate([[0], np.cumsum(lit.sum(axis=1))])
    pixels = np.nonzero(lit)[1].astype(np.int32)  # row-major: already grouped by image
    return sp.csr_matrix((np.ones(pixels.size), pixels, indptr), shape=(n_images, neurons))


def mnist_like_inputs(neurons, n_inputs, seed=0):
    """Binary MNIST-like images: pen-stroke digits, upsampled and binarised like the real inputs.

    Every image is drawn with strokes of a random pen on MNIST's 28 x 28
    canvas, upsampled bilinearly to ``sqrt(N) x sqrt(N)``, thresholded at
    half ink and flattened column-major (pixel index ``x * sqrt(N) + y``).
    The same seed draws the same digits at every size, so pixel counts grow
    4x per size step (about 100 at N = 1024); image ``i`` depends only on
    ``(seed, i)``, so a longer set starts with a shorter one.

    Parameters
    ----------
    neurons : int
        A perfect square (1024, 4096, 16384, 65536).
    n_inputs : int
    seed : int

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_inputs, neurons)
        Values 1.0.
    """
    side = math.isqrt(int(neurons))
    if side * side != neurons:
        raise GraphChallengeError(f"images need a square number of neurons (got {neurons})")
    if int(n_inputs) < 1:
        raise GraphChallengeError(f"--inputs must be at least 1 (got {n_inputs})")
    n_inputs, seed = int(n_inputs), _check_seed(seed)
    chunks = []
    for chunk, start in enumerate(range(0, n_inputs, _CHUNK)):
        rng = np.random.default_rng([seed, _STREAM_IMAGES, chunk])
        chunks.append(_images(neurons, _CHUNK, rng)[:n_inputs - start])
    return sp.vstack(chunks, format="csr")


# ---------------------------------------------------------------- whole challenges

@dataclass
class GeneratedChallenge:
    """What :func:`generate_challenge` wrote; ``to_dict()`` is what ``--json`` prints."""

    neurons: int
    layers: int
    n_inputs: int
    seed: int
    permute: bool
    data_dir: str
    n_categories: int
    input_nnz: int
    edges: int
    seconds: float
    generator_version: int = GENERATOR_VERSION

    def to_dict(self):
        return asdict(self)

    def text(self):
        """The human-readable summary."""
        survived = self.n_categories / self.n_inputs
        return "\n".join([
            f"generated    neuron{self.neurons}-l{self.layers} (seed {self.seed}"
            + ("" if self.permute else ", no permutations") + ")",
            f"data folder  {self.data_dir}",
            f"edges        {self.edges:,}",
            f"inputs       {self.n_inputs:,} ({self.input_nnz / self.n_inputs:.1f} pixels per image)",
            f"categories   {self.n_categories} ({survived:.1%} of the inputs), "
            "from the float64 reference",
            f"time         {self.seconds:.1f} s",
        ])


def _as_config(cfg):
    if isinstance(cfg, catalog.Config):
        return cfg
    neurons, layers = cfg
    return catalog.config(int(neurons), int(layers))


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


def _write_record(data_dir, record):
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    io._write_atomic(Path(data_dir) / RECORD_NAME, lambda handle: handle.write(text))


def _parameters(n_inputs, seed, permute):
    return {"inputs": int(n_inputs), "seed": int(seed), "permute": bool(permute),
            "generator_version": GENERATOR_VERSION}


def is_generated(cfg, data_dir, n_inputs, seed=0, permute=True):
    """True when ``data_dir`` holds challenge ``cfg`` generated with exactly these parameters."""
    cfg = _as_config(cfg)
    root = Path(data_dir)
    if not root.is_dir():
        return False
    entry = read_record(root)["neurons"].get(str(cfg.neurons))
    wanted = _parameters(n_inputs, seed, permute)
    if not entry or cfg.layers not in entry.get("layers", []):
        return False
    if {key: entry.get(key) for key in wanted} != wanted:
        return False
    paths = layout.server_paths(cfg, root)
    return (paths.inputs.is_file() and paths.truth.is_file()
            and all((paths.network_dir / cfg.layer_name(k)).is_file()
                    for k in range(1, cfg.layers + 1)))


def _claim_folder(cfg, root, parameters):
    """Check that generating ``cfg`` in ``root`` overwrites only generated files.

    Records the folder as being generated with ``parameters`` before any
    file is written, listing no finished depth for ``cfg.neurons`` but those
    still valid, so that an interrupted generation never looks finished and
    may be repeated. Returns the record.
    """
    record = read_record(root)
    key = str(cfg.neurons)
    entry = record["neurons"].get(key)
    paths = layout.server_paths(cfg, root)
    if entry is None:
        existing = [p for p in (paths.inputs, paths.truth, paths.network_dir) if p.exists()]
        if existing:
            raise DataError(f"{existing[0]} exists and was not generated; generate into another "
                            "--data-dir rather than overwrite challenge files")
        entry = {"layers": []}
    same = {name: entry.get(name) for name in parameters} == parameters
    kept = []
    for depth in entry.get("layers", []):
        # The truth of another depth stays valid only for the same inputs and network.
        if same and depth != cfg.layers:
            kept.append(depth)
        else:
            (root / catalog.config(cfg.neurons, depth).truth_path).unlink(missing_ok=True)
    record["neurons"][key] = dict(parameters, layers=kept)
    _write_record(root, record)
    return record


def generate_challenge(cfg, n_inputs, seed=0, data_dir=None, progress=True, permute=True):
    """Write a generated challenge (layers, inputs, truth) in the server's layout.

    The layers are generated, written and run through the float64
    reference one at a time, so even 65536 x 1920 never holds more than one
    layer; the truth is what the reference gives. ``generated.json`` in the
    data folder records the parameters, so that a folder is reused only
    when it holds exactly what is asked for (see :func:`is_generated`).

    Parameters
    ----------
    cfg : catalog.Config or (neurons, layers)
    n_inputs : int
    seed : int
        Seeds the images and the network's permutations.
    data_dir : path-like, optional
        See :func:`graphchallenge.layout.data_dir`.
    progress : bool
        Draw a progress bar on stderr.
    permute : bool
        See :func:`radixnet_column_indices`.

    Returns
    -------
    GeneratedChallenge

    Raises
    ------
    DataError
        The folder holds challenge files that were not generated (they are
        never overwritten), or cannot be written.

    Examples
    --------
    >>> generate_challenge((1024, 12), 200, seed=1, data_dir="gen")  # doctest: +SKIP
    """
    cfg = _as_config(cfg)
    if int(n_inputs) < 1:
        raise GraphChallengeError(f"--inputs must be at least 1 (got {n_inputs})")
    root = layout.data_dir(data_dir)
    parameters = _parameters(n_inputs, _check_seed(seed), permute)
    paths = layout.server_paths(cfg, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        record = _claim_folder(cfg, root, parameters)
        with Timer() as timer, tqdm(total=cfg.layers + 2, unit="file", desc=f"generate {cfg.name}",
                                    disable=not progress, leave=False) as bar:
            inputs = mnist_like_inputs(cfg.neurons, n_inputs, seed)
            io.write_inputs(paths.inputs, inputs)
            bar.update()
            activations = inputs
            for k, weights in enumerate(RadixNetLayers(cfg.neurons, cfg.layers, seed, permute), 1):
                io.write_layer(paths.network_dir / cfg.layer_name(k), weights)
                activations = apply_layer(activations, weights, cfg.bias)
                bar.update()
            categories = np.flatnonzero(np.diff(activations.indptr)) + 1
            io.write_categories(paths.truth, categories)
            bar.update()
        entry = record["neurons"][str(cfg.neurons)]
        entry["layers"] = sorted(set(entry["layers"]) | {cfg.layers})
        _write_record(root, record)
    except OSError as exc:
        where = exc.filename or root
        raise DataError(f"cannot write the generated challenge: {where}: "
                        f"{exc.strerror or exc}") from None
    return GeneratedChallenge(
        neurons=cfg.neurons, layers=cfg.layers, n_inputs=int(n_inputs), seed=int(seed),
        permute=bool(permute), data_dir=str(root), n_categories=int(categories.size),
        input_nnz=int(inputs.nnz), edges=cfg.edges, seconds=timer.seconds)


def demo_folder(data_dir, cfg, n_inputs, seed):
    """Where ``graphchallenge demo`` keeps its generated challenge under ``data_dir``."""
    cfg = _as_config(cfg)
    return Path(data_dir) / "generated" / f"{cfg.name}-s{int(seed)}-i{int(n_inputs)}"
